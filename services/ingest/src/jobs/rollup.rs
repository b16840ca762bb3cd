//! The `rollup` job: brings `rollup_hourly` and `rollup_daily` up to date
//! (count, sum, min and max of the records per submitter, series, label set
//! and bucket).
//!
//! Maintained incrementally, from markers: the trigger of migration 0002
//! writes a `rollup_dirty (submitter_id, hour)` row for every hour an INSERT
//! or COPY into `records` touched, in the inserting transaction. A run
//! takes the markers of closed hours (before the hour holding `now`), a
//! batch of hours per transaction, and in that same transaction recomputes
//! those (submitter, hour) rows from the records and the days they fall in
//! from the hourly rows. Recomputing rather than adding makes a batch
//! idempotent (a crash rolls the batch back, markers included, and the next
//! run does it again), and late records (ingest accepts records up to
//! `--record-max-age-days` old) simply mark their old hour again.
//!
//! The invariant the query service relies on: an hourly row is exact when
//! no marker exists for its (submitter, hour), a daily row when none exists
//! for any hour of its day. A marker becomes visible with its records and
//! disappears only in the transaction that recomputed its hour from a
//! snapshot holding those records; markers of transactions still in flight
//! are invisible to the job, so it leaves them for the next run.
//!
//! Why not a watermark of closed hours alone: records arrive late, so an
//! hour closed once is not closed for good. Why not update rollups at
//! insert: every package would update the same hot rows (one per submitter,
//! series and hour), serialising concurrent ingest transactions; a marker is
//! an append with no unique index.

use crate::jobs::{JobConfig, Report};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use time::{Duration, OffsetDateTime};

/// The start of the hour holding `t` (hours aligned on the Unix epoch).
pub fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    let secs = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(secs - secs.rem_euclid(3600))
        .expect("an hour start within range")
}

/// The `rollup` job.
pub async fn run(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
) -> anyhow::Result<Report> {
    let closed = hour_of(now);
    let mut pairs_total: i64 = 0;
    let mut batches = 0;
    let mut first_hour: Option<OffsetDateTime> = None;
    let mut last_hour: Option<OffsetDateTime> = None;
    loop {
        let mut tx = conn.begin().await?;
        // A batch is a window of at most `rollup_batch_hours` from the
        // oldest marked closed hour, so that one statement never reads far
        // apart hours (a late record in an old hour is a batch of its own).
        let oldest: Option<OffsetDateTime> =
            sqlx::query_scalar("SELECT min(hour) FROM rollup_dirty WHERE hour < $1")
                .bind(closed)
                .fetch_one(&mut *tx)
                .await?;
        let Some(lo) = oldest else {
            break;
        };
        let hi = closed.min(lo + Duration::hours(i64::from(config.rollup_batch_hours)));
        let last = hi - Duration::hours(1);
        // Takes the markers this transaction can see; those of ingest
        // transactions still in flight stay for the next run.
        let taken: Vec<(String, OffsetDateTime)> = sqlx::query_as(
            "WITH taken AS (
                 DELETE FROM rollup_dirty WHERE hour >= $1 AND hour < $2
                 RETURNING submitter_id, hour
             )
             SELECT DISTINCT submitter_id, hour FROM taken",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
        let (subs, hrs): (Vec<String>, Vec<OffsetDateTime>) = taken.into_iter().unzip();
        sqlx::query(
            "DELETE FROM rollup_hourly h
             USING unnest($1::text[], $2::timestamptz[]) AS d(s, hr)
             WHERE h.submitter_id = d.s AND h.bucket = d.hr",
        )
        .bind(&subs)
        .bind(&hrs)
        .execute(&mut *tx)
        .await?;
        // The constant bounds prune the partitions at plan time to the
        // batch's days, and select the batch's hours through each
        // partition's BRIN index on ts (one pass over the window's rows);
        // the per-pair conditions let a few pairs use the series index.
        sqlx::query(
            "INSERT INTO rollup_hourly (submitter_id, series, labels, bucket, n, sum, min, max)
             SELECT r.submitter_id, r.series, r.labels, d.hr, count(*), sum(r.value), min(r.value), max(r.value)
             FROM unnest($1::text[], $2::timestamptz[]) AS d(s, hr)
             JOIN records r ON r.submitter_id = d.s
                           AND date_bin('3600 seconds', r.ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') = d.hr
                           AND r.ts >= d.hr AND r.ts < d.hr + interval '3600 seconds'
             WHERE r.ts >= $3 AND r.ts < $4
             GROUP BY r.submitter_id, r.series, r.labels, d.hr",
        )
        .bind(&subs)
        .bind(&hrs)
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM rollup_daily r
             USING (SELECT DISTINCT s, date_bin('86400 seconds', hr, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS day
                    FROM unnest($1::text[], $2::timestamptz[]) AS d(s, hr)) d
             WHERE r.submitter_id = d.s AND r.bucket = d.day",
        )
        .bind(&subs)
        .bind(&hrs)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO rollup_daily (submitter_id, series, labels, bucket, n, sum, min, max)
             SELECT h.submitter_id, h.series, h.labels, d.day, sum(h.n), sum(h.sum), min(h.min), max(h.max)
             FROM (SELECT DISTINCT s, date_bin('86400 seconds', hr, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS day
                   FROM unnest($1::text[], $2::timestamptz[]) AS d(s, hr)) d
             JOIN rollup_hourly h ON h.submitter_id = d.s
                                 AND h.bucket >= d.day AND h.bucket < d.day + interval '86400 seconds'
             GROUP BY h.submitter_id, h.series, h.labels, d.day",
        )
        .bind(&subs)
        .bind(&hrs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        batches += 1;
        pairs_total += subs.len() as i64;
        first_hour = first_hour.or(Some(lo));
        last_hour = Some(last);
        tracing::info!(
            from = lo.unix_timestamp(),
            to = hi.unix_timestamp(),
            submitter_hours = subs.len(),
            "rollups recomputed for a batch of hours"
        );
    }
    let pending_open: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT hour) FROM rollup_dirty WHERE hour >= $1")
            .bind(closed)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Report::new(
        pairs_total,
        json!({
            "submitter_hours": pairs_total,
            "batches": batches,
            "first_hour": first_hour.map(OffsetDateTime::unix_timestamp),
            "last_hour": last_hour.map(OffsetDateTime::unix_timestamp),
            "closed_before": closed.unix_timestamp(),
            "open_hours_waiting": pending_open,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn hours_are_aligned_on_the_epoch() {
        assert_eq!(
            hour_of(datetime!(2026-03-01 12:59:59.9 UTC)),
            datetime!(2026-03-01 12:00 UTC)
        );
        assert_eq!(
            hour_of(datetime!(2026-03-01 13:00 UTC)),
            datetime!(2026-03-01 13:00 UTC)
        );
        assert_eq!(
            hour_of(datetime!(2026-03-01 13:30 +02:00)),
            datetime!(2026-03-01 11:00 UTC)
        );
    }
}
