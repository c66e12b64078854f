//! Exports: customers, interactions and scorecards as CSV or JSON lines, run as
//! long-running operations and streamed back; each holds what the caller's List
//! calls show it and nothing more; files expire; the CLI writes them.

use std::collections::BTreeSet;

use jiff::SignedDuration;
use liaison::google::longrunning::operation::Result as Outcome;
use liaison::google::longrunning::{GetOperationRequest, Operation, WaitOperationRequest};
use liaison::pb;
use prost::Message;
use tonic::{Code, Status};

use crate::customers::{create, list, person};
use crate::helpers::{Backend, Org, TestApp, assert_error, spawn_app, tamper, violated_fields};
use crate::sharing::{grant, log};

crate::on_both_backends!(
    exports_hold_what_the_lists_show_and_nothing_more,
    a_large_export_streams_in_chunks_and_expires,
);

pub(crate) async fn started(
    app: &TestApp,
    key: &str,
    kind: &str,
    filter: &str,
    format: pb::ExportFormat,
) -> Result<Operation, Status> {
    let mut client = app.exports(key);
    let format = format as i32;
    let answer = match kind {
        "customers" => {
            client
                .export_customers(pb::ExportCustomersRequest {
                    filter: filter.into(),
                    format,
                    request_id: String::new(),
                })
                .await
        }
        _ => {
            client
                .export_interactions(pb::ExportInteractionsRequest {
                    customer_filter: filter.into(),
                    format,
                    request_id: String::new(),
                })
                .await
        }
    };
    answer.map(|r| r.into_inner())
}

/// Waits for `op` to finish; its `Export` response.
pub(crate) async fn finished(app: &TestApp, key: &str, op: &Operation) -> pb::Export {
    let mut ops = app.operations(key);
    for _ in 0..200 {
        let o = ops
            .wait_operation(WaitOperationRequest {
                name: op.name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .expect("wait")
            .into_inner();
        match o.result {
            Some(Outcome::Response(any)) => {
                assert_eq!(any.type_url, "type.googleapis.com/liaison.v1.Export");
                return pb::Export::decode(any.value.as_slice()).unwrap();
            }
            Some(Outcome::Error(e)) => panic!("the export failed: {e:?}"),
            None => {}
        }
    }
    panic!("the export did not finish");
}

pub(crate) async fn read(app: &TestApp, key: &str, name: &str) -> Result<(Vec<u8>, usize), Status> {
    let mut stream = app
        .exports(key)
        .read_export(pb::ReadExportRequest { name: name.into() })
        .await?
        .into_inner();
    let (mut out, mut chunks) = (vec![], 0);
    while let Some(c) = stream.message().await? {
        out.extend(c.data);
        chunks += 1;
    }
    Ok((out, chunks))
}

/// Runs an export to its end and returns its file.
async fn export(
    app: &TestApp,
    key: &str,
    kind: &str,
    filter: &str,
    format: pb::ExportFormat,
) -> (pb::Export, Vec<u8>) {
    let op = started(app, key, kind, filter, format)
        .await
        .expect("start");
    let done = finished(app, key, &op).await;
    let (file, _) = read(app, key, &op.name).await.expect("read");
    assert_eq!(done.size_bytes as usize, file.len());
    (done, file)
}

fn lines(file: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(file.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

struct Scene {
    vendor: Org,
    reseller: Org,
    stranger: Org,
}

async fn scene(app: &TestApp) -> Scene {
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let reseller = app
        .create_org("reseller", pb::OrganizationKind::Retailer)
        .await;
    let stranger = app
        .create_org("stranger", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&vendor, &reseller).await;
    let mut vip = person("Grace", "Hopper", "grace@navy.example");
    vip.tags = vec!["vip".into()];
    vip.attributes = [("tier".to_owned(), "gold".to_owned())].into();
    let grace = create(app, &vendor, vip).await;
    let alan = create(app, &vendor, person("Alan", "Turing", "alan@example.com")).await;
    create(app, &vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    // The reseller sees Grace's given name alone, and Alan not at all.
    grant(
        app,
        &vendor,
        &grace.name,
        &reseller,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .expect("grant");
    use pb::InteractionType::{Call, Purchase};
    use pb::InteractionVisibility::{Organization, Shared};
    log(
        app,
        &vendor,
        &grace.name,
        Call,
        Shared,
        "Asked about the warranty",
    )
    .await;
    log(
        app,
        &vendor,
        &grace.name,
        Purchase,
        Organization,
        "Bought the gold plan",
    )
    .await;
    log(
        app,
        &reseller,
        &grace.name,
        Call,
        Shared,
        "Demo in the shop",
    )
    .await;
    log(
        app,
        &vendor,
        &alan.name,
        Call,
        Shared,
        "Not the reseller's business",
    )
    .await;
    Scene {
        vendor,
        reseller,
        stranger,
    }
}

async fn exports_hold_what_the_lists_show_and_nothing_more(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = scene(&app).await;
    use pb::ExportFormat::{Csv, JsonLines};

    // The owner's export: every customer, as its list shows them.
    let (done, file) = export(&app, &s.vendor.read_key, "customers", "", JsonLines).await;
    let got = lines(&file);
    assert_eq!(done.records, 3);
    assert_eq!(
        (done.kind.as_str(), done.format),
        ("customers", JsonLines as i32)
    );
    let listed: BTreeSet<String> = list(&app, &s.vendor.read_key, "")
        .await
        .into_iter()
        .map(|c| c.name)
        .collect();
    let exported: BTreeSet<String> = got
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exported, listed);
    let grace = got.iter().find(|c| c["givenName"] == "Grace").unwrap();
    assert_eq!(grace["tags"], serde_json::json!(["vip"]));
    // Filtered like ListCustomers.
    let (done, file) = export(
        &app,
        &s.vendor.read_key,
        "customers",
        "tag = vip",
        JsonLines,
    )
    .await;
    assert_eq!((done.records, lines(&file).len()), (1, 1));

    // The reseller's: the one customer it sees, with the one field granted.
    let (_, file) = export(&app, &s.reseller.read_key, "customers", "", JsonLines).await;
    let got = lines(&file);
    assert_eq!(got.len(), 1);
    let text = String::from_utf8(file.clone()).unwrap();
    for hidden in [
        "Hopper",
        "grace@navy.example",
        "vip",
        "gold",
        "Turing",
        "Lovelace",
    ] {
        assert!(
            !text.contains(hidden),
            "the reseller's export shows {hidden}: {text}"
        );
    }
    assert_eq!(got[0]["givenName"], "Grace");
    // As CSV: a header of the message's fields, one row.
    let (_, file) = export(&app, &s.reseller.read_key, "customers", "", Csv).await;
    let mut csv = csv::Reader::from_reader(file.as_slice());
    let header = csv.headers().unwrap().clone();
    assert_eq!(&header[0], "name");
    assert!(header.iter().any(|h| h == "givenName"));
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1);
    let given = header.iter().position(|h| h == "givenName").unwrap();
    let family = header.iter().position(|h| h == "familyName").unwrap();
    assert_eq!((&rows[0][given], &rows[0][family]), ("Grace", ""));

    // Interactions: what each sees, private ones only to their author.
    let (done, file) = export(&app, &s.vendor.read_key, "interactions", "", JsonLines).await;
    assert_eq!(done.records, 4);
    assert_eq!(lines(&file).len(), 4);
    let (done, file) = export(&app, &s.reseller.read_key, "interactions", "", JsonLines).await;
    let text = String::from_utf8(file.clone()).unwrap();
    assert_eq!(done.records, 2, "{text}");
    for hidden in ["gold plan", "reseller's business"] {
        assert!(!text.contains(hidden), "{hidden}: {text}");
    }
    let (_, file) = export(&app, &s.vendor.read_key, "interactions", "tag = vip", Csv).await;
    assert_eq!(
        csv::Reader::from_reader(file.as_slice()).records().count(),
        3
    );

    // An export is its organization's: anyone else finds nothing.
    let op = started(&app, &s.vendor.read_key, "customers", "", Csv)
        .await
        .unwrap();
    finished(&app, &s.vendor.read_key, &op).await;
    for key in [&s.reseller.read_key, &s.stranger.admin_key] {
        assert_error(read(&app, key, &op.name).await, Code::NotFound, "NOT_FOUND");
        let mut ops = app.operations(key);
        let got = ops
            .get_operation(GetOperationRequest {
                name: op.name.clone(),
            })
            .await;
        assert_error(got, Code::NotFound, "NOT_FOUND");
    }
    assert_error(
        read(
            &app,
            &s.vendor.read_key,
            "operations/01900000-0000-7000-8000-000000000000",
        )
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // Bad input names its fields.
    let status = assert_error(
        started(
            &app,
            &s.vendor.read_key,
            "customers",
            "tag ~ vip",
            pb::ExportFormat::Unspecified,
        )
        .await,
        Code::InvalidArgument,
        "INVALID_FILTER",
    );
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["filter", "format"]);
    let status = assert_error(
        started(&app, &s.vendor.read_key, "interactions", "nonsense", Csv).await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
    );
    assert_eq!(violated_fields(&status), ["customer_filter"]);
    app.stop().await.unwrap();
}

async fn a_large_export_streams_in_chunks_and_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    for batch in 0..3 {
        let customers = (0..1000)
            .map(|i| {
                let mut c = person(
                    &format!("Given{batch}x{i}"),
                    "Family",
                    &format!("c{batch}x{i}@example.com"),
                );
                c.external_id = format!("ext-{batch}-{i}");
                c.attributes = [("notes".to_owned(), "x".repeat(200))].into();
                c
            })
            .collect();
        app.customers(&vendor.admin_key)
            .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                customers,
                request_id: String::new(),
            })
            .await
            .expect("batch upsert");
    }
    let op = started(
        &app,
        &vendor.read_key,
        "customers",
        "",
        pb::ExportFormat::Csv,
    )
    .await
    .unwrap();
    let done = finished(&app, &vendor.read_key, &op).await;
    assert_eq!(done.records, 3000);
    // Its progress counted every customer.
    let mut ops = app.operations(&vendor.read_key);
    let o = ops
        .get_operation(GetOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let meta = pb::OperationMetadata::decode(o.metadata.unwrap().value.as_slice()).unwrap();
    assert_eq!(
        (meta.verb.as_str(), meta.done, meta.total),
        ("export_customers", 3000, 3000)
    );
    let (file, chunks) = read(&app, &vendor.read_key, &op.name).await.unwrap();
    assert!(chunks > 1, "{} bytes came in {chunks} chunk", file.len());
    let mut csv = csv::Reader::from_reader(file.as_slice());
    let external = csv
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "externalId")
        .unwrap();
    let rows: Vec<String> = csv
        .records()
        .map(|r| r.unwrap()[external].to_owned())
        .collect();
    assert_eq!(rows.len(), 3000, "3000 rows");
    let ids: BTreeSet<String> = rows.into_iter().collect();
    assert_eq!(ids.len(), 3000, "every customer once");

    // The CLI writes the same file, following the operation.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customers.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "export",
            "customers",
            "--format",
            "jsonl",
            "--filter",
            "external_id = \"ext-1-7\"",
        ])
        .args(["--server", &format!("http://{}", app.addr)])
        .arg("--out")
        .arg(&path)
        .env("LIAISON_API_KEY", &vendor.read_key)
        .output()
        .expect("run liaison export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&path).unwrap();
    let got = lines(&written);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["externalId"], "ext-1-7");

    // A worker overtaken by another (its lease lapsed) writes nothing more: the
    // export's token is the last taker's.
    let id = op.name.trim_start_matches("operations/");
    let store = &app.store;
    store.restart_export(id, "first").await.unwrap();
    assert!(
        store
            .append_export_chunk((id, "first"), 0, b"a,b\n", 1)
            .await
            .unwrap()
    );
    store.restart_export(id, "second").await.unwrap();
    assert!(
        store.export_chunk(id, 0).await.unwrap().is_none(),
        "the file starts again"
    );
    assert!(
        !store
            .append_export_chunk((id, "first"), 1, b"c\n", 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .append_export_chunk((id, "second"), 0, b"x\n", 1)
            .await
            .unwrap()
    );
    let mut tx = store.begin().await.unwrap();
    let now = store.clock().now();
    assert!(!tx.end_export((id, "first"), now, true).await.unwrap());
    assert!(tx.end_export((id, "second"), now, true).await.unwrap());
    tx.commit().await.unwrap();

    // At most five exports of an organization wait or run at once.
    tamper(
        &app,
        "INSERT INTO operations (id, verb, target_id, org_id, other_org_id, state, done, total, \
         cancel_requested, error_code, error_message, lease_expire, create_time, update_time, \
         end_time) SELECT 'busy-' || n.i, 'export_customers', '', o.id, NULL, 'running', 0, 0, 0, \
         NULL, NULL, 9000000000000000, 0, 0, NULL FROM organizations o, \
         (SELECT 1 AS i UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5) n \
         WHERE o.slug = 'vendor'; \
         INSERT INTO exports (operation_id, organization_id, kind, format, params, records, \
         size_bytes, expire_time, token) SELECT id, org_id, 'customers', 'csv', '{}', 0, 0, NULL, \
         'held' FROM operations WHERE id LIKE 'busy-%';",
    )
    .await;
    assert_error(
        started(
            &app,
            &vendor.read_key,
            "customers",
            "",
            pb::ExportFormat::Csv,
        )
        .await,
        Code::ResourceExhausted,
        "TOO_MANY_EXPORTS",
    );
    tamper(&app, "DELETE FROM exports WHERE operation_id LIKE 'busy-%'; DELETE FROM operations WHERE id LIKE 'busy-%';").await;

    // A day later the file is gone, and the sweep forgets it and its operation.
    app.advance(SignedDuration::from_hours(25));
    assert_error(
        read(&app, &vendor.read_key, &op.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(
        app.store
            .prune_exports(app.store.clock().now())
            .await
            .unwrap()
            >= 1
    );
    assert!(app.store.export_file(id).await.unwrap().is_none());
    let got = app
        .operations(&vendor.read_key)
        .get_operation(GetOperationRequest {
            name: op.name.clone(),
        })
        .await;
    assert_error(got, Code::NotFound, "NOT_FOUND");
    app.stop().await.unwrap();
}
