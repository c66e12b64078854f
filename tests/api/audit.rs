//! The audit log: every audited event of an organization's feed in a hash chain with
//! signed checkpoints; verification finds rows edited, deleted, inserted or moved
//! directly in the database; an export verifies offline; erasure keeps it valid.

use std::process::Command;

use liaison::app::audit::{AuditSettings, Verdict, sign_checkpoints, verify};
use liaison::domain::audit::{self, Fault, Hash, SigningKey};
use liaison::pb;
use prost::Message;
use tonic::Code;

use crate::customers::{create, person};
use crate::events::feed;
use crate::helpers::*;
use crate::sharing::{grant, log, update};
use crate::webhooks::{create_endpoint, test_webhooks};

crate::on_both_backends!(
    every_change_is_chained_in_each_organizations_log_and_an_export_verifies_offline,
    rows_tampered_with_in_the_database_are_found_and_the_first_bad_one_named,
    erasure_empties_the_content_and_the_chain_still_verifies,
);

/// A hub that signs checkpoints with a fresh key (and can call webhooks on localhost).
async fn audited_app(backend: Backend) -> (TestApp, AuditSettings) {
    let key = SigningKey::generate();
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.audit.signing_key = key.clone();
    })
    .await;
    let settings = AuditSettings::from_config(&app.config.audit).unwrap();
    (app, settings)
}

/// Every page of `org`'s log as `key` exports it, `size` entries a page.
async fn export(
    app: &TestApp,
    key: &str,
    org: &Org,
    size: i32,
) -> Result<Vec<pb::ListAuditEntriesResponse>, tonic::Status> {
    let mut pages = vec![];
    let mut page_token = String::new();
    loop {
        let page = app
            .audit(key)
            .list_audit_entries(pb::ListAuditEntriesRequest {
                parent: org.name.clone(),
                start_position: 0,
                page_size: size,
                page_token,
            })
            .await?
            .into_inner();
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return Ok(pages);
        }
    }
}

fn verdict_of<'a>(verdicts: &'a [Verdict], slug: &str) -> &'a Verdict {
    verdicts
        .iter()
        .find(|v| v.slug == slug)
        .unwrap_or_else(|| panic!("no verdict for {slug}: {verdicts:?}"))
}

/// A vendor and a retailer in partnership, a customer shared, and each kind of
/// audited change made once; one interaction logged (not audited).
async fn busy_network(app: &TestApp) -> (Org, Org, pb::Customer) {
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let retailer = app
        .create_org("retailer", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&vendor, &retailer).await;
    let c = create(app, &vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    let mut changed = c.clone();
    changed.given_name = "Augusta".into();
    update(app, &vendor.admin_key, changed, &["given_name"])
        .await
        .unwrap();
    grant(
        app,
        &vendor,
        &c.name,
        &retailer,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .unwrap();
    log(
        app,
        &vendor,
        &c.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "called about the order",
    )
    .await;
    let sharing = app.sharing(&vendor.admin_key);
    let preset = sharing
        .clone()
        .create_field_preset(pb::CreateFieldPresetRequest {
            parent: vendor.name.clone(),
            field_preset: Some(pb::FieldPreset {
                display_name: "Names".into(),
                fields: vec!["given_name".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    sharing
        .clone()
        .delete_field_preset(pb::DeleteFieldPresetRequest {
            name: preset.name,
            ..Default::default()
        })
        .await
        .unwrap();
    let endpoint = create_endpoint(app, &vendor, "http://127.0.0.1:9/hook", &["customer.*"])
        .await
        .unwrap();
    let webhooks = app.webhooks(&vendor.admin_key);
    webhooks
        .clone()
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            webhook_endpoint: Some(pb::WebhookEndpoint {
                name: endpoint.name.clone(),
                description: "ERP, production".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    webhooks
        .clone()
        .rotate_webhook_endpoint_secret(pb::RotateWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    webhooks
        .clone()
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
            name: endpoint.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let spare = app
        .operator()
        .create_api_key(new_api_key(&vendor.name, &[pb::ApiKeyScope::Read]))
        .await
        .unwrap()
        .into_inner();
    app.operator()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: spare.api_key.unwrap().name,
            ..Default::default()
        })
        .await
        .unwrap();
    let certificate = app
        .operator()
        .register_client_certificate(pb::RegisterClientCertificateRequest {
            parent: vendor.name.clone(),
            client_certificate: Some(pb::ClientCertificate {
                display_name: "ERP".into(),
                r#match: Some(pb::client_certificate::Match::SubjectCommonName(
                    "erp.vendor.example".into(),
                )),
                scopes: vec![pb::ApiKeyScope::Read as i32],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    app.operator()
        .revoke_client_certificate(pb::RevokeClientCertificateRequest {
            name: certificate.name,
            ..Default::default()
        })
        .await
        .unwrap();
    app.settle().await;
    (vendor, retailer, c)
}

async fn every_change_is_chained_in_each_organizations_log_and_an_export_verifies_offline(
    backend: Backend,
) {
    let (app, settings) = audited_app(backend).await;
    let (vendor, retailer, _) = busy_network(&app).await;

    // Keys, endpoints and presets are announced to their organization alone.
    let vendor_feed = feed(&app, &vendor.read_key).await;
    let types: Vec<&str> = vendor_feed.iter().map(|e| e.r#type.as_str()).collect();
    for expected in [
        "api_key.created",
        "api_key.revoked",
        "client_certificate.registered",
        "client_certificate.revoked",
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.deleted",
        "field_preset.created",
        "field_preset.deleted",
        "interaction.logged",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    let updated = vendor_feed
        .iter()
        .find(|e| e.r#type == "webhook_endpoint.updated")
        .unwrap();
    assert_eq!(updated.changed_fields, ["description"]);
    let retailer_feed = feed(&app, &retailer.read_key).await;
    assert!(
        !retailer_feed
            .iter()
            .any(|e| e.r#type.starts_with("webhook_endpoint.")
                || e.r#type.starts_with("field_preset.")
                || e.r#type.starts_with("client_certificate.")
                || (e.r#type.starts_with("api_key.") && e.resource.contains("/vendor/"))),
        "{retailer_feed:?}"
    );

    // The log is the feed without interactions, in feed order, numbered 1, 2, 3, …
    let pages = export(&app, &vendor.admin_key, &vendor, 7).await.unwrap();
    assert!(pages.len() > 2, "paged: {}", pages.len());
    let entries: Vec<&pb::AuditEntry> = pages.iter().flat_map(|p| &p.entries).collect();
    let audited: Vec<&pb::Event> = vendor_feed
        .iter()
        .filter(|e| e.r#type != "interaction.logged")
        .collect();
    assert_eq!(entries.len(), audited.len());
    for (i, (entry, event)) in entries.iter().zip(&audited).enumerate() {
        assert_eq!(entry.position, i as i64 + 1);
        assert_eq!(
            entry.name,
            format!("organizations/vendor/auditEntries/{}", i + 1)
        );
        assert_eq!(
            (entry.sequence, &entry.event_id),
            (event.sequence, &event.id)
        );
        assert_eq!(entry.event_type, event.r#type);
        assert_eq!(
            pb::Event::decode(entry.content.as_slice()).unwrap(),
            **event
        );
        assert!(!entry.erased);
    }
    assert_eq!(pages[0].previous_hash, vec![0; 32]);
    assert_eq!(pages[1].previous_hash, entries[6].hash);
    assert_eq!(pages[0].head_position, entries.len() as i64);

    // Every organization's chain verifies, also while the hub goes on writing.
    let writer = {
        let (channel, key) = (app.channel.clone(), vendor.admin_key.clone());
        tokio::spawn(async move {
            for i in 0..30 {
                CustomerServiceClient::with_interceptor(channel.clone(), Bearer(key.clone()))
                    .create_customer(pb::CreateCustomerRequest {
                        customer: Some(person("Busy", &format!("Writer{i}"), "")),
                        request_id: String::new(),
                    })
                    .await
                    .unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let verdicts = verify(&app.store, &settings.trusted, None).await.unwrap();
        assert!(verdicts.iter().all(|v| v.outcome.is_ok()), "{verdicts:?}");
    }
    writer.await.unwrap();
    app.settle().await;
    let verdicts = verify(&app.store, &settings.trusted, None).await.unwrap();
    assert!(verdicts.len() >= 2, "{verdicts:?}");
    assert!(verdicts.iter().all(|v| v.outcome.is_ok()), "{verdicts:?}");
    let key = settings.signing_key.as_ref().unwrap();
    assert!(sign_checkpoints(&app.store, key).await.unwrap() >= 2);
    assert_eq!(
        sign_checkpoints(&app.store, key).await.unwrap(),
        0,
        "nothing new to sign"
    );
    let verdicts = verify(&app.store, &settings.trusted, None).await.unwrap();
    let vendor_summary = verdict_of(&verdicts, "vendor").outcome.clone().unwrap();
    // And the 30 customers written meanwhile.
    assert_eq!(vendor_summary.entries, entries.len() as u64 + 30);
    assert_eq!(vendor_summary.checkpoints, 1);
    // Another key's checkpoints are not trusted.
    let stranger = SigningKey::parse(&SigningKey::generate()).unwrap();
    let verdicts = verify(&app.store, &[stranger.public_key()], None)
        .await
        .unwrap();
    assert!(matches!(
        verdict_of(&verdicts, "vendor").outcome,
        Err(Fault::Checkpoint { .. })
    ));

    // The walls: only the organization's admin keys and the operator export it.
    for (key, code) in [
        (&retailer.admin_key, Code::NotFound),
        (&vendor.read_key, Code::PermissionDenied),
    ] {
        let status = export(&app, key, &vendor, 10).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    let by_operator = export(&app, &app.operator_key, &vendor, 1000)
        .await
        .unwrap();
    assert_eq!(by_operator[0].entries.len(), entries.len() + 30);
    assert_eq!(by_operator[0].checkpoints.len(), 1);
    let status = app
        .audit(&vendor.admin_key)
        .list_audit_entries(pb::ListAuditEntriesRequest {
            parent: vendor.name.clone(),
            start_position: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Offline: the CLI exports through the RPC and verifies the file with the key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vendor.jsonl");
    let exported = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["audit", "export", "--organization", "vendor", "--out"])
        .arg(&file)
        .args(["--server", &format!("http://{}", app.addr)])
        .env("LIAISON_API_KEY", &vendor.admin_key)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    let public = audit::public_key_text(&key.public_key());
    let offline = |file: &std::path::Path, public: &str| {
        Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["audit", "verify"])
            .arg(file)
            .args(["--public-key", public])
            .output()
            .unwrap()
    };
    let checked = offline(&file, &public);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        said.contains(&format!("entries 1 to {}", entries.len() + 30))
            && said.contains("1 checkpoints verified"),
        "{said}"
    );
    // The file edited: one event's type changed in its JSON.
    let text = std::fs::read_to_string(&file).unwrap();
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(
        &forged,
        text.replacen(
            "\"webhook_endpoint.updated\"",
            "\"webhook_endpoint.created\"",
            1,
        ),
    )
    .unwrap();
    let checked = offline(&forged, &public);
    assert!(!checked.status.success());
    let position = entries
        .iter()
        .find(|e| e.event_type == "webhook_endpoint.updated")
        .unwrap()
        .position;
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains(&format!("first bad entry {position}")),
        "{checked:?}"
    );
    // Checkpoints stripped from the file: nothing is vouched for by the key given.
    let stripped = dir.path().join("stripped.jsonl");
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut page: serde_json::Value = serde_json::from_str(line).unwrap();
            page.as_object_mut().unwrap().remove("checkpoints");
            page.to_string()
        })
        .collect();
    std::fs::write(&stripped, lines.join("\n")).unwrap();
    let checked = offline(&stripped, &public);
    assert!(!checked.status.success());
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("no entry is vouched"),
        "{checked:?}"
    );
    // Another organization's export is not taken for this one's.
    let checked = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["audit", "verify"])
        .arg(&file)
        .args([
            "--public-key",
            &public,
            "--organization-uid",
            "someone-else",
        ])
        .output()
        .unwrap();
    assert!(!checked.status.success(), "{checked:?}");
    // Checked with another key: the checkpoint is not vouched for.
    let checked = offline(&file, &audit::public_key_text(&stranger.public_key()));
    assert!(!checked.status.success());
    assert!(
        String::from_utf8_lossy(&checked.stderr).contains("not trusted"),
        "{checked:?}"
    );
}

/// A byte string as a literal of `app`'s database.
fn bytes(app: &TestApp, b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if app.config.database.url.starts_with("sqlite:") {
        format!("X'{hex}'")
    } else {
        format!("'\\x{hex}'::bytea")
    }
}

async fn rows_tampered_with_in_the_database_are_found_and_the_first_bad_one_named(
    backend: Backend,
) {
    let (app, settings) = audited_app(backend).await;
    busy_network(&app).await;
    let key = settings.signing_key.as_ref().unwrap();
    sign_checkpoints(&app.store, key).await.unwrap();
    let org = app
        .store
        .audited_organizations()
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.slug == "vendor")
        .unwrap();
    let n = org.audit_position;
    assert!(n >= 10, "{n} entries");
    let id = &org.organization_id;
    let rows = format!("audit_entries WHERE organization_id = '{id}'");
    let stored = app
        .store
        .audit_entries(id, (1, i64::MAX), 10_000)
        .await
        .unwrap();
    let about_customer = stored
        .iter()
        .find(|r| !r.customer.is_empty())
        .unwrap()
        .position;
    let about_none = stored
        .iter()
        .find(|r| r.customer.is_empty())
        .unwrap()
        .position;
    tamper(
        &app,
        "CREATE TABLE audit_copy AS SELECT * FROM audit_entries; \
         CREATE TABLE feeds_copy AS SELECT * FROM event_feeds",
    )
    .await;
    let restore = "DELETE FROM audit_entries; INSERT INTO audit_entries SELECT * FROM audit_copy; \
                   UPDATE event_feeds SET audit_position = (SELECT c.audit_position FROM feeds_copy c \
                   WHERE c.organization_id = event_feeds.organization_id), \
                   audit_hash = (SELECT c.audit_hash FROM feeds_copy c \
                   WHERE c.organization_id = event_feeds.organization_id)";
    // An erasure entry forged at the end (a valid link: anyone can compute one) to pass
    // off a customer's emptied entry as erased.
    let forged_erasure = {
        let victim = stored.iter().find(|r| !r.customer.is_empty()).unwrap();
        let last = stored.last().unwrap();
        let mut forged = audit::Record {
            position: last.position + 1,
            sequence: 0,
            event_id: "forged".into(),
            event_type: "customer.erased".into(),
            resource: format!("customers/{}", victim.customer),
            create_time: last.create_time + 1,
            customer: victim.customer.clone(),
            erases: victim.customer.clone(),
            content: Some(b"{}".to_vec()),
            salt: Some(vec![1; audit::SALT_BYTES]),
            content_hash: audit::content_hash(&[1; audit::SALT_BYTES], b"{}").to_vec(),
            hash: vec![],
        };
        let previous: Hash = last.hash.as_slice().try_into().unwrap();
        let content: Hash = forged.content_hash.as_slice().try_into().unwrap();
        forged.hash = audit::entry_hash(&forged.header(id), &content, &previous).to_vec();
        format!(
            "INSERT INTO audit_entries (organization_id, position, sequence, event_id, type, \
             resource, customer_id, erases, create_time, content, salt, content_hash, hash) \
             VALUES ('{id}', {}, 0, 'forged', 'customer.erased', '{}', '{}', '{}', {}, {}, {}, {}, {}); \
             UPDATE event_feeds SET audit_position = {}, audit_hash = {} WHERE organization_id = '{id}'; \
             UPDATE audit_entries SET content = NULL, salt = NULL \
             WHERE organization_id = '{id}' AND position = {}",
            forged.position,
            forged.resource,
            forged.customer,
            forged.erases,
            forged.create_time,
            bytes(&app, b"{}"),
            bytes(&app, &[1; audit::SALT_BYTES]),
            bytes(&app, &forged.content_hash),
            bytes(&app, &forged.hash),
            forged.position,
            bytes(&app, &forged.hash),
            victim.position,
        )
    };
    let forged_position = stored.last().unwrap().position + 1;

    let first_fault = async || {
        let verdicts = verify(
            &app.store,
            &settings.trusted,
            Some(&liaison::domain::Slug::parse("vendor").unwrap()),
        )
        .await
        .unwrap();
        verdicts[0].outcome.clone().unwrap_err()
    };
    type Expected = Box<dyn Fn(&Fault) -> bool>;
    let cases: Vec<(&str, String, Expected)> = vec![
        (
            "content edited",
            format!(
                "UPDATE audit_entries SET content = {} WHERE organization_id = '{id}' AND position = 3",
                bytes(&app, b"forged")
            ),
            Box::new(|f| matches!(f, Fault::Content { position: 3, .. })),
        ),
        (
            "type edited",
            format!(
                "UPDATE audit_entries SET type = 'customer.deleted' WHERE organization_id = '{id}' AND position = 4"
            ),
            Box::new(|f| matches!(f, Fault::Hash { position: 4, .. })),
        ),
        (
            "content, salt and content hash edited",
            format!(
                "UPDATE audit_entries SET content = {}, salt = {}, content_hash = {} \
                 WHERE organization_id = '{id}' AND position = 2",
                bytes(&app, b"forged"),
                bytes(&app, &[0; audit::SALT_BYTES]),
                bytes(
                    &app,
                    &audit::content_hash(&[0; audit::SALT_BYTES], b"forged")
                )
            ),
            Box::new(|f| matches!(f, Fault::Hash { position: 2, .. })),
        ),
        (
            "content of an entry about a customer removed as if erased",
            format!(
                "UPDATE audit_entries SET content = NULL, salt = NULL \
                 WHERE organization_id = '{id}' AND position = {about_customer}"
            ),
            Box::new(
                move |f| matches!(f, Fault::Emptied { position, .. } if *position == about_customer),
            ),
        ),
        (
            "content of an entry about no customer removed",
            format!(
                "UPDATE audit_entries SET content = NULL, salt = NULL \
                 WHERE organization_id = '{id}' AND position = {about_none}"
            ),
            Box::new(
                move |f| matches!(f, Fault::Content { position, .. } if *position == about_none),
            ),
        ),
        (
            "head reset to hide the log",
            format!("UPDATE event_feeds SET audit_position = 0 WHERE organization_id = '{id}'"),
            Box::new(|f| {
                matches!(
                    f,
                    Fault::Missing {
                        expected: 1,
                        found: None
                    } | Fault::Head { .. }
                )
            }),
        ),
        (
            "row deleted",
            format!("DELETE FROM {rows} AND position = 5"),
            Box::new(|f| {
                *f == Fault::Missing {
                    expected: 5,
                    found: Some(6),
                }
            }),
        ),
        (
            "rows swapped",
            format!(
                "UPDATE audit_entries SET position = -2 WHERE organization_id = '{id}' AND position = 2; \
                 UPDATE audit_entries SET position = 2 WHERE organization_id = '{id}' AND position = 6; \
                 UPDATE audit_entries SET position = 6 WHERE organization_id = '{id}' AND position = -2"
            ),
            Box::new(|f| matches!(f, Fault::Hash { position: 2, .. })),
        ),
        (
            "row inserted",
            format!(
                "UPDATE audit_entries SET position = position + 100000 WHERE organization_id = '{id}' AND position >= 4; \
                 UPDATE audit_entries SET position = position - 99999 WHERE organization_id = '{id}' AND position >= 100000; \
                 INSERT INTO audit_entries SELECT organization_id, 4, sequence, 'forged', type, resource, \
                 customer_id, erases, create_time, content, salt, content_hash, hash FROM audit_entries \
                 WHERE organization_id = '{id}' AND position = 3"
            ),
            Box::new(|f| matches!(f, Fault::Hash { position: 4, .. })),
        ),
        (
            "an erasure forged to hide content",
            forged_erasure,
            Box::new(
                move |f| matches!(f, Fault::Erasure { position, .. } if *position == forged_position),
            ),
        ),
        (
            "tail deleted",
            format!("DELETE FROM {rows} AND position > {}", n - 2),
            Box::new(move |f| {
                *f == Fault::Missing {
                    expected: n - 1,
                    found: None,
                } || *f
                    == Fault::Head {
                        last: n - 2,
                        head: n,
                    }
            }),
        ),
    ];
    for (what, sql, expected) in cases {
        tamper(&app, &sql).await;
        let fault = first_fault().await;
        assert!(expected(&fault), "{what}: {fault:?}");
        tamper(&app, restore).await;
        let verdicts = verify(&app.store, &settings.trusted, None).await.unwrap();
        assert!(
            verdicts.iter().all(|v| v.outcome.is_ok()),
            "restored after {what}: {verdicts:?}"
        );
    }

    // An edit with every later hash recomputed (anyone can compute SHA-256) passes the
    // chain but not the signed checkpoint.
    let mut records = app
        .store
        .audit_entries(id, (1, i64::MAX), 10_000)
        .await
        .unwrap();
    let salt = [7; audit::SALT_BYTES];
    let mut previous: Hash = records[1].hash.as_slice().try_into().unwrap();
    let mut sql = format!(
        "UPDATE audit_entries SET content = {}, salt = {}, content_hash = {} \
         WHERE organization_id = '{id}' AND position = 3;",
        bytes(&app, b"forged"),
        bytes(&app, &salt),
        bytes(&app, &audit::content_hash(&salt, b"forged"))
    );
    records[2].content_hash = audit::content_hash(&salt, b"forged").to_vec();
    for r in &records[2..] {
        let content: Hash = r.content_hash.as_slice().try_into().unwrap();
        previous = audit::entry_hash(&r.header(id), &content, &previous);
        sql.push_str(&format!(
            " UPDATE audit_entries SET hash = {} WHERE organization_id = '{id}' AND position = {};",
            bytes(&app, &previous),
            r.position
        ));
    }
    sql.push_str(&format!(
        " UPDATE event_feeds SET audit_hash = {} WHERE organization_id = '{id}';",
        bytes(&app, &previous)
    ));
    tamper(&app, &sql).await;
    let fault = first_fault().await;
    assert!(
        matches!(fault, Fault::Checkpoint { position, .. } if position == n),
        "{fault:?}"
    );
    let unsigned = verify(
        &app.store,
        &[],
        Some(&liaison::domain::Slug::parse("vendor").unwrap()),
    )
    .await
    .unwrap();
    assert!(
        matches!(unsigned[0].outcome, Err(Fault::Checkpoint { .. })),
        "the signed hash is compared even without a trusted key: {unsigned:?}"
    );

    // The operator's command names the organization and the first bad entry, exit 1.
    let out = crate::cli::liaison(
        &app.config.database.url,
        &["admin", "audit", "verify", "--organization", "vendor"],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("BAD\tvendor\tfirst bad entry {n}")),
        "{said}"
    );
}

async fn erasure_empties_the_content_and_the_chain_still_verifies(backend: Backend) {
    let (app, settings) = audited_app(backend).await;
    let (vendor, retailer, ada) = busy_network(&app).await;
    let other = create(
        &app,
        &vendor,
        person("Grace", "Hopper", "grace@example.com"),
    )
    .await;
    // A shop that saw Ada and no longer does: not told of the erasure, but its log
    // records it, and its entries about her are emptied.
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&vendor, &shop).await;
    let shared = grant(
        &app,
        &vendor,
        &ada.name,
        &shop,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .unwrap();
    app.sharing(&vendor.admin_key)
        .revoke_grant(pb::RevokeGrantRequest {
            name: shared.name,
            ..Default::default()
        })
        .await
        .unwrap();
    // A duplicate merged into Ada: erasing her empties its entries too.
    let twin = create(&app, &vendor, person("Ada", "King", "ada.king@example.com")).await;
    app.customers(&vendor.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: ada.name.clone(),
            merged: vec![twin.name.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    app.customers(&vendor.admin_key)
        .erase_customer(pb::EraseCustomerRequest {
            name: ada.name.clone(),
            reason: "GDPR article 17 request".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.settle().await;
    sign_checkpoints(&app.store, settings.signing_key.as_ref().unwrap())
        .await
        .unwrap();
    let verdicts = verify(&app.store, &settings.trusted, None).await.unwrap();
    assert!(verdicts.iter().all(|v| v.outcome.is_ok()), "{verdicts:?}");

    for (org, key) in [
        (&vendor, &vendor.admin_key),
        (&retailer, &retailer.admin_key),
    ] {
        let pages = export(&app, key, org, 1000).await.unwrap();
        let entries: Vec<&pb::AuditEntry> = pages.iter().flat_map(|p| &p.entries).collect();
        let about = |name: &str| -> Vec<&pb::AuditEntry> {
            entries
                .iter()
                .filter(|e| e.customer == name)
                .copied()
                .collect()
        };
        let erased = about(&ada.name);
        assert!(erased.len() >= 2, "{}: {erased:?}", org.name);
        let erasure = erased
            .iter()
            .find(|e| e.event_type == "customer.erased")
            .expect("the erasure is in the log");
        assert!(
            !erasure.erased,
            "the erasure keeps its own content (name and state)"
        );
        for e in erased.iter().filter(|e| e.event_type != "customer.erased") {
            assert!(
                e.erased && e.content.is_empty() && e.salt.is_empty(),
                "{e:?}"
            );
            assert_eq!(e.content_hash.len(), 32);
        }
        if org.name == vendor.name {
            assert_eq!(erasure.erases, [ada.name.clone(), twin.name.clone()]);
            let twins = about(&twin.name);
            assert!(
                !twins.is_empty() && twins.iter().all(|e| e.erased),
                "{twins:?}"
            );
            let others = about(&other.name);
            assert!(!others.is_empty());
            assert!(
                others
                    .iter()
                    .all(|e| !e.erased && e.salt.len() == audit::SALT_BYTES)
            );
        }
        assert!(erasure.sequence > 0, "told through the feed");
        let summary = verdict_of(&verdicts, org.name.trim_start_matches("organizations/"))
            .outcome
            .clone()
            .unwrap();
        let emptied = entries.iter().filter(|e| e.erased).count();
        assert!(emptied > 0);
        assert_eq!(summary.erased, emptied as u64);
    }
    let pages = export(&app, &shop.admin_key, &shop, 1000).await.unwrap();
    let entries: Vec<&pb::AuditEntry> = pages.iter().flat_map(|p| &p.entries).collect();
    let about_ada: Vec<&&pb::AuditEntry> =
        entries.iter().filter(|e| e.customer == ada.name).collect();
    let recorded = about_ada
        .iter()
        .find(|e| e.event_type == "customer.erased")
        .expect("the shop's log records the erasure");
    assert_eq!(recorded.sequence, 0, "not in the shop's feed");
    assert_eq!(
        recorded.erases,
        std::slice::from_ref(&ada.name),
        "the twin was never the shop's"
    );
    assert!(about_ada.len() >= 3, "{about_ada:?}");
    assert!(
        about_ada
            .iter()
            .filter(|e| e.event_type != "customer.erased")
            .all(|e| e.erased)
    );
    assert!(verdict_of(&verdicts, "shop").outcome.is_ok());
    assert!(
        !feed(&app, &shop.read_key)
            .await
            .iter()
            .any(|e| e.r#type == "customer.erased")
    );
}
