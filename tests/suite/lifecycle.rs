//! The data lifecycle jobs (docs/lifecycle.md) on real PostgreSQL: `ingest
//! job` as the periodic jobs run it (partitions ahead, the advisory lock,
//! runs a crash left open, columnar refused on plain PostgreSQL, seals and a
//! superuser's change caught by `verify-seals`), and through a whole
//! platform: `tallyhouse job run` over RPC, the job metrics ingest serves,
//! and series answers from the rollups equal to the answers from the
//! records. The Citus paths run against `TALLYHOUSE_TEST_CITUS_DATABASE_URL`
//! when it is set and say "skipped: no Citus" otherwise.

use platform::testing::{
    amqp_uri, database_admin_url, drop_test_database_on, prepare_citus, put_secret, query_json,
    test_database_on, vault_addr, vault_root_token,
};
use rpc_contracts::SubmitterId;
use rpc_contracts::jobs::{self, JobName, JobOutcome, JobRun};
use rpc_contracts::query::{self, Aggregate, SeriesRequest};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::stack::{Stack, StackOptions, execute};
use tests::workspace_bin;
use time::Date;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::{date, datetime};

/// The most any one process run may take before a test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(180);

/// The advisory lock keys of docs/lifecycle.md.
const LOCK_NAMESPACE: i32 = 0x5448_4a42;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// A migrated time-series database of its own, with a service role and a
/// reader role, on the test server (or another, e.g. Citus).
struct Db {
    server: String,
    name: String,
    /// Superuser URL.
    url: String,
    service: (String, String),
    citus: bool,
}

impl Db {
    async fn migrated_on(server: &str) -> Self {
        let (name, url) = test_database_on(server).await;
        let citus = prepare_citus(&url).await;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let service = (
            format!("t_ingest_{tag}"),
            uuid::Uuid::new_v4().simple().to_string(),
        );
        let reader = format!("t_query_{tag}");
        execute(
            &url,
            &format!("CREATE ROLE {} LOGIN PASSWORD '{}'", service.0, service.1),
        )
        .await;
        execute(
            &url,
            &format!("CREATE ROLE {reader} LOGIN PASSWORD 'unused'"),
        )
        .await;
        let out = tokio::process::Command::new(workspace_bin("ingest"))
            .arg("migrate")
            .env_clear()
            .env("TALLYHOUSE_ADMIN_DATABASE_URL", &url)
            .env("TALLYHOUSE_SERVICE_ROLE", &service.0)
            .env("TALLYHOUSE_READER_ROLE", &reader)
            .output()
            .await
            .expect("run ingest migrate");
        assert!(
            out.status.success(),
            "ingest migrate failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            server: server.to_owned(),
            name,
            url,
            service,
            citus,
        }
    }

    async fn migrated() -> Self {
        Self::migrated_on(&database_admin_url()).await
    }

    /// The database logged in as the service role.
    fn service_url(&self) -> String {
        let (host, port, _, _) = platform::testing::database_login(&self.url);
        format!(
            "postgres://{}:{}@{host}:{port}/{}",
            self.service.0, self.service.1, self.name
        )
    }

    async fn rows(&self, sql: &str) -> Vec<Value> {
        query_json(&self.url, sql).await
    }

    async fn count(&self, sql: &str) -> i64 {
        self.rows(sql).await[0]["n"].as_i64().unwrap()
    }

    async fn finish(self) {
        drop_test_database_on(&self.server, &self.name).await;
        for role in [
            self.service.0.clone(),
            self.service.0.replace("t_ingest_", "t_query_"),
        ] {
            execute(&self.server, &format!("DROP ROLE IF EXISTS {role}")).await;
        }
    }
}

/// What an `ingest job` process did.
struct JobExit {
    success: bool,
    /// Its log (JSON lines on stdout) and stderr.
    output: String,
}

/// Runs `ingest job <job>` as of `now`, connected with `url`, with `env`.
async fn ingest_job(url: &str, job: &str, now: &str, env: &[(&str, &str)]) -> JobExit {
    let mut cmd = tokio::process::Command::new(workspace_bin("ingest"));
    cmd.arg("job")
        .arg(job)
        .arg("--now")
        .arg(now)
        .env_clear()
        .env("TALLYHOUSE_ADMIN_DATABASE_URL", url)
        .env("TALLYHOUSE_ENVIRONMENT", "test")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(RUN_BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ingest job {job} did not finish"))
        .expect("run ingest job");
    JobExit {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The latest run of `job` in `job_runs`.
async fn last_run(db: &Db, job: &str) -> Value {
    db.rows(&format!(
        "SELECT run_id, outcome, items, summary, origin FROM job_runs \
         WHERE job = '{job}' ORDER BY run_id DESC LIMIT 1"
    ))
    .await
    .pop()
    .unwrap_or_else(|| panic!("no run of {job}"))
}

#[tokio::test]
async fn partitions_ahead_are_created_a_second_run_is_refused_by_the_lock_and_crashed_runs_are_marked()
 {
    let db = Db::migrated().await;
    let svc = db.service_url();
    let env = [("TALLYHOUSE_PARTITIONS_AHEAD_DAYS", "5")];

    // As the service role (what `tallyhouse job run` uses): the partitions
    // of 2030-01-10 (and two days before) to 2030-01-15 are created.
    let run = ingest_job(&svc, "partitions-ahead", "2030-01-10T12:00:00Z", &env).await;
    assert!(run.success, "{}", run.output);
    let days = db
        .rows(
            "SELECT c.relname::text AS p FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'records'::regclass AND c.relname LIKE 'records_p2030%' ORDER BY 1",
        )
        .await;
    let days: Vec<&str> = days.iter().map(|r| r["p"].as_str().unwrap()).collect();
    assert_eq!(
        days,
        [
            "records_p20300108",
            "records_p20300109",
            "records_p20300110",
            "records_p20300111",
            "records_p20300112",
            "records_p20300113",
            "records_p20300114",
            "records_p20300115",
        ]
    );
    let first = last_run(&db, "partitions-ahead").await;
    assert_eq!(first["outcome"], "ok", "{first}");
    assert_eq!(first["items"], 8, "{first}");
    assert_eq!(first["origin"], "command");
    assert_eq!(first["summary"]["until"], "records_p20300115");
    // A record for the horizon's last day goes in as the service role.
    execute(
        &svc,
        "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
         VALUES ('acme', '2030-01-15T23:59:59Z', 'bets.stake', 1, '{}', gen_random_uuid(), 0)",
    )
    .await;

    // Again: nothing to create, still a successful run.
    let run = ingest_job(&svc, "partitions-ahead", "2030-01-10T12:00:00Z", &env).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(last_run(&db, "partitions-ahead").await["items"], 0);

    // Another instance holds the lock: the run exits 0, says so, records nothing.
    {
        use sqlx::Connection as _;
        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 1)")
            .bind(LOCK_NAMESPACE)
            .fetch_one(&mut holder)
            .await
            .unwrap();
        assert!(got);
        let runs_before = db.count("SELECT count(*) AS n FROM job_runs").await;
        let run = ingest_job(&svc, "partitions-ahead", "2030-02-10T12:00:00Z", &env).await;
        assert!(run.success, "{}", run.output);
        assert!(
            run.output
                .contains("another run of this job holds its lock"),
            "{}",
            run.output
        );
        assert_eq!(
            db.count("SELECT count(*) AS n FROM job_runs").await,
            runs_before
        );
        assert_eq!(
            db.count("SELECT count(*) AS n FROM pg_class WHERE relname = 'records_p20300210'")
                .await,
            0,
            "the refused run created nothing"
        );
        // Other jobs have locks of their own.
        let run = ingest_job(&svc, "rollup", "2030-02-10T12:00:00Z", &[]).await;
        assert!(run.success, "{}", run.output);
        let _ = holder.close().await;
    }

    // A run a crash left open (no outcome) is marked abandoned by the next.
    execute(
        &db.url,
        "INSERT INTO job_runs (job, origin, started_at) VALUES ('partitions-ahead', 'command', now() - interval '1 hour')",
    )
    .await;
    let run = ingest_job(&svc, "partitions-ahead", "2030-02-10T12:00:00Z", &env).await;
    assert!(run.success, "{}", run.output);
    let outcomes = db
        .rows(
            "SELECT outcome FROM job_runs WHERE job = 'partitions-ahead' ORDER BY run_id DESC LIMIT 2",
        )
        .await;
    assert_eq!(outcomes[0]["outcome"], "ok");
    assert_eq!(outcomes[1]["outcome"], "abandoned");
    assert_eq!(
        db.count("SELECT count(*) AS n FROM job_runs WHERE outcome IS NULL")
            .await,
        0
    );

    // Plain PostgreSQL: columnar says it is unavailable and keeps heap.
    if !db.citus {
        let run = ingest_job(&db.url, "columnar", "2031-01-01T00:00:00Z", &[]).await;
        assert!(run.success, "{}", run.output);
        assert!(
            run.output
                .contains("columnar storage is not available: partitions stay heap"),
            "{}",
            run.output
        );
        let columnar = last_run(&db, "columnar").await;
        assert_eq!(columnar["outcome"], "ok");
        assert_eq!(columnar["summary"]["available"], false, "{columnar}");
        assert_eq!(
            db.count(
                "SELECT count(*) AS n FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_am a ON a.oid = c.relam \
                 WHERE i.inhparent = 'records'::regclass AND a.amname <> 'heap'"
            )
            .await,
            0
        );
    }
    db.finish().await;
}

/// Runs `sql`, several statements, on `url` as one script.
async fn script(url: &str, sql: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// Inserts `per_day` records a day for three days from `first` as `url`'s
/// role, with exactly representable values.
async fn old_records(url: &str, first: Date, per_day: i64) {
    let start = first.with_time(time::Time::MIDNIGHT).assume_utc();
    execute(
        url,
        &format!(
            "SELECT tallyhouse_ensure_partitions('{}', '{}')",
            rfc3339(start),
            rfc3339(start + time::Duration::days(2))
        ),
    )
    .await;
    execute(
        url,
        &format!(
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
             SELECT 'sub' || (i % 3), TIMESTAMPTZ '{}' + i * (interval '86400 seconds' / {per_day}), \
                    'bets.stake', (i % 41) * 0.25, jsonb_build_object('game', 'g' || (i % 4)), \
                    md5((i / 10)::text)::uuid, i % 10 \
             FROM generate_series(0, {} - 1) AS i",
            rfc3339(start),
            per_day * 3
        ),
    )
    .await;
}

/// The partition name of `day`.
fn partition(day: Date) -> String {
    format!(
        "records_p{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

#[tokio::test]
async fn seals_are_taken_once_out_of_the_write_window_and_a_superusers_change_is_detected() {
    let db = Db::migrated().await;
    let svc = db.service_url();
    old_records(&svc, date!(2025 - 01 - 01), 1000).await;
    let now = "2026-03-01T00:00:00Z";
    // 2026-03-01 − 400 days − 1 hour = 2025-01-24T23:00Z: the January 2025
    // partitions are out of the write window, the recent ones are not.
    let env = [
        ("TALLYHOUSE_RECORD_MAX_AGE_DAYS", "400"),
        ("TALLYHOUSE_SEAL_MAX_PARTITIONS", "2"),
    ];
    let run = ingest_job(&svc, "seal", now, &env).await;
    assert!(run.success, "{}", run.output);
    let first = last_run(&db, "seal").await;
    assert_eq!(first["items"], 2, "{first}");
    assert_eq!(first["summary"]["pending"], 1, "{first}");
    let run = ingest_job(&svc, "seal", now, &env).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(last_run(&db, "seal").await["items"], 1);
    // Nothing left: a third run seals nothing, and no recent partition is sealed.
    let run = ingest_job(&svc, "seal", now, &env).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(last_run(&db, "seal").await["items"], 0);
    let seals = db
        .rows(
            "SELECT partition_name AS p, row_count AS n, octet_length(digest) AS len, algorithm \
             FROM partition_seals ORDER BY 1",
        )
        .await;
    let names: Vec<&str> = seals.iter().map(|s| s["p"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "records_p20250101",
            "records_p20250102",
            "records_p20250103"
        ]
    );
    for s in &seals {
        assert_eq!(s["n"], 1000, "{s}");
        assert_eq!(s["len"], 32);
        assert_eq!(s["algorithm"], "tallyhouse-seal-v1");
    }
    // Seals are written once, even by the owner.
    let refused = tests::stack::try_execute(
        &db.url,
        "UPDATE partition_seals SET row_count = 0 WHERE partition_name = 'records_p20250102'",
    )
    .await;
    assert!(refused.is_err_and(|e| e.contains("immutable")));

    let verify_env = [("TALLYHOUSE_SEAL_VERIFY_MAX_PARTITIONS", "3")];
    let run = ingest_job(&svc, "verify-seals", now, &verify_env).await;
    assert!(run.success, "{}", run.output);
    let verified = last_run(&db, "verify-seals").await;
    assert_eq!(verified["summary"]["ok"], 3, "{verified}");

    // A superuser changes one value, with the immutability trigger off for
    // that transaction only.
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        let changed = sqlx::query(
            "UPDATE records SET value = value + 0.25 \
             WHERE ts = (SELECT min(ts) FROM records WHERE ts >= '2025-01-02T00:00:00Z' AND ts < '2025-01-03T00:00:00Z')",
        )
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(changed, 1);
        tx.commit().await.unwrap();
        let _ = conn.close().await;
    }
    // The trigger is back for everyone else.
    assert!(
        tests::stack::try_execute(&db.url, "UPDATE records SET value = 0")
            .await
            .is_err()
    );
    let run = ingest_job(&svc, "verify-seals", now, &verify_env).await;
    assert!(
        run.success,
        "a mismatch is a finding, not a failed run: {}",
        run.output
    );
    assert!(
        run.output.contains("\"alert\":\"seal_mismatch\"")
            && run.output.contains("records_p20250102"),
        "{}",
        run.output
    );
    let verified = last_run(&db, "verify-seals").await;
    assert_eq!(verified["summary"]["ok"], 2, "{verified}");
    let mismatched = verified["summary"]["mismatched"].as_array().unwrap();
    assert_eq!(mismatched.len(), 1, "{verified}");
    assert_eq!(mismatched[0]["partition"], "records_p20250102");
    assert_eq!(
        mismatched[0]["found_rows"], 1000,
        "same count, other digest"
    );
    assert_ne!(
        mismatched[0]["found_digest"],
        mismatched[0]["sealed_digest"]
    );
    let latest = db
        .rows(
            "SELECT DISTINCT ON (partition_name) partition_name AS p, status \
             FROM seal_checks ORDER BY partition_name, check_id DESC",
        )
        .await;
    let statuses: Vec<(&str, &str)> = latest
        .iter()
        .map(|r| (r["p"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("records_p20250101", "ok"),
            ("records_p20250102", "mismatch"),
            ("records_p20250103", "ok"),
        ]
    );

    // A sealed partition that disappears is reported missing.
    execute(&db.url, "DROP TABLE records_p20250103").await;
    let run = ingest_job(&svc, "verify-seals", now, &verify_env).await;
    assert!(run.success, "{}", run.output);
    let verified = last_run(&db, "verify-seals").await;
    assert_eq!(
        verified["summary"]["missing"],
        serde_json::json!(["records_p20250103"])
    );
    db.finish().await;
}

/// Starts `job` over RPC and waits for the run to end.
async fn run_over_rpc(stack: &Stack, job: JobName) -> JobRun {
    stack.run_job(job, None).await
}

/// Every point of a series, page after page.
async fn series(stack: &Stack, mut req: SeriesRequest) -> Vec<(OffsetDateTime, f64, u64)> {
    let mut out = Vec::new();
    loop {
        let page = stack
            .query_call::<query::Series>(&req)
            .await
            .unwrap_or_else(|e| panic!("series {req:?}: {e:?}"));
        out.extend(page.points.iter().map(|p| (p.bucket, p.value, p.count)));
        match page.next_cursor {
            Some(after) => req.after = Some(after),
            None => return out,
        }
    }
}

/// The same buckets computed from the records by the test itself.
async fn raw(stack: &Stack, req: &SeriesRequest) -> Vec<(OffsetDateTime, f64, u64)> {
    let value = match req.agg {
        Aggregate::Sum => "sum(value)",
        Aggregate::Avg => "avg(value)",
        Aggregate::Min => "min(value)",
        Aggregate::Max => "max(value)",
        Aggregate::Count => "count(*)::float8",
    };
    let labels = if req.labels.is_empty() {
        String::new()
    } else {
        format!(
            " AND labels @> '{}'",
            serde_json::to_string(&req.labels).unwrap()
        )
    };
    stack
        .query(&format!(
            "SELECT date_bin(make_interval(secs => {}), ts, TIMESTAMPTZ 'epoch') AS b, {value} AS v, count(*) AS n \
             FROM records WHERE submitter_id = '{}' AND series = '{}' AND ts >= '{}' AND ts < '{}'{labels} \
             GROUP BY 1 ORDER BY 1",
            req.bucket_secs,
            req.submitter_id.as_str(),
            req.series,
            rfc3339(req.from),
            rfc3339(req.to)
        ))
        .await
        .into_iter()
        .map(|r| {
            (
                OffsetDateTime::parse(r["b"].as_str().unwrap(), &Rfc3339).unwrap(),
                r["v"].as_f64().unwrap(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn request(
    submitter: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    bucket_secs: u64,
    agg: Aggregate,
    labels: &[(&str, &str)],
    limit: u32,
) -> SeriesRequest {
    SeriesRequest {
        submitter_id: SubmitterId::parse(submitter).unwrap(),
        series: "bets.stake".into(),
        from,
        to,
        bucket_secs,
        agg,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        after: None,
        limit,
    }
}

/// Every series case: buckets of whole hours and days (rollups) and of
/// half an hour (records only), every aggregate, with and without a label
/// filter, aligned and unaligned ranges, pages of a few buckets.
async fn assert_rollups_answer_as_records(stack: &Stack, when: &str) -> usize {
    let ranges = [
        (
            datetime!(2026-02-01 00:00 UTC),
            datetime!(2026-02-04 00:00 UTC),
        ),
        (
            datetime!(2026-02-01 05:17:03.5 UTC),
            datetime!(2026-02-03 07:41 UTC),
        ),
    ];
    let mut compared = 0;
    for (from, to) in ranges {
        for bucket in [1800, 3600, 7200, 86_400, 172_800] {
            for agg in Aggregate::ALL {
                for labels in [&[][..], &[("game", "g1")][..]] {
                    // Pages of a few buckets for one aggregate.
                    let limits: &[u32] = if agg == Aggregate::Sum {
                        &[1000, 7]
                    } else {
                        &[1000]
                    };
                    for &limit in limits {
                        let req = request("acme", from, to, bucket, agg, labels, limit);
                        let expected = raw(stack, &req).await;
                        assert!(!expected.is_empty());
                        let got = series(stack, req.clone()).await;
                        assert_eq!(got, expected, "{when}: {req:?}");
                        compared += 1;
                    }
                }
            }
        }
    }
    compared
}

#[tokio::test]
async fn series_from_the_rollups_equal_series_from_the_records() {
    let stack = Stack::start(StackOptions::default()).await;
    // 2026-02-01 to 2026-02-03 12:00, a record every 37 s for two
    // submitters, two series, three label sets; values are multiples of
    // 0.25, so every sum is exact in any order.
    execute(
        &stack.ingest_db_url,
        "SELECT tallyhouse_ensure_partitions('2026-02-01T00:00:00Z', '2026-02-03T23:00:00Z')",
    )
    .await;
    let insert = |offset: u32, count: u32| {
        format!(
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
             SELECT (ARRAY['acme', 'other'])[1 + i % 2], \
                    TIMESTAMPTZ '2026-02-01T00:00:00Z' + ({offset} + i) * interval '37 seconds', \
                    (ARRAY['bets.stake', 'bets.win'])[1 + (i / 2) % 2], (i % 53) * 0.25 - 4, \
                    jsonb_build_object('game', 'g' || (i % 3), 'desk', 'd' || (i % 2)), \
                    gen_random_uuid(), 0 \
             FROM generate_series(0, {count} - 1) AS i"
        )
    };
    execute(&stack.ingest_db_url, &insert(0, 7000)).await;

    // Before any rollup run every hour is marked: everything is read raw.
    let compared = assert_rollups_answer_as_records(&stack, "before the rollup job").await;
    assert!(compared > 100);

    let run = run_over_rpc(&stack, JobName::Rollup).await;
    assert_eq!(run.outcome, Some(JobOutcome::Ok), "{run:?}");
    assert!(run.items > 100, "{run:?}");
    assert_eq!(
        stack
            .query("SELECT count(*) AS n FROM rollup_dirty WHERE hour < '2026-02-04'")
            .await[0]["n"],
        0
    );
    assert_rollups_answer_as_records(&stack, "after the rollup job").await;

    // Late records for hours already rolled up: those hours (and days) are
    // read from the records until the next run.
    execute(
        &stack.ingest_db_url,
        "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
         SELECT 'acme', TIMESTAMPTZ '2026-02-02T10:00:00Z' + i * interval '61 seconds', 'bets.stake', \
                i * 0.5, '{\"game\": \"g1\", \"desk\": \"late\"}', gen_random_uuid(), 0 \
         FROM generate_series(0, 99) AS i",
    )
    .await;
    assert_rollups_answer_as_records(&stack, "with late records").await;
    let run = run_over_rpc(&stack, JobName::Rollup).await;
    assert_eq!(run.outcome, Some(JobOutcome::Ok), "{run:?}");
    assert_rollups_answer_as_records(&stack, "after the late records' rollup").await;

    // The answers do come from the rollups: a change to one hourly row (as
    // the superuser) shows in hour buckets, one to a daily row in day buckets.
    let hour = datetime!(2026-02-01 03:00 UTC);
    let day = datetime!(2026-02-01 00:00 UTC);
    let tamper = |table: &str, bucket: OffsetDateTime, delta: f64| {
        format!(
            "UPDATE {table} SET sum = sum + ({delta}) \
             WHERE submitter_id = 'acme' AND series = 'bets.stake' AND bucket = '{}'",
            rfc3339(bucket)
        )
    };
    let value_at = |points: &[(OffsetDateTime, f64, u64)], at: OffsetDateTime| {
        points.iter().find(|p| p.0 == at).unwrap().1
    };
    let rows_at = |table: &'static str, bucket: OffsetDateTime| {
        let stack = &stack;
        async move {
            stack
                .query(&format!(
                    "SELECT count(*) AS n FROM {table} WHERE submitter_id = 'acme' \
                     AND series = 'bets.stake' AND bucket = '{}'",
                    rfc3339(bucket)
                ))
                .await[0]["n"]
                .as_f64()
                .unwrap()
        }
    };
    let by_hour = request(
        "acme",
        day,
        day + time::Duration::days(1),
        3600,
        Aggregate::Sum,
        &[],
        100,
    );
    let by_day = SeriesRequest {
        bucket_secs: 86_400,
        ..by_hour.clone()
    };
    let (hourly_rows, daily_rows) = (
        rows_at("rollup_hourly", hour).await,
        rows_at("rollup_daily", day).await,
    );
    assert!(hourly_rows > 0.0 && daily_rows > 0.0);
    let (hour_sum, day_sum) = (
        value_at(&series(&stack, by_hour.clone()).await, hour),
        value_at(&series(&stack, by_day.clone()).await, day),
    );
    execute(&stack.ingest_db_url, &tamper("rollup_hourly", hour, 1000.0)).await;
    execute(&stack.ingest_db_url, &tamper("rollup_daily", day, 10.0)).await;
    assert_eq!(
        value_at(&series(&stack, by_hour.clone()).await, hour),
        hour_sum + 1000.0 * hourly_rows
    );
    assert_eq!(
        value_at(&series(&stack, by_day.clone()).await, day),
        day_sum + 10.0 * daily_rows
    );
    stack.finish().await;
}

/// What service `name` serves on /metrics once `wanted` holds, polling
/// (the job metrics are refreshed every 15 s).
async fn metrics_when(stack: &Stack, wanted: impl Fn(&str) -> bool) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = stack.scrape_metrics("ingest").await;
        if wanted(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the ingest metrics never showed it:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_cli_runs_jobs_over_rpc_and_ingest_exports_their_runs_and_seal_mismatches() {
    let stack = Stack::start(StackOptions::default()).await;
    // Every job's "last run failed" is there from the start.
    let fresh = stack.scrape_metrics("ingest").await;
    for job in JobName::ALL {
        assert!(
            fresh.contains(&format!(
                "tallyhouse_lifecycle_job_last_run_failed{{lifecycle_job=\"{job}\"}} 0"
            )),
            "{fresh}"
        );
    }
    // Three days about 500 days ago: out of the 400-day write window of
    // the real clock these runs use.
    let first = (platform::clock::now() - time::Duration::days(500)).date();
    let first_partition = partition(first);
    old_records(&stack.ingest_db_url, first, 200).await;

    // The CLI, as an operator runs it.
    let ns = stack.topology.namespace().to_owned();
    put_secret(
        &ns,
        "cli",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(workspace_bin("tallyhouse"));
        cmd.env_clear()
            .args(args)
            .env(
                "TALLYHOUSE_AMQP_URIS",
                format!("amqp://{}/%2f", amqp_uri().host_port()),
            )
            .env("TALLYHOUSE_RPC_NAMESPACE", &ns)
            .env("TALLYHOUSE_VAULT_PREFIX", &ns)
            .env("VAULT_ADDR", vault_addr())
            .env("VAULT_TOKEN", vault_root_token())
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(RUN_BOUND, cmd.output())
                .await
                .expect("the CLI finishes")
                .expect("the CLI runs");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = cli(&["job", "run", "seal", "--wait", "--json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let run: JobRun = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (run.job, run.outcome),
        (JobName::Seal, Some(JobOutcome::Ok))
    );
    assert_eq!(run.origin, "rpc");
    assert_eq!(run.items, 3, "{run:?}");
    let (code, out, err) = cli(&["job", "run", "verify-seals", "--wait"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("outcome") && out.contains("ok"), "{out}");

    // Another run holds the lock: the CLI says so and succeeds.
    {
        use sqlx::Connection as _;
        let mut holder = sqlx::PgConnection::connect(&stack.ingest_db_url)
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1, 4)")
            .bind(LOCK_NAMESPACE)
            .execute(&mut holder)
            .await
            .unwrap();
        let (code, out, err) = cli(&["job", "run", "verify-seals"]).await;
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("holds its lock"), "{out}");
        let _ = holder.close().await;
    }

    // A superuser's change to a sealed partition: the next check finds it,
    // and ingest's metrics show it (what the alert reads).
    script(
        &stack.ingest_db_url,
        &format!(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE records SET series = 'bets.win' WHERE ts = '{}'; COMMIT",
            rfc3339(first.with_time(time::Time::MIDNIGHT).assume_utc())
        ),
    )
    .await;
    let run = run_over_rpc(&stack, JobName::VerifySeals).await;
    assert_eq!(run.outcome, Some(JobOutcome::Ok), "{run:?}");
    assert_eq!(
        run.summary["mismatched"][0]["partition"], first_partition,
        "{run:?}"
    );
    let text = metrics_when(&stack, |t| {
        t.contains("tallyhouse_lifecycle_seal_mismatched_partitions 1")
    })
    .await;
    for expected in [
        "tallyhouse_lifecycle_sealed_partitions 3",
        "tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job=\"seal\"}",
        "tallyhouse_lifecycle_job_last_items{lifecycle_job=\"verify-seals\"} 3",
        "tallyhouse_lifecycle_job_last_run_failed{lifecycle_job=\"verify-seals\"} 0",
        "tallyhouse_lifecycle_rollup_lag_seconds ",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }

    // The run list, as the CLI shows it.
    let (code, out, err) = cli(&["job", "runs", "verify-seals", "--json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let list: jobs::JobRunList = serde_json::from_str(&out).unwrap();
    assert_eq!(list.runs.len(), 2, "{list:?}");
    assert!(list.runs.iter().all(|r| r.job == JobName::VerifySeals));
    stack.finish().await;
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

#[tokio::test]
async fn on_citus_old_partitions_become_columnar_with_their_ratio_and_rollups_are_marked() {
    let Some(server) = citus_server(
        "on_citus_old_partitions_become_columnar_with_their_ratio_and_rollups_are_marked",
    ) else {
        return;
    };
    let db = Db::migrated_on(&server).await;
    assert!(db.citus, "the Citus server does not preload citus");
    execute(&db.url, "CREATE EXTENSION IF NOT EXISTS citus_columnar").await;
    let svc = db.service_url();
    old_records(&svc, date!(2025 - 01 - 01), 1000).await;
    // The insert marked its hours for the rollups: the statement trigger
    // with its transition table runs on the shards of `records` and writes
    // the co-located shards of `rollup_dirty` (3 submitters × 72 hours).
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM (SELECT DISTINCT submitter_id, hour FROM rollup_dirty \
             WHERE hour < '2025-01-04') d"
        )
        .await,
        216
    );
    let run = ingest_job(
        &svc,
        "columnar",
        "2025-03-01T00:00:00Z",
        &[("TALLYHOUSE_COLUMNAR_AFTER_DAYS", "30")],
    )
    .await;
    assert!(run.success, "{}", run.output);
    let converted = db
        .rows(
            "SELECT c.relname::text AS p, a.amname::text AS am FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam \
             WHERE i.inhparent = 'records'::regclass AND c.relname LIKE 'records_p202501%' ORDER BY 1",
        )
        .await;
    assert_eq!(converted.len(), 3, "{converted:?}");
    assert!(
        converted.iter().all(|r| r["am"] == "columnar"),
        "{converted:?}"
    );
    // Sizes measured before and after (after the conversion committed:
    // Citus refuses its size functions in the converting transaction).
    let storage = db
        .rows("SELECT partition_name AS p, bytes_before AS b, bytes_after AS a FROM partition_storage ORDER BY 1")
        .await;
    assert_eq!(storage.len(), 3, "{storage:?}");
    assert!(
        storage
            .iter()
            .all(|r| r["b"].as_i64().unwrap() > 0 && r["a"].as_i64().unwrap() > 0),
        "{storage:?}"
    );
    eprintln!("columnar sizes (bytes before, after), 1,000 records a day: {storage:?}");
    // The BRIN index is gone (columnar takes none), the series index stays.
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM pg_indexes WHERE tablename LIKE 'records_p202501%' \
             AND indexname LIKE '%\\_ts'"
        )
        .await,
        0
    );
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM pg_indexes WHERE tablename LIKE 'records_p202501%' \
             AND indexname LIKE '%\\_series'"
        )
        .await,
        3
    );
    // A second run finds nothing left to convert.
    let run = ingest_job(&svc, "columnar", "2025-03-01T00:00:00Z", &[]).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(last_run(&db, "columnar").await["items"], 0);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM records WHERE ts < '2025-01-04'")
            .await,
        3000
    );
    // The rollup job and the seals work on the columnar partitions.
    let run = ingest_job(&svc, "rollup", "2025-03-01T00:00:00Z", &[]).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(
        db.count("SELECT sum(n)::bigint AS n FROM rollup_daily")
            .await,
        3000
    );
    let run = ingest_job(&svc, "seal", "2026-03-01T00:00:00Z", &[]).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM partition_seals").await,
        3
    );
    db.finish().await;
}
