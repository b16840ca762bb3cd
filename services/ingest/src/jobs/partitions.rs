//! The `records` daily partitions: the list of them ([`list`]), and the
//! `partitions-ahead` job, whose one function [`ensure_ahead`] `ingest
//! migrate` calls too. Partitions are named `records_pYYYYMMDD` and hold
//! `[day, day + 1)` in UTC; `tallyhouse_ensure_partitions` (migration 0001)
//! creates them with their index and TRUNCATE trigger.

use crate::jobs::{JobConfig, Report};
use serde_json::json;
use sqlx::PgConnection;
use time::{Date, Duration, OffsetDateTime, Time};

/// One daily partition of `records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `records_pYYYYMMDD`.
    pub name: String,
    /// Its day (UTC).
    pub day: Date,
    /// Its table access method (`heap`, `columnar`).
    pub access_method: String,
}

impl Partition {
    /// The first instant it holds.
    pub fn from(&self) -> OffsetDateTime {
        self.day.with_time(Time::MIDNIGHT).assume_utc()
    }

    /// The first instant after it.
    pub fn to(&self) -> OffsetDateTime {
        self.from() + Duration::days(1)
    }
}

/// The partition name of `day`.
pub fn name_of(day: Date) -> String {
    format!(
        "records_p{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// The day of a partition name, if it is one of ours.
pub fn day_of(name: &str) -> Option<Date> {
    let digits = name.strip_prefix("records_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// Every daily partition of `records`, oldest first. Partitions whose name
/// is not `records_pYYYYMMDD` are left out (and logged): the jobs touch
/// only the partitions the schema made.
pub async fn list(conn: &mut PgConnection) -> anyhow::Result<Vec<Partition>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, coalesce(a.amname::text, '')
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         LEFT JOIN pg_am a ON a.oid = c.relam
         WHERE i.inhparent = 'records'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, access_method) in rows {
        match day_of(&name) {
            Some(day) => out.push(Partition {
                name,
                day,
                access_method,
            }),
            None => {
                tracing::warn!(partition = %name, "a partition of records not named records_pYYYYMMDD: left alone")
            }
        }
    }
    out.sort_by_key(|p| p.day);
    Ok(out)
}

/// What [`ensure_ahead`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahead {
    /// Partitions it created.
    pub created: i32,
    /// The last day that now has a partition (today + the horizon).
    pub until: Date,
}

/// Makes sure a partition exists for every day from two days before `now`
/// to `days` days after it, then checks that every day from today to the
/// horizon has one. Idempotent. `ingest migrate` and the job both call it.
pub async fn ensure_ahead(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    days: u32,
) -> anyhow::Result<Ahead> {
    let from = now - Duration::days(2);
    let to = now + Duration::days(i64::from(days));
    let created: i32 = sqlx::query_scalar("SELECT tallyhouse_ensure_partitions($1, $2)")
        .bind(from)
        .bind(to)
        .fetch_one(&mut *conn)
        .await?;
    let existing: std::collections::HashSet<Date> =
        list(conn).await?.into_iter().map(|p| p.day).collect();
    let today = now.to_offset(time::UtcOffset::UTC).date();
    let until = to.to_offset(time::UtcOffset::UTC).date();
    let missing: Vec<String> = std::iter::successors(Some(today), |d| d.next_day())
        .take_while(|d| *d <= until)
        .filter(|d| !existing.contains(d))
        .map(name_of)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "partitions still missing after creating them: {}",
        missing.join(", ")
    );
    Ok(Ahead { created, until })
}

/// The `partitions-ahead` job.
pub async fn run(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
) -> anyhow::Result<Report> {
    let ahead = ensure_ahead(conn, now, config.partitions_ahead_days).await?;
    tracing::info!(
        created = ahead.created,
        until = %ahead.until,
        horizon_days = config.partitions_ahead_days,
        "partitions ahead"
    );
    Ok(Report::new(
        i64::from(ahead.created),
        json!({
            "created": ahead.created,
            "horizon_days": config.partitions_ahead_days,
            "until": name_of(ahead.until),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn partition_names_and_days_round_trip() {
        let day = date!(2026 - 03 - 09);
        assert_eq!(name_of(day), "records_p20260309");
        assert_eq!(day_of("records_p20260309"), Some(day));
        for other in [
            "records_p2026030",
            "records_p20261301",
            "records_default",
            "x_p20260309",
        ] {
            assert_eq!(day_of(other), None, "{other}");
        }
        let p = Partition {
            name: name_of(day),
            day,
            access_method: "heap".into(),
        };
        assert_eq!(p.to() - p.from(), Duration::days(1));
    }
}
