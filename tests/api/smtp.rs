//! The hub's SMTP transport against a real SMTP server written here: plain, STARTTLS
//! or implicit TLS (tokio-rustls, certificates from a test CA), with AUTH PLAIN and
//! LOGIN, recording every transaction whatever its reply. Tested here: TLS with
//! `smtp.extra_ca_file`, credentials, the connection pool, the send rate, and the
//! settings the hub refuses to start with. The email tests use the same server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::SignedDuration;
use liaison::pb;
use liaison::startup::Application;
use mail_parser::MessageParser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::customers::{create, person};
use crate::email::{follow, member};
use crate::helpers::*;
use crate::sharing::update;
use crate::tls::{Ca, Leaf, write};

/// What the server answers, where a test wants something else than "250 ok".
#[derive(Default)]
pub(crate) struct Script {
    /// Replies to the next DATA ends, before falling back to 250.
    pub(crate) data_replies: Vec<&'static str>,
    /// Recipients refused at RCPT with this reply.
    pub(crate) refuse: HashMap<String, &'static str>,
    /// How long the server waits before its reply to the end of DATA.
    pub(crate) data_delay: Duration,
    /// The one login AUTH accepts; without one, AUTH is not offered and MAIL needs
    /// no login.
    pub(crate) login: Option<Login>,
}

pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
    /// The mechanisms the EHLO reply offers, e.g. "PLAIN LOGIN".
    pub(crate) mechanisms: &'static str,
}

/// How the server's connections are secured.
pub(crate) enum Security {
    Plain,
    /// Plain until the client asks for STARTTLS, which the EHLO reply offers.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (`smtps://`).
    Implicit(TlsAcceptor),
}

/// One DATA transaction as the server saw it, whatever it replied.
#[derive(Clone, Debug)]
pub(crate) struct Mail {
    /// The envelope recipient.
    pub(crate) to: String,
    /// The message as sent, dot-unstuffed.
    pub(crate) raw: Vec<u8>,
    /// The code the server answered the end of DATA with.
    pub(crate) reply: u16,
    /// Whether the connection was encrypted when DATA came.
    pub(crate) tls: bool,
    /// Who had logged in on the connection.
    pub(crate) user: Option<String>,
    /// Which connection it came over, counting from 1 in order of acceptance.
    pub(crate) connection: usize,
    pub(crate) at: Instant,
}

impl Mail {
    pub(crate) fn parsed(&self) -> mail_parser::Message<'_> {
        MessageParser::default().parse(&self.raw).expect("MIME")
    }
}

/// One AUTH exchange: the mechanism, the user and password the client sent, and
/// whether the server accepted them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AuthAttempt {
    pub(crate) mechanism: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) accepted: bool,
}

/// An SMTP server on 127.0.0.1 (RFC 5321 with STARTTLS and AUTH PLAIN/LOGIN).
#[derive(Clone)]
pub(crate) struct SmtpServer {
    /// The `smtp.url` that reaches it.
    pub(crate) url: String,
    transactions: Arc<Mutex<Vec<Mail>>>,
    /// Every RCPT refusal and DATA outcome, in order: `(recipient, reply code)`.
    attempts: Arc<Mutex<Vec<(String, u16)>>>,
    logins: Arc<Mutex<Vec<AuthAttempt>>>,
    /// Why each failed TLS handshake failed, as the server saw it.
    tls_failures: Arc<Mutex<Vec<String>>>,
    pub(crate) script: Arc<Mutex<Script>>,
    connections: Arc<AtomicUsize>,
    data_started: Arc<AtomicUsize>,
}

impl SmtpServer {
    /// A plaintext server, reached at `smtp://127.0.0.1:PORT`.
    pub(crate) async fn start(script: Script) -> Self {
        Self::serve(Security::Plain, script).await
    }

    pub(crate) async fn serve(security: Security, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The TLS URLs name `localhost`, the name the server certificate is for.
        let url = match security {
            Security::Plain => format!("smtp://127.0.0.1:{port}"),
            Security::StartTls(_) => format!("smtp://localhost:{port}?tls=required"),
            Security::Implicit(_) => format!("smtps://localhost:{port}"),
        };
        let server = SmtpServer {
            url,
            transactions: Arc::default(),
            attempts: Arc::default(),
            logins: Arc::default(),
            tls_failures: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            connections: Arc::default(),
            data_started: Arc::default(),
        };
        let this = server.clone();
        let security = Arc::new(security);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (this, security) = (this.clone(), security.clone());
                let connection = this.connections.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    match &*security {
                        Security::Plain => {
                            this.converse(socket, connection, false, false, true).await;
                        }
                        Security::Implicit(tls) => match tls.accept(socket).await {
                            Ok(stream) => {
                                this.converse(stream, connection, true, false, true).await;
                            }
                            Err(e) => this.tls_failures.lock().unwrap().push(e.to_string()),
                        },
                        Security::StartTls(tls) => {
                            let asked = this.converse(socket, connection, false, true, true).await;
                            if let Some(socket) = asked {
                                match tls.accept(socket).await {
                                    // RFC 3207: the client starts over with EHLO, unGreeted.
                                    Ok(stream) => {
                                        this.converse(stream, connection, true, false, false).await;
                                    }
                                    Err(e) => this.tls_failures.lock().unwrap().push(e.to_string()),
                                }
                            }
                        }
                    }
                });
            }
        });
        server
    }

    /// One SMTP conversation over `stream`, until QUIT or the end of the stream; if
    /// the client asks for STARTTLS (offered when `starttls`), returns the stream to
    /// be upgraded.
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        connection: usize,
        tls: bool,
        starttls: bool,
        greet: bool,
    ) -> Option<S> {
        let mut io = BufReader::new(stream);
        if greet {
            say(&mut io, "220 test.example ESMTP").await?;
        }
        let mut to = String::new();
        let mut user: Option<String> = None;
        loop {
            let line = hear(&mut io).await?;
            let upper = line.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                let mut offers = vec!["test.example".to_owned()];
                if starttls {
                    offers.push("STARTTLS".into());
                }
                if let Some(login) = &self.script.lock().unwrap().login {
                    offers.push(format!("AUTH {}", login.mechanisms));
                }
                let last = offers.len() - 1;
                offers
                    .iter()
                    .enumerate()
                    .map(|(i, o)| format!("250{}{o}", if i == last { ' ' } else { '-' }))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            } else if upper.starts_with("HELO") {
                "250 test.example".into()
            } else if upper.starts_with("STARTTLS") && starttls {
                say(&mut io, "220 2.0.0 ready to start TLS").await?;
                return Some(io.into_inner());
            } else if upper.starts_with("AUTH ") {
                let (mechanism, name, password) = read_login(&mut io, &line).await?;
                let accepted = self.script.lock().unwrap().login.as_ref().is_some_and(|l| {
                    l.mechanisms.contains(mechanism.as_str())
                        && l.user == name
                        && l.password == password
                });
                self.logins.lock().unwrap().push(AuthAttempt {
                    mechanism,
                    user: name.clone(),
                    password,
                    accepted,
                });
                if accepted {
                    user = Some(name);
                    "235 2.7.0 authentication successful".into()
                } else {
                    "535 5.7.8 authentication credentials invalid".into()
                }
            } else if upper.starts_with("MAIL FROM:") {
                let needs_login = self.script.lock().unwrap().login.is_some();
                if needs_login && user.is_none() {
                    "530 5.7.0 authentication required".into()
                } else {
                    "250 ok".into()
                }
            } else if upper.starts_with("RCPT TO:") {
                to = line[8..]
                    .trim()
                    .trim_matches(|c| c == '<' || c == '>')
                    .to_owned();
                let refused = self.script.lock().unwrap().refuse.get(&to).copied();
                match refused {
                    Some(r) => {
                        self.attempts
                            .lock()
                            .unwrap()
                            .push((to.clone(), r[..3].parse().unwrap()));
                        r.into()
                    }
                    None => "250 ok".into(),
                }
            } else if upper.starts_with("DATA") {
                self.data_started.fetch_add(1, Ordering::SeqCst);
                say(&mut io, "354 go ahead").await?;
                let mut raw = vec![];
                loop {
                    let l = hear(&mut io).await?;
                    if l == ".\r\n" {
                        break;
                    }
                    raw.extend_from_slice(l.strip_prefix('.').unwrap_or(&l).as_bytes());
                }
                let (scripted, delay) = {
                    let mut s = self.script.lock().unwrap();
                    let reply = (!s.data_replies.is_empty()).then(|| s.data_replies.remove(0));
                    (reply, s.data_delay)
                };
                tokio::time::sleep(delay).await;
                let reply = scripted.unwrap_or("250 2.0.0 queued");
                let code: u16 = reply[..3].parse().unwrap();
                self.attempts.lock().unwrap().push((to.clone(), code));
                self.transactions.lock().unwrap().push(Mail {
                    to: to.clone(),
                    raw,
                    reply: code,
                    tls,
                    user: user.clone(),
                    connection,
                    at: Instant::now(),
                });
                reply.into()
            } else if upper.starts_with("QUIT") {
                let _ = say(&mut io, "221 bye").await;
                return None;
            } else {
                // RSET, NOOP.
                "250 ok".into()
            };
            say(&mut io, &reply).await?;
        }
    }

    /// The messages the server accepted (2xx at the end of DATA), in order.
    pub(crate) fn mail(&self) -> Vec<Mail> {
        self.transactions()
            .into_iter()
            .filter(|m| (200..300).contains(&m.reply))
            .collect()
    }

    /// Every DATA transaction, accepted or not, in order.
    pub(crate) fn transactions(&self) -> Vec<Mail> {
        self.transactions.lock().unwrap().clone()
    }

    /// Every RCPT refusal and DATA outcome, in order: `(recipient, reply code)`.
    pub(crate) fn attempts(&self) -> Vec<(String, u16)> {
        self.attempts.lock().unwrap().clone()
    }

    pub(crate) fn logins(&self) -> Vec<AuthAttempt> {
        self.logins.lock().unwrap().clone()
    }

    pub(crate) fn tls_failures(&self) -> Vec<String> {
        self.tls_failures.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Messages whose DATA has begun.
    pub(crate) fn data_started(&self) -> usize {
        self.data_started.load(Ordering::SeqCst)
    }

    /// Waits (15 s at most) until `n` messages have been accepted.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let got = self.mail();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} emails, got {}", self.mail().len());
    }

    /// Waits (15 s at most) until `check` holds of the server.
    pub(crate) async fn wait_until(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Sends one reply (without its line end).
async fn say<S: AsyncWrite + Unpin>(io: &mut S, reply: &str) -> Option<()> {
    io.write_all(format!("{reply}\r\n").as_bytes()).await.ok()
}

/// Reads one line with its line end; `None` at the end of the stream.
async fn hear<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<String> {
    let mut line = String::new();
    match io.read_line(&mut line).await {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

fn decode(text: &str) -> String {
    String::from_utf8(BASE64.decode(text.trim()).unwrap_or_default()).unwrap_or_default()
}

/// Reads the rest of an AUTH exchange that began with `line`: the mechanism, user and
/// password (RFC 4616 PLAIN, with or without an initial response; LOGIN).
async fn read_login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    line: &str,
) -> Option<(String, String, String)> {
    let mut words = line.split_whitespace().skip(1);
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next().map(str::to_owned);
    match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) => r,
                None => {
                    say(io, "334 ").await?;
                    hear(io).await?
                }
            };
            let decoded = decode(&response);
            let mut parts = decoded.split('\0').skip(1);
            let user = parts.next().unwrap_or_default().to_owned();
            let password = parts.next().unwrap_or_default().to_owned();
            Some((mechanism, user, password))
        }
        "LOGIN" => {
            let user = match initial {
                Some(u) => decode(&u),
                None => {
                    say(io, &format!("334 {}", BASE64.encode("Username:"))).await?;
                    decode(&hear(io).await?)
                }
            };
            say(io, &format!("334 {}", BASE64.encode("Password:"))).await?;
            let password = decode(&hear(io).await?);
            Some((mechanism, user, password))
        }
        _ => Some((mechanism, String::new(), String::new())),
    }
}

/// A TLS acceptor presenting `leaf`.
pub(crate) fn acceptor(leaf: &Leaf) -> TlsAcceptor {
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(leaf.der.clone())], key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// The hub's email settings for `server`: its URL, a sender, and retries one second
/// apart.
pub(crate) fn sending_to(server: &SmtpServer) -> impl FnOnce(&mut liaison::config::Config) {
    let url = server.url.clone();
    move |c| {
        c.smtp.url = url;
        c.email.from = "Liaison Hub <hub@liaison.example>".into();
        c.email.retry_schedule_secs = vec![0, 1, 1];
    }
}

/// A vendor whose `n` members follow a customer, and one change to that customer:
/// an email for each member, composed at once (the clock passes the settling time).
/// Returns the vendor and the members.
async fn news_for(app: &TestApp, n: usize) -> (Org, Vec<pb::Member>) {
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let ada = create(app, &vendor, person("Ada", "Lovelace", "")).await;
    let mut members = vec![];
    for i in 1..=n {
        let m = member(
            app,
            &vendor,
            &format!("M{i}"),
            &format!("m{i}@vendor.example"),
            "UTC",
        )
        .await;
        follow(app, &vendor, &m, &[&ada.name]).await;
        members.push(m);
    }
    let mut renamed = ada.clone();
    renamed.etag.clear();
    renamed.given_name = "Augusta".into();
    update(app, &vendor.admin_key, renamed, &["given_name"])
        .await
        .unwrap();
    app.advance(SignedDuration::from_secs(3));
    (vendor, members)
}

/// The hub's outbox as stored: `(to, state, attempts, last error)` of each email.
/// (These tests run on SQLite only: they are about the SMTP conversation, which is the
/// same whatever the database.)
async fn outbox(app: &TestApp) -> Vec<(String, String, i64, String)> {
    let mut conn = sqlx::SqliteConnection::connect(&app.config.database.url)
        .await
        .unwrap();
    sqlx::query_as("SELECT to_address, state, attempts, last_error FROM emails ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Polls the outbox (15 s at most) until `check` picks something out of it.
async fn outbox_until<T>(
    app: &TestApp,
    what: &str,
    check: impl Fn(&[(String, String, i64, String)]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = check(&outbox(app).await) {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A test CA, a server certificate for localhost from it, and the CA written to a
/// PEM file in `dir`.
fn private_pki(dir: &tempfile::TempDir, name: &str) -> (Leaf, String) {
    let ca = Ca::new(name);
    let file = write(dir.path(), &format!("{name}.pem"), &ca.pem());
    (ca.server(), file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_the_extra_ca_delivers_over_the_upgraded_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, ca_file) = private_pki(&dir, "mail-ca");
    let server = SmtpServer::serve(Security::StartTls(acceptor(&cert)), Script::default()).await;
    let app = spawn_app_with(Backend::Sqlite, |c| {
        sending_to(&server)(c);
        c.smtp.extra_ca_file = ca_file;
    })
    .await;
    news_for(&app, 1).await;
    let got = server.wait_for(1).await;
    assert_eq!(got[0].to, "m1@vendor.example");
    assert!(got[0].tls, "DATA came after the upgrade");
    assert!(
        got[0]
            .parsed()
            .subject()
            .unwrap()
            .contains("Augusta Lovelace")
    );
    assert_eq!(server.tls_failures(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_the_extra_ca_delivers_and_logs_in_with_login() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, ca_file) = private_pki(&dir, "mail-ca");
    // This server offers LOGIN only, so the hub cannot fall back on PLAIN.
    let server = SmtpServer::serve(
        Security::Implicit(acceptor(&cert)),
        Script {
            login: Some(Login {
                user: "hub".into(),
                password: "s3cret".into(),
                mechanisms: "LOGIN",
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(server.url.starts_with("smtps://localhost:"));
    let app = spawn_app_with(Backend::Sqlite, |c| {
        sending_to(&server)(c);
        c.smtp.extra_ca_file = ca_file;
        c.smtp.username = "hub".into();
        c.smtp.password = "s3cret".into();
    })
    .await;
    news_for(&app, 1).await;
    let got = server.wait_for(1).await;
    assert!(got[0].tls);
    assert_eq!(got[0].user.as_deref(), Some("hub"));
    assert_eq!(
        server.logins(),
        [AuthAttempt {
            mechanism: "LOGIN".into(),
            user: "hub".into(),
            password: "s3cret".into(),
            accepted: true,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_never_trusted_and_the_email_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ours) = private_pki(&dir, "our-ca");
    let (theirs, _) = private_pki(&dir, "their-ca");
    let server = SmtpServer::serve(Security::Implicit(acceptor(&theirs)), Script::default()).await;
    let app = spawn_app_with(Backend::Sqlite, |c| {
        sending_to(&server)(c);
        c.smtp.extra_ca_file = ours;
    })
    .await;
    let (vendor, members) = news_for(&app, 1).await;
    // The first attempt fails in the handshake...
    let (state, error) = outbox_until(&app, "a failed attempt", |emails| {
        emails
            .iter()
            .find(|e| e.2 >= 1)
            .map(|e| (e.1.clone(), e.3.clone()))
    })
    .await;
    assert_eq!(state, "pending", "a certificate problem is retried");
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "the recorded error names the certificate problem: {error}"
    );
    // ...and so does the retry, a second later by the schedule.
    server
        .wait_until("the retry's handshake", |s| s.tls_failures().len() >= 2)
        .await;
    assert!(server.transactions().is_empty(), "nothing was sent");
    assert!(
        server.tls_failures()[0].contains("UnknownCA"),
        "{:?}",
        server.tls_failures()
    );
    // Not the member's address's fault: no bounce on the member.
    let m = app
        .members(&vendor.read_key)
        .get_member(pb::GetMemberRequest {
            name: members[0].name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.email_bounce.as_str(), m.email_bounce_time), ("", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_retried_not_bounced_and_delivers_once_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, ca_file) = private_pki(&dir, "mail-ca");
    let server = SmtpServer::serve(
        Security::StartTls(acceptor(&cert)),
        Script {
            login: Some(Login {
                user: "hub".into(),
                password: "new-password".into(),
                mechanisms: "PLAIN LOGIN",
            }),
            ..Default::default()
        },
    )
    .await;
    let app = spawn_app_with(Backend::Sqlite, |c| {
        sending_to(&server)(c);
        c.smtp.extra_ca_file = ca_file;
        c.smtp.username = "hub".into();
        c.smtp.password = "old-password".into();
        // The retry waits a minute, which the test moves the clock past.
        c.email.retry_schedule_secs = vec![0, 60, 60];
    })
    .await;
    let (vendor, members) = news_for(&app, 1).await;
    let (state, attempts, error) = outbox_until(&app, "a failed attempt", |emails| {
        emails
            .iter()
            .find(|e| e.2 >= 1)
            .map(|e| (e.1.clone(), e.2, e.3.clone()))
    })
    .await;
    // The hub sent its credentials (PLAIN, offered first) over TLS; the server said 535.
    assert_eq!(
        server.logins(),
        [AuthAttempt {
            mechanism: "PLAIN".into(),
            user: "hub".into(),
            password: "old-password".into(),
            accepted: false,
        }]
    );
    // A refused login is the hub's own configuration, not the member's address: the
    // email waits for its retry and the member is not marked bounced.
    assert_eq!((state.as_str(), attempts), ("pending", 1), "{error}");
    assert!(error.contains("535"), "{error}");
    let m = app
        .members(&vendor.read_key)
        .get_member(pb::GetMemberRequest {
            name: members[0].name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.email_bounce.as_str(), m.email_bounce_time), ("", None));
    app.settle().await;
    assert!(server.transactions().is_empty());
    // The server now takes the hub's password (as after the operator fixed one side):
    // the retry logs in and the email arrives.
    server
        .script
        .lock()
        .unwrap()
        .login
        .as_mut()
        .unwrap()
        .password = "old-password".into();
    app.advance(SignedDuration::from_secs(61));
    let got = server.wait_for(1).await;
    assert_eq!(got[0].user.as_deref(), Some("hub"));
    assert!(got[0].tls);
    assert_eq!(server.logins().len(), 2);
    app.settle().await;
    assert_eq!(outbox(&app).await[0].1, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_share_one_pooled_connection_at_the_configured_pace() {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(Backend::Sqlite, |c| {
        sending_to(&server)(c);
        c.smtp.max_connections = 1;
        c.email.max_per_second = 2;
    })
    .await;
    let n = 5;
    news_for(&app, n).await;
    let got = server.wait_for(n).await;
    app.settle().await;
    assert_eq!(server.mail().len(), n);
    // One connection, kept open and reused for every message.
    assert_eq!(server.connections(), 1);
    assert!(got.iter().all(|m| m.connection == 1), "{got:?}");
    // Two a second: n messages span at least (n - 1) / 2 seconds. Only the lower
    // bound is checked; speed is for the benchmarks.
    let span = got[n - 1].at.duration_since(got[0].at);
    assert!(
        span >= Duration::from_millis((n as u64 - 1) * 500),
        "{n} emails in {span:?}"
    );
}

/// What happens to a hub configured with `url` and `extra_ca_file`: the error it
/// refuses to start with (while building, before it serves anything).
async fn start_with(url: &str, extra_ca_file: &str) -> String {
    let (_database, database_url) = TestDatabase::create(&Backend::Sqlite).await;
    let mut config = test_config(database_url);
    config.smtp.url = url.into();
    config.smtp.extra_ca_file = extra_ca_file.into();
    match Application::build(config).await {
        Err(error) => format!("{error:#}"),
        Ok(_) => panic!("the hub starts with smtp.url {url} and extra_ca_file {extra_ca_file}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_cas_need_a_tls_url_and_a_readable_file_or_the_hub_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca_file) = private_pki(&dir, "mail-ca");
    let error = start_with("smtp://localhost:2525", &ca_file).await;
    assert!(
        error.contains("smtp.extra_ca_file is set but smtp.url uses no TLS"),
        "{error}"
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    let error = start_with("smtps://localhost:4650", &missing).await;
    assert!(
        error.contains(&format!("cannot read smtp.extra_ca_file {missing}")),
        "{error}"
    );
    let empty = write(dir.path(), "empty.pem", "not a certificate\n");
    let error = start_with("smtp://localhost:2525?tls=required", &empty).await;
    assert!(
        error.contains(&format!("smtp.extra_ca_file {empty} holds no certificate")),
        "{error}"
    );
    // As an operator sees it: `liaison serve` exits with the setting named.
    let (_database, database_url) = TestDatabase::create(&Backend::Sqlite).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database_url,
        ])
        .env("LIAISON_SMTP_URL", "smtp://localhost:2525")
        .env("LIAISON_SMTP_EXTRA_CA_FILE", &ca_file)
        .env("LIAISON_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("`liaison serve` exits of itself")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("smtp.extra_ca_file"), "{stderr}");
}
