//! Archive, restore and cleanup (docs/lifecycle.md) through a whole
//! platform on real PostgreSQL and S3: partitions past the retention are
//! exported, read back, recorded and dropped; `restore` brings one back
//! with identical rows and refuses a tampered archive; cleanup removes
//! orphan blobs, blobs past their retention and auth's stale state, and
//! nothing a package inside retention, a live token or the audit trail needs.

use base64::Engine as _;
use evidence::generate::{PackageSpec, generate_package};
use evidence::parse_package;
use platform::s3::{EvidenceStore, S3Args, S3Credentials};
use rpc_contracts::jobs::{self, JobName, JobOutcome, JobRun, RunJobRequest};
use rpc_contracts::query::{ReadRaw, ReadRawRequest};
use rpc_contracts::{ErrorCode, SubmitterId};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tests::stack::{Stack, StackOptions, execute, s3_settings};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

fn partition(day: Date) -> String {
    format!(
        "records_p{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn store(bucket: &str) -> EvidenceStore {
    let (endpoint, key, secret) = s3_settings();
    EvidenceStore::new(
        &S3Args {
            s3_endpoint: endpoint,
            s3_region: "us-east-1".into(),
            s3_bucket: bucket.into(),
            s3_timeout_ms: 30_000,
        },
        &S3Credentials {
            access_key_id: key,
            secret_access_key: secret.into(),
        },
    )
}

/// Runs `job` over RPC and waits for its end.
async fn run(stack: &Stack, job: JobName, partition: Option<&str>) -> JobRun {
    stack.run_job(job, partition).await
}

/// Every row of `[from, from + 1 day)` as text, in the seal's order: what a
/// restore must give back exactly (values compared by their binary64 bits).
async fn rows_of_day(stack: &Stack, day: Date) -> Vec<Value> {
    let from = day.with_time(time::Time::MIDNIGHT).assume_utc();
    stack
        .query(&format!(
            "SELECT submitter_id, package_id::text AS package_id, ordinal, \
                    to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS ts, series, \
                    float8send(value)::text AS value_bits, labels::text AS labels \
             FROM records WHERE ts >= '{}' AND ts < '{}' \
             ORDER BY submitter_id COLLATE \"C\", package_id, ordinal",
            rfc3339(from),
            rfc3339(from + time::Duration::days(1))
        ))
        .await
}

async fn exists(stack: &Stack, table: &str) -> bool {
    stack
        .query(&format!("SELECT to_regclass('{table}') IS NOT NULL AS e"))
        .await[0]["e"]
        == true
}

/// Records on `day`: `n` ordinary ones and a few that stress the format
/// (quotes, commas and newlines in text, non-ASCII labels, values that only
/// survive an exact round trip).
async fn records_on(stack: &Stack, day: Date, n: i64) {
    let from = day.with_time(time::Time::MIDNIGHT).assume_utc();
    execute(
        &stack.ingest_db_url,
        &format!(
            "SELECT tallyhouse_ensure_partitions('{0}', '{0}')",
            rfc3339(from)
        ),
    )
    .await;
    execute(
        &stack.ingest_db_url,
        &format!(
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
             SELECT 'sub' || (i % 5), TIMESTAMPTZ '{0}' + i * interval '0.500001 seconds', \
                    'bets.stake', (i * 7919 % 100003) / 977.0, \
                    jsonb_build_object('game', md5(i::text), 'desk', 'd' || (i % 13)), \
                    md5((i / 20)::text)::uuid, i % 20 \
             FROM generate_series(0, {n} - 1) AS i",
            rfc3339(from)
        ),
    )
    .await;
    execute(
        &stack.ingest_db_url,
        &format!(
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) VALUES \
             ('odd, \"quoted\"', TIMESTAMPTZ '{0}' + interval '3 hours', E'multi\\nline,series', 0.1, \
              '{{\"é\": \"ü, \\\"x\\\"\", \"a\": [1, 2.5, null]}}', gen_random_uuid(), 0), \
             ('odd, \"quoted\"', TIMESTAMPTZ '{0}' + interval '4 hours', 's', 'NaN', '{{}}', gen_random_uuid(), 0), \
             ('odd, \"quoted\"', TIMESTAMPTZ '{0}' + interval '5 hours', 's', '-Infinity', '{{}}', gen_random_uuid(), 0), \
             ('odd, \"quoted\"', TIMESTAMPTZ '{0}' + interval '6 hours', 's', 1e300, '{{}}', gen_random_uuid(), 0), \
             ('odd, \"quoted\"', TIMESTAMPTZ '{0}' + interval '7 hours', 's', -5e-324, '{{}}', gen_random_uuid(), 0)",
            rfc3339(from)
        ),
    )
    .await;
}

async fn object(store: &EvidenceStore, key: &str) -> Vec<u8> {
    store
        .get_blob(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is not in {}", store.bucket()))
}

/// The Citus server of the test command, or `None` (after saying so).
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
fn citus_server(test: &str) -> Option<String> {
    match std::env::var("TALLYHOUSE_TEST_CITUS_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: skipped: no Citus (TALLYHOUSE_TEST_CITUS_DATABASE_URL is unset)");
            None
        }
    }
}

/// A platform with `options`, its ingest database on `server` (`None`: the
/// test command's); on a Citus server it must be in Citus mode.
async fn stack_on(server: Option<String>, options: StackOptions) -> Stack {
    let citus = server.is_some();
    let stack = Stack::start(StackOptions {
        ingest_database_server: server,
        ..options
    })
    .await;
    if citus {
        assert!(
            stack.citus(),
            "the server of TALLYHOUSE_TEST_CITUS_DATABASE_URL does not preload citus (shared_preload_libraries)"
        );
    }
    stack
}

#[tokio::test]
async fn partitions_past_retention_are_archived_verified_dropped_and_restored_identically() {
    archive_drop_restore(None).await;
}

/// The same on Citus: the partitions are distributed tables (shards in the
/// co-location group of `records`); export, detach and drop, and the
/// restore's partition creation and COPY in one transaction work on them.
#[tokio::test]
async fn on_citus_partitions_past_retention_are_archived_dropped_and_restored_identically() {
    let Some(server) = citus_server(
        "on_citus_partitions_past_retention_are_archived_dropped_and_restored_identically",
    ) else {
        return;
    };
    archive_drop_restore(Some(server)).await;
}

async fn archive_drop_restore(server: Option<String>) {
    let citus = server.is_some();
    let ns = format!("arch{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let archive_bucket = format!("{ns}-archive");
    let stack = stack_on(
        server,
        StackOptions {
            ingest_env: vec![
                ("TALLYHOUSE_RECORD_MAX_AGE_DAYS", "3".into()),
                ("TALLYHOUSE_RETENTION_DAYS", "5".into()),
                ("TALLYHOUSE_ARCHIVE_BUCKET", archive_bucket.clone()),
                // The smallest parts S3 takes, so that one partition takes two.
                ("TALLYHOUSE_ARCHIVE_PART_KIB", "5120".into()),
                ("TALLYHOUSE_ARCHIVE_MAX_PARTITIONS", "2".into()),
                ("TALLYHOUSE_RESTORE_KEEP_DAYS", "0".into()),
                // On Citus, the old days are converted first (below).
                ("TALLYHOUSE_COLUMNAR_AFTER_DAYS", "7".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let archive = store(&archive_bucket);
    let today = platform::clock::now().date();
    let old: Vec<Date> = (0..3)
        .map(|i| today - time::Duration::days(12 - i))
        .collect();
    let recent = today - time::Duration::days(1);
    records_on(&stack, old[0], 150_000).await;
    records_on(&stack, old[1], 2_000).await;
    records_on(&stack, old[2], 500).await;
    records_on(&stack, recent, 300).await;
    let before: Vec<Vec<Value>> = rows_of_days(&stack, &old).await;
    let recent_before = rows_of_day(&stack, recent).await;
    assert_eq!(before[0].len(), 150_005);
    if citus {
        // Archived as the lifecycle leaves them by then: columnar.
        execute(
            &stack.ingest_db_url,
            "CREATE EXTENSION IF NOT EXISTS citus_columnar",
        )
        .await;
        let columnar = run(&stack, JobName::Columnar, None).await;
        assert_eq!(
            (columnar.outcome, columnar.items),
            (Some(JobOutcome::Ok), 3),
            "{columnar:?}"
        );
        eprintln!("columnar conversions: {}", columnar.summary["converted"]);
        assert_eq!(rows_of_days(&stack, &old).await, before);
    }

    // A restore needs a partition, and only a restore takes one.
    let refused = stack
        .rpc
        .call::<jobs::RunJob>(&RunJobRequest {
            job: JobName::Restore,
            partition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused:?}");
    let refused = stack
        .rpc
        .call::<jobs::RunJob>(&RunJobRequest {
            job: JobName::Archive,
            partition: Some(partition(old[0])),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused:?}");

    // First run: the two oldest (the run's budget), sealed on the way.
    let first = run(&stack, JobName::Archive, None).await;
    assert_eq!(first.outcome, Some(JobOutcome::Ok), "{first:?}");
    assert_eq!(first.items, 2, "{first:?}");
    assert_eq!(first.summary["pending"], 1, "{first:?}");
    assert!(
        first.summary["archived"][0]["parts"].as_u64().unwrap() >= 2,
        "{first:?}"
    );
    for day in &old[..2] {
        assert!(
            !exists(&stack, &partition(*day)).await,
            "{day} still attached"
        );
    }
    assert!(exists(&stack, &partition(old[2])).await);
    assert!(exists(&stack, &partition(recent)).await);
    let second = run(&stack, JobName::Archive, None).await;
    assert_eq!(second.outcome, Some(JobOutcome::Ok), "{second:?}");
    assert_eq!(second.items, 1, "{second:?}");
    assert!(!exists(&stack, &partition(old[2])).await);
    let third = run(&stack, JobName::Archive, None).await;
    assert_eq!(
        (third.outcome, third.items),
        (Some(JobOutcome::Ok), 0),
        "{third:?}"
    );
    assert_eq!(
        rows_of_day(&stack, recent).await,
        recent_before,
        "a partition in retention changed"
    );

    // Each archive: manifest, schema and data, the data object as the
    // manifest and the database record say, its rows the seal's.
    for (day, rows) in old.iter().zip(&before) {
        let name = partition(*day);
        let recorded = &stack
            .query(&format!(
                "SELECT a.state, a.row_count, encode(a.object_sha256, 'hex') AS sha, a.object_bytes, \
                        encode(a.digest, 'hex') AS digest, encode(s.digest, 'hex') AS seal \
                 FROM partition_archives a JOIN partition_seals s USING (partition_name) \
                 WHERE partition_name = '{name}'"
            ))
            .await[0];
        assert_eq!(recorded["state"], "dropped");
        assert_eq!(recorded["row_count"], rows.len() as i64);
        assert_eq!(recorded["digest"], recorded["seal"]);
        let manifest: Value = serde_json::from_slice(
            &object(&archive, &format!("records/{name}/manifest.json")).await,
        )
        .unwrap();
        assert_eq!(manifest["format"], "tallyhouse-archive-v1");
        assert_eq!(manifest["row_count"], rows.len() as i64);
        assert_eq!(manifest["seal"]["digest"], recorded["seal"]);
        let schema: Value =
            serde_json::from_slice(&object(&archive, &format!("records/{name}/schema.json")).await)
                .unwrap();
        assert_eq!(schema["columns"].as_array().unwrap().len(), 7);
        let data = object(&archive, &format!("records/{name}/records.csv.gz")).await;
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            recorded["sha"].as_str().unwrap()
        );
        assert_eq!(manifest["data"]["sha256"], recorded["sha"]);
        assert_eq!(
            data.len() as i64,
            recorded["object_bytes"].as_i64().unwrap()
        );
        // Readable without Tallyhouse: gzip, then CSV with a header.
        let mut csv = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(data.as_slice()), &mut csv)
            .unwrap();
        assert!(csv.starts_with("submitter_id,package_id,ordinal,ts,series,value,labels\n"));
    }

    // Seal verification leaves the dropped partitions to their archives.
    let verify = run(&stack, JobName::VerifySeals, None).await;
    assert_eq!(verify.outcome, Some(JobOutcome::Ok), "{verify:?}");
    assert_eq!(
        verify.summary["missing"],
        serde_json::json!([]),
        "{verify:?}"
    );

    // Restore gives back exactly the rows that were archived.
    let restored = run(&stack, JobName::Restore, Some(&partition(old[0]))).await;
    assert_eq!(restored.outcome, Some(JobOutcome::Ok), "{restored:?}");
    assert_eq!(rows_of_day(&stack, old[0]).await, before[0]);
    if citus {
        // Distributed again, in the group of `records`, with its triggers.
        let name = partition(old[0]);
        let placed = &stack
            .query(&format!(
                "SELECT (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = '{name}'::regclass) \
                     = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'records'::regclass) AS same, \
                        (SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = '{name}'::regclass) AS shards, \
                        (SELECT count(*) FROM pg_trigger WHERE tgrelid = '{name}'::regclass \
                          AND tgname IN ('records_immutable', '{name}_no_truncate')) AS triggers"
            ))
            .await[0];
        assert_eq!(placed["same"], true, "{placed}");
        assert!(placed["shards"].as_i64().unwrap() > 0, "{placed}");
        assert_eq!(placed["triggers"], 2, "{placed}");
    }
    assert_eq!(
        stack
            .query(&format!(
                "SELECT state FROM partition_archives WHERE partition_name = '{}'",
                partition(old[0])
            ))
            .await[0]["state"],
        "restored"
    );
    // A partition that is present, or was never archived, is not restored.
    let again = run(&stack, JobName::Restore, Some(&partition(old[0]))).await;
    assert_eq!(again.outcome, Some(JobOutcome::Failed), "{again:?}");
    let never = run(&stack, JobName::Restore, Some(&partition(recent))).await;
    assert_eq!(never.outcome, Some(JobOutcome::Failed), "{never:?}");
    assert!(
        never.summary["error"]
            .as_str()
            .unwrap()
            .contains("never archived"),
        "{never:?}"
    );

    // A tampered archive is refused and nothing is left behind: one value
    // changed in the CSV, recompressed: its SHA-256 and its rows no longer match.
    let name = partition(old[1]);
    let key = format!("records/{name}/records.csv.gz");
    let mut csv = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(object(&archive, &key).await.as_slice()),
        &mut csv,
    )
    .unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    let line = &mut lines[10];
    let cut = line.rfind(",\"{").unwrap();
    let value_start = line[..cut].rfind(',').unwrap() + 1;
    line.replace_range(value_start..cut, "12345.5");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, (lines.join("\n") + "\n").as_bytes()).unwrap();
    archive
        .client()
        .put_object()
        .bucket(&archive_bucket)
        .key(&key)
        .body(gz.finish().unwrap().into())
        .send()
        .await
        .unwrap();
    let tampered = run(&stack, JobName::Restore, Some(&name)).await;
    assert_eq!(tampered.outcome, Some(JobOutcome::Failed), "{tampered:?}");
    assert!(
        !exists(&stack, &name).await,
        "a refused restore left its partition"
    );
    assert_eq!(
        stack
            .query(&format!(
                "SELECT state FROM partition_archives WHERE partition_name = '{name}'"
            ))
            .await[0]["state"],
        "dropped"
    );

    // The restored partition goes again after its keep time (0 days here),
    // without a new export; it can be restored again.
    let dropped_again = run(&stack, JobName::Archive, None).await;
    assert_eq!(
        dropped_again.outcome,
        Some(JobOutcome::Ok),
        "{dropped_again:?}"
    );
    assert_eq!(
        dropped_again.summary["dropped"],
        serde_json::json!([partition(old[0])])
    );
    assert!(!exists(&stack, &partition(old[0])).await);
    let twice = run(&stack, JobName::Restore, Some(&partition(old[0]))).await;
    assert_eq!(twice.outcome, Some(JobOutcome::Ok), "{twice:?}");
    assert_eq!(rows_of_day(&stack, old[0]).await, before[0]);
    stack.finish().await;
}

async fn rows_of_days(stack: &Stack, days: &[Date]) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for day in days {
        out.push(rows_of_day(stack, *day).await);
    }
    out
}

/// Signs and POSTs a generated package; answers its id and SHA-256.
async fn submit(stack: &Stack, who: &str) -> (uuid::Uuid, String) {
    let (key, key_id) = stack.submitter_with_key(who).await;
    let spec = PackageSpec::new(
        SubmitterId::parse(who).unwrap(),
        "local",
        5,
        platform::clock::now(),
        uuid::Uuid::new_v4().as_u128() as u64,
    );
    let body = generate_package(&spec).bytes;
    let resp = reqwest::Client::new()
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
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    (
        parse_package(&body).unwrap().package_id,
        hex::encode(Sha256::digest(&body)),
    )
}

async fn put_blob(stack: &Stack, bytes: &[u8]) -> String {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    stack.evidence.put_blob(&sha, bytes.to_vec()).await.unwrap()
}

#[tokio::test]
async fn cleanup_removes_orphans_expired_blobs_and_stale_auth_state_and_nothing_else() {
    cleanup_removes_what_is_past_its_time(None).await;
}

/// The same on Citus: `packages` is distributed (a blob's packages may sit
/// on several shards) and `blob_expiries` is a reference table.
#[tokio::test]
async fn on_citus_cleanup_removes_orphans_and_expired_blobs_and_nothing_else() {
    let Some(server) =
        citus_server("on_citus_cleanup_removes_orphans_and_expired_blobs_and_nothing_else")
    else {
        return;
    };
    cleanup_removes_what_is_past_its_time(Some(server)).await;
}

async fn cleanup_removes_what_is_past_its_time(server: Option<String>) {
    let stack = stack_on(
        server,
        StackOptions {
            ingest_env: vec![
                ("TALLYHOUSE_RECORD_MAX_AGE_DAYS", "3".into()),
                ("TALLYHOUSE_RETENTION_DAYS", "5".into()),
                ("TALLYHOUSE_BLOB_RETENTION_DAYS", "6".into()),
                // Every unreferenced blob counts as an orphan at once (tests only).
                ("TALLYHOUSE_ORPHAN_GRACE_HOURS", "0".into()),
                ("TALLYHOUSE_JOB_HISTORY_DAYS", "30".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    // Packages inside retention, through the gateway.
    let (live_a, sha_a) = submit(&stack, "acme").await;
    let (_live_b, sha_b) = submit(&stack, "bravo").await;
    // An orphan: a blob no package row names.
    let orphan = put_blob(&stack, b"an upload whose row was never committed").await;
    // A package received 10 days ago (past the blob retention), whose blob
    // must go, and two sharing one blob, one old and one recent, whose blob
    // must stay.
    let old_key = put_blob(&stack, b"old evidence").await;
    let shared_key = put_blob(&stack, b"shared evidence").await;
    let insert = |id: &str, sha_of: &str, days_ago: i64, key: &str| {
        // The recent package sharing a blob is another submitter's (on
        // Citus, in another shard of `packages`).
        let submitter = if days_ago < 6 { "bravo" } else { "acme" };
        format!(
            "INSERT INTO packages (submitter_id, package_id, sha256, size_bytes, record_count, key_id, \
                 signature, audience, created_at, received_at, blob_key, receipt) \
             VALUES ('{submitter}', '{id}', sha256('{sha_of}'::bytea), {len}, 0, 'k', '\\x00', 'local', \
                     now() - interval '{days_ago} days', now() - interval '{days_ago} days', '{key}', 'r')",
            len = sha_of.len()
        )
    };
    let old_id = uuid::Uuid::new_v4();
    execute(
        &stack.ingest_db_url,
        &insert(&old_id.to_string(), "old evidence", 10, &old_key),
    )
    .await;
    execute(
        &stack.ingest_db_url,
        &insert(
            &uuid::Uuid::new_v4().to_string(),
            "shared evidence",
            10,
            &shared_key,
        ),
    )
    .await;
    execute(
        &stack.ingest_db_url,
        &insert(
            &uuid::Uuid::new_v4().to_string(),
            "shared evidence",
            1,
            &shared_key,
        ),
    )
    .await;
    // Auth: an expired and a live revocation, a stale and a fresh throttle;
    // an old finished run.
    execute(
        &stack.auth_db_url,
        "INSERT INTO token_revocations (jti, username, expires_at, revoked_at) VALUES \
         (gen_random_uuid(), 'gone', now() - interval '2 days', now() - interval '3 days'), \
         (gen_random_uuid(), 'live', now() + interval '2 hours', now())",
    )
    .await;
    execute(
        &stack.auth_db_url,
        "INSERT INTO login_throttles (scope, key, failures, last_failure_at) VALUES \
         ('account', 'stale-user', 3, now() - interval '30 days'), \
         ('account', 'fresh-user', 1, now())",
    )
    .await;
    execute(
        &stack.ingest_db_url,
        "INSERT INTO job_runs (job, origin, started_at, finished_at, outcome) VALUES \
         ('rollup', 'command', now() - interval '400 days', now() - interval '400 days', 'ok')",
    )
    .await;
    let audit_before = query_count(&stack.auth_db_url, "SELECT count(*) AS n FROM audit_log").await;
    let packages_before = stack.query("SELECT count(*) AS n FROM packages").await[0]["n"].clone();

    let cleanup = run(&stack, JobName::Cleanup, None).await;
    assert_eq!(cleanup.outcome, Some(JobOutcome::Ok), "{cleanup:?}");
    let blobs = stack.blobs().await;
    assert!(!blobs.contains(&orphan), "the orphan is still there");
    assert!(
        !blobs.contains(&old_key),
        "the blob past retention is still there"
    );
    assert!(
        blobs.contains(&shared_key),
        "a blob a recent package shares was deleted"
    );
    for sha in [&sha_a, &sha_b] {
        assert!(
            blobs.iter().any(|k| k.ends_with(sha.as_str())),
            "a package's blob inside retention was deleted"
        );
    }
    assert_eq!(cleanup.summary["blobs_expired"], 1, "{cleanup:?}");
    assert_eq!(
        stack.query("SELECT run_id FROM blob_expiries").await,
        vec![serde_json::json!({ "run_id": cleanup.run_id })],
        "the expiry is recorded with the run that made it"
    );
    assert_eq!(
        cleanup.summary["orphans_deleted"],
        serde_json::json!([orphan]),
        "{cleanup:?}"
    );
    assert_eq!(cleanup.summary["auth"]["revocations"], 1, "{cleanup:?}");
    assert_eq!(cleanup.summary["auth"]["throttles"], 1, "{cleanup:?}");
    assert_eq!(cleanup.summary["job_runs"], 1, "{cleanup:?}");
    assert_eq!(
        stack.query("SELECT count(*) AS n FROM packages").await[0]["n"],
        packages_before,
        "a package row was deleted"
    );
    assert_eq!(
        query_count(&stack.auth_db_url, "SELECT count(*) AS n FROM audit_log").await,
        audit_before,
        "an audit entry was deleted"
    );
    assert_eq!(
        query_count(
            &stack.auth_db_url,
            "SELECT count(*) AS n FROM token_revocations WHERE username = 'live'"
        )
        .await,
        1
    );
    assert_eq!(
        query_count(
            &stack.auth_db_url,
            "SELECT count(*) AS n FROM login_throttles WHERE key = 'fresh-user'"
        )
        .await,
        1
    );

    // The expired package stays in the catalogue; its bytes answer
    // evidence_expired (410 at the gateway), a live one's still read.
    let expired = stack
        .query_call::<ReadRaw>(&ReadRawRequest {
            submitter_id: SubmitterId::parse("acme").unwrap(),
            package_id: old_id,
            offset: 0,
            max_len: 100,
        })
        .await
        .unwrap_err();
    assert_eq!(expired.code, ErrorCode::EvidenceExpired, "{expired:?}");
    let live = stack
        .query_call::<ReadRaw>(&ReadRawRequest {
            submitter_id: SubmitterId::parse("acme").unwrap(),
            package_id: live_a,
            offset: 0,
            max_len: 100,
        })
        .await
        .unwrap();
    assert!(!live.bytes.0.is_empty());

    // A second run finds nothing more to do.
    let again = run(&stack, JobName::Cleanup, None).await;
    assert_eq!(again.outcome, Some(JobOutcome::Ok), "{again:?}");
    assert_eq!(again.summary["blobs_expired"], 0, "{again:?}");
    assert_eq!(
        again.summary["orphans_deleted"],
        serde_json::json!([]),
        "{again:?}"
    );
    stack.finish().await;
}

async fn query_count(url: &str, sql: &str) -> i64 {
    platform::testing::query_json(url, sql).await[0]["n"]
        .as_i64()
        .unwrap()
}
