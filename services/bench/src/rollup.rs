//! The `rollup` benchmark: a day-bucket series query over 10 million
//! records answered from the rollups (`rollup_daily`, `rollup_hourly`)
//! against the same query answered from the records, in the same run, with
//! the query service's own code on a database of its own on the local
//! PostgreSQL: `query::Store::buckets` (what the Series call runs: it
//! counts the marked hours, then sends `Sql::rollup_buckets` or, when too
//! many hours are marked, `Sql::buckets`) beside `Sql::buckets` alone (the
//! records).
//!
//! The database is migrated by `ingest migrate`; 10 million records of one
//! submitter and one series (30 whole UTC days up to the last midnight,
//! eight label sets, values in quarter steps so that every sum is exact)
//! are inserted a day per statement (the rollup markers' trigger runs, as
//! for ingest's COPY), then `VACUUM (ANALYZE)`. Measured, each in rounds
//! taken in turn: before the rollup job ran (every hour marked), the
//! records, the service's path (which then reads the records), and the
//! rollup statement forced (its per-hour fallback for marked hours); then,
//! after `ingest job rollup` (timed) and `VACUUM (ANALYZE)`, the records and
//! the service's path (the rollups). Every answer is checked equal to the
//! records' answer. The database is dropped at the end, also on error or
//! Ctrl-C. See docs/benchmarks.md.

use crate::harness::{Benchmark, Context};
use crate::local;
use crate::report::{Report, rounded};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use query::{SeriesFilter, Sql, Store};
use rpc_contracts::query::Aggregate;
use sqlx::{Connection as _, PgConnection, Postgres, QueryBuilder, Row as _};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Records loaded.
const RECORDS: i64 = 10_000_000;
/// Whole days of records, ending at the last UTC midnight.
const DAYS: i64 = 30;
const SUBMITTER: &str = "bench-operator";
const SERIES: &str = "bets.stake";

/// See the module documentation.
pub struct RollupBenchmark;

impl Benchmark for RollupBenchmark {
    fn name(&self) -> &'static str {
        "rollup"
    }

    fn about(&self) -> &'static str {
        "a day-bucket series over 10M records: from the rollups vs from the records"
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        run(ctx).boxed()
    }

    fn missing_environment(&self) -> anyhow::Result<Option<Vec<(String, String)>>> {
        local::missing_environment()
    }

    fn cleans_up_on_interrupt(&self) -> bool {
        true
    }
}

/// One query measured both ways.
struct Case {
    label: &'static str,
    bucket_secs: u64,
    labels: Option<serde_json::Value>,
}

fn cases() -> [Case; 3] {
    [
        Case {
            label: "30 days by day, sum",
            bucket_secs: 86_400,
            labels: None,
        },
        Case {
            label: "30 days by day, sum, game=g1",
            bucket_secs: 86_400,
            labels: Some(serde_json::json!({"game": "g1"})),
        },
        Case {
            label: "30 days by hour, sum",
            bucket_secs: 3600,
            labels: None,
        },
    ]
}

type Buckets = Vec<(OffsetDateTime, f64, i64)>;

async fn run(ctx: &Context) -> anyhow::Result<Report> {
    let root = local::repository_root()?;
    local::check_servers().await?;
    if !ctx.no_build {
        local::build_services(&root, &["ingest"]).await?;
    }
    local::check_binaries(&["ingest"])?;
    let server = platform::testing::database_admin_url();
    let (name, url) = platform::testing::test_database_on(&server).await;
    let roles = format!("bench_{}", &name[name.len() - 8..]);
    let outcome = tokio::select! {
        r = measure(ctx, &url, &roles) => r,
        () = ctx.stop.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("bench: dropping the database {name}");
    platform::testing::drop_test_database_on(&server, &name).await;
    for role in [format!("{roles}_ingest"), format!("{roles}_query")] {
        let _ = tests::stack::try_execute(&server, &format!("DROP ROLE IF EXISTS {role}")).await;
    }
    outcome
}

async fn measure(ctx: &Context, url: &str, roles: &str) -> anyhow::Result<Report> {
    // The schema, as deployed.
    for role in ["ingest", "query"] {
        tests::stack::execute(url, &format!("CREATE ROLE {roles}_{role} LOGIN")).await;
    }
    let status = tokio::process::Command::new(tests::workspace_bin("ingest"))
        .arg("migrate")
        .env_clear()
        .env("TALLYHOUSE_ADMIN_DATABASE_URL", url)
        .env("TALLYHOUSE_SERVICE_ROLE", format!("{roles}_ingest"))
        .env("TALLYHOUSE_READER_ROLE", format!("{roles}_query"))
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "ingest migrate failed ({status})");

    let to = platform::clock::now().replace_time(time::Time::MIDNIGHT);
    let from = to - time::Duration::days(DAYS);
    let mut conn = PgConnection::connect(url).await?;
    let loaded = load(&mut conn, from).await?;
    let started = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) records, rollup_dirty")
        .execute(&mut conn)
        .await?;
    let vacuum_secs = started.elapsed().as_secs_f64();
    let rounds = ctx.shape.rounds.max(1) as usize;

    let mut table = Report::new(
        "bench rollup: series over 10M records of one series, the query service's code",
        &[
            "query",
            "before the job: records ms",
            "service ms",
            "rollup statement forced ms",
            "after: records ms",
            "service (rollups) ms",
            "speed-up",
            "buckets",
        ],
    );
    let store = Store::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await?,
    );
    let cases = cases();
    // Before the rollup job: every hour is marked.
    let mut before = Vec::new();
    for case in &cases {
        before.push(interleaved(&mut conn, &store, case, from, to, rounds, true).await?);
    }
    eprintln!("bench: running ingest job rollup");
    let started = Instant::now();
    let out = tokio::process::Command::new(tests::workspace_bin("ingest"))
        .arg("job")
        .arg("rollup")
        .env_clear()
        .env("TALLYHOUSE_ADMIN_DATABASE_URL", url)
        .output()
        .await?;
    let rollup_job_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "ingest job rollup failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let started = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) rollup_hourly, rollup_daily, rollup_dirty")
        .execute(&mut conn)
        .await?;
    let rollup_vacuum_secs = started.elapsed().as_secs_f64();
    let (hourly_rows, daily_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM rollup_hourly), (SELECT count(*) FROM rollup_daily)",
    )
    .fetch_one(&mut conn)
    .await?;
    let mut report_figures = Vec::new();
    for (case, [raw_before, service_before, forced]) in cases.iter().zip(before) {
        let [raw_after, rolled, _] =
            interleaved(&mut conn, &store, case, from, to, rounds, false).await?;
        let speedup = raw_after.median_ms / rolled.median_ms.max(0.001);
        table.row(vec![
            case.label.to_owned(),
            format!("{:.0}", raw_before.median_ms),
            format!("{:.0}", service_before.median_ms),
            format!("{:.0}", forced.median_ms),
            format!("{:.0}", raw_after.median_ms),
            format!("{:.1}", rolled.median_ms),
            format!("{speedup:.0}×"),
            rolled.buckets.to_string(),
        ]);
        report_figures.push((raw_before, service_before, forced, raw_after, rolled));
    }
    table.note(format!(
        "{} records loaded in {:.1} s ({:.0}/s, INSERT … SELECT a day per statement, rollup trigger included), \
         VACUUM (ANALYZE) {:.1} s; ingest job rollup over all of them {:.1} s (then VACUUM {:.1} s): \
         {hourly_rows} hourly and {daily_rows} daily rollup rows",
        loaded.0,
        loaded.1,
        loaded.0 as f64 / loaded.1,
        vacuum_secs,
        rollup_job_secs,
        rollup_vacuum_secs,
    ));
    table.note(format!(
        "median of {rounds} rounds per cell, after one unmeasured run; each statement's answer \
         checked equal to the records' answer"
    ));
    table.figure("records", loaded.0);
    table.figure("load_secs", rounded(loaded.1, 1));
    table.figure("rollup_job_secs", rounded(rollup_job_secs, 1));
    table.figure("rollup_hourly_rows", hourly_rows);
    table.figure("rollup_daily_rows", daily_rows);
    for (i, (raw_before, service_before, forced, raw_after, rolled)) in
        report_figures.iter().enumerate()
    {
        let key = ["day", "day_label", "hour"][i];
        table.figure(format!("{key}_records_ms"), rounded(raw_after.median_ms, 2));
        table.figure(format!("{key}_rollups_ms"), rounded(rolled.median_ms, 3));
        table.figure(
            format!("{key}_records_before_job_ms"),
            rounded(raw_before.median_ms, 2),
        );
        table.figure(
            format!("{key}_service_before_job_ms"),
            rounded(service_before.median_ms, 2),
        );
        table.figure(
            format!("{key}_rollup_statement_all_marked_ms"),
            rounded(forced.median_ms, 2),
        );
    }
    let _ = conn.close().await;
    Ok(table)
}

/// Inserts the records, a day per statement; returns how many and the seconds it took.
async fn load(conn: &mut PgConnection, from: OffsetDateTime) -> anyhow::Result<(i64, f64)> {
    let per_day = RECORDS / DAYS;
    let started = Instant::now();
    sqlx::query("SELECT tallyhouse_ensure_partitions($1, $2)")
        .bind(from)
        .bind(from + time::Duration::days(DAYS - 1))
        .execute(&mut *conn)
        .await?;
    let mut total = 0;
    for day in 0..DAYS {
        let count = if day == DAYS - 1 {
            RECORDS - per_day * (DAYS - 1)
        } else {
            per_day
        };
        let start = from + time::Duration::days(day);
        // Eight label sets; 25,000 records per package id; values in
        // quarter steps.
        sqlx::query(
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal)
             SELECT $1, $2 + i * (interval '86400 seconds' / $3), $4, (i % 1000) * 0.25,
                    jsonb_build_object('game', 'g' || (i % 4), 'desk', 'd' || (i / 7 % 2)),
                    md5($5 || '-' || (i / 25000))::uuid, (i % 25000)::int
             FROM generate_series(0, $3 - 1) AS i",
        )
        .bind(SUBMITTER)
        .bind(start)
        .bind(count)
        .bind(SERIES)
        .bind(day.to_string())
        .execute(&mut *conn)
        .await?;
        total += count;
        eprintln!(
            "bench: loaded {total} of {RECORDS} records ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Medians of one side.
struct Timing {
    median_ms: f64,
    buckets: usize,
}

/// The records' statement, the service's path and (with `forced`) the
/// rollup statement for `case`: one unmeasured run of each, then `rounds`
/// rounds of each in turn; every answer must equal the records'. Returns
/// their timings in that order (the third is zero without `forced`).
async fn interleaved(
    conn: &mut PgConnection,
    store: &Store,
    case: &Case,
    from: OffsetDateTime,
    to: OffsetDateTime,
    rounds: usize,
    forced: bool,
) -> anyhow::Result<[Timing; 3]> {
    let filter = SeriesFilter {
        submitter_id: SUBMITTER.to_owned(),
        series: SERIES.to_owned(),
        labels: case.labels.clone(),
    };
    let limit = 10_000;
    let raw = || {
        Sql::buckets(
            "",
            &filter,
            Aggregate::Sum,
            case.bucket_secs,
            from,
            to,
            limit,
        )
    };
    // The forced rollup statement, with every marked hour (the service
    // reads them in the statement's snapshot; nothing changes them here).
    let marked: Vec<OffsetDateTime> = Sql::marked_hours("", SUBMITTER, from, to, i64::MAX)
        .build_query_scalar()
        .fetch_all(&mut *conn)
        .await?;
    let rolled = || {
        Sql::rollup_buckets(
            "",
            &filter,
            Aggregate::Sum,
            case.bucket_secs,
            from,
            to,
            &marked,
            limit,
        )
        .expect("whole hours")
    };
    let service = || async {
        let started = Instant::now();
        let rows = store
            .buckets(&filter, Aggregate::Sum, case.bucket_secs, from, to, limit)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let elapsed = ms(started.elapsed());
        let answer: Buckets = rows.into_iter().map(|r| (r.bucket, r.value, r.n)).collect();
        anyhow::Ok((elapsed, answer))
    };
    let expected = fetch(conn, raw()).await?.1;
    let check = |what: &str, answer: &Buckets| {
        anyhow::ensure!(
            *answer == expected,
            "{}: the {what} answer differs from the records'",
            case.label
        );
        Ok(())
    };
    check("service's", &service().await?.1)?;
    if forced {
        check("rollup statement's", &fetch(conn, rolled()).await?.1)?;
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        let (t, answer) = fetch(conn, raw()).await?;
        check("records'", &answer)?;
        times[0].push(t);
        let (t, answer) = service().await?;
        check("service's", &answer)?;
        times[1].push(t);
        if forced {
            let (t, answer) = fetch(conn, rolled()).await?;
            check("rollup statement's", &answer)?;
            times[2].push(t);
        } else {
            times[2].push(0.0);
        }
    }
    let [a, b, c] = times.map(|mut t| median(&mut t));
    eprintln!(
        "bench: {}: records {a:.1} ms, service {b:.1} ms, rollup statement forced {c:.1} ms",
        case.label
    );
    let timing = |median_ms| Timing {
        median_ms,
        buckets: expected.len(),
    };
    Ok([timing(a), timing(b), timing(c)])
}

async fn fetch(
    conn: &mut PgConnection,
    mut qb: QueryBuilder<Postgres>,
) -> anyhow::Result<(f64, Buckets)> {
    let started = Instant::now();
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let elapsed = started.elapsed();
    let buckets = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Buckets, sqlx::Error>>()?;
    Ok((ms(elapsed), buckets))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
