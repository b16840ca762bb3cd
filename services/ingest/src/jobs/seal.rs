//! Seals: the `seal` job fingerprints each daily partition once it has left
//! the write window (no record can be accepted for its day any more), and
//! `verify-seals` recomputes the fingerprints and reports any difference.
//!
//! A seal is the partition's row count and a SHA-256 digest over its rows in
//! a canonical order and encoding ([`ALGORITHM`], specified here and in
//! docs/lifecycle.md so that an archive can be checked without PostgreSQL):
//!
//! ```text
//! digest = SHA-256( "tallyhouse-seal-v1\n" || row_1 || row_2 || … )
//! rows ordered by (submitter_id in byte order, package_id, ordinal)
//! row    = str(submitter_id) || package_id (16 bytes) || ordinal (i32 BE)
//!          || ts (i64 BE, microseconds since 1970-01-01T00:00:00Z)
//!          || str(series) || value (IEEE 754 binary64 bits, BE)
//!          || str(canonical JSON of labels)
//! str(s) = byte length (u32 BE) || UTF-8 bytes
//! canonical JSON: no whitespace, object keys sorted by their UTF-8 bytes,
//! strings escaped as serde_json writes them, arrays in order.
//! ```

use crate::jobs::partitions::{self, Partition};
use crate::jobs::{JobConfig, Report};
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, Row as _};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The name of the seal algorithm, stored with each seal.
pub const ALGORITHM: &str = "tallyhouse-seal-v1";

/// The rows of a partition as the digest reads them (through the parent, so
/// any role with SELECT on `records` can compute it), in canonical order.
pub const ROWS: &str = "SELECT submitter_id, package_id, ordinal, ts, series, value, labels
     FROM records WHERE ts >= $1 AND ts < $2
     ORDER BY submitter_id COLLATE \"C\", package_id, ordinal";

/// One record as the digest sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealRow {
    pub submitter_id: String,
    pub package_id: Uuid,
    pub ordinal: i32,
    pub ts: OffsetDateTime,
    pub series: String,
    pub value: f64,
    pub labels: Value,
}

/// A running digest over rows fed in canonical order.
pub struct Digest {
    hasher: Sha256,
    rows: i64,
    buf: Vec<u8>,
}

impl Default for Digest {
    fn default() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(ALGORITHM.as_bytes());
        hasher.update(b"\n");
        Self {
            hasher,
            rows: 0,
            buf: Vec::with_capacity(256),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// `v` as canonical JSON (see the module documentation).
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            out.extend_from_slice(v.to_string().as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                canonical_json(&map[key], out);
            }
            out.push(b'}');
        }
    }
}

impl Digest {
    /// Feeds the next row.
    pub fn update(&mut self, row: &SealRow) {
        let buf = &mut self.buf;
        buf.clear();
        put_str(buf, row.submitter_id.as_bytes());
        buf.extend_from_slice(row.package_id.as_bytes());
        buf.extend_from_slice(&row.ordinal.to_be_bytes());
        let micros = (row.ts.unix_timestamp_nanos() / 1000) as i64;
        buf.extend_from_slice(&micros.to_be_bytes());
        put_str(buf, row.series.as_bytes());
        buf.extend_from_slice(&row.value.to_bits().to_be_bytes());
        let mut labels = Vec::with_capacity(64);
        canonical_json(&row.labels, &mut labels);
        put_str(buf, &labels);
        self.hasher.update(&*buf);
        self.rows += 1;
    }

    /// The row count and the digest.
    pub fn finish(self) -> (i64, [u8; 32]) {
        (self.rows, self.hasher.finalize().into())
    }
}

/// The row count and digest of `[from, to)` (a partition's range), reading
/// the rows as a stream.
pub async fn compute(
    conn: &mut PgConnection,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> anyhow::Result<(i64, [u8; 32])> {
    let mut digest = Digest::default();
    let mut rows = sqlx::query(ROWS).bind(from).bind(to).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        digest.update(&decode(&row)?);
    }
    Ok(digest.finish())
}

/// A row of [`ROWS`].
pub fn decode(row: &sqlx::postgres::PgRow) -> Result<SealRow, sqlx::Error> {
    Ok(SealRow {
        submitter_id: row.try_get(0)?,
        package_id: row.try_get(1)?,
        ordinal: row.try_get(2)?,
        ts: row.try_get(3)?,
        series: row.try_get(4)?,
        value: row.try_get(5)?,
        labels: row.try_get(6)?,
    })
}

/// Records the seal of `p`; a seal already there is kept (answers whether
/// this one was written).
pub async fn insert(
    conn: &mut PgConnection,
    p: &Partition,
    rows: i64,
    digest: &[u8; 32],
    run_id: i64,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO partition_seals (partition_name, range_from, range_to, row_count, digest, algorithm, sealed_at, run_id)
         VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp(), $7)
         ON CONFLICT (partition_name) DO NOTHING",
    )
    .bind(&p.name)
    .bind(p.from())
    .bind(p.to())
    .bind(rows)
    .bind(digest.as_slice())
    .bind(ALGORITHM)
    .bind(run_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The `seal` job: seals, oldest first and at most `seal_max_partitions`,
/// the partitions that left the write window (their day ended more than
/// `record_max_age_days` days and an hour before `now`: ingest refuses
/// records older than that) and have no seal yet.
pub async fn run_seal(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    run_id: i64,
) -> anyhow::Result<Report> {
    let window_end =
        now - Duration::days(i64::from(config.record_max_age_days)) - Duration::hours(1);
    let sealed: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT partition_name FROM partition_seals")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let due: Vec<Partition> = partitions::list(conn)
        .await?
        .into_iter()
        .filter(|p| p.to() <= window_end && !sealed.contains(&p.name))
        .collect();
    let mut done = Vec::new();
    for p in due.iter().take(config.seal_max_partitions as usize) {
        let (rows, digest) = compute(conn, p.from(), p.to()).await?;
        // A re-run after a crash finds the seal there and keeps it.
        if insert(conn, p, rows, &digest, run_id).await? {
            tracing::info!(partition = %p.name, rows, digest = %hex::encode(digest), "partition sealed");
            done.push(json!({ "partition": p.name, "rows": rows, "digest": hex::encode(digest) }));
        }
    }
    let pending = due.len().saturating_sub(done.len());
    Ok(Report::new(
        done.len() as i64,
        json!({
            "sealed": done,
            "pending": pending,
            "window_end": window_end.unix_timestamp(),
        }),
    ))
}

/// The `verify-seals` job: re-checks at most `verify_max_partitions` seals,
/// the least recently checked first, and records each check: `ok`,
/// `mismatch` (another row count or digest: logged as an error with
/// `alert = "seal_mismatch"`; the metric and alert read the checks) or
/// `missing` (the partition no longer exists).
pub async fn run_verify(
    conn: &mut PgConnection,
    config: &JobConfig,
    run_id: i64,
) -> anyhow::Result<Report> {
    type SealLine = (String, OffsetDateTime, OffsetDateTime, i64, Vec<u8>, String);
    let seals: Vec<SealLine> = sqlx::query_as(
        "SELECT s.partition_name, s.range_from, s.range_to, s.row_count, s.digest, s.algorithm
         FROM partition_seals s
         LEFT JOIN LATERAL (
             SELECT check_id FROM seal_checks c
             WHERE c.partition_name = s.partition_name
             ORDER BY check_id DESC LIMIT 1
         ) last ON TRUE
         -- An archived and dropped partition is checked by its archive.
         WHERE NOT EXISTS (
             SELECT 1 FROM partition_archives a
             WHERE a.partition_name = s.partition_name AND a.state = 'dropped'
         )
         ORDER BY last.check_id NULLS FIRST, s.range_from
         LIMIT $1",
    )
    .bind(i64::from(config.verify_max_partitions))
    .fetch_all(&mut *conn)
    .await?;
    let mut ok = 0;
    let mut mismatched = Vec::new();
    let mut missing = Vec::new();
    for (name, from, to, rows, digest, algorithm) in &seals {
        anyhow::ensure!(
            algorithm == ALGORITHM,
            "seal of {name} uses {algorithm}, this build computes {ALGORITHM}"
        );
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        let (status, found) = if exists {
            let (found_rows, found_digest) = compute(conn, *from, *to).await?;
            let status = if found_rows == *rows && found_digest.as_slice() == digest.as_slice() {
                "ok"
            } else {
                "mismatch"
            };
            (status, Some((found_rows, found_digest)))
        } else {
            ("missing", None)
        };
        sqlx::query(
            "INSERT INTO seal_checks (partition_name, checked_at, status, row_count, digest, run_id)
             VALUES ($1, clock_timestamp(), $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(status)
        .bind(found.map(|f| f.0))
        .bind(found.map(|f| f.1.to_vec()))
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
        match (status, found) {
            ("ok", _) => ok += 1,
            ("mismatch", Some((found_rows, found_digest))) => {
                tracing::error!(
                    alert = "seal_mismatch",
                    partition = %name,
                    sealed_rows = rows,
                    found_rows,
                    sealed_digest = %hex::encode(digest),
                    found_digest = %hex::encode(found_digest),
                    "a sealed partition no longer matches its seal: its rows were changed"
                );
                mismatched.push(json!({
                    "partition": name,
                    "sealed_rows": rows,
                    "found_rows": found_rows,
                    "sealed_digest": hex::encode(digest),
                    "found_digest": hex::encode(found_digest),
                }));
            }
            _ => {
                tracing::error!(alert = "seal_missing", partition = %name, "a sealed partition no longer exists");
                missing.push(json!(name));
            }
        }
    }
    Ok(Report::new(
        seals.len() as i64,
        json!({
            "verified": seals.len(),
            "ok": ok,
            "mismatched": mismatched,
            "missing": missing,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn row(labels: Value) -> SealRow {
        SealRow {
            submitter_id: "acme".into(),
            package_id: Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
            ordinal: 3,
            ts: datetime!(2026-03-01 12:00:00.000001 UTC),
            series: "bets.stake".into(),
            value: 12.5,
            labels,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let mut out = Vec::new();
        canonical_json(
            &json!({"b": "2", "a": {"z": [1, "x\"y"], "é": null}, "A": true}),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"A":true,"a":{"z":[1,"x\"y"],"é":null},"b":"2"}"#
        );
    }

    #[test]
    fn the_digest_is_fixed_by_the_specification() {
        // Pinned: a change of the encoding must change ALGORITHM.
        let mut d = Digest::default();
        d.update(&row(json!({"game": "poker", "desk": "a"})));
        d.update(&row(json!({})));
        let (rows, digest) = d.finish();
        assert_eq!(rows, 2);
        let mut expected = Sha256::new();
        expected.update(b"tallyhouse-seal-v1\n");
        for labels in [r#"{"desk":"a","game":"poker"}"#, "{}"] {
            expected.update(4u32.to_be_bytes());
            expected.update(b"acme");
            expected.update(0x0123_4567_89ab_4def_8123_4567_89ab_cdef_u128.to_be_bytes());
            expected.update(3i32.to_be_bytes());
            expected.update(1_772_366_400_000_001i64.to_be_bytes());
            expected.update(10u32.to_be_bytes());
            expected.update(b"bets.stake");
            expected.update(12.5f64.to_bits().to_be_bytes());
            expected.update((labels.len() as u32).to_be_bytes());
            expected.update(labels.as_bytes());
        }
        assert_eq!(digest, <[u8; 32]>::from(expected.finalize()));
    }

    #[test]
    fn any_change_of_a_row_changes_the_digest() {
        let digest = |r: SealRow| {
            let mut d = Digest::default();
            d.update(&r);
            d.finish().1
        };
        let base = digest(row(json!({"game": "poker"})));
        let mut changed = row(json!({"game": "poker"}));
        changed.value = 12.500000000000002;
        assert_ne!(digest(changed), base);
        assert_ne!(digest(row(json!({"game": "Poker"}))), base);
        let mut later = row(json!({"game": "poker"}));
        later.ts += Duration::microseconds(1);
        assert_ne!(digest(later), base);
        // Key order in the stored JSON does not matter.
        let reordered: Value = serde_json::from_str(r#"{"game":"poker"}"#).unwrap();
        assert_eq!(digest(row(reordered)), base);
    }
}
