//! The checker: the history of what the clients sent and were told, against
//! what PostgreSQL (ingest's `packages` and `records`) and S3 (the
//! content-addressed blobs) hold afterwards. Categories as in Jepsen's
//! RabbitMQ checker: lost (acknowledged, not stored), duplicated (stored
//! more than once), unexpected (stored, never sent) and recovered (an
//! attempt failed, yet the package ended up stored after a retry).

use crate::load::{History, Outcome, Sent};
use platform::s3::{EvidenceStore, blob_key};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// When the fault was injected and healed, from the start of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeline {
    pub inject: Option<Duration>,
    /// When the fault ended (for a takeover, the moment it was injected:
    /// the survivor is the healing).
    pub heal: Option<Duration>,
    /// When new packages stopped.
    pub load_end: Duration,
}

/// The measured outcome of one run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub packages: u64,
    pub attempts: u64,
    pub acknowledged: u64,
    /// Acknowledged with 200: an earlier attempt had stored it (its answer
    /// was lost to the fault), the retry got the stored receipt.
    pub acknowledged_as_replay: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub recovered: u64,
    pub rows_without_blob: u64,
    /// Not acknowledged in the end (deadline or a final refusal).
    pub gave_up: u64,
    /// Of those, found stored anyway (indeterminate, not a loss).
    pub gave_up_stored: u64,
    /// Failed attempts by label.
    pub errors: BTreeMap<String, u64>,
    /// From the heal to the first acknowledgement after it.
    pub recovery_ms: Option<u64>,
    /// The longest time without any acknowledgement, from the injection to
    /// the end of the load.
    pub max_ack_gap_ms: Option<u64>,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// Blobs whose bytes were read back and hashed.
    pub blobs_verified: u64,
    /// Why the run fails, if it does.
    pub failures: Vec<String>,
    /// Scenario-specific figures.
    pub extra: serde_json::Map<String, Value>,
    pub notes: Vec<String>,
}

impl Verdict {
    /// Lost = duplicated = unexpected = 0, no row without its blob, and
    /// everything sent acknowledged in the end.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The per-scenario JSON object of the last line.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "pass": self.passed(),
            "packages": self.packages,
            "attempts": self.attempts,
            "acknowledged": self.acknowledged,
            "acknowledged_as_replay": self.acknowledged_as_replay,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "recovered": self.recovered,
            "rows_without_blob": self.rows_without_blob,
            "gave_up": self.gave_up,
            "gave_up_stored": self.gave_up_stored,
            "errors": self.errors,
            "errors_total": self.errors.values().sum::<u64>(),
            "recovery_ms": self.recovery_ms,
            "max_ack_gap_ms": self.max_ack_gap_ms,
            "latency_p50_ms": self.p50_ms,
            "latency_p99_ms": self.p99_ms,
            "latency_max_ms": self.max_ms,
            "blobs_verified": self.blobs_verified,
            "failures": self.failures,
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in &self.extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// Marks the run failed for `why`.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }
}

/// One stored package row.
struct Row {
    sha256_hex: String,
    record_count: i64,
    blob_key: String,
    rows: i64,
}

/// Reads ingest's tables through the superuser URL `db_url`, retrying for
/// up to a minute (the database may just have restarted).
async fn stored_rows(
    db_url: &str,
) -> anyhow::Result<(
    HashMap<(String, String), Row>,
    HashMap<(String, String), i64>,
)> {
    use sqlx::Connection as _;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match sqlx::PgConnection::connect(db_url).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < until => {
                eprintln!("chaos: checker: database not reachable yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("the checker cannot reach ingest's database: {e}"),
        }
    };
    let rows: Vec<(String, String, String, i32, String, i64)> = sqlx::query_as(
        "SELECT submitter_id, package_id::text, min(encode(sha256, 'hex')), min(record_count), \
         min(blob_key), count(*) FROM packages GROUP BY submitter_id, package_id",
    )
    .fetch_all(&mut conn)
    .await?;
    let records: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT submitter_id, package_id::text, count(*) FROM records GROUP BY submitter_id, package_id",
    )
    .fetch_all(&mut conn)
    .await?;
    let _ = conn.close().await;
    let rows = rows
        .into_iter()
        .map(|(s, p, sha, n, key, count)| {
            (
                (s, p),
                Row {
                    sha256_hex: sha,
                    record_count: i64::from(n),
                    blob_key: key,
                    rows: count,
                },
            )
        })
        .collect();
    let records = records.into_iter().map(|(s, p, n)| ((s, p), n)).collect();
    Ok((rows, records))
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Compares `history` with the database at `db_url` and the bucket of
/// `blobs`; reads back and hashes up to `verify_blobs` blobs.
pub async fn check(
    history: &History,
    timeline: Timeline,
    db_url: &str,
    blobs: &EvidenceStore,
    verify_blobs: usize,
) -> anyhow::Result<Verdict> {
    let sent: Vec<Sent> = history.snapshot();
    let (rows, records) = stored_rows(db_url).await?;
    let keys: HashSet<String> = {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match blobs.list_keys("").await {
                Ok(keys) => break keys.into_iter().collect(),
                Err(e) if tokio::time::Instant::now() < until => {
                    eprintln!("chaos: checker: cannot list the bucket yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => anyhow::bail!("the checker cannot list the bucket: {e}"),
            }
        }
    };
    let mut v = Verdict::default();
    let mut sent_ids = HashSet::new();
    for s in &sent {
        v.packages += 1;
        v.attempts += s.attempts.len() as u64;
        let id = (s.submitter_id.clone(), s.package_id.to_string());
        sent_ids.insert(id.clone());
        let row = rows.get(&id);
        let stored_records = records.get(&id).copied().unwrap_or(0);
        let stored_intact = row.is_some_and(|r| {
            r.sha256_hex == s.sha256_hex
                && r.record_count == s.records as i64
                && stored_records >= r.record_count
        });
        if let Some(r) = row
            && (r.rows > 1 || stored_records > r.record_count)
        {
            v.duplicated += 1;
        }
        let failed_attempts = s
            .attempts
            .iter()
            .any(|a| matches!(a.outcome, Outcome::Failed { .. }));
        if s.acked {
            v.acknowledged += 1;
            if s.attempts
                .iter()
                .any(|a| matches!(a.outcome, Outcome::Stored(200)))
            {
                v.acknowledged_as_replay += 1;
            }
            if !stored_intact {
                v.lost += 1;
                if let Some(r) = row {
                    v.notes.push(format!(
                        "package {} stored but not as sent (sha256 {} vs {}, records {}/{} vs {})",
                        s.package_id,
                        r.sha256_hex,
                        s.sha256_hex,
                        stored_records,
                        r.record_count,
                        s.records
                    ));
                }
            } else if failed_attempts {
                v.recovered += 1;
            }
        } else {
            v.gave_up += 1;
            if row.is_some() {
                v.gave_up_stored += 1;
            }
        }
    }
    // Records of a package that has no row (one transaction writes both,
    // so there should be none).
    for id in records.keys() {
        if !rows.contains_key(id) {
            v.unexpected += 1;
            v.notes
                .push(format!("records of {id:?} without a package row"));
        }
    }
    for (id, r) in &rows {
        if !sent_ids.contains(id) {
            v.unexpected += 1;
        }
        if r.blob_key != blob_key(&r.sha256_hex) || !keys.contains(&r.blob_key) {
            v.rows_without_blob += 1;
        }
    }
    // Content addressing: read some blobs back and hash them.
    let mut verified = 0;
    let step = (rows.len() / verify_blobs.max(1)).max(1);
    for r in rows.values().step_by(step).take(verify_blobs) {
        if !keys.contains(&r.blob_key) {
            continue;
        }
        match blobs.get_blob(&r.blob_key).await {
            Ok(Some(bytes)) => {
                if evidence::keys::sha256_hex(&bytes) != r.sha256_hex {
                    v.fail(format!("blob {} does not hash to its name", r.blob_key));
                }
                verified += 1;
            }
            Ok(None) => v.fail(format!("blob {} listed but not readable", r.blob_key)),
            Err(e) => v
                .notes
                .push(format!("reading blob {} failed: {e}", r.blob_key)),
        }
    }
    v.blobs_verified = verified;
    v.errors = history.errors();

    let acks = history.acks();
    let mut latencies: Vec<u64> = acks.iter().map(|(_, l)| l.as_millis() as u64).collect();
    latencies.sort_unstable();
    v.p50_ms = percentile(&latencies, 0.5);
    v.p99_ms = percentile(&latencies, 0.99);
    v.max_ms = latencies.last().copied();
    if let Some(heal) = timeline.heal {
        v.recovery_ms = acks
            .iter()
            .find(|(at, _)| *at >= heal)
            .map(|(at, _)| (*at - heal).as_millis() as u64);
    }
    if let Some(inject) = timeline.inject {
        let mut last = inject;
        let mut gap = Duration::ZERO;
        for (at, _) in acks.iter().filter(|(at, _)| *at >= inject) {
            gap = gap.max(*at - last);
            last = *at;
        }
        gap = gap.max(timeline.load_end.saturating_sub(last));
        v.max_ack_gap_ms = Some(gap.as_millis() as u64);
    }

    // A valid package never gets an unexpected server error, fault or no
    // fault: unavailability is 503/504, and a 500 is a bug (the new-days
    // partition race was one: 42P07 under concurrent first writes to a day).
    let internal: u64 = v
        .errors
        .iter()
        .filter(|(label, _)| label.starts_with("500 ") || label.starts_with("501 "))
        .map(|(_, n)| n)
        .sum();
    if internal > 0 {
        v.fail(format!(
            "{internal} attempts answered 500/501: a valid package must never get an unexpected server error (ingest's log has the cause under the trace id)"
        ));
    }
    if v.lost > 0 {
        v.fail(format!("{} acknowledged packages lost", v.lost));
    }
    if v.duplicated > 0 {
        v.fail(format!("{} packages stored more than once", v.duplicated));
    }
    if v.unexpected > 0 {
        v.fail(format!(
            "{} packages stored that were never sent",
            v.unexpected
        ));
    }
    if v.rows_without_blob > 0 {
        v.fail(format!(
            "{} package rows without their blob",
            v.rows_without_blob
        ));
    }
    if v.gave_up > 0 {
        v.fail(format!(
            "{} packages never acknowledged (the platform did not recover in time, or refused them)",
            v.gave_up
        ));
    }
    if v.packages == 0 {
        v.fail("no package was sent");
    }
    if timeline.heal.is_some() && v.recovery_ms.is_none() {
        v.fail("no acknowledgement after the heal");
    }
    Ok(v)
}
