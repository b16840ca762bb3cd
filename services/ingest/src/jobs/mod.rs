//! The data lifecycle jobs (docs/lifecycle.md): one framework, five jobs.
//!
//! A run of a job ([`start`], then [`Run::execute`]) takes the job's
//! PostgreSQL advisory lock on its own connection (a second run of the same
//! job finds it taken and does nothing), marks runs a crash left open as
//! `abandoned`, records itself in `job_runs`, runs the job's steps (each
//! idempotent, so a run after a crash redoes safely what the crashed one
//! left), records how it ended and logs it. The same code runs from `ingest
//! job <name>` (the Nomad periodic jobs, [`command`]) and from the ingest
//! service on an RPC call ([`rpc`]); what a run reads and decides depends on
//! the `now` it is given, never on the wall clock directly.
//!
//! The jobs: [`partitions`] (partitions ahead), [`columnar`] (old partitions
//! to columnar, Citus only), [`seal`] (seals and their verification),
//! [`rollup`] (hourly and daily rollups). [`schema`] holds their grants and
//! Citus distribution, [`metrics`] what the service exports about them.

pub mod archive;
pub mod args;
pub mod cleanup;
pub mod columnar;
pub mod command;
pub mod metrics;
pub mod partitions;
pub mod rollup;
pub mod rpc;
pub mod schema;
pub mod seal;
pub mod signing_keys;

pub use args::JobOptions;
pub use rpc_contracts::jobs::JobName;

use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use std::time::Instant;
use time::OffsetDateTime;

/// The first key of every job's advisory lock (`pg_try_advisory_lock(int,
/// int)`): "THJB" in ASCII. The second key is [`lock_key`]'s; the numbers
/// are stable (documented in docs/lifecycle.md), new jobs take new ones.
pub const LOCK_NAMESPACE: i32 = 0x5448_4a42;

/// The second key of `job`'s advisory lock.
pub const fn lock_key(job: JobName) -> i32 {
    match job {
        JobName::PartitionsAhead => 1,
        JobName::Columnar => 2,
        JobName::Seal => 3,
        JobName::VerifySeals => 4,
        JobName::Rollup => 5,
        JobName::Archive => 6,
        JobName::Restore => 7,
        JobName::Cleanup => 8,
        JobName::RotateKeys => 9,
    }
}

/// What the jobs are configured with (see [`JobOptions`] for the flags).
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Days of partitions kept ahead of today.
    pub partitions_ahead_days: u32,
    /// Partitions whose day ended more than this many days ago become columnar.
    pub columnar_after_days: u32,
    /// Ingest's record age limit: a partition is sealed once its day ended
    /// more than this many days (and an hour) ago, when no record can be
    /// accepted for it any more.
    pub record_max_age_days: u32,
    /// Most partitions one seal run seals.
    pub seal_max_partitions: u32,
    /// Most seals one verify-seals run re-checks (least recently checked first).
    pub verify_max_partitions: u32,
    /// Hours the rollup job recomputes per transaction.
    pub rollup_batch_hours: u32,
    /// Records retention: partitions whose day ended more than this many
    /// days ago are archived, then dropped.
    pub retention_days: u32,
    /// Most partitions one archive run exports.
    pub archive_max_partitions: u32,
    /// Size of the parts an archive is uploaded in (S3 multipart).
    pub archive_part_bytes: usize,
    /// Days a restored partition stays before the archive job drops it again.
    pub restore_keep_days: u32,
    /// Raw package blobs retention, in days after the package was received
    /// (never less than `retention_days`).
    pub blob_retention_days: u32,
    /// Blobs without a package row are removed once older than this.
    pub orphan_grace_hours: u32,
    /// Finished run records and seal check history are kept this many days.
    pub history_days: u32,
    /// A signing key is rotated once it has been active this many days.
    pub key_rotation_days: u32,
    /// A new signing key is published this long before it starts signing,
    /// so that every instance and verifier knows it first.
    pub key_activation_delay_secs: u64,
}

/// What the jobs beyond the database need: the evidence and archive
/// buckets, RPC to other services, Vault. `ingest serve` has them all;
/// `ingest job` (the database owner's URL only) has none, so the jobs that
/// need them run in the service (`tallyhouse job run <job> --wait`, which is
/// also what their Nomad periodic jobs run).
#[derive(Clone, Default)]
pub struct Resources {
    /// The evidence bucket (package blobs).
    pub evidence: Option<platform::s3::EvidenceStore>,
    /// The archive bucket (exported partitions).
    pub archive: Option<platform::s3::EvidenceStore>,
    /// RPC to the other services (auth).
    pub rpc: Option<platform::rpc::RpcClient>,
    /// This service's Vault client (its own secrets).
    pub vault: Option<platform::vault::Vault>,
    /// What the job was asked to work on: the partition to restore.
    pub partition: Option<String>,
}

impl Resources {
    fn need<'a, T>(what: &'a Option<T>, name: &str, job: JobName) -> anyhow::Result<&'a T> {
        what.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{job} needs {name}, which only the ingest service has: run it with `tallyhouse job run {job}`"
            )
        })
    }
}

/// Whether `job` needs more than the database (see [`Resources`]).
pub const fn needs_service(job: JobName) -> bool {
    matches!(
        job,
        JobName::Archive | JobName::Restore | JobName::Cleanup | JobName::RotateKeys
    )
}

/// What a job did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// How many things it processed.
    pub items: i64,
    /// What it did, as a JSON object.
    pub summary: serde_json::Value,
    /// Set when some steps failed while others went through (the run is
    /// recorded as `failed`, with this summary).
    pub failed: Option<String>,
}

impl Report {
    fn new(items: i64, summary: serde_json::Value) -> Self {
        Self {
            items,
            summary,
            failed: None,
        }
    }
}

/// Who started a run (`job_runs.origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `ingest job <name>`: the periodic jobs, or an operator at a shell.
    Command,
    /// The RunJob call (`tallyhouse job run`).
    Rpc,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Command => "command",
            Origin::Rpc => "rpc",
        }
    }
}

/// How [`start`] went.
pub enum Start {
    /// Another run of the job holds its lock; nothing was done.
    Locked,
    /// This run holds the lock and is recorded.
    Started(Run),
}

/// A run that holds its job's lock.
pub struct Run {
    conn: PgConnection,
    job: JobName,
    run_id: i64,
    started: Instant,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `ok` or `failed`.
    pub outcome: rpc_contracts::jobs::JobOutcome,
    /// What it did (the error included when it failed).
    pub report: Report,
}

/// Takes `job`'s lock on `conn` (which the run keeps: the lock is the
/// session's) and records the run, or answers [`Start::Locked`].
pub async fn start(mut conn: PgConnection, job: JobName, origin: Origin) -> anyhow::Result<Start> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(lock_key(job))
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        tracing::info!(job = %job, "another run of this job holds its lock: nothing to do");
        let _ = conn.close().await;
        return Ok(Start::Locked);
    }
    // Holding the lock proves no other run of this job is alive: a run
    // still open was left by a process that stopped.
    let abandoned = sqlx::query(
        "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = 'abandoned',
                summary = summary || jsonb_build_object('note', 'the process running it stopped before it finished')
         WHERE job = $1 AND outcome IS NULL",
    )
    .bind(job.as_str())
    .execute(&mut conn)
    .await?
    .rows_affected();
    if abandoned > 0 {
        tracing::warn!(job = %job, runs = abandoned, "marked runs a stopped process left open as abandoned");
    }
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_runs (job, origin, started_at) VALUES ($1, $2, clock_timestamp()) RETURNING run_id",
    )
    .bind(job.as_str())
    .bind(origin.as_str())
    .fetch_one(&mut conn)
    .await?;
    tracing::info!(job = %job, run_id, origin = origin.as_str(), "job run started");
    Ok(Start::Started(Run {
        conn,
        job,
        run_id,
        started: Instant::now(),
    }))
}

impl Run {
    /// Its id in `job_runs`.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Runs the job's steps as of `now`, records the outcome, releases the
    /// lock and closes the connection.
    pub async fn execute(
        mut self,
        config: &JobConfig,
        now: OffsetDateTime,
        resources: &Resources,
    ) -> Finished {
        let result = run_steps(
            self.job,
            &mut self.conn,
            config,
            now,
            self.run_id,
            resources,
        )
        .await;
        self.finish(result).await
    }

    async fn finish(mut self, result: anyhow::Result<Report>) -> Finished {
        use rpc_contracts::jobs::JobOutcome;
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                // What the server said, when the database is the cause
                // (the summary below keeps the chain's text only).
                if let Some(server) = platform::db::ServerError::find_in(&e) {
                    let unavailable = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<sqlx::Error>())
                        .is_some_and(platform::db::is_unavailable);
                    platform::db::log_failure(
                        &format!("running the {} job", self.job),
                        unavailable,
                        &format_args!("{e:#}"),
                        Some(&server),
                    );
                }
                Report {
                    items: 0,
                    summary: json!({ "error": format!("{e:#}") }),
                    failed: Some(format!("{e:#}")),
                }
            }
        };
        let outcome = if report.failed.is_some() {
            JobOutcome::Failed
        } else {
            JobOutcome::Ok
        };
        let elapsed = self.started.elapsed();
        let recorded = sqlx::query(
            "UPDATE job_runs SET finished_at = clock_timestamp(), outcome = $2, items = $3, summary = $4
             WHERE run_id = $1",
        )
        .bind(self.run_id)
        .bind(outcome.as_str())
        .bind(report.items)
        .bind(&report.summary)
        .execute(&mut self.conn)
        .await;
        if let Err(e) = recorded {
            // The row stays open; the next run marks it abandoned.
            tracing::error!(job = %self.job, run_id = self.run_id, error = %e, "cannot record the end of the run");
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LOCK_NAMESPACE)
            .bind(lock_key(self.job))
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
        match &report.failed {
            None => tracing::info!(
                job = %self.job,
                run_id = self.run_id,
                outcome = outcome.as_str(),
                items = report.items,
                duration_ms = elapsed.as_millis() as u64,
                summary = %report.summary,
                "job run finished"
            ),
            Some(error) => tracing::error!(
                job = %self.job,
                run_id = self.run_id,
                outcome = outcome.as_str(),
                items = report.items,
                duration_ms = elapsed.as_millis() as u64,
                summary = %report.summary,
                error = %error,
                "job run failed"
            ),
        }
        Finished { outcome, report }
    }
}

async fn run_steps(
    job: JobName,
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    run_id: i64,
    resources: &Resources,
) -> anyhow::Result<Report> {
    match job {
        JobName::PartitionsAhead => partitions::run(conn, config, now).await,
        JobName::Columnar => columnar::run(conn, config, now, run_id).await,
        JobName::Seal => seal::run_seal(conn, config, now, run_id).await,
        JobName::VerifySeals => seal::run_verify(conn, config, run_id).await,
        JobName::Rollup => rollup::run(conn, config, now).await,
        JobName::Archive => {
            let archive = Resources::need(&resources.archive, "the archive bucket", job)?;
            archive::run_archive(conn, config, now, run_id, archive).await
        }
        JobName::Restore => {
            let archive = Resources::need(&resources.archive, "the archive bucket", job)?;
            let partition = resources
                .partition
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("restore needs the partition to bring back"))?;
            archive::run_restore(conn, run_id, archive, partition).await
        }
        JobName::Cleanup => {
            let evidence = Resources::need(&resources.evidence, "the evidence bucket", job)?;
            let rpc = Resources::need(&resources.rpc, "RPC to the auth service", job)?;
            cleanup::run(conn, config, now, run_id, evidence, rpc).await
        }
        JobName::RotateKeys => {
            let vault = Resources::need(&resources.vault, "Vault", job)?;
            let rpc = Resources::need(&resources.rpc, "RPC to the auth service", job)?;
            signing_keys::run(conn, config, now, vault, rpc).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_has_its_own_lock_key() {
        let mut keys: Vec<i32> = JobName::ALL.iter().map(|j| lock_key(*j)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), JobName::ALL.len());
    }
}
