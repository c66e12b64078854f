//! Customers: create, read, update, delete, list and search, batch upsert, concurrency.

use std::collections::HashSet;

use liaison::pb;
use pb::customer::State;
use tonic::Code;

use crate::helpers::*;

crate::on_both_backends!(
    concurrent_writes_commit_or_fail_each_on_its_own,
    a_customer_is_created_normalized_and_read_back,
    updates_follow_the_mask_and_the_etag,
    bad_input_names_every_bad_field,
    deleted_customers_are_tombstones_only_the_owner_sees,
    lists_filter_order_and_page_without_skipping,
    key_filtered_lists_page_through_owned_and_granted_records_in_order,
    concurrent_updates_with_one_etag_let_exactly_one_win,
    batch_upsert_is_atomic_and_idempotent,
);

pub fn person(given: &str, family: &str, email: &str) -> pb::Customer {
    pb::Customer {
        kind: pb::CustomerKind::Person as i32,
        given_name: given.into(),
        family_name: family.into(),
        emails: if email.is_empty() {
            vec![]
        } else {
            vec![pb::EmailContact {
                address: email.into(),
                label: "work".into(),
                primary: true,
            }]
        },
        ..Default::default()
    }
}

pub async fn create(app: &TestApp, org: &Org, customer: pb::Customer) -> pb::Customer {
    app.customers(&org.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        })
        .await
        .expect("create customer")
        .into_inner()
}

pub async fn list(app: &TestApp, key: &str, filter: &str) -> Vec<pb::Customer> {
    app.customers(key)
        .list_customers(pb::ListCustomersRequest {
            filter: filter.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list customers")
        .into_inner()
        .customers
}

pub fn names_of(customers: &[pb::Customer]) -> Vec<String> {
    customers.iter().map(|c| c.name.clone()).collect()
}

fn get(name: &str) -> pb::GetCustomerRequest {
    pb::GetCustomerRequest { name: name.into() }
}

async fn a_customer_is_created_normalized_and_read_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut input = person(" Jane ", "Doe", "Jane.Doe@Example.COM");
    input.phones = vec![pb::PhoneContact {
        number: "(650) 253-0000".into(),
        label: "mobile".into(),
        primary: true,
    }];
    input.tags = vec!["VIP".into(), "vip".into()];
    input.addresses = vec![pb::PostalAddress {
        lines: vec!["1 Main St".into()],
        postal_code: "94043".into(),
        country_code: "us".into(),
        ..Default::default()
    }];
    input.attributes = [("tier".to_owned(), "gold".to_owned())].into();
    input.external_id = "CRM-1".into();
    let created = create(&app, &acme, input).await;
    assert!(created.name.starts_with("customers/"));
    assert_eq!(created.owner, "organizations/acme");
    assert_eq!(created.display_name, "Jane Doe");
    assert_eq!(created.given_name, "Jane");
    assert_eq!(created.emails[0].address, "jane.doe@example.com");
    // Numbers without a country code are read in the default region (US).
    assert_eq!(created.phones[0].number, "+16502530000");
    assert_eq!(created.tags, vec!["vip"]);
    assert_eq!(created.addresses[0].country_code, "US");
    assert_eq!(created.external_id, "CRM-1");
    assert_eq!(created.access, pb::AccessLevel::Owner as i32);
    assert_eq!(created.state, State::Active as i32);
    assert_eq!(created.visible_fields.len(), 10);

    let read = app
        .customers(&acme.read_key)
        .get_customer(get(&created.name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);

    let company = create(
        &app,
        &acme,
        pb::Customer {
            kind: pb::CustomerKind::Company as i32,
            legal_name: "Doe Industries GmbH".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(company.display_name, "Doe Industries GmbH");

    // The same external id twice in one organization is refused.
    let mut again = person("J", "D", "");
    again.external_id = "CRM-1".into();
    let result = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(again),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::AlreadyExists, "EXTERNAL_ID_IN_USE");

    // A read key cannot write.
    let result = app
        .customers(&acme.read_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("A", "B", "")),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
}

async fn updates_follow_the_mask_and_the_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let created = create(&app, &acme, person("Jane", "Doe", "jane@example.com")).await;
    let mut client = app.customers(&acme.admin_key);

    let mut change = created.clone();
    change.family_name = "Smith".into();
    change.emails.clear();
    let updated = client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(change.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["family_name".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // family_name and what derives from it change; the emails, cleared in the
    // message but not in the mask, and everything else stay as created.
    let expected = pb::Customer {
        family_name: "Smith".into(),
        display_name: "Jane Smith".into(),
        etag: updated.etag.clone(),
        update_time: updated.update_time,
        ..created.clone()
    };
    assert_eq!(updated, expected);
    assert_ne!(updated.etag, created.etag);
    assert_ne!(updated.update_time, created.update_time);
    // And that is what the hub stored: Get and List read it back.
    let stored = || async {
        app.customers(&acme.read_key)
            .get_customer(get(&created.name))
            .await
            .unwrap()
            .into_inner()
    };
    assert_eq!(stored().await, expected);
    assert_eq!(
        list(&app, &acme.read_key, "").await,
        std::slice::from_ref(&expected)
    );
    // A change of name keeps the lookup keys: the email still finds the record.
    let by_email = |address: &'static str| {
        let app = &app;
        let key = acme.read_key.clone();
        async move {
            list(app, &key, &format!("email = \"{address}\""))
                .await
                .len()
        }
    };
    assert_eq!(by_email("jane@example.com").await, 1);

    // The old etag is stale now.
    let result = client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["family_name".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::Aborted, "STALE_ETAG");

    // display_name is derived and cannot be set; neither can unknown fields.
    let result = client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(updated.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_UPDATE_MASK");
    assert_eq!(violated_fields(&status), vec!["update_mask"]);

    // Clearing the only name of a person is refused.
    let mut nameless = updated.clone();
    nameless.given_name.clear();
    nameless.family_name.clear();
    let result = client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(nameless),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["given_name".into(), "family_name".into()],
            }),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["customer.given_name"]);
    // None of the refused updates wrote anything.
    assert_eq!(stored().await, expected);

    // History records who changed what, old and new.
    let history = client
        .list_customer_history(pb::ListCustomerHistoryRequest {
            parent: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    use pb::customer_history_entry::Action;
    assert_eq!(
        history.iter().map(|e| e.action).collect::<Vec<_>>(),
        vec![Action::Updated as i32, Action::Created as i32],
        "newest first"
    );
    assert_eq!(history[0].organization, "organizations/acme");
    assert!(
        history[0]
            .api_key
            .starts_with("organizations/acme/apiKeys/")
    );
    assert_eq!(history[0].changes.len(), 1);
    assert_eq!(history[0].changes[0].field, "family_name");
    assert_eq!(history[0].changes[0].old_value, "\"Doe\"");
    assert_eq!(history[0].changes[0].new_value, "\"Smith\"");

    // A change of email moves the keys: the new address finds it, the old one not.
    let mut moved = expected.clone();
    moved.emails = vec![pb::EmailContact {
        address: "jane.smith@example.com".into(),
        ..Default::default()
    }];
    client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(moved),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["emails".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(by_email("jane.smith@example.com").await, 1);
    assert_eq!(by_email("jane@example.com").await, 0);
}

async fn bad_input_names_every_bad_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut input = person(&"x".repeat(201), "Doe", "not-an-email");
    input.phones = vec![pb::PhoneContact {
        number: "12".into(),
        ..Default::default()
    }];
    input.tags = (0..51).map(|i| format!("t{i}")).collect();
    input.addresses = vec![pb::PostalAddress {
        country_code: "Germany".into(),
        ..Default::default()
    }];
    input.attributes = [("bad key".to_owned(), "v".to_owned())].into();
    let result = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(input),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "TEXT_TOO_LONG");
    let fields: HashSet<String> = violated_fields(&status).into_iter().collect();
    for expected in [
        "customer.given_name",
        "customer.emails[0].address",
        "customer.phones[0].number",
        "customer.tags",
        "customer.addresses[0].country_code",
        "customer.attributes[\"bad key\"]",
    ] {
        assert!(
            fields.contains(expected),
            "{expected} missing from {fields:?}"
        );
    }

    let no_kind = pb::Customer {
        given_name: "A".into(),
        ..Default::default()
    };
    let result = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(no_kind),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(violated_fields(&status), vec!["customer.kind"]);

    for (filter, order_by) in [
        ("shoe_size = 42", ""),
        ("email = nope", ""),
        ("tag = a OR tag = b", ""),
        ("", "owner"),
    ] {
        let result = app
            .customers(&acme.read_key)
            .list_customers(pb::ListCustomersRequest {
                filter: filter.into(),
                order_by: order_by.into(),
                ..Default::default()
            })
            .await;
        let reason = if filter.is_empty() {
            "INVALID_ORDER_BY"
        } else {
            "INVALID_FILTER"
        };
        let status = assert_error(result, Code::InvalidArgument, reason);
        let expected = if filter.is_empty() {
            "order_by"
        } else {
            "filter"
        };
        assert_eq!(violated_fields(&status), vec![expected], "{filter:?}");
    }

    let result = app
        .customers(&acme.read_key)
        .get_customer(get("customers/nope"))
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_RESOURCE_NAME");
    assert_eq!(violated_fields(&status), vec!["name"]);
}

async fn deleted_customers_are_tombstones_only_the_owner_sees(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let c = create(&app, &acme, person("Jane", "Doe", "jane@example.com")).await;
    app.sharing(&acme.admin_key)
        .create_grant(pb::CreateGrantRequest {
            parent: c.name.clone(),
            grant: Some(pb::Grant {
                grantee: shop.name.clone(),
                level: pb::AccessLevel::Read as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // Only the owner deletes.
    let result = app
        .customers(&shop.admin_key)
        .delete_customer(pb::DeleteCustomerRequest {
            name: c.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(result, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");

    let deleted = app
        .customers(&acme.admin_key)
        .delete_customer(pb::DeleteCustomerRequest {
            name: c.name.clone(),
            etag: c.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.state, State::Deleted as i32);
    assert!(deleted.delete_time.is_some());

    let result = app
        .customers(&shop.read_key)
        .get_customer(get(&c.name))
        .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
    assert!(list(&app, &shop.read_key, "").await.is_empty());
    assert!(list(&app, &acme.read_key, "").await.is_empty());
    let tombstones = app
        .customers(&acme.read_key)
        .list_customers(pb::ListCustomersRequest {
            show_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(names_of(&tombstones), vec![c.name.clone()]);

    // A deleted customer cannot be updated until undeleted.
    let result = app
        .customers(&acme.admin_key)
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: c.name.clone(),
                family_name: "X".into(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::FailedPrecondition, "CUSTOMER_DELETED");

    let back = app
        .customers(&acme.admin_key)
        .undelete_customer(pb::UndeleteCustomerRequest {
            name: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state, State::Active as i32);
    assert!(back.delete_time.is_none());
    // The grant still stands, so the partner sees it again.
    app.customers(&shop.read_key)
        .get_customer(get(&c.name))
        .await
        .unwrap();
}

async fn lists_filter_order_and_page_without_skipping(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let other = app.create_org("other", pb::OrganizationKind::Vendor).await;
    let mut made = vec![];
    for (i, (given, family)) in [
        ("Zoe", "Adams"),
        ("Adam", "Brown"),
        ("Jane", "Doe"),
        ("Janet", "Doe"),
        ("Bob", "Evans"),
        ("Carl", "Fisher"),
        ("Dana", "Green"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = person(
            given,
            family,
            &format!("{}@example.com", given.to_lowercase()),
        );
        c.phones = vec![pb::PhoneContact {
            number: format!("+1650253000{i}"),
            ..Default::default()
        }];
        c.tags = if i % 2 == 0 {
            vec!["vip".into()]
        } else {
            vec![]
        };
        c.external_id = format!("X-{i}");
        made.push(create(&app, &acme, c).await);
    }
    // Someone else's customer with the same email is never listed.
    create(&app, &other, person("Jane", "Doe", "jane@example.com")).await;

    let k = &acme.read_key;
    assert_eq!(
        names_of(&list(&app, k, "").await),
        names_of(&made),
        "creation order"
    );
    assert_eq!(
        names_of(&list(&app, k, "email = \"JANE@example.com\"").await),
        vec![made[2].name.clone()]
    );
    assert_eq!(
        names_of(&list(&app, k, "phone = \"+16502530003\"").await),
        vec![made[3].name.clone()]
    );
    assert_eq!(list(&app, k, "tag = vip").await.len(), 4);
    assert_eq!(
        names_of(&list(&app, k, "external_id = \"X-4\"").await),
        vec![made[4].name.clone()]
    );
    assert_eq!(
        names_of(&list(&app, k, "display_name = \"jan*\"").await),
        vec![made[2].name.clone(), made[3].name.clone()]
    );
    assert_eq!(
        names_of(&list(&app, k, "display_name = \"JANE DOE\" AND tag = vip").await),
        vec![made[2].name.clone()]
    );
    assert_eq!(
        list(&app, k, "owner = \"organizations/acme\"").await.len(),
        7
    );
    assert!(list(&app, k, "granted = true").await.is_empty());
    let since = made[4].update_time.unwrap();
    let since = jiff::Timestamp::new(since.seconds, since.nanos).unwrap();
    assert_eq!(
        list(&app, k, &format!("update_time > \"{since}\""))
            .await
            .len(),
        2
    );

    // Ordered by display name.
    let by_name = app
        .customers(k)
        .list_customers(pb::ListCustomersRequest {
            order_by: "display_name desc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    let shown: Vec<&str> = by_name.iter().map(|c| c.display_name.as_str()).collect();
    assert_eq!(
        shown,
        vec![
            "Zoe Adams",
            "Janet Doe",
            "Jane Doe",
            "Dana Green",
            "Carl Fisher",
            "Bob Evans",
            "Adam Brown"
        ]
    );

    // Paging by update time while records change: nothing is skipped, and a record
    // changed behind the cursor comes again later.
    let mut seen = vec![];
    let mut token = String::new();
    let mut touched = false;
    loop {
        let page = app
            .customers(k)
            .list_customers(pb::ListCustomersRequest {
                order_by: "update_time".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(names_of(&page.customers));
        if !touched {
            // Change the first record after the first page.
            app.customers(&acme.admin_key)
                .update_customer(pb::UpdateCustomerRequest {
                    customer: Some(pb::Customer {
                        name: made[0].name.clone(),
                        legal_name: "Adams plc".into(),
                        ..Default::default()
                    }),
                    update_mask: None,
                    request_id: String::new(),
                })
                .await
                .unwrap();
            touched = true;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 7, "every record seen: {seen:?}");
    assert_eq!(seen.len(), 8, "the changed record comes again");
    assert_eq!(seen.last(), Some(&made[0].name));

    // A token belongs to its query.
    let first = app
        .customers(k)
        .list_customers(pb::ListCustomersRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let result = app
        .customers(k)
        .list_customers(pb::ListCustomersRequest {
            page_size: 2,
            page_token: first.next_page_token,
            filter: "tag = vip".into(),
            ..Default::default()
        })
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
}

async fn concurrent_updates_with_one_etag_let_exactly_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &acme, person("Jane", "Doe", "")).await;
    let mut tasks = vec![];
    for i in 0..8 {
        let mut client = app.customers(&acme.admin_key);
        let change = pb::Customer {
            name: c.name.clone(),
            etag: c.etag.clone(),
            family_name: format!("Writer{i}"),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            client
                .update_customer(pb::UpdateCustomerRequest {
                    customer: Some(change),
                    update_mask: None,
                    request_id: String::new(),
                })
                .await
        }));
    }
    let mut winners = vec![];
    let mut aborted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => winners.push(r.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                aborted += 1;
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update wins");
    assert_eq!(aborted, 7);
    let now = app
        .customers(&acme.read_key)
        .get_customer(get(&c.name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.family_name, winners[0].family_name);
    assert_eq!(now.etag, winners[0].etag);
    let history = app
        .customers(&acme.read_key)
        .list_customer_history(pb::ListCustomerHistoryRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(history.len(), 2, "one creation, one update");
}

fn keyed(external_id: &str, given: &str) -> pb::Customer {
    pb::Customer {
        external_id: external_id.into(),
        ..person(given, "Batch", "")
    }
}

async fn upsert(
    app: &TestApp,
    org: &Org,
    customers: Vec<pb::Customer>,
    request_id: &str,
) -> Result<pb::BatchUpsertCustomersResponse, tonic::Status> {
    app.customers(&org.admin_key)
        .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
            customers,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn batch_upsert_is_atomic_and_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;

    // Bad input anywhere: nothing is written, and the error names the item.
    let mut bad = keyed("B-2", "Ann");
    bad.emails = vec![pb::EmailContact {
        address: "broken".into(),
        ..Default::default()
    }];
    let result = upsert(&app, &acme, vec![keyed("B-1", "Al"), bad], "").await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status),
        vec!["customers[1].emails[0].address"]
    );
    assert!(list(&app, &acme.read_key, "").await.is_empty());

    // A failure found inside the transaction rolls back the items before it.
    let company = pb::Customer {
        kind: pb::CustomerKind::Company as i32,
        legal_name: "Keyed Ltd".into(),
        external_id: "B-9".into(),
        ..Default::default()
    };
    create(&app, &acme, company).await;
    let result = upsert(
        &app,
        &acme,
        vec![keyed("B-1", "Al"), keyed("B-9", "Kay")],
        "",
    )
    .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["customers[1].kind"]);
    assert_eq!(
        list(&app, &acme.read_key, "").await.len(),
        1,
        "B-1 rolled back"
    );

    // Duplicate keys in one batch are refused up front.
    let result = upsert(
        &app,
        &acme,
        vec![keyed("B-1", "Al"), keyed("B-1", "Al")],
        "",
    )
    .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["customers[1].external_id"]);
    let result = upsert(&app, &acme, vec![], "").await;
    assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");

    // A good batch, retried with the same request id: one answer, no duplicates.
    let batch = vec![keyed("B-1", "Al"), keyed("B-2", "Ann"), keyed("B-3", "Bo")];
    let first = upsert(&app, &acme, batch.clone(), "batch-1").await.unwrap();
    assert_eq!((first.created_count, first.updated_count), (3, 0));
    let retry = upsert(&app, &acme, batch.clone(), "batch-1").await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(list(&app, &acme.read_key, "").await.len(), 4);
    // The same id for different content is a mistake, not a replay.
    let result = upsert(&app, &acme, vec![keyed("B-4", "Di")], "batch-1").await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_REQUEST_ID");
    assert_eq!(violated_fields(&status), vec!["request_id"]);

    // Upserting again updates by external id; unchanged records stay as they are.
    let mut changed = batch.clone();
    changed[1].family_name = "Changed".into();
    let second = upsert(&app, &acme, changed, "batch-2").await.unwrap();
    assert_eq!(
        (
            second.created_count,
            second.updated_count,
            second.unchanged_count
        ),
        (0, 1, 2)
    );
    assert_eq!(second.customers[1].name, first.customers[1].name);
    assert_eq!(second.customers[1].display_name, "Ann Changed");
    assert_eq!(second.customers[0].etag, first.customers[0].etag);

    // A thousand bad items still make an answer that fits in HTTP/2 trailers.
    let all_bad: Vec<pb::Customer> = (0..1000)
        .map(|i| pb::Customer {
            emails: vec![pb::EmailContact {
                address: "broken".into(),
                ..Default::default()
            }],
            ..keyed(&format!("M-{i}"), "M")
        })
        .collect();
    let result = upsert(&app, &acme, all_bad, "").await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status).len(), 50);
    assert!(
        status.message().ends_with("(and 950 more)"),
        "{}",
        status.message()
    );

    let too_many: Vec<pb::Customer> = (0..1001).map(|i| keyed(&format!("M-{i}"), "M")).collect();
    let result = upsert(&app, &acme, too_many, "").await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["customers"]);
}

/// Many writes at once (on SQLite they commit in groups, each in a savepoint of its
/// own): the ones with a stale etag fail alone, a retried request id is answered from
/// its record, and every write that succeeded is there with its event.
async fn concurrent_writes_commit_or_fail_each_on_its_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut customers = vec![];
    for i in 0..20 {
        customers.push(create(&app, &acme, person(&format!("G{i}"), "Group", "")).await);
    }
    let update = |c: &pb::Customer, etag: &str, given: String, request_id: String| {
        let mut client = app.customers(&acme.admin_key);
        let request = pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: c.name.clone(),
                etag: etag.into(),
                given_name: given,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["given_name".into()],
            }),
            request_id,
        };
        async move { client.update_customer(request).await }
    };
    // Even customers get a current etag, odd ones a stale one; every call at once.
    let calls = customers.iter().enumerate().map(|(i, c)| {
        let etag = if i % 2 == 0 {
            c.etag.clone()
        } else {
            "\"999\"".into()
        };
        update(c, &etag, format!("Now{i}"), format!("req-{i}"))
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, result) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(
                result.as_ref().unwrap().get_ref().given_name,
                format!("Now{i}")
            );
        } else {
            assert_eq!(
                result.as_ref().unwrap_err().code(),
                Code::Aborted,
                "call {i}"
            );
        }
    }
    // The same request ids again: answered from their records, not applied twice.
    let retries = customers
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, c)| update(c, &c.etag, format!("Now{i}"), format!("req-{i}")));
    for (retry, first) in futures_util::future::join_all(retries)
        .await
        .into_iter()
        .zip(results.iter().step_by(2))
    {
        assert_eq!(
            retry.unwrap().into_inner(),
            first.as_ref().unwrap().get_ref().clone()
        );
    }
    let events = app
        .events(&acme.admin_key)
        .list_events(pb::ListEventsRequest {
            event_types: vec!["customer.updated".into()],
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        events.len(),
        10,
        "one event per successful update, none for the stale ones"
    );
    for (i, c) in customers.iter().enumerate() {
        let now = app
            .customers(&acme.read_key)
            .get_customer(pb::GetCustomerRequest {
                name: c.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let expected = if i % 2 == 0 {
            format!("Now{i}")
        } else {
            format!("G{i}")
        };
        assert_eq!(now.given_name, expected);
    }
}

/// Every page of `filter` for `key`, `page_size` at a time, in the order they came.
async fn paged(app: &TestApp, key: &str, filter: &str, show_deleted: bool) -> Vec<String> {
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = app
            .customers(key)
            .list_customers(pb::ListCustomersRequest {
                filter: filter.into(),
                page_size: 1,
                page_token: token,
                show_deleted,
                ..Default::default()
            })
            .await
            .expect("list customers")
            .into_inner();
        seen.extend(names_of(&page.customers));
        if page.next_page_token.is_empty() {
            return seen;
        }
        token = page.next_page_token;
    }
}

/// A list on a tag, email or phone is walked through the key (the owner's) or the
/// viewer's grants, one page at a time: each record once, in creation order, owned
/// and granted interleaved, and only what the viewer may see by that key.
async fn key_filtered_lists_page_through_owned_and_granted_records_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let tagged = |mut c: pb::Customer, vip: bool| {
        c.tags = if vip { vec!["vip".into()] } else { vec![] };
        c
    };
    let mut acme_made = vec![];
    let mut shop_made = vec![];
    // Created alternately, so creation order interleaves the two owners.
    for i in 0..6 {
        let email = format!("same{}@example.com", i % 2);
        acme_made.push(
            create(
                &app,
                &acme,
                tagged(person(&format!("A{i}"), "Acme", &email), i % 2 == 0),
            )
            .await,
        );
        shop_made.push(
            create(
                &app,
                &shop,
                tagged(person(&format!("S{i}"), "Shop", &email), i != 1),
            )
            .await,
        );
    }
    // A deleted vip record: only the owner's show_deleted list has it.
    let gone = create(&app, &acme, tagged(person("Gone", "Acme", ""), true)).await;
    app.customers(&acme.admin_key)
        .delete_customer(pb::DeleteCustomerRequest {
            name: gone.name.clone(),
            etag: gone.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // Granted to shop: A0 and A2 with their tags, A4 without, A1 (no tag) with.
    let with_tags: &[&str] = &["given_name", "family_name", "tags", "emails"];
    let without_tags: &[&str] = &["given_name", "family_name"];
    for (i, fields) in [
        (0, with_tags),
        (2, with_tags),
        (4, without_tags),
        (1, with_tags),
    ] {
        crate::sharing::grant(
            &app,
            &acme,
            &acme_made[i].name,
            &shop,
            pb::AccessLevel::Read,
            fields,
        )
        .await
        .unwrap();
    }
    let in_order = |records: Vec<&pb::Customer>| {
        let mut names: Vec<String> = records.iter().map(|c| c.name.clone()).collect();
        names.sort();
        names
    };

    assert_eq!(
        paged(&app, &acme.read_key, "tag = vip", false).await,
        in_order(vec![&acme_made[0], &acme_made[2], &acme_made[4]])
    );
    assert_eq!(
        paged(&app, &acme.read_key, "tag = vip", true).await,
        in_order(vec![&acme_made[0], &acme_made[2], &acme_made[4], &gone])
    );
    // The shop's own vip records and the granted ones whose grant shows tags.
    assert_eq!(
        paged(&app, &shop.read_key, "tag = vip", false).await,
        in_order(vec![
            &shop_made[0],
            &shop_made[2],
            &shop_made[3],
            &shop_made[4],
            &shop_made[5],
            &acme_made[0],
            &acme_made[2],
        ])
    );
    assert_eq!(
        paged(&app, &shop.read_key, "tag = vip AND granted = true", false).await,
        in_order(vec![&acme_made[0], &acme_made[2]])
    );
    // Two keys: one drives the walk, the other is checked on each record.
    assert_eq!(
        paged(
            &app,
            &shop.read_key,
            "email = \"same0@example.com\" AND tag = vip",
            false
        )
        .await,
        in_order(vec![
            &shop_made[0],
            &shop_made[2],
            &shop_made[4],
            &acme_made[0],
            &acme_made[2],
        ])
    );
    assert_eq!(
        paged(&app, &acme.read_key, "email = \"same1@example.com\"", false).await,
        in_order(vec![&acme_made[1], &acme_made[3], &acme_made[5]])
    );
    // Another organization's key entries never surface.
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    assert!(
        paged(&app, &other.read_key, "tag = vip", true)
            .await
            .is_empty()
    );
}
