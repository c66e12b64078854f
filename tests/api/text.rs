//! The one text rule end to end: every free-text field of a request refuses NUL and
//! control characters (and, on one line, newlines and bidirectional overrides) with
//! INVALID_TEXT under its own path, so nothing of the kind reaches the database
//! (PostgreSQL would refuse a NUL with an error the caller could not act on).

use std::fmt::Debug;

use liaison::domain::Lines;
use liaison::pb;
use tonic::{Code, Status};

use crate::customers::{create, person};
use crate::helpers::*;

crate::on_both_backends!(
    every_free_text_field_refuses_control_characters_under_its_own_path,
    multi_line_text_is_stored_with_lf_and_limits_count_characters,
);

/// Puts a value into one field of a request message.
type Edit<T> = fn(&mut T, &str);

/// What no field takes, then what only multi-line fields take.
fn refused(lines: Lines) -> Vec<&'static str> {
    let mut values = vec!["a\0b", "a\u{1b}[2Jb", "a\u{85}b"];
    if lines == Lines::One {
        values.extend(["a\nb", "a\u{202E}b"]);
    }
    values
}

#[track_caller]
fn assert_refused<T: Debug>(result: Result<T, Status>, field: &str, value: &str) {
    let status = assert_error(result, Code::InvalidArgument, "INVALID_TEXT");
    assert_eq!(violated_fields(&status), [field], "{value:?} in {field}");
}

/// A person with every kind of profile text set to something valid.
fn full_customer() -> pb::Customer {
    let mut c = person("Jane", "Doe", "jane@example.com");
    c.legal_name = "Jane Doe Consulting".into();
    c.phones = vec![pb::PhoneContact {
        number: "+4930901820".into(),
        label: "desk".into(),
        primary: true,
    }];
    c.addresses = vec![pb::PostalAddress {
        label: "office".into(),
        lines: vec!["Unter den Linden 1".into()],
        locality: "Berlin".into(),
        region: "Berlin".into(),
        postal_code: "10117".into(),
        country_code: "DE".into(),
    }];
    c.tags = vec!["vip".into()];
    c.attributes = [("tier".to_owned(), "gold".to_owned())].into();
    c.external_id = "C-1".into();
    c
}

fn interaction(summary: &str, body: &str, channel: &str) -> pb::Interaction {
    pb::Interaction {
        r#type: pb::InteractionType::Call as i32,
        occur_time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        summary: summary.into(),
        body: body.into(),
        channel: channel.into(),
        visibility: pb::InteractionVisibility::Shared as i32,
        ..Default::default()
    }
}

fn case(title: &str, description: &str, product: &str, customer: &str, org: &Org) -> pb::Case {
    pb::Case {
        template: "workflowTemplates/service_case".into(),
        customer: customer.into(),
        title: title.into(),
        description: description.into(),
        priority: pb::CasePriority::Normal as i32,
        participants: vec![pb::CaseParticipant {
            organization: org.name.clone(),
            role: "vendor".into(),
        }],
        fields: [("product".to_owned(), product.to_owned())].into(),
        ..Default::default()
    }
}

fn task(title: &str, description: &str, org: &Org) -> pb::CaseTask {
    pb::CaseTask {
        title: title.into(),
        description: description.into(),
        assignee: org.name.clone(),
        ..Default::default()
    }
}

async fn every_free_text_field_refuses_control_characters_under_its_own_path(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let globex = app
        .create_org("globex", pb::OrganizationKind::Retailer)
        .await;
    let key = &acme.admin_key;

    // CreateCustomer: names, labels, address parts, tags, attributes, external id.
    let profile: [(&str, Edit<pb::Customer>); 13] = [
        ("customer.given_name", |c, v| c.given_name = v.into()),
        ("customer.family_name", |c, v| c.family_name = v.into()),
        ("customer.legal_name", |c, v| c.legal_name = v.into()),
        ("customer.emails[0].label", |c, v| {
            c.emails[0].label = v.into()
        }),
        ("customer.phones[0].label", |c, v| {
            c.phones[0].label = v.into()
        }),
        ("customer.addresses[0].label", |c, v| {
            c.addresses[0].label = v.into()
        }),
        ("customer.addresses[0].lines[0]", |c, v| {
            c.addresses[0].lines[0] = v.into()
        }),
        ("customer.addresses[0].locality", |c, v| {
            c.addresses[0].locality = v.into()
        }),
        ("customer.addresses[0].region", |c, v| {
            c.addresses[0].region = v.into()
        }),
        ("customer.addresses[0].postal_code", |c, v| {
            c.addresses[0].postal_code = v.into()
        }),
        ("customer.tags[0]", |c, v| c.tags[0] = v.into()),
        (r#"customer.attributes["tier"]"#, |c, v| {
            c.attributes.insert("tier".into(), v.into());
        }),
        ("customer.external_id", |c, v| c.external_id = v.into()),
    ];
    for (field, edit) in profile {
        for value in refused(Lines::One) {
            let mut c = full_customer();
            edit(&mut c, value);
            let result = app
                .customers(key)
                .create_customer(pb::CreateCustomerRequest {
                    customer: Some(c),
                    request_id: String::new(),
                })
                .await;
            assert_refused(result, field, value);
        }
    }
    for value in refused(Lines::One) {
        let mut c = full_customer();
        c.attributes = [(value.to_owned(), "gold".to_owned())].into();
        let result = app
            .customers(key)
            .create_customer(pb::CreateCustomerRequest {
                customer: Some(c),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, &format!("customer.attributes[{value:?}]"), value);
    }

    let customer = create(&app, &acme, full_customer()).await;

    // UpdateCustomerOverlay: notes span lines; account number and status do not.
    let overlay_name = format!("{}/overlay", customer.name);
    let overlay_fields: [(&str, Lines, Edit<pb::CustomerOverlay>); 3] = [
        ("overlay.notes", Lines::Many, |o, v| o.notes = v.into()),
        ("overlay.account_number", Lines::One, |o, v| {
            o.account_number = v.into()
        }),
        ("overlay.status", Lines::One, |o, v| o.status = v.into()),
    ];
    for (field, lines, edit) in overlay_fields {
        for value in refused(lines) {
            let mut overlay = pb::CustomerOverlay {
                name: overlay_name.clone(),
                ..Default::default()
            };
            edit(&mut overlay, value);
            let result = app
                .customers(key)
                .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
                    overlay: Some(overlay),
                    update_mask: None,
                    request_id: String::new(),
                })
                .await;
            assert_refused(result, field, value);
        }
    }

    // ListCustomers: the filter is one line.
    for value in refused(Lines::One) {
        let result = app
            .customers(key)
            .list_customers(pb::ListCustomersRequest {
                filter: format!("external_id = \"{value}\""),
                ..Default::default()
            })
            .await;
        assert_refused(result, "filter", value);
    }

    // LogInteraction: summary and body span lines; the channel does not.
    let interaction_fields: [(&str, Lines, Edit<pb::Interaction>); 3] = [
        ("interaction.summary", Lines::Many, |i, v| {
            i.summary = v.into()
        }),
        ("interaction.body", Lines::Many, |i, v| i.body = v.into()),
        ("interaction.channel", Lines::One, |i, v| {
            i.channel = v.into()
        }),
    ];
    for (field, lines, edit) in interaction_fields {
        for value in refused(lines) {
            let mut logged = interaction("Called", "", "phone");
            edit(&mut logged, value);
            let result = app
                .interactions(key)
                .log_interaction(pb::LogInteractionRequest {
                    parent: customer.name.clone(),
                    interaction: Some(logged),
                    request_id: String::new(),
                })
                .await;
            assert_refused(result, field, value);
        }
    }

    // OpenCase: the title is one line; the description and a text field may span lines.
    let open = |c: pb::Case| {
        let mut cases = app.cases(key);
        async move {
            cases
                .open_case(pb::OpenCaseRequest {
                    case: Some(c),
                    request_id: String::new(),
                })
                .await
        }
    };
    for value in refused(Lines::One) {
        let result = open(case(value, "", "Blender", &customer.name, &acme)).await;
        assert_refused(result, "case.title", value);
    }
    for value in refused(Lines::Many) {
        let result = open(case("Broken", value, "Blender", &customer.name, &acme)).await;
        assert_refused(result, "case.description", value);
        let result = open(case("Broken", "", value, &customer.name, &acme)).await;
        assert_refused(result, "case.fields.product", value);
    }
    let opened = open(case("Broken", "", "Blender", &customer.name, &acme))
        .await
        .expect("open case")
        .into_inner();

    // CommentOnCase, TransitionCase: comments span lines.
    for value in refused(Lines::Many) {
        let result = app
            .cases(key)
            .comment_on_case(pb::CommentOnCaseRequest {
                name: opened.name.clone(),
                body: value.into(),
                visibility: pb::CommentVisibility::AllParticipants as i32,
                ..Default::default()
            })
            .await;
        assert_refused(result, "body", value);
        let result = app
            .cases(key)
            .transition_case(pb::TransitionCaseRequest {
                name: opened.name.clone(),
                transition: "triage".into(),
                etag: opened.etag.clone(),
                comment: value.into(),
                ..Default::default()
            })
            .await;
        assert_refused(result, "comment", value);
    }

    // AssignTask: the title is one line, the description may span lines; so may the
    // reason a task is declined for and the note it is completed with.
    let assign = |t: pb::CaseTask| {
        let mut cases = app.cases(key);
        let parent = opened.name.clone();
        async move {
            cases
                .assign_task(pb::AssignTaskRequest {
                    parent,
                    task: Some(t),
                    request_id: String::new(),
                })
                .await
        }
    };
    for value in refused(Lines::One) {
        assert_refused(assign(task(value, "", &acme)).await, "task.title", value);
    }
    for value in refused(Lines::Many) {
        let result = assign(task("Ship a new jar", value, &acme)).await;
        assert_refused(result, "task.description", value);
    }
    let assigned = assign(task("Ship a new jar", "", &acme))
        .await
        .expect("assign task")
        .into_inner();
    for value in refused(Lines::Many) {
        let result = app
            .cases(key)
            .decline_task(pb::DeclineTaskRequest {
                name: assigned.name.clone(),
                reason: value.into(),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "reason", value);
        let result = app
            .cases(key)
            .complete_task(pb::CompleteTaskRequest {
                name: assigned.name.clone(),
                note: value.into(),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "note", value);
    }

    // CreateMember, CreateApiKey, RegisterClientCertificate: display names.
    for value in refused(Lines::One) {
        let result = app
            .members(key)
            .create_member(pb::CreateMemberRequest {
                parent: acme.name.clone(),
                member: Some(pb::Member {
                    display_name: value.into(),
                    email: "jane@acme.example".into(),
                    role: pb::MemberRole::Coordinator as i32,
                    time_zone: "Europe/Berlin".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "member.display_name", value);

        let mut request = new_api_key(&acme.name, &[pb::ApiKeyScope::Read]);
        if let Some(k) = request.api_key.as_mut() {
            k.display_name = value.into();
        }
        let result = app.operator().create_api_key(request).await;
        assert_refused(result, "api_key.display_name", value);

        let result = app
            .operator()
            .register_client_certificate(pb::RegisterClientCertificateRequest {
                parent: acme.name.clone(),
                client_certificate: Some(pb::ClientCertificate {
                    display_name: value.into(),
                    r#match: Some(pb::client_certificate::Match::FingerprintSha256(
                        "ab".repeat(32),
                    )),
                    scopes: vec![pb::ApiKeyScope::Read as i32],
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "client_certificate.display_name", value);
    }

    // CreateWebhookEndpoint: the description may span lines.
    for value in refused(Lines::Many) {
        let result = app
            .webhooks(key)
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                parent: acme.name.clone(),
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: "https://erp.acme.example/hooks".into(),
                    description: value.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "webhook_endpoint.description", value);
    }

    // ProposePartnership: the message may span lines.
    for value in refused(Lines::Many) {
        let result = app
            .partnerships(key)
            .propose_partnership(pb::ProposePartnershipRequest {
                partnership: Some(pb::Partnership {
                    recipient: globex.name.clone(),
                    relationship: pb::Relationship::Supplies as i32,
                    message: value.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await;
        assert_refused(result, "partnership.message", value);
    }

    // ListEvents: the resource is compared as written, on one line.
    for value in refused(Lines::One) {
        let result = app
            .events(key)
            .list_events(pb::ListEventsRequest {
                resource: format!("customers/{value}"),
                ..Default::default()
            })
            .await;
        assert_refused(result, "resource", value);
    }
}

async fn multi_line_text_is_stored_with_lf_and_limits_count_characters(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let key = &acme.admin_key;
    let customer = create(&app, &acme, person("Jane", "Doe", "")).await;

    let overlay = app
        .customers(key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: format!("{}/overlay", customer.name),
                notes: "line one\r\nline two\r\n".into(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await
        .expect("update overlay")
        .into_inner();
    assert_eq!(overlay.notes, "line one\nline two");
    let read = app
        .customers(&acme.read_key)
        .get_customer_overlay(pb::GetCustomerOverlayRequest {
            name: overlay.name.clone(),
        })
        .await
        .expect("get overlay")
        .into_inner();
    assert_eq!(read.notes, "line one\nline two");

    let logged = app
        .interactions(key)
        .log_interaction(pb::LogInteractionRequest {
            parent: customer.name.clone(),
            interaction: Some(interaction("Called\r\nback", "line one\r\nline two", "")),
            request_id: String::new(),
        })
        .await
        .expect("log interaction")
        .into_inner();
    let read = app
        .interactions(&acme.read_key)
        .get_interaction(pb::GetInteractionRequest {
            name: logged.name.clone(),
        })
        .await
        .expect("get interaction")
        .into_inner();
    assert_eq!(
        (read.summary.as_str(), read.body.as_str()),
        ("Called\nback", "line one\nline two")
    );

    // Limits count characters: 200 two-byte names and 10,000 four-byte bodies fit.
    let name = |n: usize| "ü".repeat(n);
    let created = create(&app, &acme, person(&name(200), "Doe", "")).await;
    assert_eq!(created.given_name, name(200));
    let result = app
        .customers(key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person(&name(201), "Doe", "")),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "TEXT_TOO_LONG");
    assert_eq!(violated_fields(&status), ["customer.given_name"]);

    let body = |n: usize| "𝄞".repeat(n);
    let log = |body: String| {
        let mut interactions = app.interactions(key);
        let parent = customer.name.clone();
        async move {
            interactions
                .log_interaction(pb::LogInteractionRequest {
                    parent,
                    interaction: Some(interaction("Long call", &body, "")),
                    request_id: String::new(),
                })
                .await
        }
    };
    let logged = log(body(10_000)).await.expect("a body at the limit");
    assert_eq!(logged.into_inner().body.chars().count(), 10_000);
    let status = assert_error(
        log(body(10_001)).await,
        Code::InvalidArgument,
        "TEXT_TOO_LONG",
    );
    assert_eq!(violated_fields(&status), ["interaction.body"]);

    let filter = format!("external_id = \"{}\"", name(1990));
    let result = app
        .customers(key)
        .list_customers(pb::ListCustomersRequest {
            filter,
            ..Default::default()
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "TEXT_TOO_LONG");
    assert_eq!(violated_fields(&status), ["filter"]);
}
