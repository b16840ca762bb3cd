//! Signed package ingestion end to end: HTTP → gateway → RabbitMQ → ingest
//! → registry, S3 and PostgreSQL, checked in the database and the bucket.

use evidence::{SigningKey, verify_receipt};
use rpc_contracts::KeyId;
use serde_json::{Value, json};
use std::process::Command;
use tests::stack::{Stack, StackOptions};

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A package of `submitter` created now, holding `records`.
fn package_with(submitter: &str, records: Vec<Value>) -> Value {
    json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": submitter,
        "audience": "local",
        "created_at": rfc3339(platform::clock::now()),
        "records": records,
    })
}

fn package(submitter: &str, records: usize) -> Value {
    let now = platform::clock::now();
    package_with(
        submitter,
        (0..records)
            .map(|i| {
                json!({
                    "series": "bets.stake",
                    "ts": rfc3339(now - time::Duration::seconds(i as i64)),
                    "value": 10.5 + i as f64,
                    "labels": {"game": "poker", "venue": format!("v{}", i % 3)}
                })
            })
            .collect(),
    )
}

fn signature_header(key: &SigningKey, body: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.sign(body))
}

async fn post(stack: &Stack, body: &[u8], key_id: &str, signature: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id)
        .header("tallyhouse-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("the gateway answers")
}

async fn submit(stack: &Stack, key: &SigningKey, key_id: &KeyId, body: &[u8]) -> reqwest::Response {
    post(stack, body, key_id.as_str(), &signature_header(key, body)).await
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.query(sql).await[0]["n"].as_i64().unwrap()
}

async fn problem_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_signed_package_is_stored_with_its_records_and_blob_and_a_verifiable_receipt() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let body = serde_json::to_vec(&package("acme", 25)).unwrap();

    let resp = submit(&stack, &key, &key_id, &body).await;
    assert_eq!(resp.status(), 201);
    let receipt = resp.json::<Value>().await.unwrap()["receipt"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = verify_receipt(&receipt, &stack.jwks().await)
        .expect("the receipt verifies against /v1/keys");
    assert_eq!(claims.submitter_id.as_str(), "acme");
    assert_eq!(claims.records, 25);
    assert_eq!(claims.size, body.len() as u64);
    assert_eq!(claims.sha256, evidence::sha256_hex(&body));

    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) AS n FROM records WHERE submitter_id = 'acme'"
        )
        .await,
        25
    );
    let row = &stack
        .query("SELECT encode(sha256, 'hex') AS sha, blob_key, record_count FROM packages")
        .await[0];
    assert_eq!(row["sha"], claims.sha256);
    let blob = stack
        .evidence
        .get_blob(row["blob_key"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        blob.as_deref(),
        Some(body.as_slice()),
        "the blob is the exact bytes sent"
    );
    let labels = &stack
        .query("SELECT labels FROM records ORDER BY ordinal LIMIT 1")
        .await[0]["labels"];
    assert_eq!(labels, &json!({"game": "poker", "venue": "v0"}));
    stack.finish().await;
}

#[tokio::test]
async fn resubmission_is_idempotent_and_other_bytes_under_the_same_id_conflict() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let mut pkg = package("acme", 3);
    let body = serde_json::to_vec(&pkg).unwrap();
    let first = submit(&stack, &key, &key_id, &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // The same bytes again (a client retrying after a timeout): 200, same receipt.
    let again = submit(&stack, &key, &key_id, &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.unwrap()["receipt"],
        first["receipt"]
    );
    // Same package_id, other bytes: 409, nothing added.
    pkg["records"][0]["value"] = json!(999.0);
    let other = serde_json::to_vec(&pkg).unwrap();
    assert_eq!(
        problem_code(submit(&stack, &key, &key_id, &other).await).await,
        (409, "conflict".into())
    );
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 3);
    stack.finish().await;
}

#[tokio::test]
async fn every_refusal_has_its_code_and_leaves_no_row_and_no_blob() {
    let stack = Stack::start(StackOptions {
        max_package_bytes: 64 * 1024,
        ..Default::default()
    })
    .await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let (other_key, other_key_id) = stack.submitter_with_key("rival").await;
    let unregistered = SigningKey::generate();
    let good = serde_json::to_vec(&package("acme", 2)).unwrap();
    let sign = |k: &SigningKey, b: &[u8]| signature_header(k, b);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = package("acme", 2);
        f(&mut p);
        serde_json::to_vec(&p).unwrap()
    };
    let mut flipped = good.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x01;
    let wrong_audience = with(&|p| p["audience"] = json!("production"));
    let stale = with(&|p| p["created_at"] = json!("2020-01-01T00:00:00Z"));
    let bad_ts = with(&|p| p["records"][1]["ts"] = json!("yesterday"));
    let rival_pkg = serde_json::to_vec(&package("rival", 1)).unwrap();
    let huge = serde_json::to_vec(&package("acme", 2000)).unwrap();
    // (what, body, key id header, signature header, status, code)
    type Case<'a> = (&'a str, Vec<u8>, String, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "signature over other bytes",
            flipped.clone(),
            key_id.to_string(),
            sign(&key, &good),
            401,
            "bad_signature",
        ),
        (
            "signature not base64",
            good.clone(),
            key_id.to_string(),
            "%%%".into(),
            401,
            "bad_signature",
        ),
        (
            "unregistered key",
            good.clone(),
            unregistered.public_key().key_id().to_string(),
            sign(&unregistered, &good),
            401,
            "unknown_key",
        ),
        (
            "key id of no shape",
            good.clone(),
            "nope".into(),
            sign(&key, &good),
            401,
            "unknown_key",
        ),
        (
            "another submitter's key",
            good.clone(),
            other_key_id.to_string(),
            sign(&other_key, &good),
            403,
            "key_submitter_mismatch",
        ),
        (
            "malformed JSON",
            b"{\"schema\": ".to_vec(),
            key_id.to_string(),
            sign(&key, b"{\"schema\": "),
            400,
            "malformed_package",
        ),
        (
            "bad record time",
            bad_ts.clone(),
            key_id.to_string(),
            sign(&key, &bad_ts),
            400,
            "malformed_package",
        ),
        (
            "wrong audience",
            wrong_audience.clone(),
            key_id.to_string(),
            sign(&key, &wrong_audience),
            422,
            "wrong_audience",
        ),
        (
            "created_at too old",
            stale.clone(),
            key_id.to_string(),
            sign(&key, &stale),
            422,
            "created_at_out_of_window",
        ),
        (
            "over the size limit",
            huge.clone(),
            key_id.to_string(),
            sign(&key, &huge),
            413,
            "payload_too_large",
        ),
    ];
    for (what, body, kid, sig, status, code) in cases {
        let got = problem_code(post(&stack, &body, &kid, &sig).await).await;
        assert_eq!(got, (status, code.to_owned()), "{what}");
    }
    // The rival's package signed with acme's key: the key decides who may submit.
    let got = problem_code(submit(&stack, &key, &key_id, &rival_pkg).await).await;
    assert_eq!(got, (403, "key_submitter_mismatch".into()));
    // Missing headers and the wrong content type are refused before any work.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(resp).await,
        (415, "unsupported_media_type".into())
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(problem_code(resp).await, (400, "bad_request".into()));

    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 0);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 0);
    assert!(
        stack.blobs().await.is_empty(),
        "no blob may be left by a refused package"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_package_signed_with_openssl_is_accepted() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("th-openssl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "key.pem",
    ]);
    run(&["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
    let public_pem = std::fs::read_to_string(dir.join("pub.pem")).unwrap();
    let submitter = rpc_contracts::SubmitterId::parse("openssl-user").unwrap();
    stack
        .rpc
        .call::<rpc_contracts::registry::AddSubmitter>(
            &rpc_contracts::registry::AddSubmitterRequest {
                submitter_id: submitter.clone(),
                name: None,
            },
        )
        .await
        .unwrap();
    let info = stack
        .rpc
        .call::<rpc_contracts::registry::AddKey>(&rpc_contracts::registry::AddKeyRequest {
            submitter_id: submitter,
            public_key_pem: public_pem,
            not_before: Some(platform::clock::now() - time::Duration::hours(1)),
            not_after: None,
        })
        .await
        .unwrap();
    let body = serde_json::to_vec_pretty(&package("openssl-user", 4)).unwrap();
    std::fs::write(dir.join("package.json"), &body).unwrap();
    run(&[
        "dgst",
        "-sha256",
        "-sign",
        "key.pem",
        "-out",
        "sig.der",
        "package.json",
    ]);
    let sig = std::fs::read(dir.join("sig.der")).unwrap();
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.encode(sig);
    let resp = post(&stack, &body, info.key_id.as_str(), &sig).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) AS n FROM records WHERE submitter_id = 'openssl-user'"
        )
        .await,
        4
    );
    let _ = std::fs::remove_dir_all(&dir);
    stack.finish().await;
}

#[tokio::test]
async fn a_key_revoked_after_a_package_keeps_that_package_and_refuses_new_ones() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let before = serde_json::to_vec(&package("acme", 1)).unwrap();
    assert_eq!(submit(&stack, &key, &key_id, &before).await.status(), 201);
    stack
        .rpc
        .call::<rpc_contracts::registry::RevokeKey>(&rpc_contracts::registry::RevokeKeyRequest {
            submitter_id: rpc_contracts::SubmitterId::parse("acme").unwrap(),
            key_id: key_id.clone(),
            at: None,
        })
        .await
        .expect("revoke");
    let after = serde_json::to_vec(&package("acme", 1)).unwrap();
    assert_eq!(
        problem_code(submit(&stack, &key, &key_id, &after).await).await,
        (401, "key_revoked".into())
    );
    // The package received before the revocation is still there.
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    stack.finish().await;
}

#[tokio::test]
async fn a_hundred_concurrent_submissions_are_each_stored_exactly_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let bodies: Vec<Vec<u8>> = (0..100)
        .map(|_| serde_json::to_vec(&package("acme", 10)).unwrap())
        .collect();
    let results =
        futures_util::future::join_all(bodies.iter().map(|b| submit(&stack, &key, &key_id, b)))
            .await;
    for r in results {
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        count(&stack, "SELECT count(*) AS n FROM packages").await,
        100
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(DISTINCT package_id) AS n FROM records"
        )
        .await,
        100
    );
    assert_eq!(
        count(&stack, "SELECT count(*) AS n FROM records").await,
        1000
    );
    assert_eq!(stack.blobs().await.len(), 100);
    stack.finish().await;
}

/// A package created now whose records fall on the days `days_back` (each
/// a number of days before today, noon UTC, a few records a day).
fn package_on_days(submitter: &str, days_back: &[i64]) -> Value {
    let noon = platform::clock::now().replace_time(time::macros::time!(12:00));
    let records: Vec<Value> = days_back
        .iter()
        .flat_map(|d| {
            (0..3).map(move |i| {
                json!({
                    "series": "bets.stake",
                    "ts": rfc3339(noon - time::Duration::days(*d) + time::Duration::minutes(i)),
                    "value": 1.25 + i as f64,
                    "labels": {"game": "bingo"}
                })
            })
        })
        .collect();
    package_with(submitter, records)
}

#[tokio::test]
async fn concurrent_packages_on_never_seen_days_are_all_stored_once() {
    let stack = Stack::start(StackOptions::default()).await;
    burst_on_never_seen_days(&stack).await;
    stack.finish().await;
}

#[tokio::test]
async fn a_record_with_a_utc_offset_gets_the_partition_of_its_utc_day() {
    // 01:30 at +02:00 is 23:30 UTC the day before: that is the day whose
    // partition the record needs, and the local day must not count as
    // created (a later record on it would find no partition: 500).
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let local_day = platform::clock::now().date() - time::Duration::days(300);
    let with_record_at = |ts: String| {
        let mut p = package("acme", 1);
        p["records"][0]["ts"] = json!(ts);
        serde_json::to_vec(&p).unwrap()
    };
    let first = with_record_at(format!("{local_day}T01:30:00+02:00"));
    assert_eq!(submit(&stack, &key, &key_id, &first).await.status(), 201);
    let second = with_record_at(format!("{local_day}T12:00:00Z"));
    let resp = submit(&stack, &key, &key_id, &second).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let name = |d: time::Date| format!("records_p{}", d.to_string().replace('-', ""));
    for day in [local_day.previous_day().unwrap(), local_day] {
        assert_eq!(
            count(
                &stack,
                &format!(
                    "SELECT count(*) AS n FROM pg_class WHERE relname = '{}'",
                    name(day)
                )
            )
            .await,
            1,
            "{}",
            name(day)
        );
    }
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 2);
    stack.finish().await;
}

/// Three bursts of sixteen packages at once whose records fall on days no
/// partition exists for yet, overlapping: each day is wanted by several
/// packages and some packages span two to five days. Before partition creation was
/// serialised, most of such a burst got 500 (42P07). Also run on Citus
/// (`citus.rs`).
pub(crate) async fn burst_on_never_seen_days(stack: &Stack) {
    let (key, key_id) = stack.submitter_with_key("acme").await;
    const ROUNDS: i64 = 3;
    let partitions_before = count(
        stack,
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .await;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for round in 0..ROUNDS {
        // Three bursts, each on five days of its own.
        let days: Vec<i64> = [97, 131, 163, 164, 250]
            .iter()
            .map(|d| d + 3 * round)
            .collect();
        let burst: Vec<Vec<u8>> = (0..16)
            .map(|i| {
                let mine: Vec<i64> = match i % 4 {
                    0 => vec![days[i % 5]],
                    1 => vec![days[i % 5], days[(i + 1) % 5]],
                    2 => vec![days[2], days[3]],
                    _ => days.clone(),
                };
                serde_json::to_vec(&package_on_days("acme", &mine)).unwrap()
            })
            .collect();
        let results =
            futures_util::future::join_all(burst.iter().map(|b| submit(stack, &key, &key_id, b)))
                .await;
        let statuses: Vec<u16> = results.iter().map(|r| r.status().as_u16()).collect();
        assert!(
            statuses.iter().all(|s| *s == 201),
            "burst {round}: {statuses:?}"
        );
        bodies.extend(burst);
    }
    let records: usize = bodies
        .iter()
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["records"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    let packages = bodies.len() as i64;
    assert_eq!(
        count(stack, "SELECT count(*) AS n FROM packages").await,
        packages
    );
    assert_eq!(
        count(stack, "SELECT count(*) AS n FROM records").await,
        records as i64
    );
    assert_eq!(
        count(
            stack,
            "SELECT count(*) AS n FROM (SELECT DISTINCT package_id, ordinal FROM records) r"
        )
        .await,
        records as i64,
        "no record stored twice"
    );
    assert_eq!(stack.blobs().await.len() as i64, packages);
    // One partition per new day, each with its indexes and TRUNCATE guard.
    let partitions_after = count(
        stack,
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .await;
    let names: std::collections::BTreeSet<String> = bodies
        .iter()
        .flat_map(|b| {
            let package: Value = serde_json::from_slice(b).unwrap();
            package["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "records_p{}",
                        r["ts"].as_str().unwrap()[..10].replace('-', "")
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names.len() as i64, 5 * ROUNDS);
    assert_eq!(partitions_after - partitions_before, names.len() as i64);
    for name in names {
        assert_eq!(
            count(
                stack,
                &format!("SELECT count(*) AS n FROM pg_indexes WHERE tablename = '{name}'")
            )
            .await,
            2,
            "{name} has its two indexes"
        );
        assert_eq!(
            count(
                stack,
                &format!(
                    "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = '{name}'::regclass AND tgname = '{name}_no_truncate'"
                )
            )
            .await,
            1,
            "{name} refuses TRUNCATE"
        );
    }
}

#[tokio::test]
async fn a_database_error_is_logged_once_with_what_the_server_said_and_its_trace_id() {
    // tokio-postgres's Display of a server error is "db error": the cause
    // of a 500 must be in the log (SQLSTATE, message, detail, table,
    // constraint) under the request's trace id, and not in the answer.
    let dir = std::env::temp_dir().join(format!(
        "tallyhouse-dberror-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let stack = Stack::start(StackOptions {
        log_dir: Some(dir.clone()),
        ..StackOptions::default()
    })
    .await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    // The owner adds a constraint the service's insert breaks.
    tests::stack::execute(
        &stack.ingest_db_url,
        "ALTER TABLE packages ADD CONSTRAINT test_refuses_acme CHECK (submitter_id <> 'acme') NOT VALID",
    )
    .await;
    let body = serde_json::to_vec(&package("acme", 2)).unwrap();
    let resp = submit(&stack, &key, &key_id, &body).await;
    assert_eq!(resp.status(), 500);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "internal", "{problem}");
    let text = problem.to_string();
    assert!(
        !text.contains("test_refuses_acme") && !text.contains("23514"),
        "opaque: {text}"
    );
    let trace_id = problem["trace_id"].as_str().expect("a trace id").to_owned();

    let log = std::fs::read_to_string(dir.join("ingest.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["sqlstate"].is_string())
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["sqlstate"], "23514", "{line}");
    assert_eq!(line["db_table"], "packages", "{line}");
    assert_eq!(line["db_constraint"], "test_refuses_acme", "{line}");
    assert!(
        line["db_message"]
            .as_str()
            .unwrap()
            .contains("violates check constraint"),
        "{line}"
    );
    // A DETAIL quoting the row is cut: rows can hold secrets elsewhere.
    assert_eq!(line["db_detail"], "Failing row contains", "{line}");
    let spans = line["spans"].to_string();
    assert!(
        spans.contains(&trace_id),
        "under the trace id {trace_id}: {line}"
    );
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 0);
    stack.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn with_storage_down_submissions_get_503_with_retry_after_store_nothing_and_succeed_later() {
    // Ingest reaches S3 through a proxy the test can cut.
    let (endpoint, _, _) = tests::stack::s3_settings();
    let target = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("S3 endpoint host:port");
    let proxy = platform::testing::TcpProxy::start(target).await.unwrap();
    let stack = Stack::start(StackOptions {
        s3_endpoint: Some(format!("http://{}", proxy.addr())),
        ..Default::default()
    })
    .await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let body = serde_json::to_vec(&package("acme", 5)).unwrap();

    proxy.cut();
    let resp = submit(&stack, &key, &key_id, &body).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(problem_code(resp).await, (503, "unavailable".into()));
    assert_eq!(
        count(&stack, "SELECT count(*) AS n FROM packages").await,
        0,
        "no row without its blob"
    );

    // The client resends the same bytes once storage is back.
    proxy.restore();
    let resp = submit(&stack, &key, &key_id, &body).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 5);
    assert_eq!(stack.blobs().await.len(), 1);
    stack.finish().await;
}

#[tokio::test]
async fn stored_rows_are_immutable_for_the_service_role_and_even_for_the_owner() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let body = serde_json::to_vec(&package("acme", 2)).unwrap();
    assert_eq!(submit(&stack, &key, &key_id, &body).await.status(), 201);
    let role = stack.service_role();
    for (table, privilege, expected) in [
        ("packages", "SELECT", true),
        ("packages", "INSERT", true),
        ("packages", "UPDATE", false),
        ("packages", "DELETE", false),
        ("packages", "TRUNCATE", false),
        ("records", "INSERT", true),
        ("records", "UPDATE", false),
        ("records", "DELETE", false),
        ("records", "TRUNCATE", false),
    ] {
        let rows = stack
            .query(&format!(
                "SELECT has_table_privilege('{role}', '{table}', '{privilege}') AS ok"
            ))
            .await;
        assert_eq!(
            rows[0]["ok"],
            json!(expected),
            "{privilege} on {table} for the service role"
        );
    }
    // Nor may it create or drop tables: it owns neither the schema nor the database.
    let rows = stack
        .query(&format!(
            "SELECT has_schema_privilege('{role}', 'public', 'CREATE') AS create, \
                    (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public') <> '{role}' AS not_owner"
        ))
        .await;
    assert_eq!(rows[0]["create"], json!(false));
    assert_eq!(rows[0]["not_owner"], json!(true));
    // The owner (a superuser here) is refused by the triggers.
    for statement in [
        "UPDATE packages SET size_bytes = 1",
        "DELETE FROM packages",
        "TRUNCATE packages",
        "UPDATE records SET value = 0",
        "DELETE FROM records",
        "TRUNCATE records",
    ] {
        let outcome = tests::stack::try_execute(&stack.ingest_db_url, statement).await;
        let err = outcome.expect_err(statement);
        assert!(err.contains("immutable evidence"), "{statement}: {err}");
    }
    // A partition truncated directly is refused too.
    let partition = stack
        .query("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'records'::regclass LIMIT 1")
        .await[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = tests::stack::try_execute(&stack.ingest_db_url, &format!("TRUNCATE {partition}"))
        .await
        .unwrap_err();
    assert!(err.contains("immutable evidence"), "{err}");
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 2);
    stack.finish().await;
}

/// The value of the sample `name{labels}` (as written in the exposition,
/// e.g. `tallyhouse_ingest_records_total`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_ingest_metrics_count_stored_duplicate_and_rejected_packages_and_time_each_stage() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let before = stack.scrape_metrics("ingest").await;
    assert_eq!(
        sample(&before, "tallyhouse_ingest_records_total"),
        0.0,
        "{before}"
    );

    let body = serde_json::to_vec(&package("acme", 7)).unwrap();
    assert_eq!(submit(&stack, &key, &key_id, &body).await.status(), 201);
    assert_eq!(submit(&stack, &key, &key_id, &body).await.status(), 200);
    let other = serde_json::to_vec(&package("acme", 3)).unwrap();
    let forged = signature_header(&SigningKey::generate(), &other);
    assert_eq!(
        problem_code(post(&stack, &other, key_id.as_str(), &forged).await).await,
        (401, "bad_signature".into())
    );

    let after = stack.scrape_metrics("ingest").await;
    let packages = |outcome: &str, code: &str| {
        sample(
            &after,
            &format!("tallyhouse_ingest_packages_total{{outcome=\"{outcome}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(packages("stored", "none"), 1.0, "{after}");
    assert_eq!(packages("duplicate", "none"), 1.0, "{after}");
    assert_eq!(packages("rejected", "bad_signature"), 1.0, "{after}");
    assert_eq!(sample(&after, "tallyhouse_ingest_records_total"), 7.0);
    assert_eq!(
        sample(&after, "tallyhouse_ingest_bytes_total"),
        body.len() as f64
    );
    // Every stage of the stored package was timed once; verify and parse
    // also for the duplicate, verify also for the forgery. The body's hash
    // is the digest `verify` computed: no stage of its own any more.
    let stage_count = |stage: &str| {
        sample(
            &after,
            &format!("tallyhouse_ingest_stage_seconds_count{{stage=\"{stage}\"}}"),
        )
    };
    for (stage, n) in [
        ("key_lookup", 3.0),
        ("verify_queue", 3.0),
        ("verify", 3.0),
        ("parse", 2.0),
        ("dedupe", 2.0),
        ("receipt_sign", 1.0),
        ("blob_put", 1.0),
        ("db_write", 1.0),
    ] {
        assert_eq!(stage_count(stage), n, "stage {stage}\n{after}");
    }
    assert_eq!(stage_count("hash"), 0.0, "{after}");
    assert!(
        sample(
            &after,
            "tallyhouse_ingest_stage_cpu_seconds_total{stage=\"verify\"}"
        ) > 0.0,
        "{after}"
    );
    stack.finish().await;
}
