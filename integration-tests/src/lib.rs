//! Helpers for the cross-service tests: start the trial store in-process on an ephemeral port,
//! or the real binary as a child process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub mod gateway;
pub mod history;

pub use trialbridge_storage::Role;

/// A trial store running in this process on 127.0.0.1 with its own SQLite file.
pub struct TestStore {
    /// FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
    pub base: String,
    /// The gRPC change feed's URL, e.g. `http://127.0.0.1:41235`.
    pub feed: String,
    /// The database file's directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The store's database URL (SQLite in `dir`, or a PostgreSQL database of its own).
    pub database_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Extension domains of the official R4 examples that are neither core nor HL7 IGs.
pub const EXAMPLE_EXTENSION_DOMAINS: &[&str] = &["http://example.org/", "http://nema.org/"];

/// The one official R4 example of the fixtures that R4 does not allow (its `performer` is an
/// Encounter): every validator must reject it.
pub const INVALID_EXAMPLE: &str = "Observation-clinical-gender.json";

impl TestStore {
    /// Starts a store with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a store, letting the caller adjust the API settings.
    pub async fn start_with(adjust: impl FnOnce(&mut trial_store::StoreConfig)) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// Starts a store on the database `store.db` in `dir` (which may hold one already, as after
    /// a restart).
    pub async fn start_in(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut trial_store::StoreConfig),
    ) -> Self {
        Self::start_limited(dir, trialbridge_storage::DEFAULT_STATEMENT_TIMEOUT, adjust).await
    }

    /// Starts a store whose reads are cancelled after `statement_timeout`.
    pub async fn start_limited(
        dir: tempfile::TempDir,
        statement_timeout: std::time::Duration,
        adjust: impl FnOnce(&mut trial_store::StoreConfig),
    ) -> Self {
        let url = store_database_url(dir.path()).await;
        let options = trialbridge_storage::StoreOptions {
            statement_timeout,
            ..Default::default()
        };
        let store = trialbridge_storage::open_with(&url, options)
            .await
            .expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = trial_store::StoreConfig::new(format!("http://{addr}/fhir"));
        // The official examples carry extensions from these domains; a test store accepts them
        // as a deployment would once configured (the default refuses them).
        config
            .validation
            .extension_domains
            .extend(EXAMPLE_EXTENSION_DOMAINS.iter().map(|d| d.to_string()));
        config.export_dir = dir.path().join("exports");
        adjust(&mut config);
        let base = config.base_url.clone();
        let verifier = trialbridge_auth::Verifier::from_jwks(
            &test_issuer().jwks(),
            trialbridge_auth::VerifierSettings {
                issuer: trial_store::config::LOCAL_ISSUER.into(),
                audience: TEST_AUDIENCE.into(),
                leeway_seconds: 30,
            },
        )
        .expect("test JWKS");
        let state = trial_store::StoreState::new(
            store,
            config,
            Arc::new(trialbridge_auth::Authenticator::fixed(verifier)),
            Arc::new(trial_store::TrialRules),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let feed_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let feed = format!("http://{}", feed_listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        trial_store::spawn_feed(feed_listener, state.clone(), stopped);
        tokio::spawn(async move {
            let _ = trial_store::serve(listener, state, async {
                let _ = rx.await;
            })
            .await;
            let _ = stop.send(true);
        });
        Self {
            base,
            feed,
            dir,
            database_url: url,
            shutdown: Some(tx),
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The variable naming a PostgreSQL server (`postgres://user@host:port/postgres`) on which
/// the store tests run instead of SQLite (`scripts/test.sh` runs them on both).
pub const STORE_POSTGRES_VAR: &str = "TRIALBRIDGE_TEST_STORE_POSTGRES";

/// The PostgreSQL server the store tests run on, if they run on one.
pub fn store_postgres() -> Option<String> {
    std::env::var(STORE_POSTGRES_VAR)
        .ok()
        .filter(|s| !s.is_empty())
}

/// The database of a test store in `dir`: an SQLite file in it, or, when
/// [`STORE_POSTGRES_VAR`] names a server, a database of its own there, named after `dir` so
/// that a store restarted on the same `dir` finds the same data.
pub async fn store_database_url(dir: &Path) -> String {
    let Some(server) = store_postgres() else {
        return format!("sqlite://{}", dir.join("store.db").display());
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let name = format!("tb_{:016x}", h.finish());
    postgres_database(&server, &name).await
}

/// A connection to a test PostgreSQL database.
pub async fn pg(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test PostgreSQL server")
}

/// Creates database `name` on the server of `server_url` unless it exists; returns its URL.
pub async fn postgres_database(server_url: &str, name: &str) -> String {
    let mut c = pg(server_url).await;
    let create = format!("CREATE DATABASE {name}");
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut c)
        .await
    {
        // 42P04: it exists already (a restart on the same data).
        let code = e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.to_string()));
        assert_eq!(
            code.as_deref(),
            Some("42P04"),
            "CREATE DATABASE {name}: {e}"
        );
    }
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("a server URL ending in /database");
    format!("{base}/{name}")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A fixture file under `integration-tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The audience of the test tokens (the local profile's default).
pub const TEST_AUDIENCE: &str = "trialbridge";

/// The signing key of every test token: one per test process, also installed into the data
/// directory of binaries under test (see [`install_test_key`]) so that both accept its tokens.
pub fn test_issuer() -> &'static trialbridge_auth::DevIssuer {
    static ISSUER: OnceLock<trialbridge_auth::DevIssuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("key dir").keep();
        trialbridge_auth::DevIssuer::load_or_create(
            &dir,
            trial_store::config::LOCAL_ISSUER,
            TEST_AUDIENCE,
        )
        .expect("test key")
    })
}

/// Copies the test signing key into a data directory, so that a `trialbridge` process started
/// on it (local profile) accepts the test tokens.
pub fn install_test_key(data_dir: &Path) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    std::fs::copy(
        test_issuer().path(),
        data_dir.join(trialbridge_auth::DEV_KEY_FILE),
    )
    .expect("install the test key");
}

/// A token for a role, its sites and scopes (default scopes when `scope` is empty).
pub fn token(role: Role, sites: &[&str], scope: &str) -> String {
    let scope = if scope.is_empty() {
        trialbridge_auth::default_scopes(role)
    } else {
        scope
    };
    test_issuer().mint(&trialbridge_auth::TokenRequest {
        subject: format!("test-{}", trialbridge_auth::role_name(role)),
        role,
        sites: sites.iter().map(|s| s.to_string()).collect(),
        scope: scope.into(),
        lifetime_seconds: 6 * 3600,
    })
}

/// The system token the general tests use.
pub fn system_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| token(Role::System, &[], ""))
}

/// Sends a FHIR request with `client` and a reason for change: the status and the JSON answer
/// (`null` when there is none).
pub async fn send_fhir(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
    reason: &str,
) -> (u16, serde_json::Value) {
    let mut r = client
        .request(method, url)
        .header("x-reason-for-change", reason);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let r = r.send().await.expect("a FHIR request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A FHIR JSON HTTP client carrying `token`, and no reason for change.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

/// The general tests' FHIR JSON HTTP client: a system token, and a reason for change on every
/// request (the security tests use [`client_with`] to test the rules themselves).
pub fn client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", system_token()))
            .expect("token"),
    );
    h.insert(
        "x-reason-for-change",
        reqwest::header::HeaderValue::from_static("integration test"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

/// The resource without `meta` (what a round trip must preserve).
pub fn without_meta(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("meta");
    }
    v
}

/// The `next` link of a Bundle, if any.
pub fn next_link(bundle: &serde_json::Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

/// GET a URL and parse the JSON answer (any status).
pub async fn get_json(url: &str) -> serde_json::Value {
    get_json_as(&client(), url).await
}

/// GET `url` with `http` (a client carrying some caller's token); the answer's JSON.
pub async fn get_json_as(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON answer")
}

/// GET `url` and return the body as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
}

/// A POST of a FHIR JSON body.
pub fn post_fhir(
    url: impl reqwest::IntoUrl,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    client()
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(body)
}

/// Creates `n` bare Patients `{prefix}0`, `{prefix}1`, ... with PUT; each must succeed.
pub async fn put_patients(s: &TestStore, prefix: &str, n: usize) {
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let r = put_fhir(
            s.url(&format!("Patient/{id}")),
            serde_json::json!({"resourceType": "Patient", "id": id}).to_string(),
        )
        .send()
        .await
        .expect("PUT");
        assert!(r.status().is_success(), "Patient/{id}: {}", r.status());
    }
}

/// A PUT of a FHIR JSON body.
pub fn put_fhir(
    url: impl reqwest::IntoUrl,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    client()
        .put(url)
        .header("content-type", "application/fhir+json")
        .body(body)
}

/// A free TCP port on 127.0.0.1 (for a process that must be told its port in advance).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `trialbridge store` (the binary `bin`: a test's `env!("CARGO_BIN_EXE_trialbridge-under-test")`)
/// on `db` with `dir` as its data directory (the test key installed there, ports chosen by the
/// system, the study not loaded), ready to spawn.
pub fn store_command(bin: &str, db: &str, dir: &Path) -> tokio::process::Command {
    install_test_key(dir);
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "store",
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .env("TRIALBRIDGE_DATABASE_URL", db)
    .env("TRIALBRIDGE_DATA_DIR", dir)
    .env("TRIALBRIDGE_LOAD_STUDY", "false");
    cmd
}

/// Starts a `trialbridge` process (stdout piped) and returns it with the first line it prints:
/// the FHIR base URL of `serve` and `store`.
pub async fn spawn_with_base(cmd: &mut tokio::process::Command) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start trialbridge");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let base = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("base URL in time")
        .expect("read")
        .expect("a line");
    (child, base)
}
