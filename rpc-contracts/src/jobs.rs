//! Calls to start and follow the data lifecycle jobs (partitions ahead,
//! columnar conversion, seals, rollups) on demand. They are served by the
//! ingest service, which owns the time-series database, on its queue; the
//! same jobs also run as `ingest job <name>` from a Nomad periodic job.
//!
//! A job run takes a PostgreSQL advisory lock of its own: when another run
//! of the same job holds it, [`RunJob`] answers `started: false` rather than
//! waiting. Runs are recorded in the database; [`ListJobRuns`] reads them.

use crate::ServiceQueue;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// The queue serving these calls: ingest's.
pub const QUEUE: ServiceQueue = crate::ingest::QUEUE;

/// The most runs [`ListJobRuns`] answers at once.
pub const MAX_RUNS_PAGE: u32 = 200;

define_call!(
    QUEUE,
    /// Starts one run of a job in an ingest instance and answers at once
    /// (a run can take longer than a call's deadline): its run id, or
    /// `started: false` when another run of that job holds its lock.
    RunJob, "ingest.v1.run_job", RunJobRequest => RunJobResponse
);
define_call!(
    QUEUE,
    /// The most recent runs, newest first, of one job or of every job.
    ListJobRuns, "ingest.v1.list_job_runs", ListJobRunsRequest => JobRunList
);

/// A lifecycle job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobName {
    /// Creates the `records` daily partitions up to a horizon ahead.
    PartitionsAhead,
    /// Converts old partitions to columnar storage (Citus only).
    Columnar,
    /// Seals the partitions that left the write window (row count and digest).
    Seal,
    /// Recomputes the seals' digests and reports mismatches.
    VerifySeals,
    /// Brings the hourly and daily rollups up to date.
    Rollup,
    /// Exports partitions past the retention period to S3, verifies the
    /// export by reading it back, then detaches and drops them.
    Archive,
    /// Brings one archived partition back (needs [`RunJobRequest::partition`]).
    Restore,
    /// Removes what is no longer needed: orphan blobs, blobs past their
    /// retention, expired token revocations and login-throttle state, old
    /// run records. Never an audit entry or a package inside retention.
    Cleanup,
    /// Rotates the receipt and access-token signing keys.
    RotateKeys,
}

impl JobName {
    /// Every job, in the order they are documented.
    pub const ALL: [JobName; 9] = [
        JobName::PartitionsAhead,
        JobName::Columnar,
        JobName::Seal,
        JobName::VerifySeals,
        JobName::Rollup,
        JobName::Archive,
        JobName::Restore,
        JobName::Cleanup,
        JobName::RotateKeys,
    ];

    /// The wire and command-line name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobName::PartitionsAhead => "partitions-ahead",
            JobName::Columnar => "columnar",
            JobName::Seal => "seal",
            JobName::VerifySeals => "verify-seals",
            JobName::Rollup => "rollup",
            JobName::Archive => "archive",
            JobName::Restore => "restore",
            JobName::Cleanup => "cleanup",
            JobName::RotateKeys => "rotate-keys",
        }
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobName::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = JobName::ALL.iter().map(|j| j.as_str()).collect();
                format!("unknown job {s:?} (expected one of {})", known.join(", "))
            })
    }
}

/// Request of [`RunJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunJobRequest {
    /// The job to run.
    pub job: JobName,
    /// The partition to restore (`records_pYYYYMMDD`): required by
    /// [`JobName::Restore`], refused for the other jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

/// Response of [`RunJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunJobResponse {
    /// `true` when this call started a run.
    pub started: bool,
    /// The run's id (see [`ListJobRuns`]), when started.
    pub run_id: Option<i64>,
    /// What happened, for people ("started", "another run holds the lock").
    pub message: String,
}

/// Request of [`ListJobRuns`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListJobRunsRequest {
    /// Only this job's runs.
    #[serde(default)]
    pub job: Option<JobName>,
    /// Only this run.
    #[serde(default)]
    pub run_id: Option<i64>,
    /// At most this many (1 to [`MAX_RUNS_PAGE`]).
    pub limit: u32,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every step succeeded (findings such as a seal mismatch are in the
    /// summary and in metrics, not a failure of the run).
    Ok,
    /// A step failed; the summary holds the error. Re-running is safe.
    Failed,
    /// The process running it stopped before it finished (found and marked
    /// by the next run of the same job).
    Abandoned,
}

impl JobOutcome {
    /// The stored and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Ok => "ok",
            JobOutcome::Failed => "failed",
            JobOutcome::Abandoned => "abandoned",
        }
    }
}

impl std::str::FromStr for JobOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [JobOutcome::Ok, JobOutcome::Failed, JobOutcome::Abandoned]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown job outcome {s:?}"))
    }
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    /// Its id.
    pub run_id: i64,
    /// The job.
    pub job: JobName,
    /// What started it: `command` (`ingest job`, the periodic jobs) or
    /// `rpc` ([`RunJob`]).
    pub origin: String,
    /// When it took the lock.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it ended; `None` while it runs.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<JobOutcome>,
    /// What it processed (partitions created, converted, sealed or verified;
    /// rollup hours recomputed).
    pub items: i64,
    /// What it did, as the job reports it (a JSON object).
    pub summary: serde_json::Value,
}

/// Response of [`ListJobRuns`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRunList {
    /// Newest first.
    pub runs: Vec<JobRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_round_trip_on_the_wire_and_as_text() {
        for job in JobName::ALL {
            let json = serde_json::to_string(&job).unwrap();
            assert_eq!(json, format!("\"{}\"", job.as_str()));
            assert_eq!(job.as_str().parse::<JobName>().unwrap(), job);
        }
        assert!("vacuum".parse::<JobName>().is_err());
        let req: RunJobRequest = serde_json::from_str(r#"{"job":"verify-seals"}"#).unwrap();
        assert_eq!(req.job, JobName::VerifySeals);
        assert!(serde_json::from_str::<RunJobRequest>(r#"{"job":"seal","x":1}"#).is_err());
    }
}
