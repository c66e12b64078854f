//! Email to account coordinators: composes due notifications into emails (rendered
//! from templates, threaded per case or customer), then sends the outbox over SMTP
//! (rustls, pooled connections, a send rate) or writes `.eml` files.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prost::Message as _;
use serde::Serialize;
use tracing::Instrument;

use super::Shutdown;

use crate::config::{EmailConfig, SmtpConfig};
use crate::domain::Member;
use crate::domain::notify::Clock;
use crate::domain::visibility::CustomerView;
use crate::error::Result;
use crate::pb::{self, event::Payload};
use crate::store::{EmailOutcome, EmailToSend, NewEmail, PendingNotification, Store, Tx};

/// Built-in templates; a file of the same name in `email.templates_dir` replaces one.
const TEMPLATES: [(&str, &str); 4] = [
    (
        "notification.txt",
        include_str!("templates/notification.txt"),
    ),
    (
        "notification.html",
        include_str!("templates/notification.html"),
    ),
    ("digest.txt", include_str!("templates/digest.txt")),
    ("digest.html", include_str!("templates/digest.html")),
];
/// Immediate news waits this long for more of the same thread before it is composed.
const SETTLE: SignedDuration = SignedDuration::from_secs(2);
/// A claimed email belongs to its worker this long.
const LEASE: SignedDuration = SignedDuration::from_secs(120);
/// Emails and threads handled per pass.
const BATCH: usize = 32;
/// Longest subject, in characters.
const MAX_SUBJECT: usize = 180;

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
                    permanent: e.is_permanent(),
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

/// What an email calls a customer whose name the member's organization may not see.
const UNNAMED_CUSTOMER: &str = "a shared customer";
/// UTF-8 bytes per RFC 2047 encoded word: 52 base64 characters make a 64-character
/// word, so even the first line (`Subject: ` and one word) stays within the 76
/// characters RFC 2047 allows a line with encoded words.
const ENCODED_WORD_BYTES: usize = 39;

#[derive(Debug, Serialize)]
struct Detail {
    label: &'static str,
    value: String,
}

impl Detail {
    fn new(label: &'static str, value: impl Into<String>) -> Self {
        Self {
            label,
            value: value.into(),
        }
    }
}

/// An event as an email shows it: only what the member's organization may see (the
/// event is read from that organization's own feed), in words.
#[derive(Debug, Serialize)]
struct EventView {
    time: String,
    summary: String,
    /// Who acted, by display name, when `summary` does not already say; else empty.
    actor: String,
    details: Vec<Detail>,
}

#[derive(Debug, Serialize)]
struct ThreadView {
    /// The customer's name, `Case: <title>`, `Partnership with <organization>`, …
    title: String,
    /// The resource name, as a reference next to the title.
    resource: String,
    /// What else the thread is about (a case's customer).
    references: Vec<Detail>,
    events: Vec<EventView>,
}

#[derive(Serialize)]
struct MemberView {
    display_name: String,
    email: String,
}

/// The events of one thread (a case, a customer, …) in one email, oldest first.
struct Thread<'a> {
    key: &'a str,
    events: Vec<&'a pb::Event>,
}

/// Groups `events` (oldest first) by thread, threads in order of their first event.
fn by_thread<'a>(events: &'a [(PendingNotification, pb::Event)]) -> Vec<Thread<'a>> {
    let mut threads: Vec<Thread<'a>> = vec![];
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (n, event) in events {
        let i = *index.entry(n.thread_key.as_str()).or_insert_with(|| {
            threads.push(Thread {
                key: &n.thread_key,
                events: vec![],
            });
            threads.len() - 1
        });
        threads[i].events.push(event);
    }
    threads
}

/// What an email calls the things its events give only resource names for, read
/// once per email: organizations by display name, customers as the member's
/// organization may see them, cases by title, and the comment given with each
/// transition.
#[derive(Debug, Default)]
struct Names {
    /// The member's organization, `organizations/{slug}`.
    own: String,
    /// Display names by slug.
    organizations: HashMap<String, String>,
    /// Customers as the member's organization may see them (the visibility
    /// function's view), by id; those it may not see are absent.
    customers: HashMap<String, CustomerView>,
    /// Title and customer id of the cases no event of the email carries, by case id.
    cases: HashMap<String, (String, String)>,
    /// The comment given with a transition, by the id of its `case.transitioned` event.
    comments: HashMap<String, String>,
}

impl Names {
    /// An organization (`organizations/{slug}`) by its display name.
    fn organization(&self, resource: &str) -> String {
        resource
            .strip_prefix("organizations/")
            .and_then(|slug| self.organizations.get(slug))
            .cloned()
            .unwrap_or_else(|| resource.to_owned())
    }

    /// A customer by id, by the name the member's organization may see; `None` if it
    /// may not see one.
    fn customer(&self, id: &str) -> Option<String> {
        let view = self.customers.get(id)?;
        customer_name(
            view.display_name.as_deref().unwrap_or_default(),
            &view.profile.legal_name,
            &view.profile.given_name,
            &view.profile.family_name,
        )
    }
}

/// A customer's name from the fields a view shows: its display name, else its legal
/// name, else given and family name; `None` when the view shows none of them.
fn customer_name(display: &str, legal: &str, given: &str, family: &str) -> Option<String> {
    let name = if !display.is_empty() {
        display.to_owned()
    } else if !legal.is_empty() {
        legal.to_owned()
    } else {
        format!("{given} {family}").trim().to_owned()
    };
    (!name.is_empty()).then_some(name)
}

fn pb_customer_name(c: &pb::Customer) -> Option<String> {
    customer_name(
        &c.display_name,
        &c.legal_name,
        &c.given_name,
        &c.family_name,
    )
}

/// The organizations an event names, as `organizations/{slug}`.
fn organizations_in(event: &pb::Event) -> Vec<&str> {
    let mut named = vec![];
    if let Some(actor) = &event.actor {
        named.push(actor.organization.as_str());
    }
    match &event.payload {
        Some(Payload::Task(t)) => named.extend([t.assignee.as_str(), t.assigned_by.as_str()]),
        Some(Payload::Partnership(p)) => named.extend([
            p.proposer.as_str(),
            p.recipient.as_str(),
            p.state_changed_by.as_str(),
        ]),
        Some(Payload::Interaction(i)) => named.push(&i.organization),
        Some(Payload::Case(c)) => named.push(&c.opened_by),
        Some(Payload::CaseHistoryEntry(h)) => named.push(&h.organization),
        Some(Payload::AccessRequest(r)) => named.extend([r.requester.as_str(), r.owner.as_str()]),
        _ => {}
    }
    named.retain(|o| o.starts_with("organizations/"));
    named
}

/// The newest payload of `events` that `pick` chooses.
fn latest<'a, T>(
    events: &[&'a pb::Event],
    pick: impl Fn(&'a Payload) -> Option<&'a T>,
) -> Option<&'a T> {
    events
        .iter()
        .rev()
        .find_map(|e| e.payload.as_ref().and_then(&pick))
}

/// `text` with its first letter upper-case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A state or enum name in words: `waiting_on_customer` → `waiting on customer`.
fn words(name: &str) -> String {
    name.to_lowercase().replace('_', " ")
}

fn local_time(t: Option<&prost_types::Timestamp>, tz: &TimeZone) -> String {
    t.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_default()
}

/// What the email calls a thread (by the newest event that says), and what else the
/// thread is about.
fn heading(thread: &Thread<'_>, names: &Names) -> (String, Vec<Detail>) {
    let key = thread.key;
    let events = &thread.events;
    if let Some(id) = key.strip_prefix("customers/") {
        let name = match latest(events, |p| match p {
            Payload::Customer(c) => Some(c),
            _ => None,
        }) {
            Some(c) => pb_customer_name(c),
            None => names.customer(id),
        };
        return (
            name.unwrap_or_else(|| capitalized(UNNAMED_CUSTOMER)),
            vec![],
        );
    }
    if let Some(id) = key.strip_prefix("cases/") {
        let (title, customer, customer_resource) = match latest(events, |p| match p {
            Payload::Case(c) => Some(c),
            _ => None,
        }) {
            Some(c) => (
                Some(c.title.clone()),
                c.customer_view.as_ref().and_then(pb_customer_name),
                c.customer.clone(),
            ),
            None => match names.cases.get(id) {
                Some((title, customer_id)) => (
                    Some(title.clone()),
                    names.customer(customer_id),
                    format!("customers/{customer_id}"),
                ),
                None => (None, None, String::new()),
            },
        };
        let title = match title.filter(|t| !t.is_empty()) {
            Some(t) => format!("Case: {t}"),
            None => "A case".to_owned(),
        };
        let mut references = vec![];
        if !customer_resource.is_empty() {
            let customer = customer.unwrap_or_else(|| UNNAMED_CUSTOMER.to_owned());
            references.push(Detail::new(
                "Customer",
                format!("{customer} ({customer_resource})"),
            ));
        }
        return (title, references);
    }
    let title = match events.last().and_then(|e| e.payload.as_ref()) {
        Some(Payload::Partnership(p)) => {
            let other = if p.proposer == names.own {
                &p.recipient
            } else {
                &p.proposer
            };
            format!("Partnership with {}", names.organization(other))
        }
        Some(Payload::AccessRequest(r)) => {
            format!("Access request from {}", names.organization(&r.requester))
        }
        Some(Payload::WebhookEndpoint(e)) => format!("Webhook endpoint {}", e.url),
        _ => key.to_owned(),
    };
    (title, vec![])
}

/// The event's type in words, with the fields that changed: `Customer updated: emails`.
fn generic_summary(event: &pb::Event) -> String {
    let mut summary = capitalized(&event.r#type.replace(['.', '_'], " "));
    if !event.changed_fields.is_empty() {
        summary = format!("{summary}: {}", event.changed_fields.join(", "));
    }
    summary
}

/// One event in words: what happened, naming organizations by display name and cases,
/// tasks and customers as the member's organization knows them.
fn event_view(event: &pb::Event, names: &Names, tz: &TimeZone) -> EventView {
    let actor = event
        .actor
        .as_ref()
        .map(|a| a.organization.as_str())
        .filter(|o| !o.is_empty())
        .map(|o| names.organization(o));
    // `what` by the actor, and whether that names the actor.
    let by = |what: &str| match &actor {
        Some(a) => (format!("{what} by {a}"), true),
        None => (what.to_owned(), false),
    };
    let kind = event.r#type.as_str();
    let mut details = vec![];
    let (summary, names_actor) = match &event.payload {
        Some(Payload::Case(c)) => {
            details.push(Detail::new("State", words(&c.state)));
            for clock in c.sla_clocks.iter().filter(|k| k.breach_time.is_some()) {
                details.push(Detail::new("SLA breached", clock.policy.clone()));
            }
            if let Some(comment) = names.comments.get(&event.id) {
                details.push(Detail::new("Comment", comment.clone()));
            }
            match kind {
                "case.opened" => by("Case opened"),
                "case.transitioned" => by(&format!("Moved to {}", words(&c.state))),
                "case.sla_warning" => ("SLA warning".to_owned(), false),
                "case.sla_breached" => ("SLA breached".to_owned(), false),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::Task(t)) => {
            let assignee = names.organization(&t.assignee);
            details.push(Detail::new("Task", t.title.clone()));
            details.push(Detail::new("Assignee", assignee.clone()));
            if t.due_time.is_some() {
                details.push(Detail::new("Due", local_time(t.due_time.as_ref(), tz)));
            }
            if !t.decline_reason.is_empty() {
                details.push(Detail::new("Reason", t.decline_reason.clone()));
            }
            if !t.completion_note.is_empty() {
                details.push(Detail::new("Note", t.completion_note.clone()));
            }
            let (what, names_actor) = match kind {
                "task.assigned" => (format!("Task assigned to {assignee}"), false),
                "task.overdue" => ("Task overdue".to_owned(), false),
                _ => by(&capitalized(&kind.replace('.', " "))),
            };
            (format!("{what}: {}", t.title), names_actor)
        }
        Some(Payload::Interaction(i)) => {
            let what = match pb::InteractionType::try_from(i.r#type) {
                Ok(pb::InteractionType::Unspecified) | Err(_) => "Interaction".to_owned(),
                Ok(t) => capitalized(&words(t.as_str_name())),
            };
            details.push(Detail::new("Summary", i.summary.clone()));
            let (what, names_actor) = by(&format!("{what} logged"));
            (format!("{what}: {}", i.summary), names_actor)
        }
        Some(Payload::Partnership(p)) => {
            let relationship = pb::Relationship::try_from(p.relationship)
                .map(|r| words(r.as_str_name()))
                .unwrap_or_default();
            details.push(Detail::new(
                "Relationship",
                format!(
                    "{} {relationship} {}",
                    names.organization(&p.proposer),
                    names.organization(&p.recipient)
                ),
            ));
            if !p.message.is_empty() {
                details.push(Detail::new("Message", p.message.clone()));
            }
            if !p.state_reason.is_empty() {
                details.push(Detail::new("Reason", p.state_reason.clone()));
            }
            match kind {
                "partnership.proposed" => (
                    format!(
                        "Partnership proposed by {}",
                        names.organization(&p.proposer)
                    ),
                    true,
                ),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::AccessRequest(r)) => {
            if let Some(id) = r.customer.strip_prefix("customers/") {
                let customer = names
                    .customer(id)
                    .unwrap_or_else(|| UNNAMED_CUSTOMER.to_owned());
                details.push(Detail::new(
                    "Customer",
                    format!("{customer} ({})", r.customer),
                ));
            }
            if !r.fields.is_empty() {
                details.push(Detail::new("Fields", r.fields.join(", ")));
            }
            if !r.reason.is_empty() {
                details.push(Detail::new("Reason", r.reason.clone()));
            }
            match kind {
                "access_request.created" => (
                    format!("Access requested by {}", names.organization(&r.requester)),
                    true,
                ),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::CaseHistoryEntry(h)) => {
            details.push(Detail::new("Comment", h.body.clone()));
            if h.organization.is_empty() {
                by("Comment")
            } else {
                (
                    format!("Comment by {}", names.organization(&h.organization)),
                    true,
                )
            }
        }
        Some(Payload::Customer(c)) => {
            if let Some(name) = pb_customer_name(c) {
                details.push(Detail::new("Name", name));
            }
            let emails: Vec<&str> = c.emails.iter().map(|e| e.address.as_str()).collect();
            if !emails.is_empty() {
                details.push(Detail::new("Email", emails.join(", ")));
            }
            let phones: Vec<&str> = c.phones.iter().map(|p| p.number.as_str()).collect();
            if !phones.is_empty() {
                details.push(Detail::new("Phone", phones.join(", ")));
            }
            (generic_summary(event), false)
        }
        Some(Payload::WebhookEndpoint(e)) => {
            details.push(Detail::new("Endpoint", e.url.clone()));
            details.push(Detail::new("Reason", e.disabled_reason.clone()));
            (generic_summary(event), false)
        }
        _ => (generic_summary(event), false),
    };
    EventView {
        time: local_time(event.create_time.as_ref(), tz),
        summary,
        actor: if names_actor {
            String::new()
        } else {
            actor.unwrap_or_default()
        },
        details,
    }
}

fn thread_view(thread: &Thread<'_>, names: &Names, tz: &TimeZone) -> ThreadView {
    let (title, references) = heading(thread, names);
    ThreadView {
        title,
        resource: thread.key.to_owned(),
        references,
        events: thread
            .events
            .iter()
            .map(|e| event_view(e, names, tz))
            .collect(),
    }
}

/// A header value that cannot break out of its header: control characters (CR and
/// LF among them) and bidirectional overrides become spaces, runs of white space one
/// space, and it is cut to `max` characters.
fn header_text(raw: &str, max: usize) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if clean.chars().count() > max {
        clean.chars().take(max - 1).collect::<String>() + "…"
    } else {
        clean
    }
}

/// `text` as RFC 2047 encoded words (UTF-8, base64), each whole characters and
/// within the RFC's length, on folded lines: a reader decodes it to exactly `text`,
/// and it holds nothing but printable ASCII and the folds.
fn encoded_words(text: &str) -> String {
    let mut words = vec![];
    let mut chunk = String::new();
    for c in text.chars() {
        if !chunk.is_empty() && chunk.len() + c.len_utf8() > ENCODED_WORD_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?utf-8?b?{}?=", BASE64.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// The Subject header for `text` (made safe by [`header_text`] first): every reader
/// shows exactly that text, and nothing in it can start another header.
///
/// lettre encodes words with non-ASCII characters (and CR or LF) itself, but writes
/// printable ASCII as it is, even text that reads as an RFC 2047 encoded word
/// (`=?utf-8?B?SGVsbG8=?=`), which readers would then decode into something else.
/// RFC 2047 (section 5) wants such text encoded. So lettre writes plain ASCII text,
/// and anything else is encoded here, whole.
fn subject_header(text: &str) -> HeaderValue {
    let name = HeaderName::new_from_ascii_str("Subject");
    let text = header_text(text, MAX_SUBJECT);
    if text.bytes().all(|b| matches!(b, b' '..=b'~')) && !text.contains("=?") {
        HeaderValue::new(name, text)
    } else {
        let encoded = encoded_words(&text);
        HeaderValue::dangerous_new_pre_encoded(name, text, encoded)
    }
}

/// Whether `id` is a message id as RFC 5322 writes one, `<left@right>` in printable
/// ASCII with no white space, brackets, quotes or second `@`: only such ids go into
/// Message-ID, In-Reply-To and References.
fn is_message_id(id: &str) -> bool {
    let Some((left, right)) = id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .and_then(|s| s.split_once('@'))
    else {
        return false;
    };
    let atoms = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_graphic()
                    && !matches!(
                        b,
                        b'<' | b'>'
                            | b'@'
                            | b'"'
                            | b'\\'
                            | b'('
                            | b')'
                            | b','
                            | b';'
                            | b':'
                            | b'['
                            | b']'
                    )
            })
    };
    atoms(left) && atoms(right)
}

/// The Message-ID of email `email_id` sent from `domain`; a domain that cannot stand in
/// a message id as it is (an internationalized one) gives way to a reserved name.
fn message_id(email_id: &str, domain: &str) -> String {
    let id = format!("<{email_id}@{domain}>");
    if is_message_id(&id) {
        id
    } else {
        format!("<{email_id}@liaison.invalid>")
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
            if busy {
                continue;
            }
            super::idle_until_stopped(
                &shutdown.stop,
                &signal,
                self.store.next_email_work(SETTLE, self.window()).await,
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
            self.store
                .record_email(email, &outcome, self.clock.now())
                .await?;
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
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(
                Some(header_text(member.display_name.as_str(), 100)),
                member
                    .email
                    .as_str()
                    .parse()
                    .map_err(|e| crate::error::Error::Internal(anyhow::anyhow!("{e}")))?,
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
            .map_err(|e| crate::error::Error::Internal(anyhow::anyhow!("{e}")))?;
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
        let internal = |e: anyhow::Error| crate::error::Error::Internal(e);
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
        .filter(|e| e.r#type == "case.transitioned")
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
    use mail_parser::MessageParser;

    use super::*;
    use crate::domain::customer::Profile;

    #[test]
    fn header_text_cannot_inject_headers() {
        assert_eq!(
            header_text("Ada\r\nBcc: evil@example.com", 100),
            "Ada Bcc: evil@example.com"
        );
        assert_eq!(header_text("a\u{202e}b\u{7f}c\td", 100), "a b c d");
        assert_eq!(header_text(&"x".repeat(10), 5).chars().count(), 5);
    }

    /// The Subject header as it goes on the wire, and as a reader decodes it.
    fn subject_on_the_wire(text: &str) -> (String, String) {
        let message = Message::builder()
            .from("hub@liaison.example".parse().unwrap())
            .to("ann@vendor.example".parse().unwrap())
            .raw_header(subject_header(text))
            .body(String::from("body"))
            .unwrap()
            .formatted();
        let raw = String::from_utf8(message.clone()).unwrap();
        let header = raw
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .split("\r\nSubject: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .scan(true, |first, line| {
                let keep = std::mem::take(first) || line.starts_with(' ');
                keep.then(|| line.to_owned())
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        let decoded = MessageParser::default()
            .parse(&message)
            .unwrap()
            .subject()
            .unwrap()
            .to_owned();
        (header, decoded)
    }

    #[test]
    fn subjects_decode_to_exactly_their_text_and_cannot_inject_headers() {
        let (raw, decoded) = subject_on_the_wire("[Liaison] Case: Fridge not cooling");
        assert_eq!(
            raw, "[Liaison] Case: Fridge not cooling",
            "plain ASCII stays plain"
        );
        assert_eq!(decoded, "[Liaison] Case: Fridge not cooling");
        for text in [
            "=?utf-8?B?SGVsbG8=?=",
            "[Liaison] =?utf-8?B?SGVsbG8=?=: Customer updated",
            "[Liaison] Zoë Ångström: Customer updated: given_name",
            "Zoë =?utf-8?B?SGVsbG8=?= and a long tail of words that needs folding over several encoded words ✓",
        ] {
            let (raw, decoded) = subject_on_the_wire(text);
            assert_eq!(decoded, text);
            assert!(raw.starts_with("=?utf-8?b?"), "{raw}");
            assert!(!raw.contains("SGVsbG8=?="), "{raw}");
            assert!(raw.is_ascii());
            for line in raw.split("\r\n") {
                assert!(line.len() <= 76 - "Subject: ".len(), "{line}");
            }
        }
        let (raw, decoded) = subject_on_the_wire("Ada\r\nBcc: x@y");
        assert!(!raw.contains("\r\nBcc"), "{raw}");
        assert_eq!(decoded, "Ada Bcc: x@y");
        let (raw, _) = subject_on_the_wire("Zoë\r\nBcc: x@y");
        assert!(!raw.contains("\r\nBcc"), "{raw}");
    }

    #[test]
    fn only_message_ids_reach_the_threading_headers() {
        assert!(is_message_id("<0198f0e4-7c1a@liaison.example>"));
        for bad in [
            "0198@liaison.example",
            "<0198@liaison.example>\r\nBcc: x@y",
            "<a b@liaison.example>",
            "<a@b@c>",
            "<@liaison.example>",
            "<0198@bücher.example>",
        ] {
            assert!(!is_message_id(bad), "{bad:?}");
        }
        assert_eq!(
            message_id("0198", "liaison.example"),
            "<0198@liaison.example>"
        );
        assert_eq!(
            message_id("0198", "bücher.example"),
            "<0198@liaison.invalid>"
        );
    }

    fn event(kind: &str, resource: &str, actor: &str, payload: Payload) -> pb::Event {
        pb::Event {
            id: "0198f0e4-0000-7000-8000-000000000001".into(),
            r#type: kind.into(),
            resource: resource.into(),
            actor: Some(pb::Actor {
                organization: actor.into(),
                ..Default::default()
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn names() -> Names {
        let hidden = Profile {
            given_name: String::new(),
            family_name: String::new(),
            legal_name: String::new(),
            emails: vec![],
            phones: vec![],
            addresses: vec![],
            tags: vec!["vip".into()],
            attributes: Default::default(),
        };
        let shown = Profile {
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            ..hidden.clone()
        };
        let view = |profile: Profile| CustomerView {
            display_name: None,
            profile,
            fields: crate::domain::customer::FieldSet::ALL,
        };
        Names {
            own: "organizations/shop".into(),
            organizations: HashMap::from([
                ("shop".into(), "Shop Ltd".into()),
                ("vendor".into(), "Vendor GmbH".into()),
            ]),
            customers: HashMap::from([
                ("ada".into(), view(shown)),
                ("secret".into(), view(hidden)),
            ]),
            cases: HashMap::from([("k1".into(), ("Fridge not cooling".into(), "ada".into()))]),
            comments: HashMap::from([(
                "0198f0e4-0000-7000-8000-000000000001".into(),
                "Parts ordered.".into(),
            )]),
        }
    }

    fn one_thread<'a>(key: &'a str, events: &'a [pb::Event]) -> Thread<'a> {
        Thread {
            key,
            events: events.iter().collect(),
        }
    }

    #[test]
    fn events_read_in_words_with_names_instead_of_ids() {
        let names = names();
        let utc = TimeZone::UTC;
        let task = [event(
            "task.assigned",
            "cases/k1/tasks/t1",
            "organizations/vendor",
            Payload::Task(pb::CaseTask {
                name: "cases/k1/tasks/t1".into(),
                title: "Swap the unit".into(),
                assignee: "organizations/shop".into(),
                assigned_by: "organizations/vendor".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k1", &task), &names, &utc);
        assert_eq!(view.title, "Case: Fridge not cooling");
        assert_eq!(view.references[0].value, "Ada Lovelace (customers/ada)");
        assert_eq!(
            view.events[0].summary,
            "Task assigned to Shop Ltd: Swap the unit"
        );
        assert_eq!(view.events[0].actor, "Vendor GmbH");

        let moved = [event(
            "case.transitioned",
            "cases/k1",
            "organizations/vendor",
            Payload::Case(pb::Case {
                name: "cases/k1".into(),
                title: "Fridge not cooling".into(),
                state: "awaiting_parts".into(),
                customer: "customers/secret".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k1", &moved), &names, &utc);
        assert_eq!(
            view.events[0].summary,
            "Moved to awaiting parts by Vendor GmbH"
        );
        assert_eq!(view.events[0].actor, "", "the summary says who");
        assert!(
            view.events[0]
                .details
                .iter()
                .any(|d| d.label == "Comment" && d.value == "Parts ordered.")
        );
        assert_eq!(
            view.references[0].value, "a shared customer (customers/secret)",
            "no customer view in the event: not named"
        );

        let logged = [event(
            "interaction.logged",
            "customers/secret/interactions/i1",
            "organizations/vendor",
            Payload::Interaction(pb::Interaction {
                r#type: pb::InteractionType::Call as i32,
                summary: "Asked about the warranty".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("customers/secret", &logged), &names, &utc);
        assert_eq!(view.title, "A shared customer");
        assert_eq!(
            view.events[0].summary,
            "Call logged by Vendor GmbH: Asked about the warranty"
        );
        let view = thread_view(&one_thread("customers/ada", &logged), &names, &utc);
        assert_eq!(view.title, "Ada Lovelace");

        let proposed = [event(
            "partnership.proposed",
            "partnerships/p1",
            "organizations/vendor",
            Payload::Partnership(pb::Partnership {
                proposer: "organizations/vendor".into(),
                recipient: "organizations/shop".into(),
                relationship: pb::Relationship::Supplies as i32,
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("partnerships/p1", &proposed), &names, &utc);
        assert_eq!(view.title, "Partnership with Vendor GmbH");
        assert_eq!(
            view.events[0].summary,
            "Partnership proposed by Vendor GmbH"
        );
        assert_eq!(
            view.events[0].details[0].value,
            "Vendor GmbH supplies Shop Ltd"
        );
    }

    #[test]
    fn an_unknown_case_is_not_named_by_its_id() {
        let names = Names::default();
        let task = [event(
            "task.overdue",
            "cases/k9/tasks/t1",
            "",
            Payload::Task(pb::CaseTask {
                title: "Call back".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k9", &task), &names, &TimeZone::UTC);
        assert_eq!(view.title, "A case");
        assert_eq!(view.events[0].summary, "Task overdue: Call back");
        assert_eq!(view.events[0].actor, "");
    }

    #[test]
    fn builtin_templates_parse() {
        Renderer::new("").expect("built-in templates parse");
    }
}
