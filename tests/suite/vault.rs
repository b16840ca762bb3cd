//! Secrets from Vault, against real OpenBao servers: each service's policy
//! allows only its own secrets; AppRole login and token renewal; leased
//! database logins renewed and replaced while serving; and Vault away — at
//! start-up (bounded, non-zero exit naming Vault) and mid-run (sealed: keeps
//! serving until the lease expires, then `secrets_expired`, then recovers by
//! itself once unsealed).

use platform::rpc::{RpcClient, RpcMetrics};
use platform::testing::{
    amqp_uri, database_admin_url, database_login, delete_topology, drop_test_database, put_secret,
    query_json, rpc_config, test_database, unique_topology, vault_addr, vault_root_token,
};
use rpc_contracts::registry::{self, AddSubmitterRequest, ListSubmittersRequest, PingRequest};
use rpc_contracts::{ErrorCode, RpcError, SubmitterId, Topology};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::stack::execute;
use tests::{ChildProcess, free_port, service_command};
use tokio::time::Instant;

/// One call to Vault's HTTP API; returns the status and the JSON body.
async fn api(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{addr}/v1/{path}");
    let mut req = match method {
        "GET" => client.get(&url),
        "DELETE" => client.delete(&url),
        "PUT" => client.put(&url),
        _ => client.post(&url),
    };
    if !token.is_empty() {
        req = req.header("X-Vault-Token", token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let response = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Like [`api`], failing the test unless Vault answers 2xx.
async fn api_ok(addr: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, value) = api(addr, token, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {value}"
    );
    value
}

/// A private OpenBao dev server on its own port, to seal and unseal
/// without touching the test command's.
struct PrivateBao {
    /// Killed when the test ends.
    _process: ChildProcess,
    addr: String,
    root: String,
    unseal_key: String,
}

fn bao_binary() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/bao");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("bao")
    }
}

impl PrivateBao {
    async fn start() -> Self {
        let port = free_port();
        let root = format!("root-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new(bao_binary());
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={root}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut process = ChildProcess::spawn("openbao", &mut cmd).expect("start bao server -dev");
        let stdout = process.take_stdout().expect("bao's stdout");
        // Dev mode prints its unseal key at start.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(key) = line.trim().strip_prefix("Unseal Key: ") {
                    let _ = tx.send(key.trim().to_owned());
                }
            }
        });
        let unseal_key = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("bao server -dev printed its unseal key");
        let addr = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(30);
        while api(&addr, "", "GET", "sys/health", None).await.0 != 200 {
            assert!(
                Instant::now() < until,
                "the private OpenBao never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _process: process,
            addr,
            root,
            unseal_key,
        }
    }

    async fn seal(&self) {
        api_ok(&self.addr, &self.root, "PUT", "sys/seal", None).await;
        let (status, _) = api(&self.addr, "", "GET", "sys/health", None).await;
        assert_eq!(status, 503, "sealed OpenBao answers 503 on sys/health");
    }

    async fn unseal(&self) {
        let state = api_ok(
            &self.addr,
            "",
            "PUT",
            "sys/unseal",
            Some(json!({ "key": self.unseal_key })),
        )
        .await;
        assert_eq!(state["sealed"], json!(false), "{state}");
    }
}

/// A database for a registry whose logins are leased from a database
/// secrets engine mounted at a path of its own: a stable group role owns
/// the database; each leased login is a member of it.
struct LeasedDatabase {
    vault: (String, String),
    mount: String,
    role: String,
    group: String,
    db_name: String,
    db_url: String,
}

impl LeasedDatabase {
    async fn new(vault_addr: &str, vault_token: &str, tag: &str, ttl: &str, max_ttl: &str) -> Self {
        let (db_name, db_url) = test_database().await;
        let admin = database_admin_url();
        let group = format!("{db_name}_owner");
        execute(&admin, &format!("CREATE ROLE \"{group}\" NOLOGIN")).await;
        execute(
            &admin,
            &format!("ALTER DATABASE \"{db_name}\" OWNER TO \"{group}\""),
        )
        .await;
        let (host, port, user, password) = database_login(&admin);
        let mount = format!("db-{tag}-{}", uuid::Uuid::new_v4().simple());
        let role = "svc".to_owned();
        api_ok(
            vault_addr,
            vault_token,
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "database" })),
        )
        .await;
        api_ok(
            vault_addr,
            vault_token,
            "POST",
            &format!("{mount}/config/pg"),
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/postgres?sslmode=disable"),
                "username": user,
                "password": if password.is_empty() { "unused-with-trust-auth".to_owned() } else { password },
                "allowed_roles": [role],
                "verify_connection": true,
            })),
        )
        .await;
        api_ok(
            vault_addr,
            vault_token,
            "POST",
            &format!("{mount}/roles/{role}"),
            Some(json!({
                "db_name": "pg",
                "creation_statements": [format!(
                    "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE \"{group}\";"
                )],
                "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
                "default_ttl": ttl,
                "max_ttl": max_ttl,
            })),
        )
        .await;
        Self {
            vault: (vault_addr.to_owned(), vault_token.to_owned()),
            mount,
            role,
            group,
            db_name,
            db_url,
        }
    }

    /// The registry's database settings: leased logins, sessions as the group.
    fn env(&self) -> Vec<(&'static str, String)> {
        let (host, port, _, _) = database_login(&self.db_url);
        vec![
            ("TALLYHOUSE_DATABASE_HOST", host),
            ("TALLYHOUSE_DATABASE_PORT", port.to_string()),
            ("TALLYHOUSE_DATABASE_NAME", self.db_name.clone()),
            ("TALLYHOUSE_DATABASE_VAULT_MOUNT", self.mount.clone()),
            ("TALLYHOUSE_DATABASE_VAULT_ROLE", self.role.clone()),
            ("TALLYHOUSE_DATABASE_GROUP_ROLE", self.group.clone()),
        ]
    }

    /// The logins the registry holds connections with now.
    async fn session_users(&self) -> BTreeSet<String> {
        query_json(
            &self.db_url,
            &format!(
                "SELECT usename FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'registry'",
                self.db_name
            ),
        )
        .await
        .into_iter()
        .filter_map(|row| row["usename"].as_str().map(str::to_owned))
        .collect()
    }

    async fn finish(self) {
        // Disabling the mount revokes its leases (drops the leased roles).
        let _ = api(
            &self.vault.0,
            &self.vault.1,
            "DELETE",
            &format!("sys/mounts/{}", self.mount),
            None,
        )
        .await;
        drop_test_database(&self.db_name).await;
        let admin = database_admin_url();
        // Leased roles left behind (a sealed Vault cannot revoke) go too.
        for row in query_json(
            &admin,
            &format!(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = '{}'",
                self.group
            ),
        )
        .await
        {
            if let Some(name) = row["rolname"].as_str() {
                let _ =
                    tests::stack::try_execute(&admin, &format!("DROP ROLE IF EXISTS \"{name}\""))
                        .await;
            }
        }
        let _ =
            tests::stack::try_execute(&admin, &format!("DROP ROLE IF EXISTS \"{}\"", self.group))
                .await;
    }
}

/// A registry process with its RPC client and metrics port.
struct Registry {
    process: ChildProcess,
    rpc: RpcClient,
    topology: Topology,
    metrics: String,
}

impl Registry {
    async fn spawn(topology: Topology, env: Vec<(&'static str, String)>, remove: &[&str]) -> Self {
        let prefix = topology.namespace().to_owned();
        let metrics_port = free_port();
        let mut env = env;
        env.push((
            "TALLYHOUSE_METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        ));
        let mut cmd = service_command("registry", &prefix, &env);
        for k in remove {
            cmd.env_remove(k);
        }
        let mut process = ChildProcess::spawn("registry", &mut cmd).expect("spawn the registry");
        let rpc = RpcClient::start(
            rpc_config(&topology, vec![amqp_uri()], "test-vault-client"),
            RpcMetrics::unregistered(),
        );
        assert!(rpc.wait_connected(Duration::from_secs(10)).await);
        let until = Instant::now() + Duration::from_secs(60);
        while rpc.call::<registry::Ping>(&PingRequest {}).await.is_err() {
            assert!(process.try_wait().is_none(), "the registry exited");
            assert!(Instant::now() < until, "the registry never answered a ping");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            process,
            rpc,
            topology,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        }
    }

    /// A call that needs the database.
    async fn list(&self) -> Result<usize, RpcError> {
        self.rpc
            .call::<registry::ListSubmitters>(&ListSubmittersRequest {})
            .await
            .map(|r| r.submitters.len())
    }

    async fn add(&self, id: &str) -> Result<(), RpcError> {
        self.rpc
            .call::<registry::AddSubmitter>(&AddSubmitterRequest {
                submitter_id: SubmitterId::parse(id).unwrap(),
                name: None,
            })
            .await
            .map(|_| ())
    }

    /// `/ready`: its status and JSON body.
    async fn ready(&self) -> (u16, Value) {
        let url = self.metrics.replace("/metrics", "/ready");
        let response = reqwest::get(&url).await.expect("GET /ready");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The value of one sample of the registry's metrics, 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(&self.metrics)
            .await
            .expect("scrape the registry")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    }

    async fn finish(mut self) {
        assert!(
            self.process.terminate().unwrap().success(),
            "the registry stops cleanly on SIGTERM"
        );
        self.rpc.close().await;
        delete_topology(&amqp_uri(), &self.topology, &[registry::QUEUE]).await;
    }
}

fn approle_state(service: &str) -> (String, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.run/state/approle")
        .join(service);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| {
                panic!(
                    "{}/{f}: {e} (run deployment/vault-provision.sh)",
                    dir.display()
                )
            })
            .trim()
            .to_owned()
    };
    (read("role_id"), read("secret_id"))
}

#[tokio::test]
async fn each_service_reads_its_own_secrets_and_nothing_else() {
    let secrets: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deployment/vault/secrets.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let prefix = secrets["prefix"].as_str().unwrap();
    let policy_prefix = secrets["policy_prefix"].as_str().unwrap();
    let db_mount = secrets["database_engine"]["mount"].as_str().unwrap();
    let services: Vec<(String, Vec<String>)> = secrets["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, spec)| spec["process"] != json!(false))
        .map(|(name, spec)| {
            let reads = spec["reads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect();
            (name.clone(), reads)
        })
        .collect();
    assert!(services.len() >= 5, "{services:?}");
    let addr = vault_addr();
    let mut checked = 0;
    for (service, _) in &services {
        // The service's real AppRole, as vault-provision.sh made it.
        let (role_id, secret_id) = approle_state(service);
        let login = api_ok(
            &addr,
            "",
            "POST",
            "auth/approle/login",
            Some(json!({ "role_id": role_id, "secret_id": secret_id })),
        )
        .await;
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        assert_eq!(
            login["auth"]["token_policies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| *p != "default")
                .collect::<Vec<_>>(),
            vec![&json!(format!("{policy_prefix}{service}"))],
            "{service}'s token carries its own policy only"
        );
        for (other, other_reads) in &services {
            for kind in other_reads {
                let (status, _) = api(
                    &addr,
                    &token,
                    "GET",
                    &format!("secret/data/{prefix}/{other}/{kind}"),
                    None,
                )
                .await;
                if other == service {
                    assert_eq!(status, 200, "{service} reads its own {kind}");
                } else {
                    assert_eq!(status, 403, "{service} must not read {other}'s {kind}");
                }
                checked += 1;
            }
            if other_reads.iter().any(|k| k == "database") {
                let path = format!("{db_mount}/creds/{policy_prefix}{other}");
                let (status, body) = api(&addr, &token, "GET", &path, None).await;
                if other == service {
                    assert_eq!(status, 200, "{service} gets its own database login");
                    let lease = body["lease_id"].as_str().unwrap();
                    api_ok(
                        &addr,
                        &token,
                        "PUT",
                        "sys/leases/renew",
                        Some(json!({ "lease_id": lease })),
                    )
                    .await;
                    api_ok(
                        &addr,
                        &vault_root_token(),
                        "PUT",
                        "sys/leases/revoke",
                        Some(json!({ "lease_id": lease })),
                    )
                    .await;
                } else {
                    assert_eq!(
                        status, 403,
                        "{service} must not get {other}'s database login"
                    );
                }
                checked += 1;
            }
        }
        // Nor list or write anything.
        let (status, _) = api(
            &addr,
            &token,
            "GET",
            &format!("secret/metadata/{prefix}?list=true"),
            None,
        )
        .await;
        assert_eq!(status, 403, "{service} cannot list the secrets");
        let (status, _) = api(
            &addr,
            &token,
            "POST",
            &format!("secret/data/{prefix}/{service}/amqp"),
            Some(json!({ "data": { "username": "x" } })),
        )
        .await;
        assert_eq!(status, 403, "{service} cannot write its own secrets");
        // Except the signing keys it rotates itself ("writes"): a
        // check-and-set create of an existing secret writes nothing, and is
        // refused for its content (400) where the policy allows the write,
        // for the policy (403) elsewhere.
        for (other, other_reads) in &services {
            let writes = secrets["services"][other]["writes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for kind in other_reads {
                let (status, _) = api(
                    &addr,
                    &token,
                    "POST",
                    &format!("secret/data/{prefix}/{other}/{kind}"),
                    Some(json!({ "options": { "cas": 0 }, "data": { "x": "y" } })),
                )
                .await;
                let allowed = other == service && writes.contains(&json!(kind));
                assert_eq!(
                    status,
                    if allowed { 400 } else { 403 },
                    "{service} writing {other}'s {kind}"
                );
            }
        }
    }
    assert!(checked > 20, "only {checked} checks");
}

#[tokio::test]
async fn a_leased_database_login_is_renewed_then_replaced_while_the_service_serves() {
    let topology = unique_topology("vault-lease");
    let prefix = topology.namespace().to_owned();
    put_secret(
        &prefix,
        "registry",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    // 4 s leases, 10 s at most: renewed at ~2.7 s, replaced before 10 s.
    let db = LeasedDatabase::new(&vault_addr(), &vault_root_token(), "lease", "4s", "10s").await;
    let registry = Registry::spawn(topology, db.env(), &[]).await;

    let first = db.session_users().await;
    assert_eq!(first.len(), 1, "one leased login at first: {first:?}");
    assert!(
        first.iter().all(|u| u.starts_with("v-")),
        "a leased role: {first:?}"
    );
    let mut seen = first.clone();
    let until = Instant::now() + Duration::from_secs(60);
    let mut calls = 0;
    while seen.len() < 3 {
        assert!(
            Instant::now() < until,
            "no fresh logins within 60 s: {seen:?}"
        );
        registry
            .add(&format!("sub-{calls}"))
            .await
            .unwrap_or_else(|e| panic!("call {calls} failed while logins rotate: {e}"));
        calls += 1;
        seen.extend(db.session_users().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        registry.list().await.unwrap(),
        calls,
        "every submitter is stored"
    );
    // Sessions run as the stable group role: the table belongs to it.
    let owner = query_json(
        &db.db_url,
        "SELECT tableowner FROM pg_tables WHERE tablename = 'submitters'",
    )
    .await;
    assert_eq!(owner[0]["tableowner"], json!(db.group), "{owner:?}");
    assert!(
        registry
            .metric("tallyhouse_vault_renewals_total{what=\"lease\",outcome=\"renewed\"}")
            .await
            >= 1.0
    );
    assert!(
        registry
            .metric("tallyhouse_vault_renewals_total{what=\"lease\",outcome=\"replaced\"}")
            .await
            >= 2.0
    );
    let left = registry
        .metric("tallyhouse_vault_lease_seconds_remaining{kind=\"database\"}")
        .await;
    assert!(left > 0.0 && left <= 10.0, "lease seconds left: {left}");
    // Connections of replaced logins are gone (closed as they were next used).
    registry.list().await.unwrap();
    let now = db.session_users().await;
    assert!(
        now.iter().all(|u| !first.contains(u)),
        "the first login is no longer used: {now:?}"
    );

    registry.finish().await;
    db.finish().await;
}

#[tokio::test]
async fn a_sealed_vault_is_ridden_out_until_the_lease_ends_then_secrets_expired_then_recovery() {
    let bao = PrivateBao::start().await;
    let topology = unique_topology("vault-seal");
    let prefix = topology.namespace().to_owned();
    api_ok(
        &bao.addr,
        &bao.root,
        "POST",
        &format!("secret/data/{prefix}/registry/amqp"),
        Some(json!({ "data": { "username": "guest", "password": "guest" } })),
    )
    .await;
    let db = LeasedDatabase::new(&bao.addr, &bao.root, "seal", "6s", "1h").await;
    let mut env = db.env();
    env.push(("VAULT_ADDR", bao.addr.clone()));
    env.push(("VAULT_TOKEN", bao.root.clone()));
    let registry = Registry::spawn(topology, env, &[]).await;
    registry.add("before-seal").await.unwrap();
    let before = db.session_users().await;

    bao.seal().await;
    // Nothing changes while the lease lives: the service keeps serving.
    registry
        .list()
        .await
        .expect("served right after Vault was sealed");
    // Once the lease has run out, calls are refused with a clear code.
    let until = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match registry.list().await {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(
            Instant::now() < until,
            "still serving 30 s after a 6 s lease"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(refusal.code, ErrorCode::SecretsExpired, "{refusal}");
    assert!(refusal.retryable);
    assert!(refusal.message.contains("Vault"), "{}", refusal.message);
    assert_eq!(registry.metric("tallyhouse_vault_reachable").await, 0.0);
    let (status, ready) = registry.ready().await;
    assert_eq!(status, 503, "not ready once its lease has expired: {ready}");
    assert!(
        ready["checks"]["vault"]
            .as_str()
            .is_some_and(|r| r.contains("expired")),
        "{ready}"
    );

    bao.unseal().await;
    let until = Instant::now() + Duration::from_secs(60);
    while registry.add("after-unseal").await.is_err() {
        assert!(
            Instant::now() < until,
            "no recovery within 60 s of unsealing"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        registry.list().await.unwrap(),
        2,
        "both submitters are stored"
    );
    let after = db.session_users().await;
    assert!(
        after.iter().all(|u| !before.contains(u)),
        "a fresh login after recovery: {before:?} → {after:?}"
    );
    assert_eq!(registry.metric("tallyhouse_vault_reachable").await, 1.0);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, ready) = registry.ready().await;
        if status == 200 {
            assert_eq!(ready["checks"]["vault"], json!("ok"), "{ready}");
            break;
        }
        assert!(
            Instant::now() < until,
            "not ready again after recovery: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    registry.finish().await;
    db.finish().await;
    drop(bao);
}

#[tokio::test]
async fn approle_logins_renew_the_token_and_log_in_again_near_its_max_ttl() {
    let topology = unique_topology("vault-approle");
    let prefix = topology.namespace().to_owned();
    let addr = vault_addr();
    let root = vault_root_token();
    put_secret(
        &prefix,
        "registry",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    let (db_name, _db_url, db_env) =
        platform::testing::service_test_database(&prefix, "registry").await;
    let policy = format!("{prefix}-registry");
    api_ok(
        &addr,
        &root,
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        Some(json!({ "policy": format!("path \"secret/data/{prefix}/registry/*\" {{ capabilities = [\"read\"] }}") })),
    )
    .await;
    let mount = format!("approle-{}", uuid::Uuid::new_v4().simple());
    api_ok(
        &addr,
        &root,
        "POST",
        &format!("sys/auth/{mount}"),
        Some(json!({ "type": "approle" })),
    )
    .await;
    api_ok(
        &addr,
        &root,
        "POST",
        &format!("auth/{mount}/role/registry"),
        Some(json!({ "token_policies": [policy], "token_ttl": "3s", "token_max_ttl": "8s" })),
    )
    .await;
    let role_id = api_ok(
        &addr,
        &root,
        "GET",
        &format!("auth/{mount}/role/registry/role-id"),
        None,
    )
    .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = api_ok(
        &addr,
        &root,
        "POST",
        &format!("auth/{mount}/role/registry/secret-id"),
        None,
    )
    .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut env = db_env;
    env.push(("TALLYHOUSE_VAULT_ROLE_ID", role_id));
    env.push(("TALLYHOUSE_VAULT_SECRET_ID", secret_id));
    env.push(("TALLYHOUSE_VAULT_APPROLE_MOUNT", mount.clone()));
    let registry = Registry::spawn(topology, env, &["VAULT_TOKEN"]).await;

    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let renewed = registry
            .metric("tallyhouse_vault_renewals_total{what=\"token\",outcome=\"renewed\"}")
            .await;
        let relogin = registry
            .metric("tallyhouse_vault_renewals_total{what=\"token\",outcome=\"relogin\"}")
            .await;
        if renewed >= 1.0 && relogin >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "renewed {renewed}, re-logged in {relogin} after 60 s"
        );
        registry.list().await.expect("served throughout");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let left = registry
        .metric("tallyhouse_vault_token_seconds_remaining")
        .await;
    assert!(left > 0.0 && left <= 8.0, "token seconds left: {left}");
    assert_eq!(
        registry
            .metric("tallyhouse_vault_renewals_total{what=\"token\",outcome=\"failed\"}")
            .await,
        0.0
    );

    registry.finish().await;
    let _ = api(&addr, &root, "DELETE", &format!("sys/auth/{mount}"), None).await;
    let _ = api(
        &addr,
        &root,
        "DELETE",
        &format!("sys/policies/acl/{policy}"),
        None,
    )
    .await;
    drop_test_database(&db_name).await;
}

#[tokio::test]
async fn without_vault_a_service_is_alive_not_ready_then_gives_up_naming_vault() {
    let topology = unique_topology("vault-away");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let ops = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = service_command(
        "registry",
        topology.namespace(),
        &[
            ("VAULT_ADDR", dead.clone()),
            ("TALLYHOUSE_VAULT_STARTUP_TIMEOUT_SECS", "6".to_owned()),
            (
                "TALLYHOUSE_METRICS_ADDR",
                ops.trim_start_matches("http://").to_owned(),
            ),
            ("TALLYHOUSE_DATABASE_NAME", "unused".to_owned()),
        ],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut process = ChildProcess::spawn("registry", &mut cmd).expect("spawn the registry");
    // While it retries Vault: alive, not ready, saying why.
    let until = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        if let Ok(health) = reqwest::get(format!("{ops}/health")).await {
            assert_eq!(health.status().as_u16(), 200);
            let response = reqwest::get(format!("{ops}/ready"))
                .await
                .expect("GET /ready");
            assert_eq!(response.status().as_u16(), 503);
            break response
                .json::<Value>()
                .await
                .expect("a JSON readiness report");
        }
        assert!(
            Instant::now() < until,
            "no ops endpoint while waiting for Vault"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ready["checks"]["vault"]
            .as_str()
            .is_some_and(|r| r.contains(&dead)),
        "{ready}"
    );
    let stderr = process.take_stderr().expect("stderr");
    let output = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text).ok();
        text
    })
    .await
    .unwrap();
    let status = process.wait().expect("the registry exits");
    assert!(!status.success(), "exits non-zero");
    assert!(
        output.contains(&format!("Vault at {dead}")) && output.contains("unreachable"),
        "{output}"
    );
}
