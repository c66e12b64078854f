//! The tenant wall where it is easiest to breach: page tokens, filters and order on
//! fields a grant hides, history a viewer may not read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use liaison::pb;
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::*;
use crate::sharing::grant;

crate::on_both_backends!(
    page_tokens_are_sealed_and_bound_to_caller_and_query,
    filters_and_order_on_hidden_fields_tell_nothing,
);

async fn list_page(
    app: &TestApp,
    key: &str,
    filter: &str,
    order_by: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListCustomersResponse, tonic::Status> {
    app.customers(key)
        .list_customers(pb::ListCustomersRequest {
            filter: filter.into(),
            order_by: order_by.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Acme owns four customers and shares them with Shop: emails only for the first
/// three, names too for the last.
async fn vendor_and_retailer(app: &TestApp) -> (Org, Org, Vec<pb::Customer>) {
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let mut customers = vec![];
    for (given, family, email, fields) in [
        ("Zelda", "Hidden", "zelda@example.com", &["emails"][..]),
        ("Alma", "Hidden", "alma@example.com", &["emails"][..]),
        ("Alba", "Hidden", "alba@example.com", &["emails"][..]),
        ("Olga", "Shown", "olga@example.com", &["display_name", "emails"][..]),
    ] {
        let c = create(app, &acme, person(given, family, email)).await;
        grant(app, &acme, &c.name, &shop, pb::AccessLevel::Read, fields)
            .await
            .expect("grant");
        customers.push(c);
    }
    (acme, shop, customers)
}

async fn page_tokens_are_sealed_and_bound_to_caller_and_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let (acme, shop, _) = vendor_and_retailer(&app).await;
    let other = app.create_org("other", pb::OrganizationKind::Retailer).await;

    // Shop pages by display name; the token after "Alba"/"Alma" must hold nothing of
    // the names (hidden from Shop) or anything else readable.
    let first = list_page(&app, &shop.read_key, "", "display_name", 1, "")
        .await
        .unwrap();
    assert_eq!(first.customers.len(), 1);
    let token = first.next_page_token;
    assert!(!token.is_empty());
    let bytes = URL_SAFE_NO_PAD.decode(&token).expect("tokens are base64url");
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    for secret in ["zelda", "alma", "alba", "hidden", "customers", "display_name"] {
        assert!(!text.contains(secret), "{secret:?} readable in the token");
    }
    // The owner's own token, with the names it may see, is as opaque.
    let owner = list_page(&app, &acme.read_key, "", "display_name", 1, "")
        .await
        .unwrap();
    let owner_bytes = URL_SAFE_NO_PAD.decode(&owner.next_page_token).unwrap();
    assert!(!String::from_utf8_lossy(&owner_bytes).to_lowercase().contains("alba"));

    // The token continues Shop's query, and only that.
    let second = list_page(&app, &shop.read_key, "", "display_name", 1, &token)
        .await
        .unwrap();
    assert_eq!(second.customers.len(), 1);
    assert_ne!(second.customers[0].name, first.customers[0].name);
    let refused = |result: Result<pb::ListCustomersResponse, tonic::Status>, why: &str| {
        let status = assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
        assert!(status.message().contains(why), "{status:?}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    };
    // Another organization replays it.
    refused(
        list_page(&app, &other.read_key, "", "display_name", 1, &token).await,
        "another caller",
    );
    // Same organization, another key: the token is the organization's.
    list_page(&app, &shop.admin_key, "", "display_name", 1, &token)
        .await
        .expect("another key of the same organization continues");
    // Another filter or order.
    refused(
        list_page(&app, &shop.read_key, "kind = PERSON", "display_name", 1, &token).await,
        "different query",
    );
    refused(
        list_page(&app, &shop.read_key, "", "update_time", 1, &token).await,
        "different query",
    );
    // Another list altogether (members of Shop, same caller).
    let members = app
        .members(&shop.read_key)
        .list_members(pb::ListMembersRequest {
            parent: shop.name.clone(),
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
    assert_error(members, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    // Tampered with: one bit flipped.
    let mut forged = bytes.clone();
    forged[bytes.len() / 2] ^= 0x01;
    refused(
        list_page(
            &app,
            &shop.read_key,
            "",
            "display_name",
            1,
            &URL_SAFE_NO_PAD.encode(forged),
        )
        .await,
        "not a token this list returned",
    );
}

async fn filters_and_order_on_hidden_fields_tell_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (acme, shop, customers) = vendor_and_retailer(&app).await;

    // Two hidden names start with "al". Shop learns nothing from asking: no customer,
    // and no token hinting at more, whatever the page size.
    for size in [1, 2, 50] {
        let page = list_page(&app, &shop.read_key, "display_name = \"al*\"", "", size, "")
            .await
            .unwrap();
        assert!(page.customers.is_empty(), "{page:?}");
        assert!(page.next_page_token.is_empty(), "a token leaks a hidden match");
    }
    // The owner, who sees the names, finds both.
    let own = list_page(&app, &acme.read_key, "display_name = \"al*\"", "", 50, "")
        .await
        .unwrap();
    assert_eq!(own.customers.len(), 2);
    // A shown name still matches for Shop.
    let shown = list_page(&app, &shop.read_key, "display_name = \"olga*\"", "", 50, "")
        .await
        .unwrap();
    assert_eq!(shown.customers.len(), 1);
    assert_eq!(shown.customers[0].name, customers[3].name);

    // Sorting by a hidden name sorts it as empty: Shop gets the hidden ones in creation
    // order (Zelda, Alma, Alba), before Olga, never in the order of their names. Pages
    // of one are full and the walk visits each customer once.
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = list_page(&app, &shop.read_key, "", "display_name", 1, &token)
            .await
            .unwrap();
        assert!(
            page.customers.len() == 1 || page.next_page_token.is_empty(),
            "a short page in the middle: {page:?}"
        );
        seen.extend(page.customers.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = customers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(seen, expected);

    // A filter on the emails Shop sees matches; pages of one are full.
    let page = list_page(&app, &shop.read_key, "email = \"alma@example.com\"", "", 1, "")
        .await
        .unwrap();
    assert_eq!(page.customers.len(), 1);
    assert_eq!(page.customers[0].name, customers[1].name);
}
