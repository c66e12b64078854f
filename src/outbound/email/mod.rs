//! Email to account coordinators: composes due notifications into emails (rendered
//! from templates, threaded per case or customer), then sends the outbox over SMTP
//! (rustls, pooled connections, a send rate) or writes `.eml` files.

mod headers;
mod wording;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use jiff::{SignedDuration, tz::TimeZone};
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prost::Message as _;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use tracing::Instrument;

use self::headers::{MAX_SUBJECT, header_text, is_message_id, message_id, subject_header};
use self::wording::{
    MemberView, Names, Thread, ThreadView, by_thread, latest, organizations_in, thread_view,
};
use super::Shutdown;

use crate::config::{EmailConfig, SmtpConfig};
use crate::domain::Member;
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::notify::Clock;
use crate::pb::{self, event::Payload};
use crate::store::{EmailOutcome, EmailToSend, NewEmail, PendingNotification, Store, Tx, Worker};

/// Built-in templates; a file of the same name in `email.templates_dir` replaces one.
const TEMPLATES: [(&str, &str); 4] = [
    (
        "notification.txt",
        include_str!("../templates/notification.txt"),
    ),
    (
        "notification.html",
        include_str!("../templates/notification.html"),
    ),
    ("digest.txt", include_str!("../templates/digest.txt")),
    ("digest.html", include_str!("../templates/digest.html")),
];
/// Immediate news waits this long for more of the same thread before it is composed.
const SETTLE: SignedDuration = SignedDuration::from_secs(2);
/// A claimed email belongs to its worker this long.
const LEASE: SignedDuration = SignedDuration::from_secs(120);
/// Emails and threads handled per pass.
const BATCH: usize = 32;

/// Where emails go: an SMTP server, or `.eml` files in a directory.
#[derive(Clone)]
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>, String),
}

/// Why a send failed.
#[derive(Debug)]
pub struct SendError {
    /// The server refused for good (5xx): do not retry.
    pub permanent: bool,
    pub message: String,
}

impl Mailer {
    pub fn from_config(email: &EmailConfig, smtp: &SmtpConfig) -> anyhow::Result<Self> {
        if smtp.url.is_empty() {
            return Ok(Mailer::Files(
                AsyncFileTransport::<Tokio1Executor>::new(&email.outbox_dir),
                email.outbox_dir.clone(),
            ));
        }
        // Every TLS user in the process shares the ring provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp.url)
            .context("smtp.url is not a valid SMTP URL")?
            .pool_config(PoolConfig::new().max_size(smtp.max_connections.max(1)))
            .timeout(Some(Duration::from_secs(30)));
        if !smtp.extra_ca_file.is_empty() {
            builder = builder.tls(tls_with_extra_roots(smtp)?);
        }
        if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.clone(),
            ));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Sends a formatted message; on success says what the server (or disk) said.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<String, SendError> {
        match self {
            Mailer::Smtp(smtp) => match smtp.send_raw(envelope, message).await {
                Ok(response) => Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )),
                Err(e) => Err(SendError {
                    permanent: refuses_for_good(&e),
                    message: describe(&e),
                }),
            },
            Mailer::Files(files, dir) => match async {
                // Made on first use, so a hub that never emails leaves no directory.
                tokio::fs::create_dir_all(dir).await?;
                files
                    .send_raw(envelope, message)
                    .await
                    .map_err(std::io::Error::other)
            }
            .await
            {
                Ok(id) => Ok(format!("written to {dir}/{id}.eml")),
                Err(e) => Err(SendError {
                    permanent: false,
                    message: format!("cannot write the message: {e}"),
                }),
            },
        }
    }
}

/// The TLS mode `smtp.url` asks for, trusting `smtp.extra_ca_file` besides the
/// public web roots.
fn tls_with_extra_roots(smtp: &SmtpConfig) -> anyhow::Result<Tls> {
    let url = reqwest::Url::parse(&smtp.url).context("smtp.url is not a valid SMTP URL")?;
    let host = url.host_str().context("smtp.url names no host")?.to_owned();
    let pem = std::fs::read(&smtp.extra_ca_file)
        .with_context(|| format!("cannot read smtp.extra_ca_file {}", smtp.extra_ca_file))?;
    // lettre reads a file without PEM certificates as none, which would trust nothing
    // extra and fail only at the first send.
    if rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .is_none()
    {
        anyhow::bail!(
            "smtp.extra_ca_file {} holds no certificate",
            smtp.extra_ca_file
        );
    }
    let parameters = TlsParameters::builder(host)
        .add_root_certificate(Certificate::from_pem(&pem).with_context(|| {
            format!(
                "smtp.extra_ca_file {} is not PEM certificates",
                smtp.extra_ca_file
            )
        })?)
        .build_rustls()
        .context("cannot set up TLS for SMTP")?;
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    match (url.scheme(), mode.as_deref()) {
        ("smtps", _) => Ok(Tls::Wrapper(parameters)),
        ("smtp", Some("required")) => Ok(Tls::Required(parameters)),
        ("smtp", Some("opportunistic")) => Ok(Tls::Opportunistic(parameters)),
        _ => anyhow::bail!(
            "smtp.extra_ca_file is set but smtp.url uses no TLS (use smtps:// or ?tls=required)"
        ),
    }
}

/// Whether the server refused the address or the message for good (a bounce). A 5xx
/// about the hub's own login (RFC 4954: 530, 534, 535, 538) is not: the hub's
/// credentials are wrong, not the member's address, so it is retried like a
/// temporary failure and never marks the member.
fn refuses_for_good(e: &lettre::transport::smtp::Error) -> bool {
    use lettre::transport::smtp::response::Category;
    e.is_permanent()
        && e.status()
            .is_none_or(|code| code.category != Category::Unspecified3)
}

/// An SMTP error in words (lettre's Display plus its cause), without credentials.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// The templates, parsed once at start.
pub struct Renderer {
    env: minijinja::Environment<'static>,
}

impl Renderer {
    /// The built-in templates, each replaced by a file of the same name in `dir` if
    /// there is one. A template that does not parse stops the start, naming the file.
    pub fn new(dir: &str) -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        for (name, builtin) in TEMPLATES {
            let source = if dir.is_empty() {
                builtin.to_owned()
            } else {
                let path = Path::new(dir).join(name);
                match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => builtin.to_owned(),
                    Err(e) => return Err(e).with_context(|| format!("cannot read {path:?}")),
                }
            };
            env.add_template_owned(name, source)
                .with_context(|| format!("email template {name} does not parse"))?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, context: &impl Serialize) -> anyhow::Result<String> {
        self.env
            .get_template(name)?
            .render(context)
            .with_context(|| format!("cannot render email template {name}"))
    }
}

/// Sends email, forever.
pub struct EmailWorker {
    store: Store,
    mailer: Mailer,
    renderer: Renderer,
    config: EmailConfig,
    from: Mailbox,
    clock: Clock,
}

impl EmailWorker {
    pub fn new(store: Store, email: &EmailConfig, smtp: &SmtpConfig) -> anyhow::Result<Self> {
        Ok(Self {
            mailer: Mailer::from_config(email, smtp)?,
            renderer: Renderer::new(&email.templates_dir)?,
            from: email.from.parse().context("email.from is not an address")?,
            config: email.clone(),
            clock: store.clock().clone(),
            store,
        })
    }

    fn window(&self) -> SignedDuration {
        SignedDuration::from_secs(self.config.coalesce_secs as i64)
    }

    /// Composes and sends until `shutdown.stop`; an email being sent then may finish
    /// until `shutdown.abort`, which drops it unsent with its lease released.
    pub async fn run(self, shutdown: Shutdown) {
        let signal = self.store.emails_signal().clone();
        let pace = Duration::from_secs_f64(1.0 / self.config.max_per_second.max(1) as f64);
        while !shutdown.stop.is_cancelled() {
            let busy = match self.pass(pace, &shutdown).await {
                Ok(busy) => busy,
                Err(error) => {
                    tracing::warn!(%error, "email pass failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.stop.cancelled() => {}
                    }
                    continue;
                }
            };
            self.store.looked(Worker::Emails, busy);
            if busy {
                continue;
            }
            super::idle_until_stopped(
                &shutdown.stop,
                &signal,
                self.store
                    .next_email_work(self.clock.now(), SETTLE, self.window())
                    .await,
                self.clock.now(),
                Duration::from_millis(10),
            )
            .await;
        }
    }

    /// Composes what is due and sends what is due; true if there was anything.
    async fn pass(&self, pace: Duration, shutdown: &Shutdown) -> Result<bool> {
        let now = self.clock.now();
        let threads = self
            .store
            .due_threads(now, SETTLE, self.window(), BATCH)
            .await?;
        for (member_id, thread) in &threads {
            if let Err(error) = self.compose(member_id, Some(thread)).await {
                tracing::warn!(%error, member = %member_id, thread = %thread, "cannot compose an email");
            }
        }
        let digests = self.store.due_digests(now, BATCH).await?;
        for member_id in &digests {
            if let Err(error) = self.compose(member_id, None).await {
                tracing::warn!(%error, member = %member_id, "cannot compose a digest");
            }
        }
        let claimed = self.store.claim_emails(now, now + LEASE, BATCH).await?;
        for (i, email) in claimed.iter().enumerate() {
            if shutdown.stop.is_cancelled() {
                // Not started: back to the queue for another worker at once.
                self.store.release_emails(&claimed[i..]).await?;
                return Ok(true);
            }
            let span = tracing::info_span!("email", email = %email.id, member = %email.member_id);
            let outcome = tokio::select! {
                outcome = self.send(email).instrument(span) => outcome,
                () = shutdown.abort.cancelled() => {
                    tracing::info!(email = %email.id, "sending cut short by shutdown; lease released");
                    self.store.release_emails(&claimed[i..]).await?;
                    return Ok(true);
                }
            };
            crate::metrics::metrics().smtp_outcome(match &outcome {
                EmailOutcome::Sent => "sent",
                EmailOutcome::Bounced { .. } => "bounced",
                EmailOutcome::Retry { .. } => "retrying",
                EmailOutcome::Dead { .. } => "dead",
            });
            let late = self
                .store
                .record_email(email, &outcome, self.clock.now())
                .await?;
            if late {
                crate::metrics::metrics().late_result("email");
            }
            tokio::select! {
                () = tokio::time::sleep(pace) => {}
                () = shutdown.stop.cancelled() => {}
            }
        }
        Ok(!threads.is_empty() || !digests.is_empty() || !claimed.is_empty())
    }

    async fn send(&self, email: &EmailToSend) -> EmailOutcome {
        let envelope = match email
            .to_address
            .parse()
            .map_err(|e| format!("{e}"))
            .and_then(|to| {
                Envelope::new(Some(self.from.email.clone()), vec![to]).map_err(|e| format!("{e}"))
            }) {
            Ok(e) => e,
            Err(error) => {
                return EmailOutcome::Bounced {
                    error: format!("the address cannot be used: {error}"),
                };
            }
        };
        match self.mailer.send(&envelope, &email.message).await {
            Ok(said) => {
                tracing::info!(outcome = %said, "email sent");
                EmailOutcome::Sent
            }
            Err(e) if e.permanent => {
                tracing::warn!(error = %e.message, "email refused for good; recorded on the member");
                EmailOutcome::Bounced { error: e.message }
            }
            Err(e) => {
                let schedule = &self.config.retry_schedule_secs;
                match schedule.get(email.attempts as usize + 1) {
                    Some(delay) => {
                        tracing::warn!(error = %e.message, "email not sent; retried");
                        EmailOutcome::Retry {
                            at: self.clock.now() + SignedDuration::from_secs(*delay as i64),
                            error: e.message,
                        }
                    }
                    None => EmailOutcome::Dead { error: e.message },
                }
            }
        }
    }

    /// Turns a member's due notifications (one thread, or the digest) into one email.
    async fn compose(&self, member_id: &str, thread: Option<&str>) -> Result<()> {
        let now = self.clock.now();
        let email_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.store.begin().await?;
        let taken = tx
            .take_notifications(member_id, thread, now, &email_id)
            .await?;
        let Some(first) = taken.first() else {
            return Ok(());
        };
        let org_id = first.organization_id.clone();
        let Some(member) = tx.member(&org_id, member_id).await? else {
            // Deleted meanwhile: the notifications stay composed into nothing.
            return tx.commit().await;
        };
        let org = tx.org_ref(&org_id).await?;
        let sequences: Vec<i64> = taken.iter().map(|n| n.sequence).collect();
        let mut bodies = tx.event_bodies(&org_id, &sequences).await?;
        let events: Vec<(PendingNotification, pb::Event)> = taken
            .into_iter()
            .filter_map(|n| {
                // An event pruned meanwhile is left out.
                let event = pb::Event::decode(bodies.remove(&n.sequence)?.as_slice()).ok()?;
                Some((n, event))
            })
            .collect();
        let threads = by_thread(&events);
        let names = names(&mut tx, &org_id, org.slug.as_str(), &threads).await?;
        let tz = TimeZone::get(member.time_zone.as_str()).unwrap_or(TimeZone::UTC);
        let rendered = self.render(&member, &names, &threads, &tz, thread.is_some())?;
        let message_id = message_id(&email_id, self.from.email.domain());
        let mut builder =
            Message::builder()
                .from(self.from.clone())
                .to(Mailbox::new(
                    Some(header_text(member.display_name.as_str(), 100)),
                    member.email.as_str().parse().map_err(|e| {
                        crate::domain::error::Error::Internal(anyhow::anyhow!("{e}"))
                    })?,
                ))
                .raw_header(subject_header(&rendered.subject))
                .message_id(Some(message_id.clone()))
                .date(now.into());
        if let Some(thread) = thread {
            // Every email of a thread replies to its first one, so mail clients show
            // one conversation per case or customer. Only ids this worker made are
            // stored, but one that is not a message id never reaches a header.
            let root = match tx.thread_root(member_id, thread).await? {
                Some(root) if is_message_id(&root) => {
                    builder = builder.in_reply_to(root.clone()).references(root.clone());
                    root
                }
                _ => message_id.clone(),
            };
            tx.touch_thread(member_id, thread, &root, now).await?;
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|e| crate::domain::error::Error::Internal(anyhow::anyhow!("{e}")))?;
        tx.insert_email(
            &NewEmail {
                id: &email_id,
                organization_id: &org_id,
                member_id,
                to_address: member.email.as_str(),
                message_id: &message_id,
                kind: if thread.is_some() {
                    "immediate"
                } else {
                    "digest"
                },
                subject: &rendered.subject,
                message: &message.formatted(),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(member = %member_id, events = events.len(), email = %email_id, "email composed");
        Ok(())
    }

    fn render(
        &self,
        member: &Member,
        names: &Names,
        threads: &[Thread<'_>],
        tz: &TimeZone,
        immediate: bool,
    ) -> Result<Rendered> {
        let threads: Vec<ThreadView> = threads.iter().map(|t| thread_view(t, names, tz)).collect();
        let count: usize = threads.iter().map(|t| t.events.len()).sum();
        let member_view = MemberView {
            display_name: member.display_name.as_str().to_owned(),
            email: member.email.as_str().to_owned(),
        };
        let organization = names.organization(&names.own);
        let internal = |e: anyhow::Error| crate::domain::error::Error::Internal(e);
        match (immediate, threads.first()) {
            (true, Some(t)) => {
                let context = minijinja::context! {
                    member => member_view,
                    organization => organization,
                    thread => t,
                    events => &t.events,
                };
                let subject = match t.events.as_slice() {
                    [one] => format!("[Liaison] {}: {}", t.title, one.summary),
                    many => format!("[Liaison] {}: {} updates", t.title, many.len()),
                };
                Ok(Rendered {
                    subject: header_text(&subject, MAX_SUBJECT),
                    text: self
                        .renderer
                        .render("notification.txt", &context)
                        .map_err(internal)?,
                    html: self
                        .renderer
                        .render("notification.html", &context)
                        .map_err(internal)?,
                })
            }
            _ => {
                let date = self.clock.now().to_zoned(tz.clone()).date().to_string();
                let context = minijinja::context! {
                    member => member_view,
                    organization => organization,
                    date => date,
                    count => count,
                    threads => threads,
                };
                let subject = format!("[Liaison] Your digest for {date}: {count} updates");
                Ok(Rendered {
                    subject: header_text(&subject, MAX_SUBJECT),
                    text: self
                        .renderer
                        .render("digest.txt", &context)
                        .map_err(internal)?,
                    html: self
                        .renderer
                        .render("digest.html", &context)
                        .map_err(internal)?,
                })
            }
        }
    }
}

/// Reads what the email will call things, once for the whole email: the names the
/// events of `threads` do not carry themselves. `organization_id` (`slug`) is the
/// member's organization, whose view of customers and case history counts.
async fn names(
    tx: &mut Tx,
    organization_id: &str,
    slug: &str,
    threads: &[Thread<'_>],
) -> Result<Names> {
    let mut names = Names {
        own: format!("organizations/{slug}"),
        ..Default::default()
    };
    let events = || threads.iter().flat_map(|t| t.events.iter().copied());
    // Cases no event here carries (only their tasks): title and customer.
    let cases: Vec<String> = threads
        .iter()
        .filter(|t| {
            latest(&t.events, |p| match p {
                Payload::Case(c) => Some(c),
                _ => None,
            })
            .is_none()
        })
        .filter_map(|t| t.key.strip_prefix("cases/").map(str::to_owned))
        .collect();
    if !cases.is_empty() {
        names.cases = tx.case_headings(organization_id, &cases).await?;
    }
    // Customers no event here shows, as this organization may see them.
    let mut customers: Vec<String> = threads
        .iter()
        .filter(|t| {
            latest(&t.events, |p| match p {
                Payload::Customer(c) => Some(c),
                _ => None,
            })
            .is_none()
        })
        .filter_map(|t| t.key.strip_prefix("customers/").map(str::to_owned))
        .collect();
    customers.extend(names.cases.values().map(|(_, customer)| customer.clone()));
    customers.extend(events().filter_map(|e| match &e.payload {
        Some(Payload::AccessRequest(r)) => r.customer.strip_prefix("customers/").map(str::to_owned),
        _ => None,
    }));
    customers.sort();
    customers.dedup();
    if !customers.is_empty() {
        names.customers = tx.customer_views(organization_id, &customers).await?;
    }
    let mut slugs: Vec<String> = events()
        .flat_map(organizations_in)
        .chain([names.own.as_str()])
        .filter_map(|o| o.strip_prefix("organizations/").map(str::to_owned))
        .collect();
    slugs.sort();
    slugs.dedup();
    names.organizations = tx.organization_names(&slugs).await?;
    let transitions: Vec<(String, String, String)> = events()
        .filter(|e| e.r#type == EventType::CaseTransitioned.as_str())
        .filter_map(|e| match &e.payload {
            Some(Payload::Case(c)) => Some((
                c.name.strip_prefix("cases/")?.to_owned(),
                e.id.clone(),
                c.state.clone(),
            )),
            _ => None,
        })
        .collect();
    if !transitions.is_empty() {
        names.comments = tx
            .transition_comments(organization_id, &transitions)
            .await?;
    }
    Ok(names)
}

struct Rendered {
    subject: String,
    text: String,
    html: String,
}

/// `liaison email test`: one message through the configured transport.
pub async fn send_test(email: &EmailConfig, smtp: &SmtpConfig, to: &str) -> anyhow::Result<String> {
    let mailer = Mailer::from_config(email, smtp)?;
    let from: Mailbox = email.from.parse().context("email.from is not an address")?;
    let to: Mailbox = to.parse().context("--to is not an email address")?;
    let message = Message::builder()
        .from(from.clone())
        .to(to.clone())
        .subject("[Liaison] Test message")
        .multipart(MultiPart::alternative_plain_html(
            "This is a test message from Liaison. Email works.".to_owned(),
            "<p>This is a test message from Liaison. Email works.</p>".to_owned(),
        ))
        .context("cannot build the test message")?;
    let envelope = Envelope::new(Some(from.email), vec![to.email]).context("envelope")?;
    mailer
        .send(&envelope, &message.formatted())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{} failure: {}",
                if e.permanent {
                    "permanent"
                } else {
                    "temporary"
                },
                e.message
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_parse() {
        Renderer::new("").expect("built-in templates parse");
    }
}
