//! Three `liaison serve` processes on one PostgreSQL database behind round-robin
//! clients, one of them killed with SIGKILL in the middle of the load. PostgreSQL
//! only: several replicas need a database server.
//!
//! What must hold: every feed is gapless and every stream (resumed on a survivor by
//! its client when its replica dies) sees each event exactly once and in order; every
//! event reaches its organization's endpoint at least once, and twice only if the
//! killed replica had it in flight; each SLA timer fires once; and all three replicas
//! took writes, served streams and made deliveries. The test counts each of those per
//! replica, so a replica that quietly refused its share fails it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liaison::pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::helpers::*;
use crate::webhooks::{Receiver, Reply, reply};

/// A template whose SLA warns after 3.6 s and breaches after 7.2 s.
const QUICK_CASE: &str = r#"
name = "quick_case"
title = "Quick case"
roles = ["vendor", "retailer"]
initial = "open"
[[states]]
name = "open"
[[states]]
name = "closed"
final = true
[[transitions]]
name = "close"
from = ["open"]
to = "closed"
roles = ["vendor"]
[[sla]]
name = "response"
target_hours = { normal = 0.002 }
warn_at_percent = 50
stop_states = ["closed"]
"#;

/// Webhook attempts in flight on one replica at most (its `webhooks.concurrency`).
const CONCURRENCY: usize = 16;
/// The replica killed mid-load.
const VICTIM: usize = 2;

struct Replica {
    process: tokio::process::Child,
    channel: Channel,
    /// Deliveries it logged as made.
    delivered: Arc<AtomicUsize>,
}

async fn replica(url: &str, config: &str) -> Replica {
    let (process, addr, mut log) = serve_process(url, &[("LIAISON_CONFIG", config)]).await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let counter = delivered.clone();
    // Keep draining the log (so the hub never blocks on a full pipe), counting
    // deliveries.
    tokio::spawn(async move {
        while let Ok(Some(line)) = log.next_line().await {
            if line.contains("\"webhook delivered\"") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Replica {
        process,
        channel,
        delivered,
    }
}

/// Round-robin over the replicas: a call starts on replica `turn % 3` and moves to the
/// next when a replica is down or dies mid-call. Callers send a `request_id`, so a
/// write that committed before its replica died is answered from the record, not
/// made twice.
#[derive(Clone)]
struct Balancer {
    channels: Arc<Vec<Channel>>,
    turn: Arc<AtomicUsize>,
    /// Calls each replica answered successfully.
    answered: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    fn new(channels: Arc<Vec<Channel>>) -> Self {
        Self {
            answered: Arc::new(channels.iter().map(|_| AtomicUsize::new(0)).collect()),
            channels,
            turn: Arc::default(),
        }
    }

    /// How many calls each replica has answered so far.
    fn answered(&self) -> Vec<usize> {
        self.answered
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect()
    }

    async fn call<T>(
        &self,
        key: &str,
        f: impl AsyncFn(Authed) -> Result<tonic::Response<T>, Status>,
    ) -> T {
        let start = self.turn.fetch_add(1, Ordering::SeqCst);
        let mut last = None;
        for k in 0..3 * self.channels.len() {
            let at = (start + k) % self.channels.len();
            let authed = tonic::service::interceptor::InterceptedService::new(
                self.channels[at].clone(),
                Bearer(key.to_owned()),
            );
            match f(authed).await {
                Ok(response) => {
                    self.answered[at].fetch_add(1, Ordering::SeqCst);
                    return response.into_inner();
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) =>
                {
                    last = Some(s)
                }
                Err(s) => panic!("call failed: {s:?}"),
            }
        }
        panic!("no replica answered: {last:?}");
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a stream has seen, in order: each event's sequence and the replica that sent it.
type Seen = Arc<Mutex<Vec<(i64, usize)>>>;

/// Follows `org`'s feed from the start on replica `home`, as a client would: when the
/// stream breaks it resumes after the last sequence it saw, on the next replica.
fn follow(channels: Arc<Vec<Channel>>, home: usize, key: String) -> Seen {
    let seen = Arc::new(Mutex::new(vec![]));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut at = home;
        loop {
            let after = seen.lock().unwrap().last().map_or(0, |&(s, _)| s);
            let replica = at % channels.len();
            let mut client = pb::event_service_client::EventServiceClient::with_interceptor(
                channels[replica].clone(),
                Bearer(key.clone()),
            );
            if let Ok(stream) = client
                .watch_events(pb::WatchEventsRequest {
                    after_sequence: after,
                    event_types: vec![],
                })
                .await
            {
                let mut stream = stream.into_inner();
                while let Ok(Some(m)) = stream.message().await {
                    if let Some(pb::watch_events_response::Message::Event(e)) = m.message {
                        seen.lock().unwrap().push((e.sequence, replica));
                    }
                }
            }
            at += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    out
}

/// Every event of the caller's feed, in order, read page by page.
async fn feed(lb: &Balancer, key: &str) -> Vec<pb::Event> {
    let mut events: Vec<pb::Event> = vec![];
    loop {
        let after = events.last().map_or(0, |e| e.sequence);
        let page = lb
            .call(key, async |c| {
                pb::event_service_client::EventServiceClient::new(c)
                    .list_events(pb::ListEventsRequest {
                        after_sequence: after,
                        page_size: 500,
                        ..Default::default()
                    })
                    .await
            })
            .await;
        if page.events.is_empty() {
            return events;
        }
        events.extend(page.events);
    }
}

async fn setup_org(lb: &Balancer, operator: &str, slug: &str) -> Org {
    let org = lb
        .call(operator, async |c| {
            pb::admin_service_client::AdminServiceClient::new(c)
                .create_organization(new_organization(slug, pb::OrganizationKind::Vendor))
                .await
        })
        .await;
    let key = lb
        .call(operator, async |c| {
            pb::admin_service_client::AdminServiceClient::new(c)
                .create_api_key(new_api_key(&org.name, &[pb::ApiKeyScope::Admin]))
                .await
        })
        .await
        .key;
    Org {
        name: org.name,
        admin_key: key.clone(),
        read_key: key,
    }
}

async fn endpoint(lb: &Balancer, org: &Org, url: &str) {
    lb.call(&org.admin_key, async |c| {
        pb::webhook_service_client::WebhookServiceClient::new(c)
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                parent: org.name.clone(),
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: url.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
    })
    .await;
}

/// A customer of `vendor` granted to `retail`, each call on the next replica.
async fn shared_customer(lb: &Balancer, vendor: &Org, retail: &Org, i: usize) -> String {
    let (create_id, grant_id) = (request_id(), request_id());
    let customer = lb
        .call(&vendor.admin_key, async |c| {
            pb::customer_service_client::CustomerServiceClient::new(c)
                .create_customer(pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        kind: pb::CustomerKind::Person as i32,
                        given_name: format!("Replica{i}"),
                        family_name: "Load".into(),
                        ..Default::default()
                    }),
                    request_id: create_id.clone(),
                })
                .await
        })
        .await;
    lb.call(&vendor.admin_key, async |c| {
        pb::sharing_service_client::SharingServiceClient::new(c)
            .create_grant(pb::CreateGrantRequest {
                parent: customer.name.clone(),
                grant: Some(pb::Grant {
                    grantee: retail.name.clone(),
                    level: pb::AccessLevel::Read as i32,
                    ..Default::default()
                }),
                request_id: grant_id.clone(),
            })
            .await
    })
    .await;
    customer.name
}

/// Waits until `check` holds (60 s at most).
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_postgres_tests),
    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
)]
async fn three_replicas_lose_nothing_when_one_is_killed_mid_load() {
    let backend = Backend::postgres().expect("LIAISON_TEST_POSTGRES_URL");
    let (_db, url) = TestDatabase::create(&backend).await;
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("quick_case.toml");
    std::fs::write(&template, QUICK_CASE).unwrap();
    let config = dir.path().join("liaison.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nmax_connections = 4\n\
             [limits]\nkey_requests_per_second = 0.0\norganization_requests_per_second = 0.0\n\
             [webhooks]\nallow_http = true\nallow_private_networks = true\ntimeout_secs = 2\n\
             concurrency = {CONCURRENCY}\n\
             [workflows]\ntemplates = [{:?}]\n",
            template.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let operator = bootstrap_operator(&url);
    let mut replicas = vec![];
    for _ in 0..3 {
        replicas.push(replica(&url, &config).await);
    }
    let channels = Arc::new(
        replicas
            .iter()
            .map(|r| r.channel.clone())
            .collect::<Vec<_>>(),
    );
    let lb = Balancer::new(channels.clone());
    // The test reads the database only to know when the replicas are done.
    let db = sqlx::PgPool::connect(&url).await.unwrap();

    // Slow answers, so that deliveries are in flight when the replica dies and each
    // replica's per-endpoint cap makes the others take a share.
    let slow = |_: &[crate::webhooks::Received]| Reply {
        delay: Duration::from_millis(40),
        ..reply(200)
    };
    let (vendor_hooks, retail_hooks) = (
        Receiver::scripted(slow).await,
        Receiver::scripted(slow).await,
    );
    let vendor = setup_org(&lb, &operator, "vendor").await;
    let retail = setup_org(&lb, &operator, "retail").await;
    let proposed = lb
        .call(&vendor.admin_key, async |c| {
            pb::partnership_service_client::PartnershipServiceClient::new(c)
                .propose_partnership(pb::ProposePartnershipRequest {
                    partnership: Some(pb::Partnership {
                        recipient: retail.name.clone(),
                        relationship: pb::Relationship::Supplies as i32,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
        })
        .await;
    lb.call(&retail.admin_key, async |c| {
        pb::partnership_service_client::PartnershipServiceClient::new(c)
            .accept_partnership(pb::AcceptPartnershipRequest {
                name: proposed.name.clone(),
                etag: String::new(),
                request_id: String::new(),
            })
            .await
    })
    .await;
    endpoint(&lb, &vendor, &vendor_hooks.url).await;
    endpoint(&lb, &retail, &retail_hooks.url).await;
    // Events from before an endpoint existed are not sent to it.
    let mut hooked_after = HashMap::new();
    for org in [&vendor, &retail] {
        let last = feed(&lb, &org.admin_key)
            .await
            .last()
            .map_or(0, |e| e.sequence);
        hooked_after.insert(org.name.clone(), last);
    }

    // A stream of each organization's feed on each replica.
    let streams: Vec<(usize, &Org, Seen)> = (0..3)
        .flat_map(|home| [(home, &vendor), (home, &retail)])
        .map(|(home, org)| {
            (
                home,
                org,
                follow(channels.clone(), home, org.admin_key.clone()),
            )
        })
        .collect();

    // Cases whose SLA clocks will warn and breach while the load runs and after the
    // kill, opened round-robin.
    let subject = shared_customer(&lb, &vendor, &retail, 0).await;
    let mut cases = vec![];
    for i in 0..6 {
        let case = lb
            .call(&vendor.admin_key, async |c| {
                pb::case_service_client::CaseServiceClient::new(c)
                    .open_case(pb::OpenCaseRequest {
                        case: Some(pb::Case {
                            template: "workflowTemplates/quick_case".into(),
                            customer: subject.clone(),
                            title: format!("Replica case {i}"),
                            priority: pb::CasePriority::Normal as i32,
                            participants: vec![
                                pb::CaseParticipant {
                                    organization: vendor.name.clone(),
                                    role: "vendor".into(),
                                },
                                pb::CaseParticipant {
                                    organization: retail.name.clone(),
                                    role: "retailer".into(),
                                },
                            ],
                            ..Default::default()
                        }),
                        request_id: request_id(),
                    })
                    .await
            })
            .await;
        cases.push(case.name);
    }

    // Four writers through all three replicas; the third replica is killed once a
    // third of the writes are done. (Joined in this task: the balancer's async
    // closures need not be Send.)
    const PER_WRITER: usize = 30;
    let done = AtomicUsize::new(0);
    let writers = futures_util::future::join_all((0..4).map(|w| {
        let (lb, vendor, retail, done) = (&lb, &vendor, &retail, &done);
        async move {
            for i in 0..PER_WRITER {
                shared_customer(lb, vendor, retail, 1 + w * PER_WRITER + i).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }));
    let victim = &mut replicas[VICTIM].process;
    let answered_before = lb.answered();
    let kill = async {
        // Once the victim's streams are under way, so that the kill cuts them.
        until("a third of the writes", async || {
            done.load(Ordering::SeqCst) >= 4 * PER_WRITER / 3
                && streams
                    .iter()
                    .filter(|(home, _, _)| *home == VICTIM)
                    .all(|(_, _, seen)| !seen.lock().unwrap().is_empty())
        })
        .await;
        victim.start_kill().unwrap();
        let killed_at = Instant::now();
        victim.wait().await.unwrap();
        killed_at
    };
    let (_, killed_at) = tokio::join!(writers, kill);
    // Every write of the load was answered by some replica; each replica answered its
    // share, the victim until it died.
    let writes: Vec<usize> = lb
        .answered()
        .iter()
        .zip(&answered_before)
        .map(|(after, before)| after - before)
        .collect();
    eprintln!("writes answered per replica: {writes:?}");
    assert_eq!(writes.iter().sum::<usize>(), 4 * PER_WRITER * 2);
    for (i, n) in writes.iter().enumerate() {
        assert!(*n > 0, "replica {i} took no writes");
    }

    // Each SLA timer fires once: a warning and a breach per case, on either survivor.
    until("every case to breach", async || {
        feed(&lb, &vendor.admin_key)
            .await
            .iter()
            .filter(|e| e.r#type == "case.sla_breached")
            .count()
            >= cases.len()
    })
    .await;
    // A timer's row is deleted in the transaction that fires it: with none left, every
    // firing has committed and none is to come, so the counts below are final.
    until("every case timer to be taken", async || {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM case_timers")
            .fetch_one(&db)
            .await
            .unwrap()
            == 0
    })
    .await;
    // Likewise a delivery leaves the queue only once its endpoint answered: with the
    // queue empty (the dead replica's leases ran out and a survivor sent them again),
    // no attempt is in flight and what the receivers got is final.
    until("every delivery to be recorded as made", async || {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_deliveries")
            .fetch_one(&db)
            .await
            .unwrap()
            == 0
    })
    .await;

    for org in [&vendor, &retail] {
        let events = feed(&lb, &org.admin_key).await;
        let head = events.len() as i64;
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "{}'s feed is gapless",
            org.name
        );
        for case in &cases {
            for kind in ["case.sla_warning", "case.sla_breached"] {
                let n = events
                    .iter()
                    .filter(|e| e.r#type == kind && &e.resource == case)
                    .count();
                assert_eq!(n, 1, "{kind} of {case} in {}'s feed", org.name);
            }
        }
        for (home, _, seen) in streams.iter().filter(|(_, o, _)| o.name == org.name) {
            until("the streams to catch up", async || {
                seen.lock().unwrap().len() as i64 >= head
            })
            .await;
            let seen = seen.lock().unwrap().clone();
            assert_eq!(
                seen.iter().map(|&(s, _)| s).collect::<Vec<_>>(),
                (1..=head).collect::<Vec<_>>(),
                "the stream of {} that started on replica {home} saw each event once, in order",
                org.name
            );
            // Its home replica served it first; the victim's streams were cut by the kill
            // and resumed on a survivor right after the last event the victim sent.
            assert_eq!(seen[0].1, *home, "replica {home} served its stream");
            if *home == VICTIM {
                let cut = seen
                    .iter()
                    .position(|&(_, r)| r != VICTIM)
                    .unwrap_or_else(|| {
                        panic!(
                            "the victim's stream of {} never resumed elsewhere",
                            org.name
                        )
                    });
                assert!(
                    seen[cut..].iter().all(|&(_, r)| r != VICTIM),
                    "a dead replica served no more"
                );
                eprintln!(
                    "{}: the victim's stream sent {cut} events, a survivor the other {}",
                    org.name,
                    seen.len() - cut
                );
            }
        }

        // Every event delivered at least once; twice only if the dead replica had it
        // in flight (sent, but its attempt not recorded).
        let hooks = if org.name == vendor.name {
            &vendor_hooks
        } else {
            &retail_hooks
        };
        let hooked: Vec<&pb::Event> = events
            .iter()
            .filter(|e| e.sequence > hooked_after[&org.name])
            .collect();
        let got: std::collections::HashSet<String> = hooks.got().iter().map(|r| r.id()).collect();
        assert!(
            hooked.iter().all(|e| got.contains(&e.id)),
            "every event of {} delivered at least once",
            org.name
        );
        let mut times: HashMap<String, Vec<Instant>> = HashMap::new();
        for r in hooks.got() {
            times.entry(r.id()).or_default().push(r.at);
        }
        assert!(
            times.keys().all(|id| events.iter().any(|e| &e.id == id)),
            "only the feed's events are delivered"
        );
        let twice: Vec<_> = times.iter().filter(|(_, t)| t.len() > 1).collect();
        assert!(
            twice.len() <= CONCURRENCY,
            "{} events delivered twice; at most {CONCURRENCY} can have been in flight",
            twice.len()
        );
        eprintln!(
            "{}: {} events, {} delivered, {} twice",
            org.name,
            events.len(),
            times.len(),
            twice.len()
        );
        for (id, at) in &twice {
            assert_eq!(at.len(), 2, "event {id} delivered {} times", at.len());
            assert!(
                at[0] < killed_at + Duration::from_millis(500),
                "event {id} was delivered twice but was not in flight when the replica died"
            );
        }
    }
    for (i, r) in replicas.iter().enumerate() {
        eprintln!(
            "replica {i}: {} deliveries",
            r.delivered.load(Ordering::SeqCst)
        );
        assert!(
            r.delivered.load(Ordering::SeqCst) > 0,
            "replica {i} made deliveries"
        );
    }
}
