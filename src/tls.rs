//! TLS for the gRPC server: the certificate and key from PEM files, client
//! certificates checked against `tls.client_ca` (mutual TLS), and a reload of all
//! three on SIGHUP that new connections use while open ones carry on undisturbed.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The `[tls]` settings of the gRPC server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the gRPC server. Empty: plaintext gRPC.
    pub cert: String,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// PEM certificates of the CA(s) that issue client certificates. Set: mutual TLS;
    /// a client certificate registered to an organization authenticates as it.
    pub client_ca: String,
    /// Refuse connections without a client certificate (otherwise an API key will do).
    pub require_client_cert: bool,
    /// A TLS handshake that takes longer than this is dropped.
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            require_client_cert: false,
            handshake_timeout_secs: 10,
        }
    }
}

/// Handshakes in progress at once: a flood of idle connections cannot hold more
/// than this many tasks and buffers.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The one crypto provider of the whole binary (reqwest and lettre use ring too).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &str, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{key}: cannot read PEM certificates from {path}"))?;
    if certs.is_empty() {
        bail!("{key}: {path} holds no PEM certificate");
    }
    Ok(certs)
}

/// The rustls configuration `tls` describes, read from its files now.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(&tls.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(Path::new(&tls.key))
        .with_context(|| format!("key: cannot read a PEM private key from {}", tls.key))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if tls.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&tls.client_ca, "client_ca")? {
            roots.add(ca).with_context(|| {
                format!(
                    "client_ca: a certificate in {} is not a CA certificate",
                    tls.client_ca
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = if tls.require_client_cert {
            verifier
        } else {
            // Offer client authentication; a client without a certificate may still
            // present an API key.
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(verifier.build().context("client_ca")?)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("key: does not match the certificate")?;
    // gRPC needs HTTP/2; HTTP/JSON clients may speak HTTP/1.1 (the port serves both).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server's TLS settings as they are now; [`TlsServer::reload`] swaps them.
pub struct TlsServer {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    /// `None` when TLS is off (`tls.cert` empty).
    pub fn load(settings: &TlsConfig) -> anyhow::Result<Option<Arc<Self>>> {
        if settings.cert.is_empty() {
            return Ok(None);
        }
        let config = server_config(settings).context("tls")?;
        Ok(Some(Arc::new(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        })))
    }

    /// Reads the files again. New connections use them; open ones keep theirs. On
    /// error the previous settings stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.settings).context("tls")?;
        *self.current.write().expect("tls settings lock") = Arc::new(config);
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("tls settings lock").clone())
    }

    /// Accepted connections after their handshake. Handshakes run side by side, so a
    /// slow or silent client holds up no one; failed ones are logged and dropped. The
    /// listener closes when the stream is dropped (the server stopped accepting).
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(64);
        let timeout = Duration::from_secs(self.settings.handshake_timeout_secs);
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; connection dropped");
                    continue;
                };
                let acceptor = self.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Forever: on each SIGHUP, reloads the certificates (if TLS is on).
pub async fn reload_on_hangup(tls: Option<Arc<TlsServer>>) {
    let Some(tls) = tls else {
        return std::future::pending().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; certificates will not reload");
                return std::future::pending().await;
            }
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "TLS reload failed; keeping the previous certificates"
                    )
                }
            }
        }
    }
    std::future::pending().await
}
