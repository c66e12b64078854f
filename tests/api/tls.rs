//! TLS and mutual TLS with certificates made here: a CA, the server's certificate, and
//! client certificates that are registered, unknown, expired or from another CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::AlertDescription;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use liaison::pb;

crate::on_both_backends!(
    registered_client_certificates_authenticate_and_others_are_refused,
    certificate_registrations_are_validated_and_operator_only,
);

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its key.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, mut params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with common name `cn`; `expired` puts its validity in 2020.
    pub fn client(&self, cn: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        self.issue(params)
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A TLS channel to `port` trusting `ca`, optionally presenting `client`.
pub async fn tls_channel(
    port: u16,
    ca: &str,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca));
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert, &client.key));
    }
    Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One health check over a new TLS connection: an error if the handshake or the
/// call fails.
async fn health_over_tls(port: u16, ca: &str, client: Option<&Leaf>) -> Result<(), BoxError> {
    let channel = tls_channel(port, ca, client).await?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(())
}

/// Whether `client` gets an answer from GetOrganization(`org`) without an API key:
/// the error if not (a refused handshake shows up at connect or at the first call).
async fn call_as_certificate(
    port: u16,
    ca: &str,
    client: &Leaf,
    org: &str,
) -> Result<pb::Organization, tonic::Status> {
    let channel = tls_channel(port, ca, Some(client))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    AdminServiceClient::new(channel)
        .get_organization(pb::GetOrganizationRequest { name: org.into() })
        .await
        .map(|r| r.into_inner())
}

/// The alert the server refused `client`'s handshake with, or `None` if it let the
/// client in. The gRPC client cannot tell: under TLS 1.3 it learns of a refusal
/// only when it reads, and if it writes its request first it may see a broken pipe
/// instead. So this handshakes by hand and then only reads: a refused client gets
/// the alert, an accepted one the server's HTTP/2 settings.
async fn handshake_alert(port: u16, ca: &Ca, client: &Leaf) -> Option<AlertDescription> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(client.der.clone())],
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let alert_of = |error: std::io::Error| match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        _ => panic!("refused without a TLS alert: {error:?}"),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let read = async {
        // Under TLS 1.2 the refusal ends the handshake itself; under 1.3, the read.
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // The port speaks HTTP/1.1 too, so it waits for the client's first words.
        // A refused certificate may fail this write already; the read says why.
        let _ = tls
            .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut first = [0u8; 1];
        tls.read(&mut first).await
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(0)) => panic!("closed without a TLS alert"),
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(alert_of(error)),
        Err(_) => panic!("neither refused nor answered within 10 s"),
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    cert: String,
    key: String,
    client_ca: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Liaison Test CA");
    let server = ca.server();
    Pki {
        cert: write(dir.path(), "server.pem", &server.cert),
        key: write(dir.path(), "server.key", &server.key),
        client_ca: write(dir.path(), "ca.pem", &ca.pem()),
        ca,
        _dir: dir,
    }
}

async fn tls_app(backend: Backend, pki: &Pki) -> TestApp {
    let mut app = spawn_app_with(backend, |c| {
        c.tls.cert = pki.cert.clone();
        c.tls.key = pki.key.clone();
        c.tls.client_ca = pki.client_ca.clone();
    })
    .await;
    // API keys still work over TLS without a client certificate.
    app.channel = tls_channel(app.addr.port(), &pki.ca.pem(), None)
        .await
        .expect("TLS without a client certificate");
    app
}

async fn register(app: &TestApp, org: &str, matches: pb::client_certificate::Match) -> String {
    app.operator()
        .register_client_certificate(pb::RegisterClientCertificateRequest {
            parent: org.into(),
            client_certificate: Some(pb::ClientCertificate {
                display_name: "ERP".into(),
                r#match: Some(matches),
                scopes: vec![pb::ApiKeyScope::Read as i32],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .name
}

async fn registered_client_certificates_authenticate_and_others_are_refused(backend: Backend) {
    let pki = pki();
    let app = tls_app(backend, &pki).await;
    let port = app.addr.port();
    let ca = pki.ca.pem();
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app
        .create_org("bigshop", pb::OrganizationKind::Retailer)
        .await;

    let by_fingerprint = pki.ca.client("erp.acme.example", false);
    let fingerprint = liaison::domain::client_cert::fingerprint(&by_fingerprint.der);
    // As `openssl x509 -fingerprint -sha256` prints it: upper case with colons.
    let colons = fingerprint
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let registration = register(
        &app,
        &acme.name,
        pb::client_certificate::Match::FingerprintSha256(colons),
    )
    .await;
    let by_subject = pki.ca.client("shop-gateway", false);
    register(
        &app,
        &shop.name,
        pb::client_certificate::Match::SubjectCommonName("shop-gateway".into()),
    )
    .await;

    // A registered certificate is its organization, with no API key, and sees only
    // what that organization sees.
    let own = call_as_certificate(port, &ca, &by_fingerprint, &acme.name)
        .await
        .expect("the certificate authenticates as acme");
    assert_eq!(own.slug, "acme");
    let other = call_as_certificate(port, &ca, &by_fingerprint, &shop.name).await;
    assert_eq!(other.unwrap_err().code(), Code::NotFound);
    let shop_seen = call_as_certificate(port, &ca, &by_subject, &shop.name)
        .await
        .expect("a subject registration matches any certificate of that name");
    assert_eq!(shop_seen.slug, "bigshop");

    // Read scope only: a write is refused.
    let channel = tls_channel(port, &ca, Some(&by_fingerprint)).await.unwrap();
    let write = AdminServiceClient::new(channel)
        .create_api_key(new_api_key(&acme.name, &[pb::ApiKeyScope::Read]))
        .await;
    assert_error(write, Code::PermissionDenied, "INSUFFICIENT_SCOPE");

    // Issued by the CA but registered to no one.
    let unknown = pki.ca.client("stranger", false);
    let refused = call_as_certificate(port, &ca, &unknown, &acme.name).await;
    assert_error(refused, Code::Unauthenticated, "UNKNOWN_CERTIFICATE");

    // Expired, or from another CA: the handshake itself is refused, with the alert
    // that names why. Both carry the subject registered to bigshop, so past the
    // handshake they would get in (as `by_subject` does): only the TLS layer's
    // expiry and chain checks keep them out.
    // (The probe itself tells an accepted certificate from a refused one.)
    assert_eq!(handshake_alert(port, &pki.ca, &by_subject).await, None);
    let expired = pki.ca.client("shop-gateway", true);
    assert_eq!(
        handshake_alert(port, &pki.ca, &expired).await,
        Some(AlertDescription::CertificateExpired),
        "an expired certificate must not get in"
    );
    let rogue = Ca::new("Rogue CA").client("shop-gateway", false);
    assert_eq!(
        handshake_alert(port, &pki.ca, &rogue).await,
        Some(AlertDescription::UnknownCA),
        "a certificate of another CA must not get in"
    );

    // Plaintext to the TLS port fails cleanly (no hang, no answer).
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        Ok::<_, BoxError>(())
    })
    .await
    .expect("plaintext fails promptly");
    assert!(plain.is_err(), "plaintext must not be served on a TLS port");

    // The server still serves properly after all that.
    let mut health = HealthClient::new(app.channel.clone());
    health.check(HealthCheckRequest::default()).await.unwrap();

    // Revoked: refused at once on this replica.
    app.operator()
        .revoke_client_certificate(pb::RevokeClientCertificateRequest {
            name: registration,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let refused = call_as_certificate(port, &ca, &by_fingerprint, &acme.name).await;
    assert_error(refused, Code::Unauthenticated, "UNKNOWN_CERTIFICATE");

    // Suspension stops certificates as it stops keys.
    app.operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: shop.name.clone(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = call_as_certificate(port, &ca, &by_subject, &shop.name).await;
    assert_error(refused, Code::Unauthenticated, "ORGANIZATION_SUSPENDED");
}

async fn certificate_registrations_are_validated_and_operator_only(backend: Backend) {
    let pki = pki();
    let app = tls_app(backend, &pki).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let request = |matches: Option<pb::client_certificate::Match>, scopes: Vec<i32>| {
        pb::RegisterClientCertificateRequest {
            parent: acme.name.clone(),
            client_certificate: Some(pb::ClientCertificate {
                r#match: matches,
                scopes,
                ..Default::default()
            }),
            request_id: String::new(),
        }
    };
    let bad = app
        .operator()
        .register_client_certificate(request(
            Some(pb::client_certificate::Match::FingerprintSha256(
                "abc".into(),
            )),
            vec![],
        ))
        .await;
    let status = assert_error(bad, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status),
        [
            "client_certificate.fingerprint_sha256",
            "client_certificate.scopes"
        ]
    );
    let none = app
        .operator()
        .register_client_certificate(request(None, vec![pb::ApiKeyScope::Read as i32]))
        .await;
    let status = assert_error(none, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status),
        ["client_certificate.fingerprint_sha256"]
    );

    let good = || {
        request(
            Some(pb::client_certificate::Match::SubjectCommonName(
                "erp.acme.example".into(),
            )),
            vec![pb::ApiKeyScope::Write as i32],
        )
    };
    // An organization may not register certificates, not even for itself.
    let own = app
        .admin(&acme.admin_key)
        .register_client_certificate(good())
        .await;
    assert_eq!(own.unwrap_err().code(), Code::PermissionDenied);
    let first = app
        .operator()
        .register_client_certificate(good())
        .await
        .unwrap()
        .into_inner();
    let again = app.operator().register_client_certificate(good()).await;
    assert_error(again, Code::AlreadyExists, "CERTIFICATE_TAKEN");

    // The organization's admin lists its registrations; another's sees nothing.
    let listed = app
        .admin(&acme.admin_key)
        .list_client_certificates(pb::ListClientCertificatesRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.client_certificates, vec![first.clone()]);
    let shop = app
        .create_org("bigshop", pb::OrganizationKind::Retailer)
        .await;
    let hidden = app
        .admin(&shop.admin_key)
        .list_client_certificates(pb::ListClientCertificatesRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(hidden.unwrap_err().code(), Code::NotFound);

    // After revocation the subject is free again.
    let revoked = app
        .operator()
        .revoke_client_certificate(pb::RevokeClientCertificateRequest {
            name: first.name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());
    app.operator()
        .register_client_certificate(good())
        .await
        .expect("a revoked registration frees its subject");
    let listed = app
        .operator()
        .list_client_certificates(pb::ListClientCertificatesRequest {
            parent: acme.name.clone(),
            show_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.client_certificates.len(), 2);
}

/// With `tls.require_client_cert`, a connection without a certificate is refused
/// even with a valid API key; and certificates reload on SIGHUP while an open
/// connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("Old CA");
    let server = old_ca.server();
    let cert = write(dir.path(), "server.pem", &server.cert);
    let key = write(dir.path(), "server.key", &server.key);
    let client_ca = write(dir.path(), "ca.pem", &old_ca.pem());
    let url = format!("sqlite://{}", dir.path().join("liaison.db").display());
    let (server_process, addr, mut log) = serve_process(
        &url,
        &[
            ("LIAISON_TLS_CERT", cert.as_str()),
            ("LIAISON_TLS_KEY", key.as_str()),
            ("LIAISON_TLS_CLIENT_CA", client_ca.as_str()),
            ("LIAISON_TLS_REQUIRE_CLIENT_CERT", "true"),
        ],
    )
    .await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    // Required: no certificate, no connection (health needs no key, so only TLS refuses).
    let without = health_over_tls(port, &old_ca.pem(), None).await;
    assert!(without.is_err(), "a client certificate is required");

    let old_client = old_ca.client("any", false);
    let open = tls_channel(port, &old_ca.pem(), Some(&old_client))
        .await
        .expect("connects with the old CA");
    let mut open_health = HealthClient::new(open);
    open_health
        .check(HealthCheckRequest::default())
        .await
        .unwrap();

    // New server certificate and client CA from another authority, then SIGHUP.
    let new_ca = Ca::new("New CA");
    let renewed = new_ca.server();
    write(dir.path(), "server.pem", &renewed.cert);
    write(dir.path(), "server.key", &renewed.key);
    write(dir.path(), "ca.pem", &new_ca.pem());
    let pid = server_process.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("TLS certificates reloaded") {
                return;
            }
        }
        panic!("the hub exited");
    })
    .await
    .expect("reloaded in time");

    // The open connection carries on; new ones see the new certificates.
    open_health
        .check(HealthCheckRequest::default())
        .await
        .expect("the open connection survives the reload");
    let new_client = new_ca.client("any", false);
    health_over_tls(port, &new_ca.pem(), Some(&new_client))
        .await
        .expect("connects with the new CA");
    let stale = health_over_tls(port, &old_ca.pem(), Some(&old_client)).await;
    assert!(
        stale.is_err(),
        "the old server certificate is no longer served"
    );

    // A broken file on the next reload keeps the working certificates.
    write(dir.path(), "server.key", "not a key");
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("TLS reload failed") {
                return;
            }
        }
    })
    .await
    .expect("the failed reload is logged");
    health_over_tls(port, &new_ca.pem(), Some(&new_client))
        .await
        .expect("still serving the last good certificates");
    drop(server_process);
}
