//! A whole platform per test: registry, ingest, query and gateway as real
//! processes, each with its own namespace, databases, bucket and Vault
//! prefix, on the servers the test command started.

use crate::{ChildProcess, free_port, service_command, workspace_bin};
use evidence::SigningKey;
use platform::amqp::BrokerUri;
use platform::rpc::{RpcClient, RpcMetrics};
use platform::s3::{EvidenceStore, S3Args, S3Credentials};
use platform::testing::{
    amqp_uri, database_login, delete_topology, drop_test_database, drop_test_database_on,
    prepare_citus, put_secret_at, query_json, rpc_config, service_test_database, test_database_on,
    unique_topology,
};
use rpc_contracts::jobs::{self, JobName, JobRun, ListJobRunsRequest, RunJobRequest};
use rpc_contracts::registry::{self, AddKeyRequest, AddSubmitterRequest};
use rpc_contracts::{Call, KeyId, RpcError, SubmitterId, Topology, auth, ingest, query};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// The workspace binaries [`Stack::start`] runs (each a package of the
/// same name), for callers that build or check them first (the `ingest`
/// benchmark): a missing one panics half-way through the start.
pub const BINARIES: [&str; 5] = ["registry", "auth", "ingest", "query", "gateway"];

/// Knobs of a test platform.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The gateway's body limit.
    pub max_package_bytes: usize,
    /// The S3 endpoint ingest uses (a dead port simulates storage down).
    pub s3_endpoint: Option<String>,
    /// More environment for `ingest serve`, applied last (so it overrides
    /// the stack's own, e.g. `TALLYHOUSE_KEY_CACHE_TTL_MS`, 0 here).
    pub ingest_env: Vec<(&'static str, String)>,
    /// More environment for auth, applied last (e.g.
    /// `TALLYHOUSE_SIGNING_KEY_RELOAD_SECS`).
    pub auth_env: Vec<(&'static str, String)>,
    /// More environment for the gateway, applied last (e.g.
    /// `TALLYHOUSE_TOKEN_KEYS_REFRESH_SECS`).
    pub gateway_env: Vec<(&'static str, String)>,
    /// Where the services' output goes: `<dir>/<service>.log`, truncated at
    /// start. `None`: inherited (shown with a failing test's output).
    pub log_dir: Option<PathBuf>,
    /// Superuser URL of the PostgreSQL server that holds ingest's database
    /// (`None`: the test command's, `TALLYHOUSE_TEST_DATABASE_URL`). When
    /// that server preloads Citus, the database is made a single-node Citus
    /// database before `ingest migrate` (see `platform::testing::prepare_citus`).
    pub ingest_database_server: Option<String>,
    /// The brokers the services and the harness's own RPC client use
    /// (empty: the test command's, `TALLYHOUSE_TEST_AMQP_URI`), e.g. a
    /// dedicated node or cluster a test may stop.
    pub amqp_uris: Vec<BrokerUri>,
    /// The brokers the services use, when they differ from
    /// [`StackOptions::amqp_uris`] (e.g. a proxy that can cut them off while
    /// the harness keeps its direct connection). Empty: the same.
    pub service_amqp_uris: Vec<BrokerUri>,
    /// The OpenBao every service reads its secrets from, as (address, root
    /// token), and where the stack writes them (`None`: the test command's),
    /// e.g. a private one a test may seal.
    pub vault: Option<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_package_bytes: 16 * 1024 * 1024,
            s3_endpoint: None,
            ingest_env: Vec::new(),
            auth_env: Vec::new(),
            gateway_env: Vec::new(),
            log_dir: None,
            ingest_database_server: None,
            amqp_uris: Vec::new(),
            service_amqp_uris: Vec::new(),
            vault: None,
        }
    }
}

/// `cmd` with its output sent to `<dir>/<name>.log` when `dir` is given.
fn with_log(mut cmd: Command, dir: Option<&PathBuf>, name: &str) -> Command {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).expect("create the log folder");
        let file =
            std::fs::File::create(dir.join(format!("{name}.log"))).expect("create a log file");
        cmd.stderr(file.try_clone().expect("clone a log file handle"));
        cmd.stdout(file);
    }
    cmd
}

/// The S3 server of the test command.
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
pub fn s3_settings() -> (String, String, String) {
    let get = |k: &str| {
        std::env::var(k)
            .unwrap_or_else(|_| panic!("{k} is unset: run the tests with deployment/test.sh"))
    };
    (
        std::env::var("TALLYHOUSE_TEST_S3_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:9000".into()),
        get("TALLYHOUSE_TEST_S3_ACCESS_KEY_ID"),
        get("TALLYHOUSE_TEST_S3_SECRET_ACCESS_KEY"),
    )
}

/// The variables every service gets on top of `service_command`'s when
/// `options` names other brokers or another OpenBao.
fn service_overrides(options: &StackOptions) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    let brokers = if options.service_amqp_uris.is_empty() {
        &options.amqp_uris
    } else {
        &options.service_amqp_uris
    };
    if !brokers.is_empty() {
        let uris: Vec<String> = brokers
            .iter()
            .map(|b| format!("amqp://{}/%2f", b.host_port()))
            .collect();
        env.push(("TALLYHOUSE_AMQP_URIS", uris.join(",")));
    }
    if let Some((addr, token)) = &options.vault {
        env.push(("VAULT_ADDR", addr.clone()));
        env.push(("VAULT_TOKEN", token.clone()));
    }
    env
}

/// A running platform.
pub struct Stack {
    /// The environment each of registry, auth, query and gateway was
    /// started with ([`Stack::restart`]).
    envs: Vec<(&'static str, Vec<(&'static str, String)>)>,
    pub topology: Topology,
    pub base_url: String,
    pub rpc: RpcClient,
    pub ingest_db_url: String,
    /// The auth service's database (superuser URL), to read its rows.
    pub auth_db_url: String,
    pub bucket: String,
    pub evidence: EvidenceStore,
    /// Each service's metrics (ops) address, by service name.
    metrics: Vec<(&'static str, SocketAddr)>,
    databases: Vec<String>,
    ingest_server: String,
    ingest_db: String,
    citus: bool,
    role: String,
    /// The query service's read-only role and its password.
    reader: (String, String),
    processes: Vec<ChildProcess>,
    /// The brokers of the harness's RPC client (for the clean-up).
    brokers: Vec<BrokerUri>,
    /// What `ingest serve` was started with, for [`Stack::spawn_ingest`].
    ingest_env: Vec<(&'static str, String)>,
    log_dir: Option<PathBuf>,
}

/// Writes a secret to `vault` (address, root token), or to the test
/// command's OpenBao when `None`.
async fn put_secret_to(
    vault: &Option<(String, String)>,
    prefix: &str,
    service: &str,
    kind: &str,
    fields: &[(&str, &str)],
) {
    match vault {
        Some((addr, token)) => put_secret_at(addr, token, prefix, service, kind, fields).await,
        None => platform::testing::put_secret(prefix, service, kind, fields).await,
    }
}

/// Runs one statement written by the test (hex names only) as the superuser.
pub async fn execute(url: &str, sql: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs one statement and returns the database's error message, if any.
pub async fn try_execute(url: &str, sql: &str) -> Result<(), String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Stack {
    /// Starts a lifecycle job in an ingest instance (as `tallyhouse job
    /// run` does; `partition` for a restore), which must start, and waits
    /// up to 3 minutes for its end: the recorded run, whatever its outcome.
    pub async fn run_job(&self, job: JobName, partition: Option<&str>) -> JobRun {
        let started = self
            .rpc
            .call::<jobs::RunJob>(&RunJobRequest {
                job,
                partition: partition.map(str::to_owned),
            })
            .await
            .expect("RunJob");
        assert!(started.started, "{started:?}");
        let run_id = started.run_id.expect("a started run has an id");
        let until = Instant::now() + Duration::from_secs(180);
        loop {
            let mut list = self
                .rpc
                .call::<jobs::ListJobRuns>(&ListJobRunsRequest {
                    job: None,
                    run_id: Some(run_id),
                    limit: 1,
                })
                .await
                .expect("ListJobRuns");
            let run = list.runs.pop().expect("the run is recorded");
            if run.outcome.is_some() {
                return run;
            }
            assert!(Instant::now() < until, "run {run_id} of {job} did not end");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts registry, auth, ingest (after `ingest migrate`), query and
    /// gateway, and waits until the gateway reaches registry and ingest and
    /// query and auth answer their pings.
    pub async fn start(options: StackOptions) -> Self {
        let topology = unique_topology("stack");
        let ns = topology.namespace().to_owned();
        // Databases: the registry's (with its Vault secret), and the time
        // series with its own service role (SELECT and INSERT only, granted
        // by `ingest migrate`).
        let (registry_db, registry_db_url, registry_env) =
            service_test_database(&ns, "registry").await;
        let (auth_db, auth_db_url, auth_env) = service_test_database(&ns, "auth").await;
        let vault = options.vault.clone();
        if vault.is_some() {
            // service_test_database wrote them to the test command's OpenBao.
            for (svc, url) in [("registry", &registry_db_url), ("auth", &auth_db_url)] {
                let (_, _, user, password) = database_login(url);
                let password = if password.is_empty() {
                    "unused-with-trust-auth".to_owned()
                } else {
                    password
                };
                put_secret_to(
                    &vault,
                    &ns,
                    svc,
                    "database",
                    &[("username", &user), ("password", &password)],
                )
                .await;
            }
        }
        let ingest_server = options
            .ingest_database_server
            .clone()
            .unwrap_or_else(platform::testing::database_admin_url);
        let (ingest_db, ingest_url) = test_database_on(&ingest_server).await;
        let citus = prepare_citus(&ingest_url).await;
        let role = format!(
            "t_ingest_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let role_password = uuid::Uuid::new_v4().simple().to_string();
        execute(
            &ingest_url,
            &format!("CREATE ROLE {role} LOGIN PASSWORD '{role_password}'"),
        )
        .await;
        // The query service reads it with its own role (SELECT only,
        // granted by `ingest migrate --reader-role`).
        let reader = format!(
            "t_query_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let reader_password = uuid::Uuid::new_v4().simple().to_string();
        execute(
            &ingest_url,
            &format!("CREATE ROLE {reader} LOGIN PASSWORD '{reader_password}'"),
        )
        .await;
        let (pg_host, pg_port, _, _) = database_login(&ingest_url);

        let (s3_endpoint, s3_key, s3_secret) = s3_settings();
        let bucket = ns.clone();
        for svc in ["gateway", "registry", "ingest"] {
            put_secret_to(
                &vault,
                &ns,
                svc,
                "amqp",
                &[("username", "guest"), ("password", "guest")],
            )
            .await;
        }
        put_secret_to(
            &vault,
            &ns,
            "ingest",
            "database",
            &[("username", &role), ("password", &role_password)],
        )
        .await;
        put_secret_to(
            &vault,
            &ns,
            "ingest",
            "s3",
            &[
                ("access_key_id", &s3_key),
                ("secret_access_key", &s3_secret),
            ],
        )
        .await;
        put_secret_to(
            &vault,
            &ns,
            "query",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        put_secret_to(
            &vault,
            &ns,
            "query",
            "database",
            &[
                ("username", &reader),
                ("password", &reader_password),
                ("database", &ingest_db),
            ],
        )
        .await;
        put_secret_to(
            &vault,
            &ns,
            "query",
            "s3",
            &[
                ("access_key_id", &s3_key),
                ("secret_access_key", &s3_secret),
            ],
        )
        .await;
        // Auth: its broker login and its token signing key.
        put_secret_to(
            &vault,
            &ns,
            "auth",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        let jwt_key = SigningKey::generate().to_pkcs8_pem();
        put_secret_to(
            &vault,
            &ns,
            "auth",
            "jwt_key",
            &[("private_key_pem", &jwt_key)],
        )
        .await;
        let receipt_key = SigningKey::generate().to_pkcs8_pem();
        put_secret_to(
            &vault,
            &ns,
            "ingest",
            "receipt_key",
            &[("private_key_pem", &receipt_key)],
        )
        .await;

        // What differs from the test command's servers, for every service.
        let overrides = service_overrides(&options);
        // Each service's full environment, kept so a test can restart it.
        let mut envs: Vec<(&'static str, Vec<(&'static str, String)>)> = Vec::new();
        let mut service_command = |bin: &'static str, ns: &str, env: &[(&'static str, String)]| {
            let mut all = overrides.clone();
            all.extend(env.iter().cloned());
            envs.push((bin, all.clone()));
            service_command(bin, ns, &all)
        };
        let mut processes = Vec::new();
        let metrics: Vec<(&'static str, SocketAddr)> =
            ["registry", "ingest", "gateway", "query", "auth"]
                .into_iter()
                .map(|name| (name, SocketAddr::from(([127, 0, 0, 1], free_port()))))
                .collect();
        let metrics_env = |name: &str| {
            let addr = metrics
                .iter()
                .find(|(n, _)| *n == name)
                .expect("a metrics port")
                .1;
            ("TALLYHOUSE_METRICS_ADDR", addr.to_string())
        };
        let logs = options.log_dir.as_ref();
        let db_env = |name: &str| {
            vec![
                ("TALLYHOUSE_DATABASE_HOST", pg_host.clone()),
                ("TALLYHOUSE_DATABASE_PORT", pg_port.to_string()),
                ("TALLYHOUSE_DATABASE_NAME", name.to_owned()),
            ]
        };
        let mut registry_env = registry_env;
        registry_env.push(metrics_env("registry"));
        processes.push(
            ChildProcess::spawn(
                "registry",
                &mut with_log(
                    service_command("registry", &ns, &registry_env),
                    logs,
                    "registry",
                ),
            )
            .expect("spawn registry"),
        );
        let mut auth_env = auth_env;
        auth_env.push(metrics_env("auth"));
        auth_env.extend(options.auth_env.iter().cloned());
        processes.push(
            ChildProcess::spawn(
                "auth",
                &mut with_log(service_command("auth", &ns, &auth_env), logs, "auth"),
            )
            .expect("spawn auth"),
        );
        let migrate = with_log(
            Command::new(workspace_bin("ingest")),
            logs,
            "ingest-migrate",
        )
        .arg("migrate")
        .env_clear()
        .env("TALLYHOUSE_ADMIN_DATABASE_URL", &ingest_url)
        .env("TALLYHOUSE_SERVICE_ROLE", &role)
        .env("TALLYHOUSE_READER_ROLE", &reader)
        .status()
        .expect("run ingest migrate");
        assert!(migrate.success(), "ingest migrate failed");
        let mut ingest_env = db_env(&ingest_db);
        ingest_env.push((
            "TALLYHOUSE_S3_ENDPOINT",
            options.s3_endpoint.clone().unwrap_or(s3_endpoint.clone()),
        ));
        ingest_env.push(("TALLYHOUSE_S3_BUCKET", bucket.clone()));
        ingest_env.push(("TALLYHOUSE_S3_TIMEOUT_MS", "5000".into()));
        ingest_env.push(("TALLYHOUSE_KEY_CACHE_TTL_MS", "0".into()));
        ingest_env.push(metrics_env("ingest"));
        ingest_env.extend(options.ingest_env.iter().cloned());
        let ingest_env = [overrides.clone(), ingest_env].concat();
        let mut ingest_cmd = with_log(
            crate::service_command("ingest", &ns, &ingest_env),
            logs,
            "ingest",
        );
        ingest_cmd.arg("serve");
        processes.push(ChildProcess::spawn("ingest", &mut ingest_cmd).expect("spawn ingest"));
        let mut query_env = db_env(&ingest_db);
        query_env.push(("TALLYHOUSE_S3_ENDPOINT", s3_endpoint.clone()));
        query_env.push(("TALLYHOUSE_S3_BUCKET", bucket.clone()));
        query_env.push(metrics_env("query"));
        processes.push(
            ChildProcess::spawn(
                "query",
                &mut with_log(service_command("query", &ns, &query_env), logs, "query"),
            )
            .expect("spawn query"),
        );
        let port = free_port();
        processes.push(
            ChildProcess::spawn(
                "gateway",
                &mut with_log(
                    service_command(
                        "gateway",
                        &ns,
                        &[
                            ("TALLYHOUSE_HTTP_ADDR", format!("127.0.0.1:{port}")),
                            (
                                "TALLYHOUSE_MAX_PACKAGE_BYTES",
                                options.max_package_bytes.to_string(),
                            ),
                            metrics_env("gateway"),
                        ]
                        .into_iter()
                        .chain(options.gateway_env.iter().cloned())
                        .collect::<Vec<_>>(),
                    ),
                    logs,
                    "gateway",
                ),
            )
            .expect("spawn gateway"),
        );

        let brokers = if options.amqp_uris.is_empty() {
            vec![amqp_uri()]
        } else {
            options.amqp_uris.clone()
        };
        let rpc = RpcClient::start(
            rpc_config(&topology, brokers.clone(), "test-stack"),
            RpcMetrics::unregistered(),
        );
        let evidence = EvidenceStore::new(
            &S3Args {
                s3_endpoint,
                s3_region: "us-east-1".into(),
                s3_bucket: bucket.clone(),
                s3_timeout_ms: 10_000,
            },
            &S3Credentials {
                access_key_id: s3_key,
                secret_access_key: s3_secret.into(),
            },
        );
        let envs = envs;
        let stack = Self {
            envs,
            topology,
            base_url: format!("http://127.0.0.1:{port}"),
            rpc,
            ingest_db_url: ingest_url,
            auth_db_url,
            bucket,
            evidence,
            metrics,
            databases: vec![registry_db, auth_db],
            ingest_server,
            ingest_db,
            citus,
            role,
            reader: (reader, reader_password),
            processes,
            brokers,
            ingest_env,
            log_dir: options.log_dir.clone(),
        };
        let mut stack = stack;
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            let ping = http.get(format!("{}/v1/ping", self.base_url)).send().await;
            let keys = http.get(format!("{}/v1/keys", self.base_url)).send().await;
            let ok = |r: &Result<reqwest::Response, reqwest::Error>| {
                r.as_ref().is_ok_and(|r| r.status() == 200)
            };
            let query = self
                .rpc
                .call_with::<query::Ping>(
                    &registry::PingRequest {},
                    platform::rpc::CallOptions::timeout(Duration::from_secs(2)),
                )
                .await;
            let auth = self
                .rpc
                .call_with::<auth::Ping>(
                    &registry::PingRequest {},
                    platform::rpc::CallOptions::timeout(Duration::from_secs(2)),
                )
                .await;
            if ok(&ping) && ok(&keys) && query.is_ok() && auth.is_ok() {
                return;
            }
            for p in &mut self.processes {
                assert!(
                    p.try_wait().is_none(),
                    "{} exited during start-up",
                    p.name()
                );
            }
            assert!(
                Instant::now() < until,
                "the platform did not come up in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Registers `submitter` with a fresh key; returns the key and its id.
    pub async fn submitter_with_key(&self, submitter: &str) -> (SigningKey, KeyId) {
        let id = SubmitterId::parse(submitter).unwrap();
        self.rpc
            .call::<registry::AddSubmitter>(&AddSubmitterRequest {
                submitter_id: id.clone(),
                name: None,
            })
            .await
            .expect("add submitter");
        let key = SigningKey::generate();
        let info = self
            .rpc
            .call::<registry::AddKey>(&AddKeyRequest {
                submitter_id: id,
                public_key_pem: key.public_key().to_spki_pem(),
                not_before: Some(platform::clock::now() - time::Duration::hours(1)),
                not_after: None,
            })
            .await
            .expect("add key");
        (key, info.key_id)
    }

    /// The platform's receipt keys, through the gateway.
    pub async fn jwks(&self) -> Vec<serde_json::Value> {
        let jwks: ingest::JwkSet = reqwest::get(format!("{}/v1/keys", self.base_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jwks.keys
    }

    /// Rows of `sql` on the time-series database.
    pub async fn query(&self, sql: &str) -> Vec<serde_json::Value> {
        query_json(&self.ingest_db_url, sql).await
    }

    /// Whether ingest's database is a Citus database (its server preloads
    /// Citus), so `ingest migrate` distributed the tables.
    pub fn citus(&self) -> bool {
        self.citus
    }

    /// The role ingest connects as.
    pub fn service_role(&self) -> &str {
        &self.role
    }

    /// Calls the query service over RPC.
    pub async fn query_call<C: Call>(&self, request: &C::Request) -> Result<C::Response, RpcError> {
        assert_eq!(
            C::SERVICE,
            query::QUEUE,
            "{} is not a query call",
            C::METHOD
        );
        self.rpc.call::<C>(request).await
    }

    /// The query service's read-only role.
    pub fn reader_role(&self) -> &str {
        &self.reader.0
    }

    /// A URL of ingest's database logged in as the query service's role.
    pub fn reader_db_url(&self) -> String {
        let (host, port, _, _) = database_login(&self.ingest_db_url);
        format!(
            "postgres://{}:{}@{host}:{port}/{}",
            self.reader.0, self.reader.1, self.ingest_db
        )
    }

    /// Object keys in the test's bucket.
    pub async fn blobs(&self) -> Vec<String> {
        self.evidence.list_keys("").await.unwrap_or_default()
    }

    /// The metrics (ops) address of service `name` (`registry`, `ingest`,
    /// `gateway`).
    pub fn metrics_addr(&self, name: &str) -> SocketAddr {
        self.metrics
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| *addr)
            .expect("no such service")
    }

    /// What service `name` serves on `/metrics` now (Prometheus text).
    pub async fn scrape_metrics(&self, name: &str) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr(name));
        let resp = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.text().await.expect("a metrics body")
    }

    /// Deletes every object in the stack's bucket, then the bucket (ingest
    /// creates it; [`Stack::finish`] leaves it). Returns the objects deleted.
    pub async fn remove_bucket(&self) -> Result<usize, String> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let keys = self
            .evidence
            .list_keys("")
            .await
            .map_err(|e| e.to_string())?;
        let client = self.evidence.client();
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| e.to_string())?;
            client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?;
        }
        match client.delete_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(keys.len()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.meta().code() == Some("NoSuchBucket")) =>
            {
                Ok(keys.len())
            }
            Err(e) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
        }
    }

    /// Starts one more `ingest serve` named `name` (its log is
    /// `<log dir>/<name>.log`), configured as the first one with `env` on
    /// top and metrics on a port of its own: a second instance consuming
    /// the same queue, or a replacement for one that was killed. It is
    /// found by [`Stack::process`] and stopped by [`Stack::finish`].
    /// Returns its metrics (ops) address, whose `/ready` says when it serves.
    pub fn spawn_ingest(&mut self, name: &str, env: &[(&'static str, String)]) -> SocketAddr {
        let mut all = self.ingest_env.clone();
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        all.push(("TALLYHOUSE_METRICS_ADDR", metrics.to_string()));
        all.extend(env.iter().cloned());
        let mut cmd = with_log(
            service_command("ingest", self.topology.namespace(), &all),
            self.log_dir.as_ref(),
            name,
        );
        cmd.arg("serve");
        self.processes
            .push(ChildProcess::spawn(name, &mut cmd).expect("spawn ingest"));
        metrics
    }

    /// Stops the service `name` (registry, auth, query or gateway) if it
    /// runs, and starts it again as it was first started: e.g. a gateway
    /// that starts while auth is down. Does not wait for it to serve.
    pub fn restart(&mut self, name: &str) {
        if let Some(i) = self.processes.iter().position(|p| p.name() == name) {
            let mut old = self.processes.remove(i);
            old.kill();
        }
        self.start_service(name);
    }

    /// Stops the service `name` (it stays stopped until [`Stack::restart`]).
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.processes.iter().position(|p| p.name() == name) {
            let mut old = self.processes.remove(i);
            old.kill();
        }
    }

    fn start_service(&mut self, name: &str) {
        let (bin, env) = self
            .envs
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} cannot be restarted"))
            .clone();
        let mut cmd = with_log(
            service_command(bin, self.topology.namespace(), &env),
            self.log_dir.as_ref(),
            name,
        );
        self.processes
            .push(ChildProcess::spawn(name, &mut cmd).expect("spawn a service"));
    }

    /// The names of the service processes it runs (`registry`, `ingest`...).
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name().to_owned()).collect()
    }

    /// The service process named `name`, to kill or inspect.
    pub fn process(&mut self, name: &str) -> &mut ChildProcess {
        self.processes
            .iter_mut()
            .find(|p| p.name() == name)
            .expect("no such process")
    }

    /// Stops everything and drops what the test created.
    pub async fn finish(mut self) {
        for p in &mut self.processes {
            p.kill();
        }
        self.rpc.close().await;
        delete_topology(
            &self.brokers[0],
            &self.topology,
            &[registry::QUEUE, ingest::QUEUE, query::QUEUE, auth::QUEUE],
        )
        .await;
        for db in &self.databases {
            drop_test_database(db).await;
        }
        drop_test_database_on(&self.ingest_server, &self.ingest_db).await;
        execute(
            &self.ingest_server,
            &format!("DROP ROLE IF EXISTS {}", self.role),
        )
        .await;
        execute(
            &self.ingest_server,
            &format!("DROP ROLE IF EXISTS {}", self.reader.0),
        )
        .await;
    }
}
