//! What the long-running ingest service exports about the lifecycle jobs.
//!
//! The jobs are short-lived processes (Nomad periodic batch jobs) that a
//! scrape would rarely catch, so they export nothing themselves: each run is
//! recorded in `job_runs` (and seals, checks and conversions in their own
//! tables), and `ingest serve` reads those tables every
//! [`REFRESH_INTERVAL`] into the gauges below, served with its other
//! metrics. A value is therefore at most that old; the jobs run every few
//! minutes at the most, so that is no loss. The names are stable: the alert
//! rules (grafana/alerts/) read them.
//!
//! * `tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job}`: end of
//!   the job's last successful run, 0 when it has never succeeded (every
//!   job, always: read from `job_runs` at start-up, so a restarted ingest
//!   shows successes from before its start at once). The "stopped" alert
//!   counts a job at 0 from `process_start_time_seconds`.
//! * `tallyhouse_lifecycle_job_last_run_failed{lifecycle_job}`: 1 when its last
//!   finished run failed or was abandoned, else 0 (every job, always).
//! * `tallyhouse_lifecycle_job_last_duration_seconds{lifecycle_job}`,
//!   `tallyhouse_lifecycle_job_last_items{lifecycle_job}`: of its last finished run.
//! * `tallyhouse_lifecycle_job_running{lifecycle_job}`: 1 while a run is recorded as
//!   running.
//! * `tallyhouse_lifecycle_sealed_partitions`: partitions with a seal.
//! * `tallyhouse_lifecycle_seal_mismatched_partitions`: sealed partitions
//!   whose latest check found other rows than the seal (the alert).
//! * `tallyhouse_lifecycle_seal_missing_partitions`: sealed partitions whose
//!   latest check found them gone.
//! * `tallyhouse_lifecycle_columnar_compression_ratio{partition}`: size
//!   before / size after the conversion to columnar, per converted partition.
//! * `tallyhouse_lifecycle_rollup_lag_seconds`: how long ago the oldest
//!   closed hour still waiting for the rollup job ended (0 when none waits).
//! * `tallyhouse_lifecycle_metrics_refresh_failures_total`: refreshes that
//!   could not read the tables (the gauges keep their previous values).

use crate::jobs::JobName;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the tables are read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15);

type FloatGauge = Gauge<f64, AtomicU64>;

/// A job label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct JobLabel(JobName);

impl EncodeLabelValue for JobLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

/// `lifecycle_job`, not `job`: Prometheus gives `job` to the scrape target.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    lifecycle_job: JobLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

/// The lifecycle gauges (cheap to clone: handles to shared values).
#[derive(Clone)]
pub struct JobMetrics {
    last_success: Family<JobLabels, FloatGauge>,
    last_failed: Family<JobLabels, Gauge>,
    last_duration: Family<JobLabels, FloatGauge>,
    last_items: Family<JobLabels, Gauge>,
    running: Family<JobLabels, Gauge>,
    sealed: Gauge,
    mismatched: Gauge,
    missing: Gauge,
    compression: Family<PartitionLabels, FloatGauge>,
    rollup_lag: FloatGauge,
    archived: Gauge,
    archive_bytes: Gauge,
    restored: Gauge,
    refresh_failures: Counter,
}

/// One job's last runs, as read from `job_runs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobState {
    pub last_success_unix: Option<f64>,
    pub last_failed: bool,
    pub last_duration_secs: Option<f64>,
    pub last_items: Option<i64>,
    pub running: bool,
}

/// Everything the gauges show, as read from the tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub jobs: Vec<(JobName, JobState)>,
    pub sealed: i64,
    pub mismatched: i64,
    pub missing: i64,
    pub compression: Vec<(String, f64)>,
    pub rollup_lag_secs: f64,
    /// Partitions with a verified archive (dropped or not).
    pub archived: i64,
    /// Bytes of their data objects in the archive bucket.
    pub archive_bytes: i64,
    /// Archived partitions restored and present.
    pub restored: i64,
}

impl JobMetrics {
    /// The gauges, registered under `tallyhouse_lifecycle_*` in `registry`;
    /// every job's `last_success_timestamp` (never), `last_run_failed` and
    /// `running` start at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            last_success: Family::default(),
            last_failed: Family::default(),
            last_duration: Family::default(),
            last_items: Family::default(),
            running: Family::default(),
            sealed: Gauge::default(),
            mismatched: Gauge::default(),
            missing: Gauge::default(),
            compression: Family::default(),
            rollup_lag: FloatGauge::default(),
            archived: Gauge::default(),
            archive_bytes: Gauge::default(),
            restored: Gauge::default(),
            refresh_failures: Counter::default(),
        };
        for job in JobName::ALL {
            let labels = JobLabels {
                lifecycle_job: JobLabel(job),
            };
            m.last_success.get_or_create(&labels).set(0.0);
            m.last_failed.get_or_create(&labels).set(0);
            m.running.get_or_create(&labels).set(0);
        }
        let sub = registry.sub_registry_with_prefix("tallyhouse_lifecycle");
        sub.register_with_unit(
            "job_last_success_timestamp",
            "End of the job's last successful run (Unix time; 0 when it never succeeded)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        sub.register(
            "job_last_run_failed",
            "1 when the job's last finished run failed or was abandoned",
            m.last_failed.clone(),
        );
        sub.register_with_unit(
            "job_last_duration",
            "Duration of the job's last finished run",
            Unit::Seconds,
            m.last_duration.clone(),
        );
        sub.register(
            "job_last_items",
            "What the job's last finished run processed (partitions, seals, submitter-hours)",
            m.last_items.clone(),
        );
        sub.register(
            "job_running",
            "1 while a run of the job is recorded as running",
            m.running.clone(),
        );
        sub.register(
            "sealed_partitions",
            "Partitions of records with a seal",
            m.sealed.clone(),
        );
        sub.register(
            "seal_mismatched_partitions",
            "Sealed partitions whose latest check found rows other than the seal's",
            m.mismatched.clone(),
        );
        sub.register(
            "seal_missing_partitions",
            "Sealed partitions whose latest check found them gone",
            m.missing.clone(),
        );
        sub.register(
            "columnar_compression_ratio",
            "Size before / size after the conversion to columnar, per partition",
            m.compression.clone(),
        );
        sub.register_with_unit(
            "rollup_lag",
            "How long ago the oldest closed hour still waiting for the rollup job ended (0 when none)",
            Unit::Seconds,
            m.rollup_lag.clone(),
        );
        sub.register(
            "archived_partitions",
            "Partitions of records with a verified archive in the archive bucket",
            m.archived.clone(),
        );
        sub.register_with_unit(
            "archive",
            "Size of the archived partitions' data objects",
            Unit::Bytes,
            m.archive_bytes.clone(),
        );
        sub.register(
            "restored_partitions",
            "Archived partitions restored and present (dropped again after the keep time)",
            m.restored.clone(),
        );
        sub.register(
            "metrics_refresh_failures",
            "Refreshes of these gauges that could not read the lifecycle tables",
            m.refresh_failures.clone(),
        );
        m
    }

    /// Shows `snapshot`.
    pub fn show(&self, snapshot: &Snapshot) {
        for (job, state) in &snapshot.jobs {
            let labels = JobLabels {
                lifecycle_job: JobLabel(*job),
            };
            self.last_success
                .get_or_create(&labels)
                .set(state.last_success_unix.unwrap_or(0.0));
            self.last_failed
                .get_or_create(&labels)
                .set(i64::from(state.last_failed));
            match state.last_duration_secs {
                Some(d) => {
                    self.last_duration.get_or_create(&labels).set(d);
                }
                None => {
                    self.last_duration.remove(&labels);
                }
            }
            match state.last_items {
                Some(n) => {
                    self.last_items.get_or_create(&labels).set(n);
                }
                None => {
                    self.last_items.remove(&labels);
                }
            }
            self.running
                .get_or_create(&labels)
                .set(i64::from(state.running));
        }
        self.sealed.set(snapshot.sealed);
        self.mismatched.set(snapshot.mismatched);
        self.missing.set(snapshot.missing);
        self.compression.clear();
        for (partition, ratio) in &snapshot.compression {
            self.compression
                .get_or_create(&PartitionLabels {
                    partition: partition.clone(),
                })
                .set(*ratio);
        }
        self.rollup_lag.set(snapshot.rollup_lag_secs);
        self.archived.set(snapshot.archived);
        self.archive_bytes.set(snapshot.archive_bytes);
        self.restored.set(snapshot.restored);
    }

    /// Reads the tables every [`REFRESH_INTERVAL`] until `stop`.
    pub fn spawn_refresh(self, pool: PgPool, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                match read(&pool).await {
                    Ok(snapshot) => self.show(&snapshot),
                    Err(e) => {
                        self.refresh_failures.inc();
                        tracing::warn!(error = %e, "cannot read the lifecycle tables for the job metrics");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REFRESH_INTERVAL) => {}
                }
            }
        });
    }
}

/// Reads what the gauges show.
pub async fn read(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let names: Vec<String> = JobName::ALL.iter().map(|j| j.as_str().to_owned()).collect();
    type JobLine = (
        String,
        Option<f64>,
        Option<String>,
        Option<f64>,
        Option<i64>,
        bool,
    );
    let lines: Vec<JobLine> = sqlx::query_as(
        "SELECT j.job,
                (SELECT EXTRACT(EPOCH FROM finished_at)::float8 FROM job_runs
                  WHERE job = j.job AND outcome = 'ok' ORDER BY run_id DESC LIMIT 1),
                last.outcome,
                EXTRACT(EPOCH FROM last.finished_at - last.started_at)::float8,
                last.items,
                EXISTS (SELECT 1 FROM job_runs WHERE job = j.job AND outcome IS NULL)
         FROM unnest($1::text[]) AS j(job)
         LEFT JOIN LATERAL (
             SELECT outcome, started_at, finished_at, items FROM job_runs
             WHERE job = j.job AND outcome IS NOT NULL ORDER BY run_id DESC LIMIT 1
         ) last ON TRUE",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    let jobs = lines
        .into_iter()
        .filter_map(|(job, success, outcome, duration, items, running)| {
            let job = job.parse::<JobName>().ok()?;
            Some((
                job,
                JobState {
                    last_success_unix: success,
                    last_failed: matches!(outcome.as_deref(), Some("failed" | "abandoned")),
                    last_duration_secs: duration,
                    last_items: items,
                    running,
                },
            ))
        })
        .collect();
    let (sealed, mismatched, missing): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE c.status = 'mismatch'), count(*) FILTER (WHERE c.status = 'missing')
         FROM partition_seals s
         LEFT JOIN LATERAL (
             SELECT status FROM seal_checks c
             WHERE c.partition_name = s.partition_name ORDER BY check_id DESC LIMIT 1
         ) c ON TRUE",
    )
    .fetch_one(pool)
    .await?;
    let compression: Vec<(String, f64)> = sqlx::query_as(
        "SELECT partition_name, bytes_before::float8 / greatest(bytes_after, 1)
         FROM partition_storage p WHERE access_method = 'columnar'
           AND NOT EXISTS (SELECT 1 FROM partition_archives a
                           WHERE a.partition_name = p.partition_name AND a.state = 'dropped')
         ORDER BY partition_name",
    )
    .fetch_all(pool)
    .await?;
    let rollup_lag_secs: f64 = sqlx::query_scalar(
        "SELECT coalesce(EXTRACT(EPOCH FROM now() - (min(hour) + interval '3600 seconds'))::float8, 0)
         FROM rollup_dirty
         WHERE hour < date_bin('3600 seconds', now(), TIMESTAMPTZ '1970-01-01 00:00:00+00')",
    )
    .fetch_one(pool)
    .await?;
    let (archived, archive_bytes, restored): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(object_bytes), 0)::bigint, count(*) FILTER (WHERE state = 'restored')
         FROM partition_archives",
    )
    .fetch_one(pool)
    .await?;
    Ok(Snapshot {
        jobs,
        sealed,
        mismatched,
        missing,
        compression,
        rollup_lag_secs: rollup_lag_secs.max(0.0),
        archived,
        archive_bytes,
        restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_units_are_the_documented_ones() {
        let mut registry = Registry::default();
        let m = JobMetrics::register(&mut registry);
        let fresh = {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        // What the alert rules read is there before any run.
        for expected in [
            "tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job=\"cleanup\"} 0.0",
            "tallyhouse_lifecycle_job_last_run_failed{lifecycle_job=\"verify-seals\"} 0",
            "tallyhouse_lifecycle_job_running{lifecycle_job=\"rollup\"} 0",
            "tallyhouse_lifecycle_seal_mismatched_partitions 0",
        ] {
            assert!(fresh.contains(expected), "missing {expected} in\n{fresh}");
        }
        m.show(&Snapshot {
            jobs: vec![
                (
                    JobName::Seal,
                    JobState {
                        last_success_unix: Some(1_772_366_400.5),
                        last_failed: false,
                        last_duration_secs: Some(2.25),
                        last_items: Some(3),
                        running: false,
                    },
                ),
                (
                    JobName::Rollup,
                    JobState {
                        last_failed: true,
                        running: true,
                        ..JobState::default()
                    },
                ),
            ],
            sealed: 4,
            mismatched: 1,
            missing: 0,
            compression: vec![("records_p20260301".into(), 6.5)],
            rollup_lag_secs: 120.0,
            archived: 12,
            archive_bytes: 5_000_000,
            restored: 1,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job=\"seal\"} 1772366400.5",
            // Never succeeded: 0, not absent.
            "tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job=\"rollup\"} 0.0",
            "tallyhouse_lifecycle_job_last_duration_seconds{lifecycle_job=\"seal\"} 2.25",
            "tallyhouse_lifecycle_job_last_items{lifecycle_job=\"seal\"} 3",
            "tallyhouse_lifecycle_job_last_run_failed{lifecycle_job=\"rollup\"} 1",
            "tallyhouse_lifecycle_job_running{lifecycle_job=\"rollup\"} 1",
            "tallyhouse_lifecycle_sealed_partitions 4",
            "tallyhouse_lifecycle_seal_mismatched_partitions 1",
            "tallyhouse_lifecycle_seal_missing_partitions 0",
            "tallyhouse_lifecycle_columnar_compression_ratio{partition=\"records_p20260301\"} 6.5",
            "tallyhouse_lifecycle_rollup_lag_seconds 120.0",
            "tallyhouse_lifecycle_archived_partitions 12",
            "tallyhouse_lifecycle_archive_bytes 5000000",
            "tallyhouse_lifecycle_restored_partitions 1",
            "tallyhouse_lifecycle_metrics_refresh_failures_total 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
