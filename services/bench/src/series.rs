//! The `series` benchmark: one time-bucketed aggregate over 10 million
//! records, asked of the platform as a back-office analyst would
//! (`GET /v1/series` through the gateway: token check, the query service
//! over RPC, its statements on PostgreSQL, the JSON stream back, the audit
//! entry) beside the same aggregate as one SQL statement sent straight to
//! the database with tokio-postgres, in the same run, in interleaved
//! slices.
//!
//! The records are loaded before anything is measured, with binary COPY
//! straight into the `records` table of the platform's own time-series
//! database (the `tests::stack` harness starts the services; see
//! `crate::local`), as 400 packages of 25,000 records: four submitters,
//! one package a day each for 100 days, records spread evenly over the day
//! and cycling through the six series `evidence::generate` writes, with its
//! value ranges and labels. Each package gets its `packages` row. Then
//! `VACUUM (ANALYZE)`, so that neither side pays for hint bits or waits
//! on autovacuum. See docs/benchmarks.md.

use crate::compare::{self, OnStack, Point, cell};
use crate::cpu::{CpuProbe, Scope};
use crate::harness::Context;
use crate::load::CallFn;
use crate::local;
use crate::report::{Report, rounded};
use ::tests::stack::Stack;
use bytes::BufMut as _;
use futures_util::{FutureExt as _, SinkExt as _};
use rpc_contracts::auth::Role;
use rpc_contracts::query::{Aggregate, SeriesPoint};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

/// Records loaded.
const RECORDS: u64 = 10_000_000;
/// The submitters, one package a day each.
const SUBMITTERS: [&str; 4] = ["operator-01", "operator-02", "operator-03", "operator-04"];
/// Days of records, ending at the last UTC midnight.
const DAYS: u64 = 100;
/// Records per package.
const PER_PACKAGE: u64 = RECORDS / (SUBMITTERS.len() as u64 * DAYS);
/// The series of `evidence::generate`, in its order (record `i` of a
/// package is of series `i % 6`).
const SERIES: [&str; 6] = [
    "bets.count",
    "bets.stake",
    "bets.payout",
    "deposits.amount",
    "withdrawals.amount",
    "players.active",
];
/// What is asked: one submitter's stakes over the whole range.
const QUERIED_SUBMITTER: &str = SUBMITTERS[0];
const QUERIED_SERIES: &str = "bets.stake";
/// Bucket widths, with the label used in figure names (and as `bucket=`).
const BUCKETS: [(u64, &str); 2] = [(3600, "1h"), (86_400, "1d")];
/// Queries in flight at each point.
const IN_FLIGHT: [usize; 2] = [1, 4];
/// HTTP time per query over SQL time per query should stay at or below this.
const TARGET_HTTP_OVER_SQL: f64 = 1.5;
/// Unmeasured HTTP queries before the first point, and how many at once:
/// enough for each connection of the query service's pool (10 by default)
/// to have run the statement more than five times (see [`prime`]).
const PRIME_HTTP: (usize, usize) = (100, 10);
/// Unmeasured executions on each baseline connection before the first point.
const PRIME_SQL: usize = 6;
/// Timed executions of the baseline statement with each plan kind.
const PLAN_RUNS: usize = 3;

/// The columns ingest copies.
const COPY_STATEMENT: &str =
    "COPY records (submitter_id, ts, series, value, labels, package_id, ordinal) FROM STDIN BINARY";

/// The baseline: the same aggregate as the HTTP answer (`agg=sum`: the sum
/// and the count per bucket), one statement.
const SQL_SUM: &str = "SELECT date_bin(make_interval(secs => $1), ts, TIMESTAMPTZ 'epoch') AS bucket, \
     sum(value), count(*) FROM records \
     WHERE submitter_id = $2 AND series = $3 AND ts >= $4 AND ts < $5 GROUP BY 1 ORDER BY 1";

/// Every aggregate at once, to check each of the HTTP answers against.
const SQL_ALL: &str = "SELECT date_bin(make_interval(secs => $1), ts, TIMESTAMPTZ 'epoch') AS bucket, \
     sum(value), avg(value), min(value), max(value), count(*) FROM records \
     WHERE submitter_id = $2 AND series = $3 AND ts >= $4 AND ts < $5 GROUP BY 1 ORDER BY 1";

/// See the module documentation.
pub const BENCHMARK: OnStack = OnStack {
    name: "series",
    about: "an aggregate over 10M records: GET /v1/series through the gateway vs one SQL statement",
    measure: |ctx, stack| measure_all(ctx, stack).boxed(),
};

/// The range loaded and asked: `DAYS` whole UTC days up to the last midnight.
fn range() -> (OffsetDateTime, OffsetDateTime) {
    let to = platform::clock::now().replace_time(time::Time::MIDNIGHT);
    (to - time::Duration::days(DAYS as i64), to)
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// What loading took.
struct Loaded {
    records: i64,
    copy: Duration,
    vacuum: Duration,
    bytes: i64,
}

async fn measure_all(ctx: &Context, stack: &mut Stack) -> anyhow::Result<Report> {
    let (from, to) = range();
    let loaded = load(ctx, &stack.ingest_db_url, from, to).await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let (_, token) = local::back_office_user(stack, &http, "bench-analyst", Role::Analyst).await?;
    let pool = Arc::new(SqlPool::connect(&stack.reader_db_url(), IN_FLIGHT).await?);
    let check = check_equal(&http, &stack.base_url, &token, &pool, from, to).await?;
    eprintln!(
        "bench: the HTTP answers equal the SQL ones ({} aggregates × {} buckets checked, largest relative difference {:.1e}); {} records per query",
        Aggregate::ALL.len(),
        check.buckets,
        check.max_rel_diff,
        check.records
    );

    let plans = plan_costs(&stack.reader_db_url(), from, to).await?;
    eprintln!(
        "bench: the baseline statement takes {:.0} ms with a custom plan, {:.0} ms with the generic one (median of {PLAN_RUNS})",
        plans.custom_ms, plans.generic_ms
    );
    prime(
        ctx,
        &http,
        &series_url(&stack.base_url, "1h", Aggregate::Sum, from, to),
        &token,
        &pool,
        from,
        to,
    )
    .await?;

    let mut watched = local::watched_services(stack, &["gateway", "query", "auth"]);
    watched.extend(local::watched_servers(&[
        ("broker", local::AMQP_PORT, Scope::Process),
        ("postgres", local::PG_PORT, Scope::WithChildren),
    ]));
    let probe = ctx.cpu.watching(watched);
    let mut points = Vec::new();
    for &(bucket_secs, bucket) in &BUCKETS {
        let expected = check.points[bucket];
        for &n in &IN_FLIGHT {
            let variants = vec![
                (
                    "http",
                    http_call(
                        http.clone(),
                        series_url(&stack.base_url, bucket, Aggregate::Sum, from, to),
                        token.clone(),
                        expected,
                    ),
                ),
                (
                    "sql",
                    sql_call(pool.clone(), bucket_secs, from, to, expected),
                ),
            ];
            if let Some(p) =
                compare::measure(ctx, &probe, n, bucket, variants, points.len()).await?
            {
                points.push(p);
            }
        }
    }
    let baseline_plans = pool.plan_counts().await?;
    Ok(report(
        ctx,
        &probe,
        &points,
        &Setup {
            loaded,
            check,
            plans,
            baseline_plans,
        },
    ))
}

/// What the run found before and after measuring.
struct Setup {
    loaded: Loaded,
    check: Check,
    plans: PlanCosts,
    /// Generic and custom plans the baseline connections' statement ran
    /// with, over the whole run.
    baseline_plans: (i64, i64),
}

/// The baseline statement's time (1-hour buckets) with each kind of plan.
struct PlanCosts {
    custom_ms: f64,
    generic_ms: f64,
}

/// Times the baseline statement (1-hour buckets) [`PLAN_RUNS`] times with
/// `plan_cache_mode = force_custom_plan` (what PostgreSQL runs for the
/// first five executions of a prepared statement on a connection, and for
/// every statement sent with its values inline) and as many with the
/// generic plan, on a connection of its own.
async fn plan_costs(
    url: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<PlanCosts> {
    let client = connect(url).await?;
    let statement = client.prepare(SQL_SUM).await?;
    let median = |mode: &'static str| {
        let (client, statement) = (&client, &statement);
        async move {
            client
                .batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await?;
            let mut ms = Vec::new();
            for _ in 0..PLAN_RUNS {
                let started = Instant::now();
                client
                    .query(
                        statement,
                        &[&3600f64, &QUERIED_SUBMITTER, &QUERIED_SERIES, &from, &to],
                    )
                    .await?;
                ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            Ok::<_, anyhow::Error>(ms[ms.len() / 2])
        }
    };
    let custom_ms = median("force_custom_plan").await?;
    let generic_ms = median("force_generic_plan").await?;
    Ok(PlanCosts {
        custom_ms,
        generic_ms,
    })
}

/// Brings both sides to their steady state before anything is measured.
/// PostgreSQL plans a prepared statement afresh for its first five
/// executions on a connection (custom plans, the range's partitions pruned
/// at plan time), then keeps its generic plan when that looks cheaper; here
/// the two differ several-fold (see [`plan_costs`]). The query service
/// holds a pool of connections, the baseline one connection per query in
/// flight, so without this the HTTP side would run custom plans for far
/// longer than the baseline and the comparison would measure the plan
/// cache, not the path.
async fn prime(
    ctx: &Context,
    http: &reqwest::Client,
    url: &str,
    token: &str,
    pool: &Arc<SqlPool>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<()> {
    let (queries, at_once) = PRIME_HTTP;
    eprintln!(
        "bench: priming: {queries} HTTP queries, {at_once} at a time, and {PRIME_SQL} executions on each baseline connection (unmeasured)"
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..at_once {
        let (http, url, token, stop) = (
            http.clone(),
            url.to_owned(),
            token.to_owned(),
            ctx.stop.clone(),
        );
        tasks.spawn(async move {
            for _ in 0..queries / at_once {
                anyhow::ensure!(!stop.is_cancelled(), "interrupted");
                get_series(&http, &url, &token)
                    .await
                    .map_err(|e| anyhow::anyhow!("priming: {e}"))?;
            }
            Ok(())
        });
    }
    for i in 0..pool.clients.len() {
        let pool = pool.clone();
        tasks.spawn(async move {
            let conn = pool.clients[i].lock().await;
            for _ in 0..PRIME_SQL {
                conn.0
                    .query(
                        &conn.1,
                        &[&3600f64, &QUERIED_SUBMITTER, &QUERIED_SERIES, &from, &to],
                    )
                    .await?;
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    eprintln!("bench: primed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }
}

const GAMES: &[&str] = &["slots", "roulette", "blackjack", "poker", "sports", "bingo"];
const CHANNELS: &[&str] = &["web", "mobile", "retail"];
const CURRENCIES: &[&str] = &["EUR", "EUR", "EUR", "GBP", "SEK"];

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One package's records in PostgreSQL's binary COPY format: record `i`
/// at `day_start + i × (1 day / PER_PACKAGE)`, of series `i % 6`, with
/// the value range and labels `evidence::generate` gives that series.
fn encode_package(
    submitter: &str,
    day_start: OffsetDateTime,
    package_id: Uuid,
    seed: u64,
) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut buf = Vec::with_capacity(PER_PACKAGE as usize * 140);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    let start_us = (day_start.unix_timestamp_nanos() / 1000) as i64 - PG_EPOCH_US;
    let step_us = 86_400_000_000 / PER_PACKAGE as i64;
    let mut labels = String::with_capacity(96);
    let put_text = |buf: &mut Vec<u8>, s: &str| {
        buf.put_i32(s.len() as i32);
        buf.put_slice(s.as_bytes());
    };
    for i in 0..PER_PACKAGE {
        let (game, channel, currency) = (rng.pick(GAMES), rng.pick(CHANNELS), rng.pick(CURRENCIES));
        labels.clear();
        let cents = |c: u64| c as f64 / 100.0;
        let value = match i % 6 {
            0 => {
                let _ = write!(labels, r#"{{"channel":"{channel}","game":"{game}"}}"#);
                rng.range(1, 500) as f64
            }
            1 | 2 => {
                let _ = write!(
                    labels,
                    r#"{{"channel":"{channel}","currency":"{currency}","game":"{game}"}}"#
                );
                if i % 6 == 1 {
                    cents(rng.range(100, 5_000_000))
                } else {
                    cents(rng.range(0, 4_800_000))
                }
            }
            3 | 4 => {
                let _ = write!(
                    labels,
                    r#"{{"channel":"{channel}","currency":"{currency}"}}"#
                );
                if i % 6 == 3 {
                    cents(rng.range(1_000, 2_000_000))
                } else {
                    cents(rng.range(1_000, 1_500_000))
                }
            }
            _ => {
                let _ = write!(labels, r#"{{"channel":"{channel}"}}"#);
                rng.range(0, 20_000) as f64
            }
        };
        buf.put_i16(7);
        put_text(&mut buf, submitter);
        buf.put_i32(8);
        buf.put_i64(start_us + i as i64 * step_us);
        put_text(&mut buf, SERIES[(i % 6) as usize]);
        buf.put_i32(8);
        buf.put_f64(value);
        buf.put_i32(labels.len() as i32 + 1);
        buf.put_u8(1); // jsonb version
        buf.put_slice(labels.as_bytes());
        buf.put_i32(16);
        buf.put_slice(package_id.as_bytes());
        buf.put_i32(4);
        buf.put_i32(i as i32);
    }
    buf.put_i16(-1);
    buf
}

/// Loads the records and their package rows into the database at `url`
/// (superuser), one COPY per package on one connection per core, then
/// vacuums and analyses `records`.
async fn load(
    ctx: &Context,
    url: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<Loaded> {
    let admin = connect(url).await?;
    admin
        .execute(
            "SELECT tallyhouse_ensure_partitions($1, $2)",
            &[&from, &(to - time::Duration::SECOND)],
        )
        .await?;
    let packages: Arc<Vec<(usize, u64, Uuid)>> = Arc::new(
        (0..DAYS)
            .flat_map(|d| (0..SUBMITTERS.len()).map(move |s| (s, d, Uuid::new_v4())))
            .collect(),
    );
    let writers = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!(
        "bench: loading {RECORDS} records ({} packages of {PER_PACKAGE}, {} submitters × {DAYS} days from {from}) with binary COPY on {writers} connections",
        packages.len(),
        SUBMITTERS.len(),
    );
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let client = connect(url).await?;
        let (packages, next, stop) = (packages.clone(), next.clone(), ctx.stop.clone());
        tasks.spawn(async move {
            client.batch_execute("SET synchronous_commit = off").await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(s, d, package_id)) = packages.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                anyhow::ensure!(!stop.is_cancelled(), "interrupted");
                let day = from + time::Duration::days(d as i64);
                let bytes = tokio::task::spawn_blocking(move || {
                    encode_package(SUBMITTERS[s], day, package_id, (d << 8) | s as u64)
                })
                .await?;
                let sink = client.copy_in(COPY_STATEMENT).await?;
                futures_util::pin_mut!(sink);
                sink.send(bytes::Bytes::from(bytes)).await?;
                sink.as_mut().finish().await?;
                if (i + 1) % 40 == 0 {
                    eprintln!("bench: {} of {} packages loaded", i + 1, packages.len());
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    // The packages' rows (no blob behind them: nothing here reads it).
    let insert = admin
        .prepare(
            "INSERT INTO packages (submitter_id, package_id, sha256, size_bytes, record_count, key_id, \
             signature, audience, created_at, received_at, blob_key, receipt) \
             VALUES ($1, $2, sha256($3), $4, $5, 'bench-synthetic', '\\x00', 'local', $6, $7, $8, 'bench-synthetic')",
        )
        .await?;
    for &(s, d, package_id) in packages.iter() {
        let created = from + time::Duration::days(d as i64 + 1);
        admin
            .execute(
                &insert,
                &[
                    &SUBMITTERS[s],
                    &package_id,
                    &package_id.as_bytes().as_slice(),
                    &(PER_PACKAGE as i64 * 130),
                    &(PER_PACKAGE as i32),
                    &created,
                    &(created + time::Duration::minutes(5)),
                    &format!("synthetic/{}/{package_id}", SUBMITTERS[s]),
                ],
            )
            .await?;
    }
    let copy = started.elapsed();
    eprintln!(
        "bench: loaded in {:.1} s ({:.0} records/s); VACUUM (ANALYZE) records",
        copy.as_secs_f64(),
        RECORDS as f64 / copy.as_secs_f64()
    );
    let started = Instant::now();
    admin.batch_execute("VACUUM (ANALYZE) records").await?;
    let vacuum = started.elapsed();
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM records), \
             (SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits \
              WHERE inhparent = 'records'::regclass)",
            &[],
        )
        .await?;
    let loaded = Loaded {
        records: row.get(0),
        copy,
        vacuum,
        bytes: row.get(1),
    };
    anyhow::ensure!(
        loaded.records == RECORDS as i64,
        "{} records in the table, not {RECORDS}",
        loaded.records
    );
    eprintln!(
        "bench: VACUUM (ANALYZE) took {:.1} s; records take {:.0} MB with their indexes",
        vacuum.as_secs_f64(),
        loaded.bytes as f64 / 1e6
    );
    Ok(loaded)
}

/// One connection per query in flight, logged in as the query service's
/// read-only role with its session settings, each with the statement
/// prepared.
struct SqlPool {
    clients: Vec<tokio::sync::Mutex<(Client, Statement)>>,
    next: AtomicUsize,
}

impl SqlPool {
    async fn connect(url: &str, in_flight: [usize; 2]) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..in_flight.into_iter().max().unwrap_or(1) {
            let client = connect(url).await?;
            client
                .batch_execute(
                    "SET default_transaction_read_only = on; SET statement_timeout = 60000",
                )
                .await?;
            let statement = client.prepare(SQL_SUM).await?;
            clients.push(tokio::sync::Mutex::new((client, statement)));
        }
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// Generic and custom plans the measured statement ran with on these
    /// connections so far (`pg_prepared_statements`).
    async fn plan_counts(&self) -> anyhow::Result<(i64, i64)> {
        let mut total = (0, 0);
        for c in &self.clients {
            let conn = c.lock().await;
            let row = conn
                .0
                .query_one(
                    "SELECT coalesce(sum(generic_plans), 0)::bigint, coalesce(sum(custom_plans), 0)::bigint \
                     FROM pg_prepared_statements WHERE statement = $1",
                    &[&SQL_SUM],
                )
                .await?;
            total.0 += row.get::<_, i64>(0);
            total.1 += row.get::<_, i64>(1);
        }
        Ok(total)
    }

    /// A free connection, or the next one in turn if all are busy.
    async fn acquire(&self) -> tokio::sync::MutexGuard<'_, (Client, Statement)> {
        for c in &self.clients {
            if let Ok(guard) = c.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].lock().await
    }
}

/// `GET /v1/series` of the queried submitter and series over `[from, to)`.
fn series_url(
    base_url: &str,
    bucket: &str,
    agg: Aggregate,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> String {
    let time = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    format!(
        "{base_url}/v1/series?submitter={QUERIED_SUBMITTER}&series={QUERIED_SERIES}&from={}&to={}&bucket={bucket}&agg={}",
        time(from),
        time(to),
        agg.as_str()
    )
}

/// The part of the JSON answer compared and counted.
#[derive(Deserialize)]
struct SeriesAnswer {
    points: Vec<SeriesPoint>,
}

/// The whole answer, read and decoded, and its size in bytes.
async fn get_series(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(Vec<SeriesPoint>, usize), String> {
    let resp = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    let answer: SeriesAnswer = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((answer.points, body.len()))
}

fn http_call(http: reqwest::Client, url: String, token: String, expected: usize) -> CallFn {
    Arc::new(move || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        Box::pin(async move {
            let (points, _) = get_series(&http, &url, &token).await?;
            if points.len() != expected {
                return Err(format!("{} buckets, not {expected}", points.len()));
            }
            Ok(())
        })
    })
}

fn sql_call(
    pool: Arc<SqlPool>,
    bucket_secs: u64,
    from: OffsetDateTime,
    to: OffsetDateTime,
    expected: usize,
) -> CallFn {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let conn = pool.acquire().await;
            let (client, statement) = &*conn;
            let rows = client
                .query(
                    statement,
                    &[
                        &(bucket_secs as f64),
                        &QUERIED_SUBMITTER,
                        &QUERIED_SERIES,
                        &from,
                        &to,
                    ],
                )
                .await
                .map_err(|e| e.to_string())?;
            drop(conn);
            let points: Vec<(OffsetDateTime, f64, i64)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            if points.len() != expected {
                return Err(format!("{} buckets, not {expected}", points.len()));
            }
            Ok(())
        })
    })
}

/// What the check before measuring found.
struct Check {
    /// Buckets per answer, by bucket label.
    points: std::collections::HashMap<&'static str, usize>,
    /// Answer bytes (JSON, `agg=sum`), by bucket label.
    body_bytes: std::collections::HashMap<&'static str, usize>,
    /// Buckets compared in all.
    buckets: usize,
    /// Records each query aggregates.
    records: u64,
    /// The largest relative difference between two values compared.
    max_rel_diff: f64,
}

/// Asks every aggregate at every bucket width over HTTP and compares each
/// bucket (start, value, count) with the SQL statement's; fails on the
/// first difference beyond a sum's rounding (1e-9 relative).
async fn check_equal(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    pool: &SqlPool,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<Check> {
    let mut check = Check {
        points: Default::default(),
        body_bytes: Default::default(),
        buckets: 0,
        records: 0,
        max_rel_diff: 0.0,
    };
    let conn = pool.acquire().await;
    let all = conn.0.prepare(SQL_ALL).await?;
    for &(bucket_secs, bucket) in &BUCKETS {
        let rows = conn
            .0
            .query(
                &all,
                &[
                    &(bucket_secs as f64),
                    &QUERIED_SUBMITTER,
                    &QUERIED_SERIES,
                    &from,
                    &to,
                ],
            )
            .await?;
        anyhow::ensure!(!rows.is_empty(), "the SQL aggregate found no records");
        let records: i64 = rows.iter().map(|r| r.get::<_, i64>(5)).sum();
        check.records = records as u64;
        for agg in Aggregate::ALL {
            let url = series_url(base_url, bucket, agg, from, to);
            let (points, bytes) = get_series(http, &url, token)
                .await
                .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
            anyhow::ensure!(
                points.len() == rows.len(),
                "{bucket} {}: {} buckets over HTTP, {} in SQL",
                agg.as_str(),
                points.len(),
                rows.len()
            );
            for (p, row) in points.iter().zip(&rows) {
                let bucket_start: OffsetDateTime = row.get(0);
                let count: i64 = row.get(5);
                let value: f64 = match agg {
                    Aggregate::Sum => row.get(1),
                    Aggregate::Avg => row.get(2),
                    Aggregate::Min => row.get(3),
                    Aggregate::Max => row.get(4),
                    Aggregate::Count => count as f64,
                };
                let diff = (p.value - value).abs() / value.abs().max(1.0);
                check.max_rel_diff = check.max_rel_diff.max(diff);
                anyhow::ensure!(
                    p.bucket == bucket_start && p.count == count as u64 && diff <= 1e-9,
                    "{bucket} {} differs at {}: HTTP ({}, {}, {}) vs SQL ({bucket_start}, {value}, {count})",
                    agg.as_str(),
                    p.bucket,
                    p.bucket,
                    p.value,
                    p.count
                );
            }
            check.buckets += points.len();
            if agg == Aggregate::Sum {
                check.points.insert(bucket, points.len());
                check.body_bytes.insert(bucket, bytes);
            }
        }
    }
    Ok(check)
}

fn report(ctx: &Context, probe: &CpuProbe, points: &[Point], setup: &Setup) -> Report {
    let (loaded, check) = (&setup.loaded, &setup.check);
    let mut r = Report::new(
        format!(
            "series: {QUERIED_SERIES} of {QUERIED_SUBMITTER} bucketed over {DAYS} days ({} of {RECORDS} records) \
             via GET /v1/series vs one SQL statement (closed loop; {:?} measured per variant and point, \
             in {} alternating slices each after {:?} of warm-up)",
            check.records, ctx.shape.duration, ctx.shape.rounds, ctx.shape.warmup
        ),
        &[
            "bucket",
            "in flight",
            "buckets",
            "HTTP q/s",
            "HTTP p50 ms",
            "HTTP p99 ms",
            "SQL q/s",
            "SQL p50 ms",
            "SQL p99 ms",
            "HTTP/SQL time",
            "HTTP/SQL p50",
        ],
    );
    let mut worst: Option<f64> = None;
    for p in points {
        let bucket = p.key.rsplit('_').next().unwrap_or_default();
        let (h, s) = (p.get("http"), p.get("sql"));
        let ratio = p.rps_ratio("sql", "http");
        let p50_ratio = match (h, s) {
            (Some(h), Some(s)) => Some(h.latency_ms(0.5) / s.latency_ms(0.5)),
            _ => None,
        };
        r.row(vec![
            bucket.to_owned(),
            p.in_flight.to_string(),
            check
                .points
                .get(bucket)
                .map_or("-".into(), usize::to_string),
            cell(h.map(|m| m.rps()), 2),
            cell(h.map(|m| m.latency_ms(0.5)), 1),
            cell(h.map(|m| m.latency_ms(0.99)), 1),
            cell(s.map(|m| m.rps()), 2),
            cell(s.map(|m| m.latency_ms(0.5)), 1),
            cell(s.map(|m| m.latency_ms(0.99)), 1),
            cell(ratio, 2),
            cell(p50_ratio, 2),
        ]);
        compare::variant_figures(&mut r, probe, p);
        if let Some(ratio) = ratio {
            r.figure(format!("ratio_http_over_sql_{}", p.key), rounded(ratio, 3));
            worst = Some(worst.map_or(ratio, |w: f64| w.max(ratio)));
        }
        if let Some(p50) = p50_ratio {
            r.figure(
                format!("ratio_p50_http_over_sql_{}", p.key),
                rounded(p50, 3),
            );
        }
    }
    r.note(format!(
        "HTTP = GET /v1/series?agg=sum with an analyst's bearer token, answer read and decoded \
         (gateway: token check, query service over RPC, audit entry); SQL = the same sum and count \
         per bucket as one prepared statement with tokio-postgres as the query service's read-only \
         role. HTTP/SQL time = mean time per query (SQL q/s over HTTP q/s at the same queries in \
         flight). Both answers were compared bucket by bucket for sum, avg, min, max and count \
         before measuring ({} buckets, largest relative difference {:.1e}).",
        check.buckets, check.max_rel_diff
    ));
    r.note(format!(
        "setup (not measured): {RECORDS} records loaded with binary COPY in {:.1} s ({:.0} records/s), \
         VACUUM (ANALYZE) {:.1} s, {:.0} MB with indexes.",
        loaded.copy.as_secs_f64(),
        loaded.records as f64 / loaded.copy.as_secs_f64(),
        loaded.vacuum.as_secs_f64(),
        loaded.bytes as f64 / 1e6
    ));
    r.figure("records_loaded", loaded.records);
    r.figure("load_secs", rounded(loaded.copy.as_secs_f64(), 2));
    r.figure(
        "load_records_per_s",
        rounded(loaded.records as f64 / loaded.copy.as_secs_f64(), 0),
    );
    r.figure(
        "vacuum_analyze_secs",
        rounded(loaded.vacuum.as_secs_f64(), 2),
    );
    r.figure("records_mb", rounded(loaded.bytes as f64 / 1e6, 1));
    r.figure("records_per_query", check.records);
    for (bucket, n) in &check.points {
        r.figure(format!("buckets_{bucket}"), *n as u64);
    }
    for (bucket, n) in &check.body_bytes {
        r.figure(format!("body_bytes_{bucket}"), *n as u64);
    }
    r.note(format!(
        "plans: the baseline statement (1h buckets) takes {:.0} ms with a custom plan (PostgreSQL's \
         choice for the first five executions of a prepared statement on a connection) and {:.0} ms \
         with its generic plan (median of {PLAN_RUNS} each); both sides were primed before measuring \
         ({} HTTP queries, {PRIME_SQL} executions per baseline connection) and the baseline's \
         statement ran {} times with the generic plan and {} with a custom one over the run.",
        setup.plans.custom_ms,
        setup.plans.generic_ms,
        PRIME_HTTP.0,
        setup.baseline_plans.0,
        setup.baseline_plans.1
    ));
    r.figure("sql_custom_plan_ms_1h", rounded(setup.plans.custom_ms, 1));
    r.figure("sql_generic_plan_ms_1h", rounded(setup.plans.generic_ms, 1));
    r.figure("sql_generic_plans", setup.baseline_plans.0);
    r.figure("sql_custom_plans", setup.baseline_plans.1);
    r.figure("check_buckets", check.buckets as u64);
    r.figure("check_max_rel_diff", check.max_rel_diff);
    compare::process_table(
        &mut r,
        probe,
        &points.iter().collect::<Vec<_>>(),
        "postgres = the postmaster and all its processes (other databases' sessions included); \
         broker = the RabbitMQ node on 5672.",
    );
    if let Some(worst) = worst {
        let meets = worst <= TARGET_HTTP_OVER_SQL;
        r.note(format!(
            "target: HTTP time per query ≤ {TARGET_HTTP_OVER_SQL} × SQL at every point: {} (highest {worst:.2})",
            if meets { "met" } else { "NOT met" }
        ));
        r.figure("max_ratio_http_over_sql", rounded(worst, 3));
        r.figure("target_http_over_sql", TARGET_HTTP_OVER_SQL);
        r.figure("meets_target", meets);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_binary_copy_of_per_package_rows_over_its_day() {
        let day = time::macros::datetime!(2026-03-01 00:00 UTC);
        let bytes = encode_package("operator-01", day, Uuid::nil(), 7);
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
        assert!(bytes.ends_with(&(-1i16).to_be_bytes()));
        let mut at = 19;
        let mut rows = 0;
        let mut last_ts = i64::MIN;
        let int = |b: &[u8]| i32::from_be_bytes(b.try_into().unwrap()) as usize;
        while i16::from_be_bytes([bytes[at], bytes[at + 1]]) == 7 {
            at += 2;
            for field in 0..7 {
                let len = int(&bytes[at..at + 4]);
                at += 4;
                if field == 1 {
                    let ts = i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
                    assert!(ts > last_ts);
                    last_ts = ts;
                }
                at += len;
            }
            rows += 1;
        }
        assert_eq!(rows, PER_PACKAGE);
        assert_eq!(at + 2, bytes.len());
        let last = PG_EPOCH_US + last_ts;
        assert!(last < (day + time::Duration::DAY).unix_timestamp() * 1_000_000);
    }
}
