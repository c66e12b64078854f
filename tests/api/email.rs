//! Email to members end to end, through the SMTP server of `smtp.rs` on 127.0.0.1:
//! who hears of what, when (coalescing, digests, retries, bounces) and in what words.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use liaison::domain::notify::next_digest_time;
use liaison::pb;
use mail_parser::MessageParser;
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::*;
use crate::sharing::{grant, log, update};
use crate::smtp::{Mail, Script, SmtpServer, sending_to};

crate::on_both_backends!(
    emails_are_threaded_coalesced_and_show_only_what_the_organization_sees,
    temporary_failures_retry_and_refusals_bounce,
    digests_arrive_at_the_members_local_hour,
    preferences_are_checked_and_inherited,
    emails_name_organizations_customers_cases_and_tasks_in_words,
    a_customer_whose_name_the_grant_hides_is_not_named_in_email,
    names_that_look_encoded_or_are_not_ascii_reach_the_subject_exactly,
    a_sender_that_lost_its_lease_cannot_overwrite_the_outcome,
    work_and_integration_news_reach_only_the_members_of_the_organization_who_want_it,
);

pub(crate) async fn member(
    app: &TestApp,
    org: &Org,
    name: &str,
    email: &str,
    tz: &str,
) -> pb::Member {
    app.members(&org.admin_key)
        .create_member(pb::CreateMemberRequest {
            parent: org.name.clone(),
            member: Some(pb::Member {
                display_name: name.into(),
                email: email.into(),
                role: pb::MemberRole::Coordinator as i32,
                time_zone: tz.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("member")
        .into_inner()
}

pub(crate) async fn set_preferences(
    app: &TestApp,
    org: &Org,
    prefs: pb::NotificationPreferences,
    paths: &[&str],
) -> Result<pb::NotificationPreferences, tonic::Status> {
    app.members(&org.admin_key)
        .update_notification_preferences(pb::UpdateNotificationPreferencesRequest {
            notification_preferences: Some(prefs),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn follow(app: &TestApp, org: &Org, m: &pb::Member, customers: &[&str]) {
    set_preferences(
        app,
        org,
        pb::NotificationPreferences {
            name: format!("{}/notificationPreferences", m.name),
            followed_customers: customers.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
        &["followed_customers"],
    )
    .await
    .expect("follow");
}

fn header<'a>(m: &'a mail_parser::Message<'a>, name: &str) -> String {
    m.header_raw(name).unwrap_or_default().trim().to_owned()
}

/// The one email to `to` whose subject contains `part`.
fn mail_to<'a>(mails: &'a [Mail], to: &str, part: &str) -> &'a Mail {
    let found: Vec<&Mail> = mails
        .iter()
        .filter(|m| m.to == to && m.parsed().subject().unwrap_or_default().contains(part))
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one email to {to} about {part:?}, got: {:?}",
            mails
                .iter()
                .map(|m| (m.to.clone(), m.parsed().subject().map(str::to_owned)))
                .collect::<Vec<_>>()
        ),
    }
}

/// Everything a reader can see of an email: its subject, its headers as decoded, and
/// its text and HTML parts.
fn readable(mail: &Mail) -> String {
    let m = mail.parsed();
    let mut all = vec![m.subject().unwrap_or_default().to_owned()];
    for h in m.headers() {
        all.push(format!("{}: {:?}", h.name(), h.value()));
    }
    all.push(m.body_text(0).unwrap_or_default().to_string());
    all.push(m.body_html(0).unwrap_or_default().to_string());
    all.push(String::from_utf8_lossy(&mail.raw).into_owned());
    all.join("\n")
}

async fn open_case(
    app: &TestApp,
    by: &Org,
    title: &str,
    customer: &str,
    who: &[(&Org, &str)],
) -> pb::Case {
    app.cases(&by.admin_key)
        .open_case(pb::OpenCaseRequest {
            case: Some(pb::Case {
                template: "workflowTemplates/service_case".into(),
                customer: customer.into(),
                title: title.into(),
                priority: pb::CasePriority::Normal as i32,
                participants: who
                    .iter()
                    .map(|(o, role)| pb::CaseParticipant {
                        organization: o.name.clone(),
                        role: role.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("open case")
        .into_inner()
}

async fn assign_task(app: &TestApp, by: &Org, case: &str, to: &Org, title: &str) -> pb::CaseTask {
    app.cases(&by.admin_key)
        .assign_task(pb::AssignTaskRequest {
            parent: case.into(),
            task: Some(pb::CaseTask {
                title: title.into(),
                assignee: to.name.clone(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("assign task")
        .into_inner()
}

/// Lets the settling time and the coalescing window of every thread pass, and wakes
/// the email worker.
fn let_the_window_pass(app: &TestApp) {
    app.advance(SignedDuration::from_mins(2));
}

fn rename(c: &pb::Customer, given: &str) -> pb::Customer {
    let mut c = c.clone();
    c.etag.clear();
    c.given_name = given.into();
    c
}

async fn emails_are_threaded_coalesced_and_show_only_what_the_organization_sees(backend: Backend) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&vendor, &shop).await;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    // The shop sees the names, not the email address.
    grant(
        &app,
        &vendor,
        &c.name,
        &shop,
        pb::AccessLevel::Read,
        &["given_name", "family_name"],
    )
    .await
    .expect("grant");
    let grace = member(
        &app,
        &shop,
        "Grace <Ops>",
        "grace@shop.example",
        "Europe/Berlin",
    )
    .await;
    follow(&app, &shop, &grace, &[&c.name]).await;

    // Two changes in quick succession: one email.
    let mut changed = rename(&c, "Augusta");
    changed.emails[0].address = "augusta@example.com".into();
    update(&app, &vendor.admin_key, changed, &["given_name", "emails"])
        .await
        .unwrap();
    let mut changed = rename(&c, "Augusta");
    changed.family_name = "King".into();
    update(&app, &vendor.admin_key, changed, &["family_name"])
        .await
        .unwrap();
    let got = server.wait_for(1).await;
    app.settle().await;
    assert_eq!(server.mail().len(), 1, "coalesced into one email");
    assert_eq!(got[0].to, "grace@shop.example");
    let first = got[0].parsed();
    let subject = first.subject().unwrap().to_owned();
    assert!(subject.contains("Augusta King"), "{subject}");
    assert!(subject.contains("2 updates"), "{subject}");
    assert_eq!(first.text_body_count(), 1);
    assert_eq!(first.html_body_count(), 1);
    let text = first.body_text(0).unwrap().to_string();
    let html = first.body_html(0).unwrap().to_string();
    for part in [&text, &html] {
        assert!(part.contains("Augusta"), "{part}");
        assert!(
            !part.contains("example.com"),
            "no hidden field leaks: {part}"
        );
    }
    assert!(
        html.contains("Grace &lt;Ops&gt;"),
        "HTML is escaped: {html}"
    );
    assert!(text.contains("Grace <Ops>"));
    let root = header(&first, "Message-ID");
    assert!(
        root.starts_with('<') && root.ends_with("@liaison.example>"),
        "{root}"
    );
    assert!(first.in_reply_to().is_empty());
    assert!(header(&first, "From").contains("hub@liaison.example"));

    // Another change inside the coalescing window waits for it to end, then replies
    // in the same thread.
    let mut changed = rename(&c, "Ada");
    changed.family_name = "King".into();
    update(&app, &vendor.admin_key, changed, &["given_name"])
        .await
        .unwrap();
    // Past its settling time, but inside the window of the thread's first email.
    app.advance(SignedDuration::from_secs(10));
    app.settle().await;
    assert_eq!(server.mail().len(), 1, "held back by the window");
    let_the_window_pass(&app);
    let got = server.wait_for(2).await;
    // Nothing else was waiting for the window: the first two changes were one email.
    app.settle().await;
    assert_eq!(server.mail().len(), 2);
    let second = got[1].parsed();
    assert_eq!(header(&second, "In-Reply-To"), root);
    assert_eq!(header(&second, "References"), root);
    assert_ne!(header(&second, "Message-ID"), root);
    let subject = second.subject().unwrap();
    assert!(
        subject.contains("Ada King: Customer updated: given_name"),
        "{subject}"
    );
}

async fn temporary_failures_retry_and_refusals_bounce(backend: Backend) {
    let server = SmtpServer::start(Script {
        data_replies: vec!["451 4.3.0 try again later"],
        refuse: HashMap::from([("gone@vendor.example".to_owned(), "550 5.1.1 no such user")]),
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let ok = member(&app, &vendor, "Ok", "ok@vendor.example", "UTC").await;
    let gone = member(&app, &vendor, "Gone", "gone@vendor.example", "UTC").await;
    follow(&app, &vendor, &ok, &[&c.name]).await;
    follow(&app, &vendor, &gone, &[&c.name]).await;
    update(
        &app,
        &vendor.admin_key,
        rename(&c, "Augusta"),
        &["given_name"],
    )
    .await
    .unwrap();
    // The 451 is retried; the 550 is not.
    let got = server.wait_for(1).await;
    assert_eq!(got[0].to, "ok@vendor.example");
    let bounced = {
        let mut found = None;
        for _ in 0..200 {
            let m = app
                .members(&vendor.read_key)
                .get_member(pb::GetMemberRequest {
                    name: gone.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            if !m.email_bounce.is_empty() {
                found = Some(m);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        found.expect("the refusal is recorded on the member")
    };
    assert!(bounced.email_bounce.contains("550"), "{bounced:?}");
    assert!(bounced.email_bounce_time.is_some());
    // Past every retry the schedule holds: a retry of the refusal would be due by now.
    app.advance(SignedDuration::from_mins(1));
    app.settle().await;
    let attempts = server.attempts();
    let to_gone = attempts
        .iter()
        .filter(|a| a.0 == "gone@vendor.example")
        .count();
    assert_eq!(
        to_gone, 1,
        "a permanent failure is not retried: {attempts:?}"
    );
    let to_ok: Vec<Mail> = server
        .transactions()
        .into_iter()
        .filter(|m| m.to == "ok@vendor.example")
        .collect();
    assert_eq!(
        to_ok.iter().map(|m| m.reply).collect::<Vec<_>>(),
        [451, 250]
    );
    // The retry is the same message: the same Message-ID, the same bytes.
    let (failed, retried) = (to_ok[0].parsed(), to_ok[1].parsed());
    assert!(header(&failed, "Message-ID").ends_with("@liaison.example>"));
    assert_eq!(
        header(&failed, "Message-ID"),
        header(&retried, "Message-ID")
    );
    assert_eq!(
        String::from_utf8_lossy(&to_ok[0].raw),
        String::from_utf8_lossy(&to_ok[1].raw)
    );
    assert!(retried.subject().unwrap().contains("Augusta"));

    // No more mail to the bounced address until it changes.
    app.advance(SignedDuration::from_mins(5));
    update(&app, &vendor.admin_key, rename(&c, "Ada"), &["given_name"])
        .await
        .unwrap();
    server.wait_for(2).await;
    app.settle().await;
    let to_gone = || {
        server
            .attempts()
            .iter()
            .filter(|a| a.0 == "gone@vendor.example")
            .count()
    };
    assert_eq!(to_gone(), 1);
    let mut fixed = bounced.clone();
    fixed.email = "back@vendor.example".into();
    fixed.etag.clear();
    let fixed = app
        .members(&vendor.admin_key)
        .update_member(pb::UpdateMemberRequest {
            member: Some(fixed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fixed.email_bounce.is_empty() && fixed.email_bounce_time.is_none());
    // The member hears again, at the new address.
    update(
        &app,
        &vendor.admin_key,
        rename(&c, "Augusta"),
        &["given_name"],
    )
    .await
    .unwrap();
    app.advance(SignedDuration::from_mins(5));
    let got = server.wait_for(4).await;
    let back = mail_to(&got, "back@vendor.example", "Augusta");
    assert_eq!(
        back.parsed()
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("back@vendor.example")
    );
    app.settle().await;
    assert_eq!(to_gone(), 1, "nothing more to the old address");
    assert_eq!(server.mail().len(), 4);
}

async fn digests_arrive_at_the_members_local_hour(backend: Backend) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // The organization's default: customer changes by digest. The member picks 09:00.
    set_preferences(
        &app,
        &vendor,
        pb::NotificationPreferences {
            name: format!("{}/notificationPreferences", vendor.name),
            customer_changes: pb::NotificationMode::DailyDigest as i32,
            ..Default::default()
        },
        &["customer_changes"],
    )
    .await
    .unwrap();
    let kenji = member(&app, &vendor, "Kenji", "kenji@vendor.example", "Asia/Tokyo").await;
    set_preferences(
        &app,
        &vendor,
        pb::NotificationPreferences {
            name: format!("{}/notificationPreferences", kenji.name),
            digest_hour: Some(9),
            ..Default::default()
        },
        &["digest_hour"],
    )
    .await
    .unwrap();
    let ada = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let alan = create(&app, &vendor, person("Alan", "Turing", "")).await;
    follow(&app, &vendor, &kenji, &[&ada.name, &alan.name]).await;
    let due = next_digest_time(app.store.clock().now(), "Asia/Tokyo", 9);
    update(
        &app,
        &vendor.admin_key,
        rename(&ada, "Augusta"),
        &["given_name"],
    )
    .await
    .unwrap();
    update(
        &app,
        &vendor.admin_key,
        rename(&alan, "Alan M."),
        &["given_name"],
    )
    .await
    .unwrap();
    let mut again = rename(&ada, "Augusta");
    again.family_name = "King".into();
    update(&app, &vendor.admin_key, again, &["family_name"])
        .await
        .unwrap();

    let until_due = || due.duration_since(app.store.clock().now());
    // A minute before 09:00 in Tokyo: nothing.
    app.advance(until_due() - SignedDuration::from_mins(1));
    app.settle().await;
    assert!(server.mail().is_empty(), "not before the hour");
    // A second before, and no more nudges: the worker wakes at 09:00 by its own
    // schedule (it would otherwise look again only after half a minute) and sends one
    // digest with all three changes, grouped by customer.
    app.advance(until_due() - SignedDuration::from_secs(1));
    let got = server.wait_for(1).await;
    app.settle().await;
    assert_eq!(server.mail().len(), 1);
    let digest = got[0].parsed();
    let composed = digest.date().expect("a Date header").to_timestamp();
    assert!(
        composed >= due.as_second(),
        "composed at {composed}, due at {due}"
    );
    assert!(
        digest.subject().unwrap().contains("digest"),
        "{:?}",
        digest.subject()
    );
    assert!(digest.subject().unwrap().contains("3 updates"));
    let text = digest.body_text(0).unwrap().to_string();
    let augusta = text.find("== Augusta King").expect("Ada's section");
    let alan_m = text.find("== Alan M. Turing").expect("Alan's section");
    assert!(
        augusta < alan_m,
        "threads in order of their first change: {text}"
    );
    assert_eq!(text.matches("Customer updated").count(), 3, "{text}");
    assert!(text.contains("JST"), "times in the member's zone: {text}");
}

async fn preferences_are_checked_and_inherited(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    let hidden = create(&app, &other, person("Not", "Yours", "")).await;
    let m = member(&app, &vendor, "Ann", "ann@vendor.example", "UTC").await;
    let name = format!("{}/notificationPreferences", m.name);
    let bad = set_preferences(
        &app,
        &vendor,
        pb::NotificationPreferences {
            name: name.clone(),
            digest_hour: Some(24),
            sla: 17,
            followed_customers: vec![hidden.name.clone(), "nonsense".into()],
            ..Default::default()
        },
        &["digest_hour", "sla", "followed_customers"],
    )
    .await;
    let status = assert_error(bad, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status),
        [
            "notification_preferences.digest_hour",
            "notification_preferences.sla",
            "notification_preferences.followed_customers[0]",
            "notification_preferences.followed_customers[1]",
        ]
    );
    let org_name = format!("{}/notificationPreferences", vendor.name);
    let status = assert_error(
        set_preferences(
            &app,
            &vendor,
            pb::NotificationPreferences {
                name: org_name.clone(),
                followed_customers: vec![hidden.name.clone()],
                ..Default::default()
            },
            &["followed_customers"],
        )
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
    );
    assert_eq!(
        violated_fields(&status),
        ["notification_preferences.followed_customers"]
    );
    let saved = set_preferences(
        &app,
        &vendor,
        pb::NotificationPreferences {
            name: name.clone(),
            work_for_my_organization: pb::NotificationMode::Off as i32,
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let read = app
        .members(&vendor.read_key)
        .get_notification_preferences(pb::GetNotificationPreferencesRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, saved);
    assert_eq!(
        read.work_for_my_organization,
        pb::NotificationMode::Off as i32
    );
    assert_eq!(
        read.sla,
        pb::NotificationMode::Unspecified as i32,
        "inherits"
    );
    assert_eq!(read.digest_hour, None);
    // Another organization's member does not exist for the caller.
    let denied = app
        .members(&other.read_key)
        .get_notification_preferences(pb::GetNotificationPreferencesRequest { name })
        .await;
    assert_error(denied, Code::NotFound, "NOT_FOUND");
}

/// No SMTP configured: each email is written as an `.eml` file. And `liaison email
/// test` reports the server's answer.
#[tokio::test]
async fn without_smtp_emails_are_files_and_the_cli_tests_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    // An operator's template replaces the built-in plain-text part.
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("notification.txt"),
        "Dear {{ member.display_name }}: {{ thread.title }} changed.\n",
    )
    .unwrap();
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.email.outbox_dir = outbox.display().to_string();
        c.email.templates_dir = templates.display().to_string();
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let m = member(&app, &vendor, "Ann", "ann@vendor.example", "UTC").await;
    follow(&app, &vendor, &m, &[&c.name]).await;
    update(
        &app,
        &vendor.admin_key,
        rename(&c, "Augusta"),
        &["given_name"],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let file = loop {
        let found = std::fs::read_dir(&outbox)
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok()))
            .map(|e| e.path());
        if let Some(f) = found.filter(|f| f.extension().is_some_and(|x| x == "eml")) {
            break f;
        }
        assert!(Instant::now() < deadline, "no .eml file written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let raw = std::fs::read(&file).unwrap();
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert!(parsed.subject().unwrap().contains("Augusta"));
    let text = parsed.body_text(0).unwrap().to_string();
    assert!(
        text.starts_with("Dear Ann: Augusta Lovelace changed."),
        "{text}"
    );
    assert!(
        parsed
            .body_html(0)
            .unwrap()
            .contains("<h2>Augusta Lovelace</h2>")
    );

    let server = SmtpServer::start(Script {
        refuse: HashMap::from([("nobody@example.com".to_owned(), "550 5.1.1 unknown")]),
        ..Default::default()
    })
    .await;
    let url = server.url.clone();
    let cli = move |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["email", "test", "--to", to])
            .env("LIAISON_SMTP_URL", &url)
            .env("LIAISON_EMAIL_FROM", "hub@liaison.example")
            .env("LIAISON_LOG", "warn")
            .output()
            .unwrap()
    };
    let out =
        tokio::task::spawn_blocking(move || (cli("ops@example.com"), cli("nobody@example.com")))
            .await
            .unwrap();
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    assert!(String::from_utf8_lossy(&out.0.stdout).contains("sent: 250"));
    assert!(!out.1.status.success());
    assert!(String::from_utf8_lossy(&out.1.stderr).contains("permanent"));
    assert_eq!(server.mail().len(), 1);
    assert!(
        server.mail()[0]
            .parsed()
            .subject()
            .unwrap()
            .contains("Test")
    );
}

async fn emails_name_organizations_customers_cases_and_tasks_in_words(backend: Backend) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    member(&app, &vendor, "Vera", "vera@vendor.example", "UTC").await;
    let sam = member(&app, &shop, "Sam", "sam@shop.example", "UTC").await;
    // The vendor proposes a partnership to the shop: news for the shop.
    app.partner(&vendor, &shop).await;
    let ada = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    grant(
        &app,
        &vendor,
        &ada.name,
        &shop,
        pb::AccessLevel::Read,
        &["given_name", "family_name"],
    )
    .await
    .expect("grant");
    follow(&app, &shop, &sam, &[&ada.name]).await;
    // The vendor opens a case with the shop on it: news for the shop.
    let case = open_case(
        &app,
        &vendor,
        "Fridge not cooling",
        &ada.name,
        &[(&vendor, "vendor"), (&shop, "retailer")],
    )
    .await;
    // The shop triages it with a comment: news for the vendor.
    let current = app
        .cases(&shop.read_key)
        .get_case(pb::GetCaseRequest {
            name: case.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    app.cases(&shop.admin_key)
        .transition_case(pb::TransitionCaseRequest {
            name: case.name.clone(),
            transition: "triage".into(),
            etag: current.etag,
            comment: "The customer confirmed the fault.\nPhotos follow.".into(),
            ..Default::default()
        })
        .await
        .expect("triage");
    // The vendor logs a call with Ada, whom Sam follows.
    log(
        &app,
        &vendor,
        &ada.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "Asked about the warranty",
    )
    .await;
    let got = server.wait_for(4).await;

    let partnership = mail_to(&got, "sam@shop.example", "Partnership");
    let parsed = partnership.parsed();
    assert_eq!(
        parsed.subject().unwrap(),
        "[Liaison] Partnership with vendor Ltd: Partnership proposed by vendor Ltd"
    );
    let text = parsed.body_text(0).unwrap().to_string();
    assert!(text.contains("vendor Ltd supplies shop Ltd"), "{text}");
    assert!(text.contains("notification settings in shop Ltd"), "{text}");

    let opened = mail_to(&got, "sam@shop.example", "Fridge not cooling").parsed();
    assert_eq!(
        opened.subject().unwrap(),
        "[Liaison] Case: Fridge not cooling: Case opened by vendor Ltd"
    );
    let text = opened.body_text(0).unwrap().to_string();
    assert!(
        text.contains(&format!("Case: Fridge not cooling ({})", case.name)),
        "the case's name stays as a reference: {text}"
    );
    assert!(
        text.contains(&format!("Customer: Ada Lovelace ({})", ada.name)),
        "{text}"
    );

    let triaged = mail_to(&got, "vera@vendor.example", "Fridge not cooling");
    let parsed = triaged.parsed();
    assert_eq!(
        parsed.subject().unwrap(),
        "[Liaison] Case: Fridge not cooling: Moved to triaged by shop Ltd"
    );
    let text = parsed.body_text(0).unwrap().to_string();
    let html = parsed.body_html(0).unwrap().to_string();
    assert!(
        text.replace("\r\n", "\n")
            .contains("Comment: The customer confirmed the fault.\n      Photos follow."),
        "the transition's comment, its lines indented: {text}"
    );
    assert!(html.contains("The customer confirmed the fault."), "{html}");
    assert!(text.contains("Customer: Ada Lovelace"), "{text}");

    let call = mail_to(&got, "sam@shop.example", "Ada Lovelace").parsed();
    assert_eq!(
        call.subject().unwrap(),
        "[Liaison] Ada Lovelace: Call logged by vendor Ltd: Asked about the warranty"
    );

    // The shop hands the vendor a task: the vendor hears of it in the case's thread,
    // once the thread's window has passed.
    assign_task(&app, &shop, &case.name, &vendor, "Check the compressor").await;
    let_the_window_pass(&app);
    let got = server.wait_for(5).await;
    let task = mail_to(&got, "vera@vendor.example", "Check the compressor").parsed();
    assert_eq!(
        task.subject().unwrap(),
        "[Liaison] Case: Fridge not cooling: Task assigned to vendor Ltd: Check the compressor"
    );
    assert_eq!(
        header(&task, "In-Reply-To"),
        header(&triaged.parsed(), "Message-ID")
    );
    let text = task.body_text(0).unwrap().to_string();
    assert!(text.contains("(by shop Ltd)"), "{text}");
    assert!(
        text.contains(&format!("Customer: Ada Lovelace ({})", ada.name)),
        "a case no event here carries is read by its title and customer: {text}"
    );

    for mail in &got {
        let parsed = mail.parsed();
        let subject = parsed.subject().unwrap();
        for id in ["organizations/", "customers/", "cases/", "partnerships/"] {
            assert!(!subject.contains(id), "{subject}");
        }
        let text = parsed.body_text(0).unwrap();
        assert!(!text.contains("organizations/"), "{text}");
    }
}

async fn a_customer_whose_name_the_grant_hides_is_not_named_in_email(backend: Backend) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&vendor, &shop).await;
    let sam = member(&app, &shop, "Sam", "sam@shop.example", "UTC").await;
    let mut zelda = person("Zelda", "Secretname", "");
    zelda.tags = vec!["vip".into()];
    let zelda = create(&app, &vendor, zelda).await;
    // The shop sees Zelda's tags, not her name.
    grant(
        &app,
        &vendor,
        &zelda.name,
        &shop,
        pb::AccessLevel::Read,
        &["tags"],
    )
    .await
    .expect("grant");
    follow(&app, &shop, &sam, &[&zelda.name]).await;
    let case = open_case(
        &app,
        &vendor,
        "Warranty claim",
        &zelda.name,
        &[(&vendor, "vendor"), (&shop, "retailer")],
    )
    .await;
    log(
        &app,
        &vendor,
        &zelda.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "Called back",
    )
    .await;
    let got = server.wait_for(2).await;
    let call = mail_to(&got, "sam@shop.example", "Call logged");
    assert_eq!(
        call.parsed().subject().unwrap(),
        "[Liaison] A shared customer: Call logged by vendor Ltd: Called back"
    );
    let opened = mail_to(&got, "sam@shop.example", "Warranty claim");
    let text = opened.parsed().body_text(0).unwrap().to_string();
    assert!(
        text.contains(&format!("Customer: a shared customer ({})", zelda.name)),
        "{text}"
    );
    // A task only: the case and its customer are read from the store, through the
    // shop's view.
    assign_task(&app, &vendor, &case.name, &shop, "Collect the unit").await;
    let_the_window_pass(&app);
    let got = server.wait_for(3).await;
    let task = mail_to(&got, "sam@shop.example", "Collect the unit");
    let text = task.parsed().body_text(0).unwrap().to_string();
    assert!(
        text.contains(&format!("Customer: a shared customer ({})", zelda.name)),
        "{text}"
    );
    for mail in &got {
        let all = readable(mail).to_lowercase();
        for hidden in ["zelda", "secretname"] {
            assert!(!all.contains(hidden), "{hidden} named in: {all}");
        }
    }
}

async fn names_that_look_encoded_or_are_not_ascii_reach_the_subject_exactly(backend: Backend) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let vera = member(
        &app,
        &vendor,
        "Vera =?utf-8?B?SGVsbG8=?= Ørsted",
        "vera@vendor.example",
        "UTC",
    )
    .await;
    // A name cannot carry a line break into a header: the text rule refuses it.
    let refused = app
        .customers(&vendor.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("Ada\r\nBcc: x@y.example", "Lovelace", "")),
            request_id: String::new(),
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let encoded = create(&app, &vendor, person("=?utf-8?B?SGVsbG8=?=", "", "")).await;
    let accented = create(&app, &vendor, person("Zoë", "Ångström", "")).await;
    follow(&app, &vendor, &vera, &[&encoded.name, &accented.name]).await;
    for c in [&encoded, &accented] {
        let mut tagged = c.clone();
        tagged.etag.clear();
        tagged.tags = vec!["vip".into()];
        update(&app, &vendor.admin_key, tagged, &["tags"])
            .await
            .unwrap();
    }
    let got = server.wait_for(2).await;
    for (name, mail) in [
        (
            "=?utf-8?B?SGVsbG8=?=",
            mail_to(&got, "vera@vendor.example", "SGVsbG8"),
        ),
        ("Zoë Ångström", mail_to(&got, "vera@vendor.example", "Zoë")),
    ] {
        let parsed = mail.parsed();
        assert_eq!(
            parsed.subject().unwrap(),
            format!("[Liaison] {name}: Customer updated: tags")
        );
        let raw = header(&parsed, "Subject");
        assert!(raw.starts_with("=?utf-8?b?"), "encoded on the wire: {raw}");
        assert!(raw.is_ascii() && !raw.contains(name), "{raw}");
        let to = parsed.to().and_then(|a| a.first()).unwrap();
        assert_eq!(to.name(), Some("Vera =?utf-8?B?SGVsbG8=?= Ørsted"));
        assert_eq!(to.address(), Some("vera@vendor.example"));
        let head = String::from_utf8_lossy(&mail.raw);
        let head = head.split("\r\n\r\n").next().unwrap();
        assert!(
            !head.contains("=?utf-8?B?SGVsbG8=?="),
            "no header carries the look-alike as it is: {head}"
        );
    }
}

async fn a_sender_that_lost_its_lease_cannot_overwrite_the_outcome(backend: Backend) {
    // The server takes three seconds to accept the message...
    let server = SmtpServer::start(Script {
        data_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(backend, sending_to(&server)).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let m = member(&app, &vendor, "Ok", "ok@vendor.example", "UTC").await;
    follow(&app, &vendor, &m, &[&c.name]).await;
    let late_before = late_results();
    update(
        &app,
        &vendor.admin_key,
        rename(&c, "Augusta"),
        &["given_name"],
    )
    .await
    .unwrap();
    // ...so while the hub's worker waits for it, the email's lease can (as far as
    // another worker can tell) run out: that other worker takes it over and records
    // its own outcome.
    server
        .wait_until("the hub's worker sending", |s| s.data_started() > 0)
        .await;
    assert_eq!(server.data_started(), 1, "the hub's worker is sending");
    let later = liaison::domain::now() + jiff::SignedDuration::from_mins(10);
    let taken = eventually_claimed(&app, later).await;
    app.store
        .record_email(&taken, &liaison::store::EmailOutcome::Sent, later)
        .await
        .unwrap();
    // The first worker's outcome comes late and is dropped, counted; the message
    // went out once.
    for _ in 0..400 {
        if late_results() > late_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        late_results() > late_before,
        "the late outcome was not dropped"
    );
    assert_eq!(server.wait_for(1).await.len(), 1);
}

/// Sets one notification category of `m` to `mode`.
async fn choose(
    app: &TestApp,
    org: &Org,
    m: &pb::Member,
    category: &str,
    mode: pb::NotificationMode,
) {
    let mut prefs = pb::NotificationPreferences {
        name: format!("{}/notificationPreferences", m.name),
        ..Default::default()
    };
    match category {
        "work_for_my_organization" => prefs.work_for_my_organization = mode as i32,
        "integration_health" => prefs.integration_health = mode as i32,
        _ => unreachable!("{category}"),
    }
    set_preferences(app, org, prefs, &[category])
        .await
        .expect("preferences");
}

async fn work_and_integration_news_reach_only_the_members_of_the_organization_who_want_it(
    backend: Backend,
) {
    let server = SmtpServer::start(Script::default()).await;
    let app = spawn_app_with(backend, |c| {
        sending_to(&server)(c);
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_networks = true;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    // Partners before anyone is a member, so the proposal is no one's news.
    app.partner(&vendor, &shop).await;
    let jane = create(&app, &vendor, person("Jane", "Doe", "jane@example.com")).await;
    // Vera keeps the defaults (both immediate); Otto turns work off, Ivy integration.
    member(&app, &vendor, "Vera", "vera@vendor.example", "UTC").await;
    let otto = member(&app, &vendor, "Otto", "otto@vendor.example", "UTC").await;
    let ivy = member(&app, &vendor, "Ivy", "ivy@vendor.example", "UTC").await;
    choose(
        &app,
        &vendor,
        &otto,
        "work_for_my_organization",
        pb::NotificationMode::Off,
    )
    .await;
    choose(
        &app,
        &vendor,
        &ivy,
        "integration_health",
        pb::NotificationMode::Off,
    )
    .await;
    member(&app, &shop, "Sam", "sam@shop.example", "UTC").await;

    // Work for the vendor: the shop asks for access to a record the vendor holds.
    let found = app
        .sharing(&shop.read_key)
        .match_customer(pb::MatchCustomerRequest {
            email: "jane@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .matches;
    app.sharing(&shop.admin_key)
        .create_access_request(pb::CreateAccessRequestRequest {
            access_request: Some(pb::AccessRequest {
                r#match: found[0].r#match.clone(),
                level: pb::AccessLevel::Read as i32,
                fields: vec!["emails".into()],
                reason: "She called about her warranty".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("access request");
    let got = server.wait_for(2).await;
    // Nothing else is due: not Otto (work off), not the shop, whose own request it is.
    app.settle().await;
    let mut to: Vec<&str> = got.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["ivy@vendor.example", "vera@vendor.example"]);
    assert_eq!(server.mail().len(), 2);
    for mail in &got {
        let parsed = mail.parsed();
        assert_eq!(
            parsed.subject().unwrap(),
            "[Liaison] Access request from shop Ltd: Access requested by shop Ltd"
        );
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(
            text.contains(&format!("Customer: Jane Doe ({})", jane.name)),
            "{text}"
        );
        assert!(
            text.contains("Reason: She called about her warranty"),
            "{text}"
        );
        assert!(text.contains("Fields: emails"), "{text}");
    }

    // The vendor's integration breaks: its receiver answers 410, which disables the
    // endpoint at the first delivery.
    let receiver = crate::webhooks::Receiver::scripted(|_| crate::webhooks::reply(410)).await;
    app.webhooks(&vendor.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: vendor.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: receiver.url.clone(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("endpoint");
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    let got = server.wait_for(4).await;
    app.settle().await;
    assert_eq!(server.mail().len(), 4, "Ivy and the shop hear nothing");
    for to in ["vera@vendor.example", "otto@vendor.example"] {
        let parsed = mail_to(&got, to, "Webhook endpoint").parsed();
        assert_eq!(
            parsed.subject().unwrap(),
            format!(
                "[Liaison] Webhook endpoint {}: Webhook endpoint disabled",
                receiver.url
            )
        );
        let text = parsed.body_text(0).unwrap().to_string();
        assert!(
            text.contains("Reason: the receiver answered 410 Gone"),
            "{text}"
        );
    }
}

/// Claims, as another worker at `at`, the email the hub's worker is sending.
async fn eventually_claimed(app: &TestApp, at: jiff::Timestamp) -> liaison::store::EmailToSend {
    for _ in 0..400 {
        let claimed = app
            .store
            .claim_emails(at, at + jiff::SignedDuration::from_mins(2), 10)
            .await
            .unwrap();
        if let Some(email) = claimed.into_iter().next() {
            return email;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no email was queued");
}

/// The hub's count of email outcomes dropped for a lost lease.
fn late_results() -> u64 {
    liaison::metrics::metrics()
        .late_results
        .get_or_create(&liaison::metrics::QueueLabels { queue: "email" })
        .get()
}
