//! Starts a real hub on port 0 against a fresh database, and gives typed clients.

use liaison::api::{AdminApi, Caller, Hub};
use liaison::config::Config;
use liaison::pb::{self, admin_service_server::AdminService};
use liaison::startup::Application;
use liaison::store::Store;
use sqlx::Connection;
use tokio::sync::oneshot;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub use liaison::google::longrunning::operations_client::OperationsClient;
pub use pb::account_mapping_service_client::AccountMappingServiceClient;
pub use pb::admin_service_client::AdminServiceClient;
pub use pb::audit_service_client::AuditServiceClient;
pub use pb::case_service_client::CaseServiceClient;
pub use pb::customer_service_client::CustomerServiceClient;
pub use pb::event_service_client::EventServiceClient;
pub use pb::export_service_client::ExportServiceClient;
pub use pb::interaction_service_client::InteractionServiceClient;
pub use pb::member_service_client::MemberServiceClient;
pub use pb::partnership_service_client::PartnershipServiceClient;
pub use pb::sharing_service_client::SharingServiceClient;
pub use pb::webhook_service_client::WebhookServiceClient;

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A server URL; each test creates and drops its own database there.
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend if `LIAISON_TEST_POSTGRES_URL` is set.
    pub fn postgres() -> Option<Self> {
        std::env::var("LIAISON_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// Writes each test twice: once on SQLite, once on PostgreSQL (when configured).
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[$meta])*
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        // Built without `LIAISON_TEST_POSTGRES_URL` (build.rs reads it), these are
        // ignored, so the summary counts them as not run rather than passed.
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(liaison_postgres_tests),
                    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
                )]
                $(#[$meta])*
                async fn $name() {
                    let backend = $crate::helpers::Backend::postgres()
                        .expect("LIAISON_TEST_POSTGRES_URL names the PostgreSQL server to test on");
                    super::$name(backend).await
                }
            )*
        }
    };
}

/// A throwaway database, removed when dropped.
pub enum TestDatabase {
    /// Kept for its `Drop`, which deletes the directory.
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        server_url: String,
        name: String,
    },
}

impl TestDatabase {
    pub async fn create(backend: &Backend) -> (Self, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("liaison.db").display());
                (TestDatabase::Sqlite { _dir: dir }, url)
            }
            Backend::Postgres(server_url) => {
                let name = format!("liaison_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(server_url)
                    .await
                    .expect("PostgreSQL is unreachable");
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                conn.close().await.ok();
                let url = with_database(server_url, &name);
                (
                    TestDatabase::Postgres {
                        server_url: server_url.clone(),
                        name,
                    },
                    url,
                )
            }
        }
    }
}

fn with_database(server_url: &str, name: &str) -> String {
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { server_url, name } = self {
            let (server_url, name) = (server_url.clone(), name.clone());
            // Drop runs outside async; a small runtime of its own does the cleanup.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&server_url).await {
                        let _ =
                            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

pub struct TestApp {
    pub channel: Channel,
    pub addr: std::net::SocketAddr,
    /// Where HTTP/JSON is served (`addr` unless `server.http_listen` is set).
    pub http_addr: std::net::SocketAddr,
    /// The Prometheus endpoint, when `metrics.listen` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub store: Store,
    /// The hub operator's admin key.
    pub operator_key: String,
    /// The configuration the hub runs with.
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// `None` for a replica, which shares the first hub's database.
    _database: Option<TestDatabase>,
}

pub fn test_config(database_url: String) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.database.url = database_url;
    config.database.max_connections = 5;
    config.server.shutdown_grace_secs = 2;
    config.email.outbox_dir = std::env::temp_dir()
        .join("liaison-test-mail")
        .display()
        .to_string();
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A hub whose configuration `adjust` changes first.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let (database, url) = TestDatabase::create(&backend).await;
    let mut config = test_config(url);
    adjust(&mut config);
    let mut app = start(config, String::new()).await;
    app.operator_key = issue_key(&app.store, "operator", &[pb::ApiKeyScope::Admin]).await;
    app._database = Some(database);
    app
}

async fn start(config: Config, operator_key: String) -> TestApp {
    start_at(config, operator_key, jiff::SignedDuration::ZERO).await
}

/// Starts a hub whose clock runs `ahead` of the system clock from the first moment,
/// before any worker looks at its queue.
async fn start_at(config: Config, operator_key: String, ahead: jiff::SignedDuration) -> TestApp {
    let app = Application::build(config.clone())
        .await
        .expect("the hub starts");
    app.store().clock().advance(ahead);
    let addr = app.local_addr();
    let http_addr = app.http_addr();
    let metrics_addr = app.metrics_addr();
    let store = app.store().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    // A TLS hub gets a plaintext channel that never connects; TLS tests make their own.
    let channel = if config.tls.cert.is_empty() {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    } else {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    TestApp {
        channel,
        addr,
        http_addr,
        metrics_addr,
        store,
        operator_key,
        config,
        stop: Some(stop),
        server: Some(server),
        _database: None,
    }
}

impl TestApp {
    /// Waits until this hub's workers have nothing due (see `Store::settle`): what
    /// has not happened by then is not going to happen without more time passing.
    pub async fn settle(&self) {
        self.store.settle().await
    }

    /// Moves this hub's clock forward; its workers look again by the new time.
    pub fn advance(&self, by: jiff::SignedDuration) {
        self.store.advance_clock(by)
    }

    /// A second hub on the same database (a replica behind a load balancer).
    pub async fn replica(&self) -> TestApp {
        start(self.config.clone(), self.operator_key.clone()).await
    }

    /// Stops this hub and starts a new one on the same database, its clock `ahead`
    /// of the system clock from the start (time that passed while it was down).
    pub async fn restart(mut self, ahead: jiff::SignedDuration) -> TestApp {
        let database = self._database.take();
        let (config, key) = (self.config.clone(), self.operator_key.clone());
        self.stop_now().await;
        let mut app = start_at(config, key, ahead).await;
        app._database = database;
        app
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// Issues a key in-process as the operator (what `liaison admin` does).
pub async fn issue_key(store: &Store, parent: &str, scopes: &[pb::ApiKeyScope]) -> String {
    let hub = Hub::build(store.clone(), &liaison::config::Config::default())
        .await
        .expect("hub");
    let api = AdminApi::new(hub);
    let mut request = Request::new(pb::CreateApiKeyRequest {
        parent: parent.into(),
        api_key: Some(pb::ApiKey {
            scopes: scopes.iter().map(|&s| s as i32).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    });
    request.extensions_mut().insert(Caller::operator());
    api.create_api_key(request)
        .await
        .expect("issue key")
        .into_inner()
        .key
}

#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.0.is_empty() {
            let value = format!("Bearer {}", self.0)
                .parse()
                .map_err(|_| Status::internal("bad key"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// An organization set up for a test, with keys of each scope.
/// Events `create_org` leaves at the start of each new organization's feed: the
/// `api_key.created` of its two keys.
pub const KEY_EVENTS: i64 = 2;

pub struct Org {
    pub name: String,
    pub admin_key: String,
    pub read_key: String,
}

impl TestApp {
    pub fn admin(&self, key: &str) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn members(&self, key: &str) -> MemberServiceClient<Authed> {
        MemberServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn partnerships(&self, key: &str) -> PartnershipServiceClient<Authed> {
        PartnershipServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn customers(&self, key: &str) -> CustomerServiceClient<Authed> {
        CustomerServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn sharing(&self, key: &str) -> SharingServiceClient<Authed> {
        SharingServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn webhooks(&self, key: &str) -> WebhookServiceClient<Authed> {
        WebhookServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn events(&self, key: &str) -> EventServiceClient<Authed> {
        EventServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn cases(&self, key: &str) -> CaseServiceClient<Authed> {
        CaseServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn interactions(&self, key: &str) -> InteractionServiceClient<Authed> {
        InteractionServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn audit(&self, key: &str) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn mappings(&self, key: &str) -> AccountMappingServiceClient<Authed> {
        AccountMappingServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    /// `google.longrunning.Operations`: the account mappings' comparisons.
    pub fn exports(&self, key: &str) -> ExportServiceClient<Authed> {
        ExportServiceClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    pub fn operations(&self, key: &str) -> OperationsClient<Authed> {
        OperationsClient::with_interceptor(self.channel.clone(), Bearer(key.to_owned()))
    }

    /// Makes `a` and `b` partners (a proposes, b accepts); returns the partnership.
    pub async fn partner(&self, a: &Org, b: &Org) -> pb::Partnership {
        let proposed = self
            .partnerships(&a.admin_key)
            .propose_partnership(pb::ProposePartnershipRequest {
                partnership: Some(pb::Partnership {
                    recipient: b.name.clone(),
                    relationship: pb::Relationship::Supplies as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("propose")
            .into_inner();
        self.partnerships(&b.admin_key)
            .accept_partnership(pb::AcceptPartnershipRequest {
                name: proposed.name,
                etag: String::new(),
                request_id: String::new(),
            })
            .await
            .expect("accept")
            .into_inner()
    }

    pub fn operator(&self) -> AdminServiceClient<Authed> {
        self.admin(&self.operator_key)
    }

    /// Creates an organization over gRPC and issues it an admin and a read key.
    pub async fn create_org(&self, slug: &str, kind: pb::OrganizationKind) -> Org {
        let org = self
            .operator()
            .create_organization(new_organization(slug, kind))
            .await
            .expect("create organization")
            .into_inner();
        let admin_key = self.create_key(&org.name, &[pb::ApiKeyScope::Admin]).await;
        let read_key = self.create_key(&org.name, &[pb::ApiKeyScope::Read]).await;
        Org {
            name: org.name,
            admin_key,
            read_key,
        }
    }

    pub async fn create_key(&self, parent: &str, scopes: &[pb::ApiKeyScope]) -> String {
        self.operator()
            .create_api_key(new_api_key(parent, scopes))
            .await
            .expect("create key")
            .into_inner()
            .key
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server
            .take()
            .expect("running")
            .await
            .expect("server task")
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// A request to create organization `slug` named "{slug} Ltd".
pub fn new_organization(slug: &str, kind: pb::OrganizationKind) -> pb::CreateOrganizationRequest {
    pb::CreateOrganizationRequest {
        organization: Some(pb::Organization {
            slug: slug.into(),
            display_name: format!("{slug} Ltd"),
            kind: kind as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// A request for a key of `parent` with `scopes`.
pub fn new_api_key(parent: &str, scopes: &[pb::ApiKeyScope]) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest {
        parent: parent.into(),
        api_key: Some(pb::ApiKey {
            scopes: scopes.iter().map(|&s| s as i32).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// Asserts `result` failed with `code` and ErrorInfo `reason`; returns the status.
#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "liaison");
    status
}

/// The fields named by the `BadRequest` details of `status`.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Runs `liaison migrate`, then `liaison admin bootstrap`, on `database_url`; returns
/// the operator key it prints.
pub fn bootstrap_operator(database_url: &str) -> String {
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["migrate"])
        .env("LIAISON_DATABASE_URL", database_url)
        .env("LIAISON_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["admin", "bootstrap"])
        .env("LIAISON_DATABASE_URL", database_url)
        .env("LIAISON_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// The JSON log lines of a hub running as a child process.
pub type HubLog = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// `liaison serve` as a separate process (so it can be signalled or killed) on
/// `database_url` with extra environment; returns it once it logs "hub ready", with
/// its address and the rest of its log.
pub async fn serve_process(
    database_url: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String, HubLog) {
    use tokio::io::AsyncBufReadExt;
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ])
        .args(["--log-format", "json"])
        .env("LIAISON_LOG", "info")
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start liaison serve");
    let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if entry["message"] == "hub ready" {
                return entry["listen"].as_str().unwrap().to_owned();
            }
        }
        panic!("the hub exited before it was ready");
    })
    .await
    .expect("ready in time");
    (server, addr, lines)
}

/// Another client holding the write side of `app`'s database (PostgreSQL: an exclusive
/// lock on `customers`; SQLite: the write lock), so the hub's writes wait; released
/// when the returned value is dropped.
pub async fn hold_database(app: &TestApp) -> Box<dyn std::any::Any + Send> {
    let url = &app.config.database.url;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        Box::new(conn)
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        Box::new(conn)
    }
}

/// Sends SIGTERM to a hub running as a child process (a graceful stop).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the hub is running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
}

/// Runs `sql` on `app`'s database directly, as someone with database access would.
pub async fn tamper(app: &TestApp, sql: &str) {
    use sqlx::Connection;
    let url = &app.config.database.url;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}
