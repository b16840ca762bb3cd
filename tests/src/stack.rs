//! A whole platform per test: registry, ingest and gateway as real
//! processes, each with its own namespace, databases, bucket and Vault
//! prefix, on the servers the test command started.

use crate::{ChildProcess, free_port, service_command, workspace_bin};
use evidence::SigningKey;
use platform::rpc::{RpcClient, RpcMetrics};
use platform::s3::{EvidenceStore, S3Args, S3Credentials};
use platform::testing::{
    amqp_uri, database_login, delete_topology, drop_test_database, put_secret, query_json,
    rpc_config, service_test_database, test_database, unique_topology,
};
use rpc_contracts::registry::{self, AddKeyRequest, AddSubmitterRequest};
use rpc_contracts::{KeyId, SubmitterId, Topology, ingest};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// Knobs of a test platform.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The gateway's body limit.
    pub max_package_bytes: usize,
    /// The S3 endpoint ingest uses (a dead port simulates storage down).
    pub s3_endpoint: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_package_bytes: 16 * 1024 * 1024,
            s3_endpoint: None,
        }
    }
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

/// A running platform.
pub struct Stack {
    pub topology: Topology,
    pub base_url: String,
    pub rpc: RpcClient,
    pub ingest_db_url: String,
    pub bucket: String,
    pub evidence: EvidenceStore,
    databases: Vec<String>,
    role: String,
    processes: Vec<ChildProcess>,
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
    /// Starts registry, ingest (after `ingest migrate`) and gateway, and
    /// waits until the gateway reaches both.
    pub async fn start(options: StackOptions) -> Self {
        let topology = unique_topology("stack");
        let ns = topology.namespace().to_owned();
        // Databases: the registry's (with its Vault secret), and the time
        // series with its own service role (SELECT and INSERT only, granted
        // by `ingest migrate`).
        let (registry_db, _, registry_env) = service_test_database(&ns, "registry").await;
        let (ingest_db, ingest_url) = test_database().await;
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
        let (pg_host, pg_port, _, _) = database_login(&ingest_url);

        let (s3_endpoint, s3_key, s3_secret) = s3_settings();
        let bucket = ns.clone();
        for svc in ["gateway", "registry", "ingest"] {
            put_secret(
                &ns,
                svc,
                "amqp",
                &[("username", "guest"), ("password", "guest")],
            )
            .await;
        }
        put_secret(
            &ns,
            "ingest",
            "database",
            &[("username", &role), ("password", &role_password)],
        )
        .await;
        put_secret(
            &ns,
            "ingest",
            "s3",
            &[
                ("access_key_id", &s3_key),
                ("secret_access_key", &s3_secret),
            ],
        )
        .await;
        let receipt_key = SigningKey::generate().to_pkcs8_pem();
        put_secret(
            &ns,
            "ingest",
            "receipt_key",
            &[("private_key_pem", &receipt_key)],
        )
        .await;

        let mut processes = Vec::new();
        let db_env = |name: &str| {
            vec![
                ("TALLYHOUSE_DATABASE_HOST", pg_host.clone()),
                ("TALLYHOUSE_DATABASE_PORT", pg_port.to_string()),
                ("TALLYHOUSE_DATABASE_NAME", name.to_owned()),
            ]
        };
        processes.push(
            ChildProcess::spawn(
                "registry",
                &mut service_command("registry", &ns, &registry_env),
            )
            .expect("spawn registry"),
        );
        let migrate = Command::new(workspace_bin("ingest"))
            .arg("migrate")
            .env_clear()
            .env("TALLYHOUSE_ADMIN_DATABASE_URL", &ingest_url)
            .env("TALLYHOUSE_SERVICE_ROLE", &role)
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
        let mut ingest_cmd = service_command("ingest", &ns, &ingest_env);
        ingest_cmd.arg("serve");
        processes.push(ChildProcess::spawn("ingest", &mut ingest_cmd).expect("spawn ingest"));
        let port = free_port();
        processes.push(
            ChildProcess::spawn(
                "gateway",
                &mut service_command(
                    "gateway",
                    &ns,
                    &[
                        ("TALLYHOUSE_HTTP_ADDR", format!("127.0.0.1:{port}")),
                        (
                            "TALLYHOUSE_MAX_PACKAGE_BYTES",
                            options.max_package_bytes.to_string(),
                        ),
                    ],
                ),
            )
            .expect("spawn gateway"),
        );

        let rpc = RpcClient::start(
            rpc_config(&topology, vec![amqp_uri()], "test-stack"),
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
        let stack = Self {
            topology,
            base_url: format!("http://127.0.0.1:{port}"),
            rpc,
            ingest_db_url: ingest_url,
            bucket,
            evidence,
            databases: vec![registry_db, ingest_db],
            role,
            processes,
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
            if ok(&ping) && ok(&keys) {
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

    /// The role ingest connects as.
    pub fn service_role(&self) -> &str {
        &self.role
    }

    /// Object keys in the test's bucket.
    pub async fn blobs(&self) -> Vec<String> {
        self.evidence.list_keys("").await.unwrap_or_default()
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
            &amqp_uri(),
            &self.topology,
            &[registry::QUEUE, ingest::QUEUE],
        )
        .await;
        for db in &self.databases {
            drop_test_database(db).await;
        }
        execute(
            &platform::testing::database_admin_url(),
            &format!("DROP ROLE IF EXISTS {}", self.role),
        )
        .await;
    }
}
