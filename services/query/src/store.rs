//! Every statement the query service runs, on the ingest database's
//! `packages` and `records`, read through the parent tables (the reader role
//! has no grant on any partition), and its rollup tables (ingest's migration
//! 0002; see docs/lifecycle.md). Statements are built here and only here;
//! [`Sql`] exposes them with an `EXPLAIN` prefix so a test can check their
//! plans (see the tests at the bottom: the indexes and partition pruning).
//!
//! Row types are internal; `handlers.rs` converts them to the contracts.

use crate::cursor::Position;
use crate::error::QueryError;
use rpc_contracts::query::Aggregate;
use sqlx::{PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

type Result<T> = std::result::Result<T, QueryError>;

/// The columns of a package summary, in [`SummaryRow`]'s order.
macro_rules! summary_columns {
    () => {
        "submitter_id, package_id, sha256, size_bytes, record_count, created_at, received_at"
    };
}

/// What a list shows of a package.
#[derive(Debug, sqlx::FromRow)]
pub struct SummaryRow {
    pub submitter_id: String,
    pub package_id: Uuid,
    pub sha256: Vec<u8>,
    pub size_bytes: i64,
    pub record_count: i32,
    pub created_at: OffsetDateTime,
    pub received_at: OffsetDateTime,
}

/// A package's whole row but its blob key.
#[derive(Debug, sqlx::FromRow)]
pub struct DetailRow {
    #[sqlx(flatten)]
    pub summary: SummaryRow,
    pub audience: String,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub receipt: String,
}

/// Where a package's bytes are.
#[derive(Debug, sqlx::FromRow)]
pub struct BlobRow {
    pub size_bytes: i64,
    pub blob_key: String,
    /// The blob was deleted at the end of its retention (`blob_expiries`).
    pub expired: bool,
}

/// One aggregated bucket.
#[derive(Debug, sqlx::FromRow)]
pub struct BucketRow {
    pub bucket: OffsetDateTime,
    pub value: f64,
    pub n: i64,
}

/// The filters of a package list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this submitter's.
    pub submitter_id: Option<String>,
    /// `received_at >= from`.
    pub from: Option<OffsetDateTime>,
    /// `received_at < to`.
    pub to: Option<OffsetDateTime>,
}

/// The records a series aggregates, but for their time range.
#[derive(Debug, Clone)]
pub struct SeriesFilter {
    /// The submitter.
    pub submitter_id: String,
    /// The series name.
    pub series: String,
    /// `labels @> this` (a JSON object of strings); `None` for no filter.
    pub labels: Option<serde_json::Value>,
}

/// The statements, as query builders with a prefix (empty, or `EXPLAIN …`).
#[derive(Debug)]
pub struct Sql;

impl Sql {
    /// Packages after `after` in the list order (newest received first, ties
    /// by submitter then package id, all descending), at most `limit`.
    ///
    /// With a submitter the position is `(received_at, package_id)` inside
    /// that submitter, a range of the index `packages_received
    /// (submitter_id, received_at, package_id)` scanned backwards: the page
    /// costs `limit` index entries however deep it is. Without one, the
    /// three-column row comparison is a filter and the rows are sorted (a
    /// top-N sort; no index covers the order across submitters).
    pub fn list_packages(
        prefix: &str,
        filter: &ListFilter,
        after: Option<&Position>,
        limit: i64,
    ) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(prefix);
        qb.push(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM packages WHERE TRUE"
        ));
        if let Some(submitter) = &filter.submitter_id {
            qb.push(" AND submitter_id = ").push_bind(submitter.clone());
        }
        if let Some(from) = filter.from {
            qb.push(" AND received_at >= ").push_bind(from);
        }
        if let Some(to) = filter.to {
            qb.push(" AND received_at < ").push_bind(to);
        }
        match (after, &filter.submitter_id) {
            // A cursor is bound to its filters, so with a submitter filter the
            // position's submitter is that submitter.
            (Some(p), Some(_)) => {
                qb.push(" AND (received_at, package_id) < (")
                    .push_bind(p.received_at)
                    .push(", ")
                    .push_bind(p.package_id)
                    .push(")");
            }
            (Some(p), None) => {
                qb.push(" AND (received_at, submitter_id, package_id) < (")
                    .push_bind(p.received_at)
                    .push(", ")
                    .push_bind(p.submitter_id.clone())
                    .push(", ")
                    .push_bind(p.package_id)
                    .push(")");
            }
            (None, _) => {}
        }
        qb.push(" ORDER BY received_at DESC, submitter_id DESC, package_id DESC LIMIT ")
            .push_bind(limit);
        qb
    }

    /// One package's row.
    pub fn package(prefix: &str, submitter_id: &str, package_id: Uuid) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(prefix);
        qb.push(concat!(
            "SELECT ",
            summary_columns!(),
            ", audience, key_id, signature, receipt FROM packages WHERE submitter_id = "
        ))
        .push_bind(submitter_id.to_owned())
        .push(" AND package_id = ")
        .push_bind(package_id);
        qb
    }

    fn records_where(
        qb: &mut QueryBuilder<Postgres>,
        filter: &SeriesFilter,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) {
        // Equality on submitter and series, then the ts range: a range of the
        // per-partition index (submitter_id, series, ts); the ts bounds also
        // prune the daily partitions at plan time.
        qb.push(" FROM records WHERE submitter_id = ")
            .push_bind(filter.submitter_id.clone())
            .push(" AND series = ")
            .push_bind(filter.series.clone())
            .push(" AND ts >= ")
            .push_bind(from)
            .push(" AND ts < ")
            .push_bind(to);
        if let Some(labels) = &filter.labels {
            qb.push(" AND labels @> ")
                .push_bind(sqlx::types::Json(labels.clone()))
                .push("::jsonb");
        }
    }

    /// The time of the first matching record in `[from, to)`.
    pub fn first_record(
        prefix: &str,
        filter: &SeriesFilter,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(prefix);
        qb.push("SELECT min(ts)");
        Self::records_where(&mut qb, filter, from, to);
        qb
    }

    /// Whether a matching record lies in `[from, to)`.
    pub fn any_record(
        prefix: &str,
        filter: &SeriesFilter,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(prefix);
        qb.push("SELECT EXISTS (SELECT 1");
        Self::records_where(&mut qb, filter, from, to);
        qb.push(")");
        qb
    }

    /// The matching records of `[from, to)` aggregated per bucket of
    /// `bucket_secs` seconds aligned on the Unix epoch, in bucket order.
    pub fn buckets(
        prefix: &str,
        filter: &SeriesFilter,
        agg: Aggregate,
        bucket_secs: u64,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: i64,
    ) -> QueryBuilder<Postgres> {
        let value = match agg {
            Aggregate::Sum => "sum(value)",
            Aggregate::Avg => "avg(value)",
            Aggregate::Min => "min(value)",
            Aggregate::Max => "max(value)",
            Aggregate::Count => "count(*)::double precision",
        };
        let mut qb = QueryBuilder::new(prefix);
        // Whole seconds up to 366 days: exact as a double.
        qb.push("SELECT date_bin(make_interval(secs => ")
            .push_bind(bucket_secs as f64)
            .push("), ts, TIMESTAMPTZ 'epoch') AS bucket, ")
            .push(value)
            .push(" AS value, count(*) AS n");
        Self::records_where(&mut qb, filter, from, to);
        qb.push(" GROUP BY 1 ORDER BY 1 LIMIT ").push_bind(limit);
        qb
    }
}

/// `t` rounded down (`up == false`) or up to a multiple of `step` seconds
/// since the Unix epoch.
fn align(t: OffsetDateTime, step: i64, up: bool) -> OffsetDateTime {
    let step = i128::from(step) * 1_000_000_000;
    let nanos = t.unix_timestamp_nanos();
    let mut aligned = nanos.div_euclid(step) * step;
    if up && aligned < nanos {
        aligned += step;
    }
    OffsetDateTime::from_unix_timestamp_nanos(aligned).unwrap_or(t)
}

/// The whole hours `[A, B)` inside `[from, to)` when buckets of
/// `bucket_secs` can be read from the rollups (a whole number of hours),
/// else `None`.
pub fn rollup_hours(
    bucket_secs: u64,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    if bucket_secs == 0 || !bucket_secs.is_multiple_of(3600) {
        return None;
    }
    let (a, b) = (align(from, 3600, true), align(to, 3600, false));
    (a < b).then_some((a, b))
}

/// Reading the rollups pays when at most one hour in [`MARKED_SHARE`] of
/// the whole hours is marked: each marked hour is read from the records
/// by its own index range scan, which costs more per record than one scan
/// of the range (parallel, sequential), so with many marked hours (before
/// the first rollup run, or with the job stopped) the records' statement
/// is used for the whole range instead.
pub const MARKED_SHARE: i64 = 8;

impl Sql {
    /// The hours of `[a, b)` that carry a `rollup_dirty` marker for the
    /// submitter (records arrived since the rollup job last recomputed
    /// them), in order, at most `limit`.
    pub fn marked_hours(
        prefix: &str,
        submitter_id: &str,
        a: OffsetDateTime,
        b: OffsetDateTime,
        limit: i64,
    ) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(prefix);
        qb.push("SELECT DISTINCT hour FROM rollup_dirty WHERE submitter_id = ")
            .push_bind(submitter_id.to_owned())
            .push(" AND hour >= ")
            .push_bind(a)
            .push(" AND hour < ")
            .push_bind(b)
            .push(" ORDER BY hour LIMIT ")
            .push_bind(limit);
        qb
    }

    /// [`Sql::buckets`] for buckets of whole hours, answered from the
    /// rollups (migration 0002 of ingest, maintained by `ingest job rollup`)
    /// wherever they are exact and from the records elsewhere; `None` when
    /// the rollups cannot serve (a bucket that is not a whole number of
    /// hours, or a range holding no whole hour): use [`Sql::buckets`].
    /// `marked` are the range's marked hours ([`Sql::marked_hours`]), read
    /// in the same snapshot (see [`Store::buckets`]).
    ///
    /// The range splits into the whole hours `[A, B)` and the raw edges
    /// `[from, A)` and `[B, to)`. Inside `[A, B)`, a marked hour is read
    /// from the records (an index range scan each); when buckets are whole
    /// days, a day without a marked hour from `rollup_daily`; every other
    /// hour from `rollup_hourly`. Rollup rows are per label set, so the
    /// label filter (`labels @>`) applies to them as to records. Hour and
    /// day buckets are aligned on the epoch like `date_bin`'s, so a rollup
    /// row never straddles two buckets. The marked hours and clean days are
    /// bound as arrays, so the planner knows how many there are.
    #[allow(clippy::too_many_arguments)]
    pub fn rollup_buckets(
        prefix: &str,
        filter: &SeriesFilter,
        agg: Aggregate,
        bucket_secs: u64,
        from: OffsetDateTime,
        to: OffsetDateTime,
        marked: &[OffsetDateTime],
        limit: i64,
    ) -> Option<QueryBuilder<Postgres>> {
        const DAY: i64 = 86_400;
        let (a, b) = rollup_hours(bucket_secs, from, to)?;
        // Whole days of the range without a marked hour, when buckets are
        // whole days.
        let mut clean_days = Vec::new();
        if bucket_secs.is_multiple_of(DAY as u64) {
            let (mut day, last) = (align(from, DAY, true), align(to, DAY, false));
            while day < last {
                let next = day + time::Duration::days(1);
                if !marked.iter().any(|h| *h >= day && *h < next) {
                    clean_days.push(day);
                }
                day = next;
            }
        }
        let value = match agg {
            Aggregate::Sum => "sum(s)",
            Aggregate::Avg => "sum(s) / sum(n)",
            Aggregate::Min => "min(lo)",
            Aggregate::Max => "max(hi)",
            Aggregate::Count => "sum(n)::double precision",
        };
        let series = |qb: &mut QueryBuilder<Postgres>, alias: &str| {
            qb.push(format!(" {alias}.submitter_id = "))
                .push_bind(filter.submitter_id.clone())
                .push(format!(" AND {alias}.series = "))
                .push_bind(filter.series.clone());
            if let Some(labels) = &filter.labels {
                qb.push(format!(" AND {alias}.labels @> "))
                    .push_bind(sqlx::types::Json(labels.clone()))
                    .push("::jsonb");
            }
        };
        let mut qb = QueryBuilder::new(prefix);
        qb.push("SELECT date_bin(make_interval(secs => ")
            .push_bind(bucket_secs as f64)
            .push("), t, TIMESTAMPTZ 'epoch') AS bucket, ")
            .push(value)
            .push(" AS value, sum(n)::bigint AS n FROM (");
        // Clean whole days.
        qb.push("SELECT d.bucket AS t, d.n, d.sum AS s, d.min AS lo, d.max AS hi FROM rollup_daily d WHERE");
        series(&mut qb, "d");
        qb.push(" AND d.bucket = ANY(")
            .push_bind(clean_days.clone())
            .push("::timestamptz[])");
        // Clean hours outside them.
        qb.push(" UNION ALL SELECT h.bucket, h.n, h.sum, h.min, h.max FROM rollup_hourly h WHERE");
        series(&mut qb, "h");
        qb.push(" AND h.bucket >= ")
            .push_bind(a)
            .push(" AND h.bucket < ")
            .push_bind(b)
            .push(" AND h.bucket <> ALL(")
            .push_bind(marked.to_vec())
            .push("::timestamptz[]) AND date_bin('86400 seconds', h.bucket, TIMESTAMPTZ 'epoch') <> ALL(")
            .push_bind(clean_days)
            .push("::timestamptz[])");
        // Marked hours, from the records (the constant bounds prune the
        // partitions at plan time, each hour's bounds at run time). OFFSET 0
        // keeps the subquery from being pulled up into a join the planner
        // could run as a scan of the whole range against every hour.
        qb.push(" UNION ALL SELECT r.ts, 1, r.value, r.value, r.value FROM unnest(")
            .push_bind(marked.to_vec())
            .push("::timestamptz[]) AS m(hour) CROSS JOIN LATERAL (SELECT r.ts, r.value FROM records r WHERE");
        series(&mut qb, "r");
        qb.push(" AND r.ts >= ")
            .push_bind(a)
            .push(" AND r.ts < ")
            .push_bind(b)
            .push(" AND r.ts >= m.hour AND r.ts < m.hour + interval '3600 seconds' OFFSET 0) r");
        // The edges outside the whole hours.
        for (lo, hi) in [(from, a), (b, to)] {
            if lo >= hi {
                continue;
            }
            qb.push(" UNION ALL SELECT r.ts, 1, r.value, r.value, r.value FROM records r WHERE");
            series(&mut qb, "r");
            qb.push(" AND r.ts >= ")
                .push_bind(lo)
                .push(" AND r.ts < ")
                .push_bind(hi);
        }
        qb.push(") AS parts (t, n, s, lo, hi) GROUP BY 1 ORDER BY 1 LIMIT ")
            .push_bind(limit);
        Some(qb)
    }
}

/// The ingest database, read-only.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// The pool (readiness check and pool metrics).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Wraps a pool logged in as the reader role.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Fails unless the role can read both tables and cannot change them:
    /// the query service runs with a read-only role, never ingest's.
    pub async fn check_read_only(&self) -> anyhow::Result<()> {
        let (user, readable, writable): (String, bool, bool) = sqlx::query_as(
            "SELECT current_user::text,
                    has_table_privilege('packages', 'SELECT') AND has_table_privilege('records', 'SELECT'),
                    has_table_privilege('packages', 'INSERT, UPDATE, DELETE, TRUNCATE')
                    OR has_table_privilege('records', 'INSERT, UPDATE, DELETE, TRUNCATE')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot check the grants on packages and records (is the time-series schema migrated?): {e}"
            )
        })?;
        anyhow::ensure!(
            readable,
            "role {user} cannot read packages and records: run `ingest migrate --reader-role {user}`"
        );
        anyhow::ensure!(
            !writable,
            "role {user} may change packages or records; the query service needs a read-only role"
        );
        Ok(())
    }

    /// A page of the package list.
    pub async fn list_packages(
        &self,
        filter: &ListFilter,
        after: Option<&Position>,
        limit: i64,
    ) -> Result<Vec<SummaryRow>> {
        Sql::list_packages("", filter, after, limit)
            .build_query_as::<SummaryRow>()
            .fetch_all(&self.pool)
            .await
            .map_err(QueryError::db("listing packages"))
    }

    /// One package's row, if stored.
    pub async fn package(&self, submitter_id: &str, package_id: Uuid) -> Result<Option<DetailRow>> {
        Sql::package("", submitter_id, package_id)
            .build_query_as::<DetailRow>()
            .fetch_optional(&self.pool)
            .await
            .map_err(QueryError::db("reading a package"))
    }

    /// Where a package's bytes are, if it is stored.
    pub async fn blob(&self, submitter_id: &str, package_id: Uuid) -> Result<Option<BlobRow>> {
        sqlx::query_as::<_, BlobRow>(
            "SELECT p.size_bytes, p.blob_key,
                    EXISTS (SELECT 1 FROM blob_expiries e WHERE e.sha256 = p.sha256) AS expired
             FROM packages p WHERE p.submitter_id = $1 AND p.package_id = $2",
        )
        .bind(submitter_id)
        .bind(package_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(QueryError::db("reading a package"))
    }

    /// The time of the first matching record in `[from, to)`.
    pub async fn first_record(
        &self,
        filter: &SeriesFilter,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>> {
        Sql::first_record("", filter, from, to)
            .build_query_scalar::<Option<OffsetDateTime>>()
            .fetch_one(&self.pool)
            .await
            .map_err(QueryError::db("finding the first record"))
    }

    /// Whether a matching record lies in `[from, to)`.
    pub async fn any_record(
        &self,
        filter: &SeriesFilter,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<bool> {
        Sql::any_record("", filter, from, to)
            .build_query_scalar::<bool>()
            .fetch_one(&self.pool)
            .await
            .map_err(QueryError::db("looking for more records"))
    }

    /// Aggregated buckets of `[from, to)`: from the rollups for buckets of
    /// whole hours ([`Sql::rollup_buckets`]) unless too many of its hours
    /// are marked ([`MARKED_SHARE`]), else from the records.
    pub async fn buckets(
        &self,
        filter: &SeriesFilter,
        agg: Aggregate,
        bucket_secs: u64,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<BucketRow>> {
        // Whole hours from the rollups where they are exact, the rest raw,
        // in one snapshot: the marked hours, then the statement that
        // depends on them. The records alone when too many are marked.
        let Some((a, b)) = rollup_hours(bucket_secs, from, to) else {
            return Sql::buckets("", filter, agg, bucket_secs, from, to, limit)
                .build_query_as::<BucketRow>()
                .fetch_all(&self.pool)
                .await
                .map_err(QueryError::db("aggregating records"));
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(QueryError::db("aggregating records"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .map_err(QueryError::db("aggregating records"))?;
        let most = (b - a).whole_hours() / MARKED_SHARE;
        let marked: Vec<OffsetDateTime> =
            Sql::marked_hours("", &filter.submitter_id, a, b, most + 1)
                .build_query_scalar()
                .fetch_all(&mut *tx)
                .await
                .map_err(QueryError::db("reading the marked hours"))?;
        let statement = if marked.len() as i64 <= most {
            Sql::rollup_buckets("", filter, agg, bucket_secs, from, to, &marked, limit)
        } else {
            None
        };
        let rows = statement
            .unwrap_or_else(|| Sql::buckets("", filter, agg, bucket_secs, from, to, limit))
            .build_query_as::<BucketRow>()
            .fetch_all(&mut *tx)
            .await
            .map_err(QueryError::db("aggregating records"))?;
        tx.commit()
            .await
            .map_err(QueryError::db("aggregating records"))?;
        Ok(rows)
    }
}

/// The plans of the statements above on a real PostgreSQL with the ingest
/// schema (its migration files, run as they are) and enough rows for the
/// planner to choose as it would in production. What they showed on
/// PostgreSQL 15 (plain, no Citus):
///
/// - list with a submitter: `Index Scan Backward using packages_received`,
///   `Index Cond: submitter_id = … AND ROW(received_at, package_id) < ROW(…)`,
///   under the `Limit`: a page reads `limit + 1` index entries at any depth;
/// - series: only the partitions the `[from, to)` range touches appear in
///   the plan (pruned at plan time), each read through its
///   `records_pYYYYMMDD_series` index with `submitter_id`, `series` and the
///   `ts` bounds as the index condition; `labels @>` is a filter on those
///   rows. The first record is an (Index Only) Scan Forward under a
///   `Limit 1`; the buckets a Bitmap Index Scan, then Sort and
///   GroupAggregate on `date_bin`; "more" a Bitmap Index Scan under `EXISTS`.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sqlx::Connection as _;
    use time::macros::datetime;

    async fn schema_with_rows() -> (String, sqlx::PgConnection) {
        let (name, url) = platform::testing::test_database().await;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no migrations in {dir}");
        for file in files {
            let sql = std::fs::read_to_string(&file).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        // 3 days of records: 20 submitters × 40 series, a row every 2.5 s;
        // 20,000 packages of 50 submitters.
        sqlx::raw_sql(
            "SELECT tallyhouse_ensure_partitions('2026-03-01T00:00:00Z', '2026-03-03T23:00:00Z');
             INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal)
             SELECT 'sub' || (i % 20), TIMESTAMPTZ '2026-03-01T00:00:00Z' + i * interval '2.5 seconds',
                    's' || (i % 40), i, jsonb_build_object('game', 'g' || (i % 5)),
                    '00000000-0000-4000-8000-000000000000', i
             FROM generate_series(0, 100000) AS i;
             INSERT INTO packages (submitter_id, package_id, sha256, size_bytes, record_count, key_id,
                                   signature, audience, created_at, received_at, blob_key, receipt)
             SELECT 'sub' || (i % 50), md5(i::text)::uuid, sha256(i::text::bytea), 100, 1, 'k',
                    '\\x00', 'local', TIMESTAMPTZ '2026-03-01T00:00:00Z' + i * interval '10 seconds',
                    TIMESTAMPTZ '2026-03-01T00:00:00Z' + i * interval '10 seconds', 'b', 'r'
             FROM generate_series(0, 19999) AS i;
             ANALYZE packages;
             ANALYZE records;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        (name, conn)
    }

    /// Every value of `key` anywhere in an EXPLAIN (FORMAT JSON) plan.
    fn collect(plan: &Value, key: &str, out: &mut Vec<String>) {
        match plan {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == key {
                        out.push(v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                    }
                    collect(v, key, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, key, out)),
            _ => {}
        }
    }

    fn all(plan: &Value, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        collect(plan, key, &mut out);
        out.sort();
        out.dedup();
        out
    }

    async fn explain(conn: &mut sqlx::PgConnection, mut qb: QueryBuilder<Postgres>) -> Value {
        qb.build_query_scalar::<Value>()
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    }

    const EXPLAIN: &str = "EXPLAIN (FORMAT JSON) ";

    #[tokio::test]
    async fn a_submitters_list_pages_backwards_through_packages_received() {
        let (db, mut conn) = schema_with_rows().await;
        let filter = ListFilter {
            submitter_id: Some("sub7".into()),
            from: Some(datetime!(2026-03-01 06:00 UTC)),
            to: None,
        };
        let deep = Position {
            received_at: datetime!(2026-03-02 12:00 UTC),
            submitter_id: "sub7".into(),
            package_id: Uuid::nil(),
        };
        for after in [None, Some(&deep)] {
            let plan = explain(&mut conn, Sql::list_packages(EXPLAIN, &filter, after, 101)).await;
            assert_eq!(all(&plan, "Index Name"), ["packages_received"], "{plan:#}");
            assert_eq!(all(&plan, "Scan Direction"), ["Backward"], "{plan:#}");
            assert!(
                !all(&plan, "Node Type").contains(&"Sort".to_owned()),
                "{plan:#}"
            );
        }
        drop(conn);
        platform::testing::drop_test_database(&db).await;
    }

    #[tokio::test]
    async fn series_statements_prune_partitions_and_use_the_series_index() {
        let (db, mut conn) = schema_with_rows().await;
        for labels in [None, Some(serde_json::json!({"game": "g3"}))] {
            let filter = SeriesFilter {
                submitter_id: "sub3".into(),
                series: "s3".into(),
                labels,
            };
            let (from, to) = (
                datetime!(2026-03-02 06:00 UTC),
                datetime!(2026-03-02 18:00 UTC),
            );
            for qb in [
                Sql::first_record(EXPLAIN, &filter, from, to),
                Sql::any_record(EXPLAIN, &filter, from, to),
                Sql::buckets(EXPLAIN, &filter, Aggregate::Avg, 3600, from, to, 100),
            ] {
                let plan = explain(&mut conn, qb).await;
                assert_eq!(
                    all(&plan, "Relation Name"),
                    ["records_p20260302"],
                    "{plan:#}"
                );
                assert_eq!(
                    all(&plan, "Index Name"),
                    ["records_p20260302_series"],
                    "{plan:#}"
                );
            }
        }
        drop(conn);
        platform::testing::drop_test_database(&db).await;
    }
}
