//! Signing key rotation (docs/lifecycle.md, "Key rotation") through a whole
//! platform: the `rotate-keys` job over RPC publishes next keys, every
//! instance signs with them from their time, the next run promotes them;
//! receipts and tokens issued before still verify, a token key is retired
//! once its tokens have expired (its tokens are refused from then on), a
//! receipt key never is. Re-runs change nothing, a second run finds the
//! lock taken, and two writers of one key cannot both win.
//!
//! Real time only moves a few seconds here: the job runs as of now (the
//! keys' recorded age is moved back by the test, as if they had signed for
//! 91 days), and the step that retires the old token key is auth's
//! RotateSigningKey called as of two days later.

use evidence::rotation::{self, Change, KeySecret, RotationPolicy};
use evidence::{SigningKey, verify_receipt};
use platform::vault::{Vault, VaultError};
use rpc_contracts::KeyId;
use rpc_contracts::auth::{self, Password, Role, RotateSigningKeyRequest};
use rpc_contracts::jobs::{self, JobName, JobOutcome, JobRun, RunJobRequest};
use serde_json::{Value, json};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tests::workspace_bin;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

/// The most a job run or a propagation may take before the test gives up.
const BOUND: Duration = Duration::from_secs(60);
/// The advisory lock of `rotate-keys` (docs/lifecycle.md).
const LOCK: (i32, i32) = (0x5448_4a42, 9);
/// Seconds a published key waits before it signs, in this test.
const ACTIVATION_DELAY_SECS: u64 = 3;
const PASSWORD: &str = "correct horse battery staple";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// The `kid` in a compact JWS's header.
fn kid_of(jws: &str) -> KeyId {
    use base64::Engine as _;
    let header = jws.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    KeyId::parse(header["kid"].as_str().unwrap()).unwrap()
}

async fn published(stack: &Stack) -> Vec<KeyId> {
    stack
        .jwks()
        .await
        .iter()
        .map(|k| KeyId::parse(k["kid"].as_str().unwrap()).unwrap())
        .collect()
}

/// Waits until `GET /v1/keys` satisfies `ok` (instances read the secret
/// again every second).
async fn until_published(stack: &Stack, what: &str, ok: impl Fn(&[KeyId]) -> bool) {
    let until = Instant::now() + BOUND;
    loop {
        let kids = published(stack).await;
        if ok(&kids) {
            return;
        }
        assert!(Instant::now() < until, "{what}: /v1/keys holds {kids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Vault secrets of `service`, as the service's own client sees them.
async fn vault_of(stack: &Stack, service: &str) -> Vault {
    Vault::with_token(
        &platform::testing::vault_addr(),
        &platform::testing::vault_root_token().into(),
        "secret",
        stack.topology.namespace(),
        service,
        Duration::from_secs(10),
    )
    .await
    .expect("OpenBao")
}

/// Moves the recorded start of the active key back `days` days, as if it
/// had signed that long.
async fn age_key(vault: &Vault, kind: &str, days: i64) {
    let (mut secret, version) = vault.read_versioned::<KeySecret>(kind).await.unwrap();
    let since = secret.active_since.expect("recorded by the first run");
    secret.active_since = Some(since - time::Duration::days(days));
    vault.write_cas(kind, &secret, version).await.unwrap();
}

/// Runs `rotate-keys` over RPC and waits for its end.
async fn run_job(stack: &Stack) -> JobRun {
    let run = stack.run_job(JobName::RotateKeys, None).await;
    assert_eq!(run.outcome, Some(JobOutcome::Ok), "{run:?}");
    run
}

/// The `action`s of one key's changes in a run's summary.
fn actions(run: &JobRun, key: &str) -> Vec<String> {
    run.summary[key]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: {}", run.summary))
        .iter()
        .map(|c| c["action"].as_str().unwrap().to_owned())
        .collect()
}

fn change<'a>(run: &'a JobRun, key: &str, action: &str) -> &'a Value {
    run.summary[key]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["action"] == action)
        .unwrap_or_else(|| panic!("no {action} for {key}: {}", run.summary))
}

fn kid(v: &Value) -> KeyId {
    KeyId::parse(v.as_str().unwrap()).unwrap()
}

async fn submit(stack: &Stack, key: &SigningKey, key_id: &KeyId) -> (Vec<u8>, String) {
    use base64::Engine as _;
    let now = platform::clock::now();
    let body = serde_json::to_vec(&json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": "acme",
        "audience": "local",
        "created_at": rfc3339(now),
        "records": [{"series": "bets.stake", "ts": rfc3339(now), "value": 1.5, "labels": {}}]
    }))
    .unwrap();
    let resp = http()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header(
            "tallyhouse-signature",
            base64::engine::general_purpose::STANDARD.encode(key.sign(&body)),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let receipt = resp.json::<Value>().await.unwrap()["receipt"]
        .as_str()
        .unwrap()
        .to_owned();
    (body, receipt)
}

async fn login(stack: &Stack) -> String {
    let resp = http()
        .post(format!("{}/v1/auth/login", stack.base_url))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `GET /v1/auth/me` with `token` until it answers `want` (the gateway
/// fetches the token keys every 5 s here).
async fn until_me_is(stack: &Stack, token: &str, want: u16) {
    let until = Instant::now() + BOUND;
    loop {
        let status = http()
            .get(format!("{}/v1/auth/me", stack.base_url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == want {
            return;
        }
        assert!(Instant::now() < until, "/v1/auth/me stayed {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `tallyhouse receipt verify` against the gateway's keys.
fn cli_verifies(stack: &Stack, dir: &std::path::Path, receipt: &str, package: &[u8]) -> String {
    std::fs::write(dir.join("p.json"), package).unwrap();
    std::fs::write(dir.join("p.json.receipt"), receipt).unwrap();
    let out = std::process::Command::new(workspace_bin("tallyhouse"))
        .env_clear()
        .current_dir(dir)
        .env("TALLYHOUSE_GATEWAY_URL", &stack.base_url)
        .args(["receipt", "verify", "p.json.receipt", "--package", "p.json"])
        .output()
        .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `tallyhouse_signing_key_active_since_timestamp_seconds` in
/// a scrape of `service`.
async fn active_since_metric(stack: &Stack, service: &str) -> i64 {
    let scrape = stack.scrape_metrics(service).await;
    let line = scrape
        .lines()
        .find(|l| l.starts_with("tallyhouse_signing_key_active_since_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("{service}: no signing key gauge"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn rotation_keeps_old_receipts_verifiable_and_old_tokens_valid_until_their_key_retires() {
    let reload = ("TALLYHOUSE_SIGNING_KEY_RELOAD_SECS", "1".to_owned());
    let stack = Stack::start(StackOptions {
        ingest_env: vec![
            reload.clone(),
            (
                "TALLYHOUSE_KEY_ACTIVATION_DELAY_SECS",
                ACTIVATION_DELAY_SECS.to_string(),
            ),
        ],
        auth_env: vec![
            reload,
            // The steps below run as of two days later (auth's own check
            // of the caller's time is 5 minutes by default).
            (
                "TALLYHOUSE_ROTATION_MAX_CLOCK_SKEW_SECS",
                (3 * 86_400).to_string(),
            ),
        ],
        gateway_env: vec![("TALLYHOUSE_TOKEN_KEYS_REFRESH_SECS", "5".to_owned())],
        ..StackOptions::default()
    })
    .await;
    let scratch =
        std::env::temp_dir().join(format!("tallyhouse-rotation-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();
    let (key, key_id) = stack.submitter_with_key("acme").await;
    stack
        .rpc
        .call::<auth::AddUser>(&auth::AddUserRequest {
            username: "alice".into(),
            roles: vec![Role::Analyst],
            password: Password(PASSWORD.into()),
            actor: None,
        })
        .await
        .expect("add user");

    // Before any rotation: a receipt and a token to keep.
    let (old_package, old_receipt) = submit(&stack, &key, &key_id).await;
    let old_token = login(&stack).await;
    let (receipt1, jwt1) = (kid_of(&old_receipt), kid_of(&old_token));
    until_me_is(&stack, &old_token, 200).await;

    // The first run counts the keys' age from now: nothing is due.
    let first = run_job(&stack).await;
    assert_eq!(
        actions(&first, "receipt"),
        ["recorded"],
        "{}",
        first.summary
    );
    assert_eq!(actions(&first, "jwt"), ["recorded"], "{}", first.summary);
    assert_eq!(first.items, 2);
    let ingest_vault = vault_of(&stack, "ingest").await;
    let auth_vault = vault_of(&stack, "auth").await;
    age_key(&ingest_vault, "receipt_key", 91).await;
    age_key(&auth_vault, "jwt_key", 91).await;

    // Due: next keys are published, signing ACTIVATION_DELAY_SECS later.
    let publish = run_job(&stack).await;
    assert_eq!(actions(&publish, "receipt"), ["published"]);
    assert_eq!(actions(&publish, "jwt"), ["published"]);
    let receipt2 = kid(&change(&publish, "receipt", "published")["kid"]);
    let jwt2 = kid(&change(&publish, "jwt", "published")["kid"]);
    let at = |key: &str| {
        OffsetDateTime::parse(
            change(&publish, key, "published")["active_at"]
                .as_str()
                .unwrap(),
            &Rfc3339,
        )
        .unwrap()
    };
    let switch = at("receipt").max(at("jwt"));
    until_published(&stack, "next keys published", |kids| {
        [&receipt1, &receipt2, &jwt1, &jwt2]
            .iter()
            .all(|k| kids.contains(k))
    })
    .await;

    // From their time on, every instance signs with the new keys, before
    // any promotion.
    let wait = (switch - platform::clock::now()).max(time::Duration::ZERO);
    tokio::time::sleep(wait.unsigned_abs()).await;
    let (new_package, new_receipt) = submit(&stack, &key, &key_id).await;
    assert_eq!(kid_of(&new_receipt), receipt2);
    let new_token = login(&stack).await;
    assert_eq!(kid_of(&new_token), jwt2);
    until_me_is(&stack, &new_token, 200).await;

    // The next run promotes them; the replaced receipt key stays for ever,
    // the replaced token key for a token's lifetime plus leeway.
    let promote = run_job(&stack).await;
    assert_eq!(actions(&promote, "receipt"), ["activated"]);
    assert_eq!(actions(&promote, "jwt"), ["activated"]);
    let activated = change(&promote, "receipt", "activated");
    assert_eq!(
        (kid(&activated["kid"]), kid(&activated["replaced"])),
        (receipt2.clone(), receipt1.clone())
    );
    assert_eq!(activated["replaced_until"], Value::Null);
    let activated = change(&promote, "jwt", "activated");
    assert_eq!(kid(&activated["replaced"]), jwt1);
    let jwt1_until =
        OffsetDateTime::parse(activated["replaced_until"].as_str().unwrap(), &Rfc3339).unwrap();
    let lifetime = (auth::TOKEN_LIFETIME_SECS + auth::MAX_LEEWAY_SECS) as i64;
    assert!(jwt1_until - platform::clock::now() > time::Duration::seconds(lifetime - 120));
    assert_eq!(promote.summary["receipt"]["active"], receipt2.as_str());
    assert_eq!(promote.summary["jwt"]["active"], jwt2.as_str());

    // A re-run changes nothing.
    let again = run_job(&stack).await;
    assert_eq!(again.items, 0, "{}", again.summary);
    assert!(actions(&again, "receipt").is_empty() && actions(&again, "jwt").is_empty());

    // Everything issued before still verifies; the new keys are in use.
    let jwks = stack.jwks().await;
    let claims = verify_receipt(&old_receipt, &jwks).expect("the old receipt verifies");
    assert_eq!(claims.sha256, evidence::sha256_hex(&old_package));
    verify_receipt(&new_receipt, &jwks).expect("the new receipt verifies");
    assert!(cli_verifies(&stack, &scratch, &old_receipt, &old_package).contains("matches"));
    assert!(cli_verifies(&stack, &scratch, &new_receipt, &new_package).contains("matches"));
    until_me_is(&stack, &old_token, 200).await;
    assert_eq!(kid_of(&submit(&stack, &key, &key_id).await.1), receipt2);
    assert_eq!(kid_of(&login(&stack).await), jwt2);
    for service in ["ingest", "auth"] {
        assert_eq!(
            active_since_metric(&stack, service).await,
            at(if service == "ingest" {
                "receipt"
            } else {
                "jwt"
            })
            .unix_timestamp(),
            "{service}: the key in use has signed since its activation"
        );
    }

    // Two days later (auth's step as of then): every token of the old key
    // has expired, so it is retired; its tokens are refused from then on.
    let later = platform::clock::now() + time::Duration::days(2);
    let rotate = |now: OffsetDateTime, force: bool| RotateSigningKeyRequest {
        now,
        rotate_after_days: 90,
        activation_delay_secs: ACTIVATION_DELAY_SECS,
        force,
    };
    let retired = stack
        .rpc
        .call::<auth::RotateSigningKey>(&rotate(later, false))
        .await
        .expect("RotateSigningKey");
    assert_eq!(retired.changes, 1, "{}", retired.summary);
    assert_eq!(retired.summary["changes"][0]["action"], "retired");
    assert_eq!(retired.summary["changes"][0]["kid"], jwt1.as_str());
    let again = stack
        .rpc
        .call::<auth::RotateSigningKey>(&rotate(later, false))
        .await
        .unwrap();
    assert_eq!(again.changes, 0, "idempotent: {}", again.summary);
    // A time further from auth's clock than it allows is refused: no caller
    // can retire the token key early.
    let far = stack
        .rpc
        .call::<auth::RotateSigningKey>(&rotate(later + time::Duration::days(30), false))
        .await
        .unwrap_err();
    assert_eq!(far.code, rpc_contracts::ErrorCode::BadRequest, "{far}");
    until_published(&stack, "the old token key retired", |kids| {
        !kids.contains(&jwt1) && kids.contains(&jwt2)
    })
    .await;
    until_me_is(&stack, &old_token, 401).await;
    until_me_is(&stack, &new_token, 200).await;

    // The receipt key is never retired: the old receipt still verifies,
    // and ingest's step, however late, keeps its key.
    let jwks = stack.jwks().await;
    verify_receipt(&old_receipt, &jwks).expect("the old receipt still verifies");
    assert!(cli_verifies(&stack, &scratch, &old_receipt, &old_package).contains("matches"));
    let (receipt_secret, _) = ingest_vault
        .read_versioned::<KeySecret>("receipt_key")
        .await
        .unwrap();
    let policy = RotationPolicy {
        rotate_after: time::Duration::days(90),
        activation_delay: time::Duration::seconds(ACTIVATION_DELAY_SECS as i64),
        keep_replaced_for: None,
        force: false,
    };
    let decade = rotation::step(
        &receipt_secret,
        later + time::Duration::days(3650),
        &policy,
        SigningKey::generate,
    )
    .unwrap();
    assert!(
        !decade
            .changes
            .iter()
            .any(|c| matches!(c, Change::Retired { .. })),
        "{:?}",
        decade.changes
    );
    assert_eq!(decade.secret.previous_keys.len(), 1);
    assert_eq!(decade.secret.previous_keys[0].publish_until, None);

    // One run at a time: while another holds the job's lock, RunJob starts
    // nothing.
    {
        use sqlx::Connection as _;
        let mut holder = sqlx::PgConnection::connect(&stack.ingest_db_url)
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(LOCK.0)
            .bind(LOCK.1)
            .execute(&mut holder)
            .await
            .unwrap();
        let refused = stack
            .rpc
            .call::<jobs::RunJob>(&RunJobRequest {
                job: JobName::RotateKeys,
                partition: None,
            })
            .await
            .unwrap();
        assert!(!refused.started && refused.run_id.is_none(), "{refused:?}");
        holder.close().await.unwrap();
        run_job(&stack).await;
    }

    // Two writers of one key: check-and-set on the version read lets one
    // win; the other must read again.
    let (secret, version) = auth_vault
        .read_versioned::<KeySecret>("jwt_key")
        .await
        .unwrap();
    auth_vault
        .write_cas("jwt_key", &secret, version)
        .await
        .unwrap();
    assert!(matches!(
        auth_vault.write_cas("jwt_key", &secret, version).await,
        Err(VaultError::Conflict { .. })
    ));
    // Two forced steps at once publish one key between them: the loser
    // finds the key published, or its write refused (`unavailable`).
    let forced = rotate(platform::clock::now(), true);
    let (a, b) = tokio::join!(
        stack.rpc.call::<auth::RotateSigningKey>(&forced),
        stack.rpc.call::<auth::RotateSigningKey>(&forced),
    );
    let published: u32 = [&a, &b]
        .iter()
        .map(|r| match r {
            Ok(r) => r.changes,
            Err(e) => {
                assert_eq!(e.code, rpc_contracts::ErrorCode::Unavailable, "{e}");
                0
            }
        })
        .sum();
    assert_eq!(published, 1, "{a:?} {b:?}");
    let (secret, _) = auth_vault
        .read_versioned::<KeySecret>("jwt_key")
        .await
        .unwrap();
    assert!(secret.next_private_key_pem.is_some());

    let _ = std::fs::remove_dir_all(&scratch);
    stack.finish().await;
}
