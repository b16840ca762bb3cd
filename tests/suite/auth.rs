//! The auth service as a real process with its own fresh database,
//! namespace and Vault prefix: every call through `RpcClient`, tokens
//! verified with `jsonwebtoken` against the service's own JWKS, the rows
//! (users, throttles, audit trail) read in PostgreSQL directly, and the
//! `tallyhouse` CLI run as a binary with the password on stdin.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use platform::rpc::{RpcClient, RpcMetrics};
use platform::testing::{
    amqp_uri, delete_topology, drop_test_database, put_secret, query_json, rpc_config,
    service_test_database, unique_topology, vault_addr, vault_root_token,
};
use rpc_contracts::auth::{
    self, AccessClaims, AccessToken, AddUserRequest, AuditRecord, CheckTokenRequest,
    ClearThrottleRequest, JwkSet, ListAuditRequest, ListThrottlesRequest, LoginRequest,
    LoginThrottled, LogoutRequest, Password, Role, SetPasswordRequest, ThrottleScope,
    TokenIdentity, TokenKeysRequest, TokenStatus, UpdateUserRequest, User,
};
use rpc_contracts::registry::PingRequest;
use rpc_contracts::{ErrorCode, RpcError, SubmitterId, Topology};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::stack::try_execute;
use tests::{ChildProcess, service_command, workspace_bin};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";

/// One isolated auth service: its process (output in a log file), database,
/// namespace and Vault prefix.
struct TestAuth {
    process: ChildProcess,
    rpc: RpcClient,
    topology: Topology,
    prefix: String,
    db_name: String,
    db_url: String,
    dir: PathBuf,
}

fn pw(s: &str) -> Password {
    Password(s.to_owned())
}

fn code<T: std::fmt::Debug>(r: Result<T, RpcError>) -> ErrorCode {
    r.expect_err("an error reply").code
}

impl TestAuth {
    /// Spawns auth with `env` on top of the test's own (throttling knobs).
    async fn spawn(tag: &str, env: &[(&'static str, &str)]) -> Self {
        let topology = unique_topology(tag);
        let prefix = topology.namespace().to_owned();
        put_secret(
            &prefix,
            "auth",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        let jwt_key = evidence::SigningKey::generate().to_pkcs8_pem();
        put_secret(&prefix, "auth", "jwt_key", &[("private_key_pem", &jwt_key)]).await;
        let (db_name, db_url, mut service_env) = service_test_database(&prefix, "auth").await;
        // Debug logs: nothing secret may show up even there.
        service_env.push(("TALLYHOUSE_LOG", "debug".into()));
        for (k, v) in env {
            service_env.push((k, (*v).to_owned()));
        }
        let dir = std::env::temp_dir().join(format!("tallyhouse-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("auth.log")).unwrap();
        let mut cmd = service_command("auth", &prefix, &service_env);
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let mut process = ChildProcess::spawn("auth", &mut cmd).expect("spawn auth");

        let rpc = RpcClient::start(
            rpc_config(&topology, vec![amqp_uri()], "test-auth-client"),
            RpcMetrics::unregistered(),
        );
        assert!(rpc.wait_connected(Duration::from_secs(10)).await);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if rpc.call::<auth::Ping>(&PingRequest {}).await.is_ok() {
                break;
            }
            assert!(
                process.try_wait().is_none(),
                "auth exited:\n{}",
                std::fs::read_to_string(dir.join("auth.log")).unwrap_or_default()
            );
            assert!(Instant::now() < until, "auth never answered a ping");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    async fn add_user(&self, username: &str, roles: &[Role]) -> User {
        self.rpc
            .call::<auth::AddUser>(&AddUserRequest {
                username: username.into(),
                roles: roles.to_vec(),
                password: pw(PASSWORD),
                actor: Some("root".into()),
            })
            .await
            .expect("add user")
    }

    async fn login(
        &self,
        username: &str,
        password: &str,
        client_addr: Option<&str>,
    ) -> Result<AccessToken, RpcError> {
        self.rpc
            .call::<auth::Login>(&LoginRequest {
                username: username.into(),
                password: pw(password),
                client_addr: client_addr.map(str::to_owned),
                trace_id: Some(format!("trace-{username}")),
            })
            .await
    }

    async fn check(&self, token: &TokenIdentity) -> TokenStatus {
        self.rpc
            .call::<auth::CheckToken>(&CheckTokenRequest {
                token: token.clone(),
            })
            .await
            .expect("check token")
    }

    async fn update(&self, username: &str, roles: Option<&[Role]>, disabled: Option<bool>) {
        self.rpc
            .call::<auth::UpdateUser>(&UpdateUserRequest {
                username: username.into(),
                roles: roles.map(<[Role]>::to_vec),
                disabled,
                actor: Some("root".into()),
            })
            .await
            .expect("update user");
    }

    /// Rows of `sql` in the service's own database.
    async fn rows(&self, sql: &str) -> Vec<Value> {
        query_json(&self.db_url, sql).await
    }

    /// What the service wrote on stdout and stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("auth.log")).unwrap_or_default()
    }

    async fn finish(mut self) {
        assert!(
            self.process.terminate().unwrap().success(),
            "auth stops cleanly on SIGTERM:\n{}",
            self.log()
        );
        self.rpc.close().await;
        delete_topology(&amqp_uri(), &self.topology, &[auth::QUEUE]).await;
        drop_test_database(&self.db_name).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The claims of a token, read without verifying (the tests verify
/// separately).
fn claims_of(token: &AccessToken) -> AccessClaims {
    let payload = token.access_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// What the gateway passes on for a verified token.
fn identity(token: &AccessToken) -> TokenIdentity {
    let c = claims_of(token);
    TokenIdentity {
        jti: c.jti,
        sub: c.sub,
        issued_at: OffsetDateTime::from_unix_timestamp(c.iat).unwrap(),
        expires_at: OffsetDateTime::from_unix_timestamp(c.exp).unwrap(),
        version: c.ver,
    }
}

fn part(token: &str, index: usize) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(index).unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The RFC 7638 thumbprint of a P-256 JWK, computed here from its members.
fn thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    URL_SAFE_NO_PAD.encode(evidence::sha256(canonical.as_bytes()))
}

fn retry_after(r: Result<AccessToken, RpcError>) -> u64 {
    let err = r.expect_err("a throttled login");
    assert_eq!(err.code, ErrorCode::LoginThrottled, "{err}");
    let body: LoginThrottled = serde_json::from_str(&err.message).expect("LoginThrottled JSON");
    body.retry_after_secs
}

#[tokio::test]
async fn a_login_token_verifies_against_token_keys_with_exactly_the_contract_claims() {
    let app = TestAuth::spawn("auth-token", &[]).await;
    let alice = app.add_user("alice", &[Role::Auditor, Role::Analyst]).await;
    assert_eq!(alice.roles, [Role::Analyst, Role::Auditor], "sorted");
    assert!(!alice.disabled);

    // The stored hash: Argon2id at OWASP's parameters, a PHC string.
    let rows = app
        .rows("SELECT password_hash, credential_version FROM users")
        .await;
    let hash = rows[0]["password_hash"].as_str().unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert_eq!(hash.split('$').count(), 6, "salt and hash follow: {hash}");
    assert_eq!(rows[0]["credential_version"], 1);

    let before = platform::clock::now().unix_timestamp();
    let token = app
        .login("alice", PASSWORD, Some("203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_in, 86_400);

    let jwks = app
        .rpc
        .call::<auth::TokenKeys>(&TokenKeysRequest {})
        .await
        .unwrap();
    let JwkSet { keys } = jwks;
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["crv"].as_str(),
            jwk["alg"].as_str(),
            jwk["use"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"))
    );
    assert!(jwk.get("d").is_none(), "no private member");
    assert_eq!(
        jwk["kid"],
        thumbprint(jwk),
        "kid is the RFC 7638 thumbprint"
    );

    let header = part(&token.access_token, 0);
    assert_eq!(
        header,
        json!({"typ": "JWT", "alg": "ES256", "kid": jwk["kid"]})
    );
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[auth::DEFAULT_TOKEN_ISSUER]);
    validation.set_audience(&[auth::DEFAULT_TOKEN_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<AccessClaims>(&token.access_token, &key, &validation)
        .expect("the token verifies against the JWKS")
        .claims;
    assert_eq!(claims.iss, "tallyhouse-auth");
    assert_eq!(claims.aud, "tallyhouse-back-office");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.roles, [Role::Analyst, Role::Auditor]);
    assert_eq!(claims.exp - claims.iat, 86_400);
    assert_eq!(claims.nbf, claims.iat);
    assert!(claims.iat >= before && claims.iat <= before + 60);
    assert_eq!(claims.jti.get_version_num(), 4);
    assert_eq!(claims.ver, 1);
    let mut members: Vec<String> = part(&token.access_token, 1)
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            "aud", "exp", "iat", "iss", "jti", "nbf", "roles", "sub", "ver"
        ]
    );
    // Another audience does not accept it.
    let mut other = validation.clone();
    other.set_audience(&["someone-else"]);
    assert!(jsonwebtoken::decode::<AccessClaims>(&token.access_token, &key, &other).is_err());
    assert_eq!(
        app.check(&identity(&token)).await,
        TokenStatus {
            active: true,
            roles: vec![Role::Analyst, Role::Auditor]
        }
    );

    // Wrong password and unknown user: the same answer.
    let wrong = app
        .login("alice", "not the password", None)
        .await
        .unwrap_err();
    let unknown = app
        .login("nobody", "not the password", None)
        .await
        .unwrap_err();
    for err in [&wrong, &unknown] {
        assert_eq!(err.code, ErrorCode::InvalidCredentials, "{err}");
        assert!(!err.retryable);
    }
    assert_eq!(wrong.message, unknown.message);

    let audit = app
        .rows(
            "SELECT actor, action, outcome, target, client_addr, trace_id, detail->>'reason' AS reason,
                    detail->>'jti' AS jti
             FROM audit_log WHERE action = 'login' ORDER BY id",
        )
        .await;
    assert_eq!(
        audit,
        vec![
            json!({"actor": "alice", "action": "login", "outcome": "success", "target": null,
                   "client_addr": "203.0.113.5", "trace_id": "trace-alice", "reason": null,
                   "jti": claims.jti.to_string()}),
            json!({"actor": "alice", "action": "login", "outcome": "failure", "target": null,
                   "client_addr": null, "trace_id": "trace-alice", "reason": "wrong_password",
                   "jti": null}),
            json!({"actor": null, "action": "login", "outcome": "failure", "target": "nobody",
                   "client_addr": null, "trace_id": "trace-nobody", "reason": "unknown_user",
                   "jti": null}),
        ]
    );
    let added = app
        .rows("SELECT actor, target, outcome FROM audit_log WHERE action = 'admin.add_user'")
        .await;
    assert_eq!(
        added,
        vec![json!({"actor": "root", "target": "alice", "outcome": "success"})]
    );
    app.finish().await;
}

#[tokio::test]
async fn failures_delay_then_lock_an_account_until_an_admin_clears_it() {
    let app = TestAuth::spawn(
        "auth-throttle",
        &[
            ("TALLYHOUSE_AUTH_ACCOUNT_DELAY_AFTER_FAILURES", "2"),
            ("TALLYHOUSE_AUTH_ACCOUNT_LOCKOUT_AFTER_FAILURES", "4"),
            ("TALLYHOUSE_AUTH_ACCOUNT_LOCKOUT_SECS", "3600"),
            ("TALLYHOUSE_AUTH_DELAY_BASE_MS", "2000"),
            ("TALLYHOUSE_AUTH_DELAY_MAX_MS", "2000"),
        ],
    )
    .await;
    app.add_user("carol", &[Role::Analyst]).await;
    for _ in 0..3 {
        assert_eq!(
            code(app.login("carol", "wrong password!", None).await),
            ErrorCode::InvalidCredentials
        );
    }
    // After the third failure the next attempt waits: even the right
    // password is refused, unchecked, with a retry-after.
    let wait = retry_after(app.login("carol", PASSWORD, None).await);
    assert!((1..=2).contains(&wait), "{wait}");
    // Once the delay has passed, the fourth failure locks the account.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match app.login("carol", "wrong password!", None).await {
            Err(e) if e.code == ErrorCode::LoginThrottled => {
                assert!(Instant::now() < until, "the delay never ended");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if e.code == ErrorCode::InvalidCredentials => break,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    let lockout = retry_after(app.login("carol", PASSWORD, None).await);
    assert!(lockout > 3_000 && lockout <= 3_600, "{lockout}");

    let list = app
        .rpc
        .call::<auth::ListThrottles>(&ListThrottlesRequest {})
        .await
        .unwrap();
    assert_eq!(list.entries.len(), 1, "{list:?}");
    let entry = &list.entries[0];
    assert_eq!(
        (
            entry.scope,
            entry.key.as_str(),
            entry.failures,
            entry.locked
        ),
        (ThrottleScope::Account, "carol", 4, true)
    );
    assert!(entry.blocked_until.unwrap() > platform::clock::now() + time::Duration::minutes(50));

    let cleared = app
        .rpc
        .call::<auth::ClearThrottle>(&ClearThrottleRequest {
            scope: ThrottleScope::Account,
            key: "carol".into(),
            actor: Some("root".into()),
        })
        .await
        .unwrap();
    assert!(cleared.cleared);
    assert!(
        app.rpc
            .call::<auth::ListThrottles>(&ListThrottlesRequest {})
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    app.login("carol", PASSWORD, None)
        .await
        .expect("a login after the clear");
    assert!(app.rows("SELECT * FROM login_throttles").await.is_empty());

    let reasons: Vec<Value> = app
        .rows("SELECT detail->>'reason' AS r FROM audit_log WHERE action = 'login' ORDER BY id")
        .await
        .into_iter()
        .map(|r| r["r"].clone())
        .collect();
    let (first, rest) = reasons.split_at(4);
    assert_eq!(
        first,
        [
            json!("wrong_password"),
            json!("wrong_password"),
            json!("wrong_password"),
            json!("throttled")
        ]
    );
    // Maybe more throttled polls, then the fourth failure, the lockout and
    // the success.
    assert_eq!(rest.last(), Some(&Value::Null), "the success has no reason");
    assert_eq!(rest[rest.len() - 2], json!("throttled"));
    assert_eq!(rest[rest.len() - 3], json!("wrong_password"));
    let lock = app
        .rows("SELECT detail FROM audit_log WHERE detail ? 'lockout_started'")
        .await;
    assert_eq!(lock.len(), 1);
    assert_eq!(lock[0]["detail"]["lockout_started"], json!(["account"]));
    let clear = app
        .rows("SELECT actor, target, detail FROM audit_log WHERE action = 'admin.clear_throttle'")
        .await;
    assert_eq!(
        clear,
        vec![json!({"actor": "root", "target": "carol",
                    "detail": {"scope": "account", "key": "carol", "cleared": true}})]
    );
    app.finish().await;
}

#[tokio::test]
async fn logout_password_changes_disabling_and_role_changes_reach_check_token() {
    let app = TestAuth::spawn("auth-retire", &[]).await;
    app.add_user("erin", &[Role::Analyst]).await;
    let a = identity(&app.login("erin", PASSWORD, None).await.unwrap());
    let b = identity(&app.login("erin", PASSWORD, None).await.unwrap());
    assert!(app.check(&a).await.active && app.check(&b).await.active);

    // Logout retires that token only.
    app.rpc
        .call::<auth::Logout>(&LogoutRequest { token: a.clone() })
        .await
        .unwrap();
    assert_eq!(
        app.check(&a).await,
        TokenStatus {
            active: false,
            roles: vec![]
        }
    );
    assert!(app.check(&b).await.active);

    // New roles are answered for tokens issued before.
    app.update("erin", Some(&[Role::Auditor, Role::Admin]), None)
        .await;
    assert_eq!(app.check(&b).await.roles, [Role::Admin, Role::Auditor]);

    // A password change retires every older token.
    app.rpc
        .call::<auth::SetPassword>(&SetPasswordRequest {
            username: "erin".into(),
            password: pw("an entirely new password"),
            current_password: None,
            actor: Some("root".into()),
        })
        .await
        .unwrap();
    assert!(!app.check(&b).await.active);
    assert_eq!(
        code(app.login("erin", PASSWORD, None).await),
        ErrorCode::InvalidCredentials
    );
    let c = identity(
        &app.login("erin", "an entirely new password", None)
            .await
            .unwrap(),
    );
    assert_eq!(c.version, 2);
    assert!(app.check(&c).await.active);

    // Disabled: invalid credentials, and its tokens are inactive.
    app.update("erin", None, Some(true)).await;
    assert!(!app.check(&c).await.active);
    let err = app
        .login("erin", "an entirely new password", None)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidCredentials);
    // Enabled again: logins work, the old token stays retired.
    app.update("erin", None, Some(false)).await;
    assert!(!app.check(&c).await.active);
    let d = identity(
        &app.login("erin", "an entirely new password", None)
            .await
            .unwrap(),
    );
    assert_eq!(d.version, 3);
    assert!(app.check(&d).await.active);

    // A user that is gone has no active token.
    let ghost = TokenIdentity {
        sub: "ghost".into(),
        ..d.clone()
    };
    assert!(!app.check(&ghost).await.active);

    let audit = app
        .rows(
            "SELECT action, actor, target, outcome, detail FROM audit_log
             WHERE action <> 'login' ORDER BY id",
        )
        .await;
    assert_eq!(
        audit,
        vec![
            json!({"action": "admin.add_user", "actor": "root", "target": "erin", "outcome": "success",
                   "detail": {"roles": ["analyst"]}}),
            json!({"action": "logout", "actor": "erin", "target": null, "outcome": "success",
                   "detail": {"jti": a.jti.to_string()}}),
            json!({"action": "admin.update_user", "actor": "root", "target": "erin", "outcome": "success",
                   "detail": {"roles": ["auditor", "admin"], "disabled": null}}),
            json!({"action": "admin.set_password", "actor": "root", "target": "erin", "outcome": "success",
                   "detail": null}),
            json!({"action": "admin.update_user", "actor": "root", "target": "erin", "outcome": "success",
                   "detail": {"roles": null, "disabled": true}}),
            json!({"action": "admin.update_user", "actor": "root", "target": "erin", "outcome": "success",
                   "detail": {"roles": null, "disabled": false}}),
        ]
    );
    let disabled_login = app
        .rows("SELECT actor FROM audit_log WHERE detail->>'reason' = 'disabled'")
        .await;
    assert_eq!(disabled_login, vec![json!({"actor": "erin"})]);
    // Refused admin calls are audited too, with their code.
    let err = app
        .rpc
        .call::<auth::AddUser>(&AddUserRequest {
            username: "erin".into(),
            roles: vec![Role::Analyst],
            password: pw(PASSWORD),
            actor: Some("root".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    let refused = app
        .rows(
            "SELECT outcome, detail->>'code' AS code FROM audit_log
             WHERE action = 'admin.add_user' ORDER BY id DESC LIMIT 1",
        )
        .await;
    assert_eq!(
        refused,
        vec![json!({"outcome": "failure", "code": "conflict"})]
    );
    app.finish().await;
}

#[tokio::test]
async fn the_audit_trail_takes_the_gateways_entries_and_refuses_changes_even_from_its_owner() {
    let app = TestAuth::spawn("auth-audit", &[]).await;
    let record = AuditRecord {
        actor: Some("alice".into()),
        action: "read.packages".into(),
        endpoint: Some("GET /v1/packages".into()),
        outcome: "success".into(),
        status: Some(200),
        submitter_id: Some(SubmitterId::parse("acme").unwrap()),
        range_from: Some(time::macros::datetime!(2026-01-01 00:00 UTC)),
        range_to: Some(time::macros::datetime!(2026-02-01 00:00 UTC)),
        rows: Some(42),
        bytes: None,
        target: None,
        client_addr: Some("203.0.113.5".into()),
        trace_id: Some("trace-1".into()),
        detail: Some(json!({"series": "ggr"})),
    };
    let first = app.rpc.call::<auth::AppendAudit>(&record).await.unwrap();
    let denied = AuditRecord {
        action: "denied".into(),
        outcome: "denied".into(),
        status: Some(403),
        ..record.clone()
    };
    let second = app.rpc.call::<auth::AppendAudit>(&denied).await.unwrap();
    assert!(second.id > first.id);
    let bad = AuditRecord {
        outcome: "maybe".into(),
        ..record.clone()
    };
    assert_eq!(
        code(app.rpc.call::<auth::AppendAudit>(&bad).await),
        ErrorCode::BadRequest
    );

    let page = app
        .rpc
        .call::<auth::ListAudit>(&ListAuditRequest {
            before_id: None,
            limit: 1,
            actor: Some("alice".into()),
            action: None,
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].id, second.id);
    assert_eq!(page.entries[0].record, denied);
    assert_eq!(page.next_cursor, Some(second.id));
    let next = app
        .rpc
        .call::<auth::ListAudit>(&ListAuditRequest {
            before_id: page.next_cursor,
            limit: 10,
            actor: Some("alice".into()),
            action: None,
        })
        .await
        .unwrap();
    assert_eq!(next.entries.len(), 1);
    assert_eq!(next.entries[0].record, record);
    assert_eq!(next.next_cursor, None);

    // The service created the table, as the role it logs in as (here the
    // test superuser): its owner. Triggers refuse changes whoever asks.
    let owner = app
        .rows(
            "SELECT tableowner = current_user AS mine FROM pg_tables WHERE tablename = 'audit_log'",
        )
        .await;
    assert_eq!(owner, vec![json!({"mine": true})]);
    for sql in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = try_execute(&app.db_url, sql).await.expect_err(sql);
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    // And no role holds UPDATE, DELETE or TRUNCATE on it, its owner included.
    let grants = app
        .rows(
            "SELECT DISTINCT privilege_type FROM aclexplode(
                 (SELECT relacl FROM pg_class WHERE relname = 'audit_log'))
             ORDER BY privilege_type",
        )
        .await;
    let grants: Vec<&str> = grants
        .iter()
        .map(|g| g["privilege_type"].as_str().unwrap())
        .collect();
    assert!(
        grants.contains(&"INSERT") && grants.contains(&"SELECT"),
        "{grants:?}"
    );
    for refused in ["UPDATE", "DELETE", "TRUNCATE"] {
        assert!(!grants.contains(&refused), "{refused} granted: {grants:?}");
    }
    let count = app.rows("SELECT count(*) AS n FROM audit_log").await;
    assert_eq!(count, vec![json!({"n": 2})]);
    app.finish().await;
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_cost_the_same() {
    // No throttling here: every attempt is checked.
    let app = TestAuth::spawn(
        "auth-timing",
        &[
            ("TALLYHOUSE_AUTH_ACCOUNT_DELAY_AFTER_FAILURES", "0"),
            ("TALLYHOUSE_AUTH_ACCOUNT_LOCKOUT_AFTER_FAILURES", "0"),
        ],
    )
    .await;
    app.add_user("frank", &[Role::Analyst]).await;
    let timed = |username: String| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let r = app.login(&username, "not the password", None).await;
            assert_eq!(code(r), ErrorCode::InvalidCredentials);
            started.elapsed()
        }
    };
    // Warm up both paths, then alternate so that load hits both alike.
    for i in 0..2 {
        timed("frank".into()).await;
        timed(format!("nobody-{i}")).await;
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..12 {
        known.push(timed("frank".into()).await);
        unknown.push(timed(format!("ghost-{i}")).await);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    let ratio = u.as_secs_f64() / k.as_secs_f64();
    eprintln!("login medians: wrong password {k:?}, unknown user {u:?}, ratio {ratio:.2}");
    assert!(
        (0.5..=2.0).contains(&ratio),
        "unknown user {u:?} vs wrong password {k:?} (ratio {ratio:.2})"
    );
    app.finish().await;
}

#[tokio::test]
async fn the_cli_adds_a_user_from_stdin_and_no_password_reaches_the_log() {
    let app = TestAuth::spawn("auth-cli", &[]).await;
    put_secret(
        &app.prefix,
        "cli",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    let secret = "Cli-Secret-7f3a9 horse staple";
    let new_secret = "Cli-Reset-0d2e8 battery horse";
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(workspace_bin("tallyhouse"));
        cmd.env_clear()
            .args(args)
            .env(
                "TALLYHOUSE_AMQP_URIS",
                format!("amqp://{}/%2f", amqp_uri().host_port()),
            )
            .env("TALLYHOUSE_RPC_NAMESPACE", app.topology.namespace())
            .env("TALLYHOUSE_VAULT_PREFIX", &app.prefix)
            .env("VAULT_ADDR", vault_addr())
            .env("VAULT_TOKEN", vault_root_token())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        let input = stdin.map(str::to_owned);
        async move {
            let mut child = cmd.kill_on_drop(true).spawn().expect("the CLI runs");
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = input {
                // A CLI that does not read stdin may have exited already.
                let _ = pipe.write_all(text.as_bytes()).await;
            }
            drop(pipe);
            let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("the CLI finishes")
                .expect("the CLI output");
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };

    let (status, stdout, stderr) = run(
        &[
            "user",
            "add",
            "dave",
            "--role",
            "analyst",
            "--role",
            "auditor",
            "--password-stdin",
        ],
        Some(&format!("{secret}\n")),
    )
    .await;
    assert_eq!(status, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("dave") && stdout.contains("analyst,auditor"),
        "{stdout}"
    );
    app.login("dave", secret, None)
        .await
        .expect("the CLI's password logs in");

    // Without --password-stdin and without a terminal: refused, exit 3.
    let (status, _, stderr) = run(&["user", "add", "eve", "--role", "admin"], Some("x\n")).await;
    assert_eq!(status, Some(3), "{stderr}");
    assert!(stderr.contains("--password-stdin"), "{stderr}");
    // A short password is the service's bad_request, exit 1.
    let (status, _, stderr) = run(
        &["user", "add", "eve", "--role", "admin", "--password-stdin"],
        Some("Tiny-9q\n"),
    )
    .await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("bad_request") && stderr.contains("12"),
        "{stderr}"
    );

    let (status, stdout, _) = run(
        &["user", "set-password", "dave", "--password-stdin"],
        Some(&format!("{new_secret}\r\n")),
    )
    .await;
    assert_eq!(status, Some(0), "{stdout}");
    app.login("dave", new_secret, None)
        .await
        .expect("the reset password logs in");
    let (status, stdout, _) = run(&["user", "disable", "dave"], None).await;
    assert_eq!(status, Some(0));
    assert!(stdout.contains("disabled"), "{stdout}");
    let (status, stdout, _) = run(&["user", "list", "--json"], None).await;
    assert_eq!(status, Some(0));
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["users"][0]["username"], "dave");
    assert_eq!(list["users"][0]["disabled"], true);
    assert_eq!(list["users"][0]["roles"], json!(["analyst", "auditor"]));

    // Failures show in `lockout list`, and `lockout clear` forgets them.
    for _ in 0..12 {
        let _ = app.login("dave", "guessing away", None).await;
    }
    let (status, stdout, _) = run(&["lockout", "list"], None).await;
    assert_eq!(status, Some(0));
    assert!(
        stdout.starts_with("SCOPE") && stdout.contains("dave"),
        "{stdout}"
    );
    let (status, stdout, _) = run(&["lockout", "clear", "account", "dave"], None).await;
    assert_eq!(status, Some(0));
    assert!(stdout.contains("cleared"), "{stdout}");

    let operator = app
        .rows(
            "SELECT action, actor FROM audit_log WHERE action LIKE 'admin.%' AND outcome = 'success'
             ORDER BY id",
        )
        .await;
    assert_eq!(
        operator,
        vec![
            json!({"action": "admin.add_user", "actor": null}),
            json!({"action": "admin.set_password", "actor": null}),
            json!({"action": "admin.update_user", "actor": null}),
            json!({"action": "admin.clear_throttle", "actor": null}),
        ]
    );
    // Nothing secret in the service's output (debug level), the stored
    // rows or the audit trail.
    let log = app.log();
    assert!(
        log.contains("login succeeded"),
        "the log is captured:\n{log}"
    );
    for s in [secret, new_secret, "guessing away", "Tiny-9q"] {
        assert!(!log.contains(s), "{s:?} appears in the service's log");
    }
    let dump = app
        .rows("SELECT to_jsonb(a)::text AS t FROM audit_log a UNION ALL SELECT to_jsonb(u)::text FROM users u")
        .await;
    for row in &dump {
        let text = row["t"].as_str().unwrap();
        assert!(
            !text.contains(secret) && !text.contains(new_secret),
            "{text}"
        );
    }
    app.finish().await;
}
