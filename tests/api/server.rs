use std::time::{Duration, Instant};

use liaison::pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::*;

crate::on_both_backends!(
    health_answers_serving_without_a_key,
    reflection_lists_every_service,
    shutdown_reports_not_serving_and_exits_cleanly,
    the_configured_request_timeout_ends_a_call_the_client_would_wait_longer_for,
);

async fn health_answers_serving_without_a_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "liaison.v1.AdminService",
        "liaison.v1.MemberService",
        "liaison.v1.PartnershipService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

async fn reflection_lists_every_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "liaison.v1.AdminService",
        "liaison.v1.MemberService",
        "liaison.v1.PartnershipService",
    ] {
        assert!(names.contains(&expected.to_owned()), "{names:?}");
    }

    // A client with no proto files can fetch the descriptors, imports included.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "liaison.v1.MemberService".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // And the error details the hub sends, so that a generic client decodes them.
    for symbol in [
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.PreconditionFailure",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().expect("one answer");
        assert!(
            matches!(
                response.message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ),
            "{symbol}: {response:?}"
        );
    }
}

async fn shutdown_reports_not_serving_and_exits_cleanly(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    app.trigger_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a status change in time");
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    drop(watch);
    // The design's worst case is the 2 s grace, 5 s for workers to release leases,
    // then closing the database. A stop under the whole suite used to overrun every
    // bound now and then: on SQLite a group transaction whose members were all
    // cancelled held the writer connection, and closing the pool waited for it
    // forever (see store/group.rs). This bounds a hang, not the speed.
    let result = tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("stops instead of hanging");
    result.expect("exits without error");
}

/// `server.request_timeout_secs` bounds every call, whatever deadline the client
/// sends: a write held up past it ends with DEADLINE_EXCEEDED and leaves nothing.
async fn the_configured_request_timeout_ends_a_call_the_client_would_wait_longer_for(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |c| c.server.request_timeout_secs = 2).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    // Another client holds the database, so the hub's write waits as long as it may.
    let blocker = hold_database(&app).await;
    let mut request = tonic::Request::new(pb::CreateCustomerRequest {
        customer: Some(crate::customers::person("Too", "Late", "")),
        request_id: String::new(),
    });
    // The client would wait a minute (grpc-timeout: 60S); the hub's limit is shorter.
    request.set_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let late = tokio::time::timeout(
        Duration::from_secs(20),
        app.customers(&acme.admin_key).create_customer(request),
    )
    .await
    .expect("the hub's 2 s limit ended the call, not the client's minute");
    let waited = started.elapsed();
    let status = assert_error(late, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(
        status.message().contains("deadline of 2000 ms"),
        "the configured limit applies: {status:?}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "ended after {waited:?}, before the limit"
    );

    // Released: nothing of the abandoned write remains. (A write made now commits
    // after anything of it that could still be waiting.)
    drop(blocker);
    app.customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(crate::customers::person("On", "Time", "")),
            request_id: String::new(),
        })
        .await
        .expect("the hub writes again once the database is free");
    let listed = app
        .customers(&acme.read_key)
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .customers
        .iter()
        .map(|c| c.display_name.as_str())
        .collect();
    assert_eq!(names, ["On Time"]);
}
