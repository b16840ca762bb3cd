//! The registry as a real process with its own fresh database, namespace
//! and Vault prefix: every call through `RpcClient`, the rows checked in
//! PostgreSQL directly, keys made by `openssl` and their ids checked
//! against `evidence` and an independent RFC 7638 computation, and the
//! `tallyhouse` CLI run as a binary.

use platform::rpc::{RpcClient, RpcMetrics};
use platform::testing::{
    amqp_uri, delete_topology, drop_test_database, put_secret, query_json, rpc_config,
    service_test_database, unique_topology, vault_addr, vault_root_token,
};
use rpc_contracts::registry::{
    self, AddKeyRequest, AddSubmitterRequest, GetKeyRequest, KeyInfo, ListKeysRequest,
    ListSubmittersRequest, PingRequest, RevokeKeyRequest, Submitter,
};
use rpc_contracts::{ErrorCode, KeyId, RpcError, SubmitterId, Topology};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::{ChildProcess, service_command, workspace_bin};
use tokio::time::Instant;

/// One isolated registry: its process, database, namespace and Vault prefix.
struct TestRegistry {
    process: ChildProcess,
    rpc: RpcClient,
    topology: Topology,
    prefix: String,
    db_name: String,
    db_url: String,
    dir: PathBuf,
}

fn sid(s: &str) -> SubmitterId {
    SubmitterId::parse(s).unwrap()
}

impl TestRegistry {
    async fn spawn(tag: &str) -> Self {
        let topology = unique_topology(tag);
        let prefix = topology.namespace().to_owned();
        put_secret(
            &prefix,
            "registry",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        let (db_name, db_url, db_env) = service_test_database(&prefix, "registry").await;
        let mut cmd = service_command("registry", &prefix, &db_env);
        let mut process = ChildProcess::spawn("registry", &mut cmd).expect("spawn the registry");

        let rpc = RpcClient::start(
            rpc_config(&topology, vec![amqp_uri()], "test-registry-client"),
            RpcMetrics::unregistered(),
        );
        assert!(rpc.wait_connected(Duration::from_secs(10)).await);
        // Ready once it answers a ping: its queue exists, migrations ran.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if rpc.call::<registry::Ping>(&PingRequest {}).await.is_ok() {
                break;
            }
            assert!(process.try_wait().is_none(), "the registry exited");
            assert!(Instant::now() < until, "the registry never answered a ping");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dir = std::env::temp_dir().join(format!("tallyhouse-{}", topology.namespace()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            process,
            rpc,
            topology,
            prefix,
            db_name,
            db_url,
            dir,
        }
    }

    async fn add_submitter(&self, id: &str, name: Option<&str>) -> Result<Submitter, RpcError> {
        self.rpc
            .call::<registry::AddSubmitter>(&AddSubmitterRequest {
                submitter_id: sid(id),
                name: name.map(str::to_owned),
            })
            .await
    }

    async fn add_key(&self, submitter: &str, pem: &str) -> Result<KeyInfo, RpcError> {
        self.rpc
            .call::<registry::AddKey>(&AddKeyRequest {
                submitter_id: sid(submitter),
                public_key_pem: pem.to_owned(),
                not_before: None,
                not_after: None,
            })
            .await
    }

    async fn list_keys(&self, submitter: &str) -> Result<Vec<KeyInfo>, RpcError> {
        Ok(self
            .rpc
            .call::<registry::ListKeys>(&ListKeysRequest {
                submitter_id: sid(submitter),
            })
            .await?
            .keys)
    }

    /// Revokes at an RFC 3339 time, or now.
    async fn revoke(
        &self,
        submitter: &str,
        key_id: &KeyId,
        at: Option<&str>,
    ) -> Result<KeyInfo, RpcError> {
        let req: RevokeKeyRequest = serde_json::from_value(json!({
            "submitter_id": submitter,
            "key_id": key_id,
            "at": at,
        }))
        .unwrap();
        self.rpc.call::<registry::RevokeKey>(&req).await
    }

    async fn get_key(&self, key_id: &KeyId) -> Result<KeyInfo, RpcError> {
        self.rpc
            .call::<registry::GetKey>(&GetKeyRequest {
                key_id: key_id.clone(),
            })
            .await
    }

    /// Rows of `sql` in the registry's own database.
    async fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        query_json(&self.db_url, sql).await
    }

    /// A fresh P-256 key pair made by openssl: (public PEM, its file).
    fn openssl_key(&self, name: &str) -> (String, PathBuf) {
        let key = self.dir.join(format!("{name}.key.pem"));
        let public = self.dir.join(format!("{name}.pub.pem"));
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            path_str(&key),
        ]);
        openssl(&[
            "ec",
            "-in",
            path_str(&key),
            "-pubout",
            "-out",
            path_str(&public),
        ]);
        (std::fs::read_to_string(&public).unwrap(), public)
    }

    async fn finish(mut self) {
        assert!(
            self.process.terminate().unwrap().success(),
            "the registry stops cleanly on SIGTERM"
        );
        self.rpc.close().await;
        delete_topology(&amqp_uri(), &self.topology, &[registry::QUEUE]).await;
        drop_test_database(&self.db_name).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Runs openssl, panicking with its stderr on failure; returns stdout.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The RFC 7638 thumbprint of a P-256 SPKI PEM file, computed with openssl
/// alone: the point is the last 65 bytes of the DER (`04‖x‖y`), the JWK's
/// required members in lexicographic order, SHA-256, base64url.
fn rfc7638_thumbprint(public_pem: &Path) -> String {
    let der = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        path_str(public_pem),
        "-outform",
        "DER",
    ]);
    let point = &der[der.len() - 65..];
    assert_eq!(point[0], 0x04, "uncompressed point");
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        base64url(&point[1..33]),
        base64url(&point[33..])
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(jwk.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    base64url(&out.stdout)
}

fn code<T: std::fmt::Debug>(r: Result<T, RpcError>) -> ErrorCode {
    r.expect_err("an error reply").code
}

#[tokio::test]
async fn submitters_are_registered_once_and_listed_by_id() {
    let app = TestRegistry::spawn("reg-sub").await;
    let acme = app
        .add_submitter("acme", Some("Acme Betting"))
        .await
        .unwrap();
    assert_eq!(acme.name.as_deref(), Some("Acme Betting"));

    // Repeating the registration is a no-op: the stored submitter comes back.
    let again = app
        .add_submitter("acme", Some("Acme Betting"))
        .await
        .unwrap();
    assert_eq!(again, acme);
    // Another name for the same id is a conflict, and changes nothing.
    let err = app
        .add_submitter("acme", Some("Someone Else"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    assert!(err.message.contains("acme"), "{err}");
    assert!(!err.retryable);

    let beta = app.add_submitter("beta-1", None).await.unwrap();
    let list = app
        .rpc
        .call::<registry::ListSubmitters>(&ListSubmittersRequest {})
        .await
        .unwrap();
    assert_eq!(list.submitters, vec![acme, beta]);

    let rows = app
        .rows("SELECT submitter_id, name FROM submitters ORDER BY submitter_id")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"submitter_id": "acme", "name": "Acme Betting"}),
            json!({"submitter_id": "beta-1", "name": null}),
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn an_openssl_key_is_stored_under_its_rfc7638_thumbprint() {
    let app = TestRegistry::spawn("reg-key").await;
    app.add_submitter("acme", None).await.unwrap();
    app.add_submitter("other", None).await.unwrap();
    let (pem, pem_file) = app.openssl_key("acme-1");

    let key = app.add_key("acme", &pem).await.unwrap();
    // The id is evidence's thumbprint, and an independent RFC 7638
    // computation (openssl only) agrees.
    let evidence_id = evidence::PublicKey::from_spki_pem(&pem).unwrap().key_id();
    assert_eq!(key.key_id, evidence_id);
    assert_eq!(key.key_id.as_str(), rfc7638_thumbprint(&pem_file));
    assert_eq!(key.submitter_id, sid("acme"));
    assert_eq!(
        key.public_key_pem, pem,
        "openssl's PEM is already canonical"
    );
    assert_eq!(key.not_before, key.created_at, "valid from now by default");
    assert_eq!((key.not_after, key.revoked_at), (None, None));

    // The same key again for the same submitter: the stored key.
    assert_eq!(app.add_key("acme", &pem).await.unwrap(), key);
    // The same key for another submitter: a key belongs to one submitter.
    let err = app.add_key("other", &pem).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    // An unknown submitter.
    let (pem2, _) = app.openssl_key("ghost-1");
    assert_eq!(code(app.add_key("ghost", &pem2).await), ErrorCode::NotFound);
    assert_eq!(code(app.list_keys("ghost").await), ErrorCode::NotFound);

    // Invalid keys, each refused as bad_request with a message that says why.
    let private_key = std::fs::read_to_string(app.dir.join("acme-1.key.pem")).unwrap();
    let p384_file = app.dir.join("p384.pem");
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        path_str(&p384_file),
    ]);
    let p384 = String::from_utf8(openssl(&["ec", "-in", path_str(&p384_file), "-pubout"])).unwrap();
    let truncated = pem.replace("\n-----END", "AAAA\n-----END");
    let cases: [(&str, &str, &str); 5] = [
        ("empty", "", "SPKI PEM"),
        ("not PEM", "hello", "SPKI PEM"),
        ("private key", &private_key, "private key"),
        ("P-384 key", &p384, "P-256"),
        ("damaged body", &truncated, "SPKI PEM"),
    ];
    for (why, bad, fragment) in cases {
        let err = app.add_key("acme", bad).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{why}: {err}");
        assert!(err.message.contains(fragment), "{why}: {err}");
        for line in bad
            .lines()
            .filter(|l| l.len() > 16 && !l.starts_with("-----"))
        {
            assert!(
                !err.message.contains(line),
                "{why}: the PEM is not echoed: {err}"
            );
        }
    }

    assert_eq!(app.list_keys("acme").await.unwrap(), vec![key.clone()]);
    assert_eq!(app.list_keys("other").await.unwrap(), vec![]);
    let rows = app
        .rows("SELECT key_id, submitter_id, public_key_pem, not_after, revoked_at FROM keys")
        .await;
    assert_eq!(
        rows,
        vec![json!({
            "key_id": key.key_id,
            "submitter_id": "acme",
            "public_key_pem": pem,
            "not_after": null,
            "revoked_at": null,
        })]
    );
    app.finish().await;
}

#[tokio::test]
async fn revocation_keeps_the_earliest_time_and_get_key_shows_it() {
    let app = TestRegistry::spawn("reg-revoke").await;
    app.add_submitter("acme", None).await.unwrap();
    app.add_submitter("other", None).await.unwrap();
    let (pem, _) = app.openssl_key("acme-1");
    let key = app.add_key("acme", &pem).await.unwrap();
    let rfc3339 = |k: &KeyInfo| serde_json::to_value(k).unwrap()["revoked_at"].clone();

    // Another submitter cannot revoke (or learn about) acme's key.
    let err = app.revoke("other", &key.key_id, None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");

    let first = app
        .revoke("acme", &key.key_id, Some("2030-06-01T12:00:00Z"))
        .await
        .unwrap();
    assert_eq!(rfc3339(&first), json!("2030-06-01T12:00:00Z"));
    // A later time keeps the earlier revocation.
    let later = app
        .revoke("acme", &key.key_id, Some("2031-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(later, first);
    // An earlier time moves it earlier, and "now" (2030 has not come) too.
    let earlier = app
        .revoke("acme", &key.key_id, Some("2030-01-01T00:00:00+02:00"))
        .await
        .unwrap();
    assert_eq!(rfc3339(&earlier), json!("2029-12-31T22:00:00Z"));
    let now = app.revoke("acme", &key.key_id, None).await.unwrap();
    let revoked_now = now.revoked_at.unwrap();
    assert!(revoked_now < earlier.revoked_at.unwrap());
    assert!(revoked_now >= key.created_at);
    // Once revoked from "now", a later time changes nothing.
    let again = app
        .revoke("acme", &key.key_id, Some("2030-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(again, now);

    assert_eq!(app.get_key(&key.key_id).await.unwrap(), now);
    let unknown = KeyId::parse("A".repeat(43)).unwrap();
    let err = app.get_key(&unknown).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert_eq!(
        code(app.revoke("acme", &unknown, None).await),
        ErrorCode::NotFound
    );

    let rows = app
        .rows("SELECT key_id, revoked_at IS NOT NULL AS revoked, revoked_at < TIMESTAMPTZ '2029-12-31 22:00Z' AS before_earlier FROM keys")
        .await;
    assert_eq!(
        rows,
        vec![json!({"key_id": key.key_id, "revoked": true, "before_earlier": true})]
    );
    app.finish().await;
}

#[tokio::test]
async fn the_tallyhouse_cli_adds_a_submitter_and_a_key_and_lists_it() {
    let app = TestRegistry::spawn("reg-cli").await;
    put_secret(
        &app.prefix,
        "cli",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    let (_, pem_file) = app.openssl_key("acme-1");
    // A checkout-like folder: the token in .run/state/tokens/cli, the CLI
    // run from a sub-folder without VAULT_TOKEN (the local-run fallback).
    let checkout = app.dir.join("checkout");
    std::fs::create_dir_all(checkout.join(".run/state/tokens")).unwrap();
    std::fs::create_dir_all(checkout.join("services")).unwrap();
    std::fs::write(
        checkout.join(".run/state/tokens/cli"),
        format!("{}\n", vault_root_token()),
    )
    .unwrap();

    let run = |args: &[&str], with_token: bool| {
        let mut cmd = Command::new(workspace_bin("tallyhouse"));
        cmd.env_clear()
            .current_dir(checkout.join("services"))
            .args(args)
            .env(
                "TALLYHOUSE_AMQP_URIS",
                format!("amqp://{}/%2f", amqp_uri().host_port()),
            )
            .env("TALLYHOUSE_RPC_NAMESPACE", app.topology.namespace())
            .env("TALLYHOUSE_VAULT_PREFIX", &app.prefix)
            .env("VAULT_ADDR", vault_addr());
        if with_token {
            cmd.env("VAULT_TOKEN", vault_root_token());
        }
        let cmd = tokio::process::Command::from(cmd);
        async move {
            let mut cmd = cmd;
            let out =
                tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
                    .await
                    .expect("the CLI finishes")
                    .expect("the CLI runs");
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };

    let (status, stdout, stderr) = run(
        &["submitter", "add", "acme", "--name", "Acme Betting"],
        true,
    )
    .await;
    assert_eq!(status, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("acme") && stdout.contains("Acme Betting"),
        "{stdout}"
    );

    // No VAULT_TOKEN: the token comes from .run/state/tokens/cli above the cwd.
    let (status, stdout, stderr) = run(&["key", "add", "acme", path_str(&pem_file)], false).await;
    assert_eq!(status, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let key_id = stdout.trim();
    assert_eq!(key_id, rfc7638_thumbprint(&pem_file), "prints the key id");

    let (status, stdout, stderr) = run(&["key", "list", "acme", "--json"], true).await;
    assert_eq!(status, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(list["keys"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["keys"][0]["key_id"], key_id);
    assert_eq!(list["keys"][0]["submitter_id"], "acme");
    assert_eq!(list["keys"][0]["revoked_at"], serde_json::Value::Null);

    let (status, stdout, _) = run(&["key", "list", "acme"], true).await;
    assert_eq!(status, Some(0));
    assert!(stdout.starts_with("KEY_ID"), "a table: {stdout}");
    assert!(
        stdout.contains(key_id) && stdout.contains("active"),
        "{stdout}"
    );

    // An error answered by the registry: its code and message, exit 1.
    let (status, stdout, stderr) = run(&["key", "add", "ghost", path_str(&pem_file)], true).await;
    assert_eq!(status, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("not_found") && stderr.contains("ghost"),
        "{stderr}"
    );
    let (status, _, stderr) = run(&["key", "list", "ghost", "--json"], true).await;
    assert_eq!(status, Some(1));
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).expect("a JSON error");
    assert_eq!(err["error"]["code"], "not_found", "{err}");

    // The rows are there.
    let rows = app
        .rows("SELECT s.name, k.key_id FROM keys k JOIN submitters s USING (submitter_id)")
        .await;
    assert_eq!(
        rows,
        vec![json!({"name": "Acme Betting", "key_id": key_id})]
    );
    app.finish().await;
}
