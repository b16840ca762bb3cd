//! The lifecycle jobs' flags: [`JobOptions`], shared by `ingest job` and
//! `ingest serve` (which runs jobs on an RPC call), and [`JobArgs`], the
//! flags of `ingest job` itself.

use crate::jobs::{JobConfig, JobName};
use secrecy::SecretString;
use time::OffsetDateTime;

/// How the jobs behave (both `ingest job` and `ingest serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct JobOptions {
    /// Days of partitions to create ahead of today.
    #[arg(long, env = "TALLYHOUSE_PARTITIONS_AHEAD_DAYS", default_value_t = 14)]
    pub partitions_ahead_days: u32,
    /// With Citus and citus_columnar: partitions whose day ended more than
    /// this many days ago are converted to columnar storage.
    #[arg(long, env = "TALLYHOUSE_COLUMNAR_AFTER_DAYS", default_value_t = 30)]
    pub columnar_after_days: u32,
    /// Most partitions one run of `seal` seals (the oldest first).
    #[arg(long, env = "TALLYHOUSE_SEAL_MAX_PARTITIONS", default_value_t = 7)]
    pub seal_max_partitions: u32,
    /// Most seals one run of `verify-seals` re-checks (the least recently
    /// checked first).
    #[arg(
        long,
        env = "TALLYHOUSE_SEAL_VERIFY_MAX_PARTITIONS",
        default_value_t = 7
    )]
    pub seal_verify_max_partitions: u32,
    /// Hours of records the rollup job recomputes per transaction.
    #[arg(long, env = "TALLYHOUSE_ROLLUP_BATCH_HOURS", default_value_t = 24)]
    pub rollup_batch_hours: u32,
    /// Records retention in days: older partitions are archived to S3, the
    /// archive verified, then the partition dropped. Must exceed the record
    /// age limit (partitions are sealed before they are archived).
    #[arg(long, env = "TALLYHOUSE_RETENTION_DAYS", default_value_t = 1830)]
    pub retention_days: u32,
    /// Most partitions one archive run exports (the oldest first).
    #[arg(long, env = "TALLYHOUSE_ARCHIVE_MAX_PARTITIONS", default_value_t = 7)]
    pub archive_max_partitions: u32,
    /// Size in KiB of the parts an archive is uploaded in (S3 multipart:
    /// at least 5 MiB, the smallest part but the last S3 takes).
    #[arg(long, env = "TALLYHOUSE_ARCHIVE_PART_KIB", default_value_t = 16 * 1024)]
    pub archive_part_kib: usize,
    /// Days a restored partition is kept before the archive job drops it
    /// again (its archive stays).
    #[arg(long, env = "TALLYHOUSE_RESTORE_KEEP_DAYS", default_value_t = 14)]
    pub restore_keep_days: u32,
    /// Raw package blobs retention in days after receipt; at least the
    /// records retention (a smaller value is raised to it, with a warning).
    #[arg(long, env = "TALLYHOUSE_BLOB_RETENTION_DAYS", default_value_t = 2200)]
    pub blob_retention_days: u32,
    /// Blobs with no package row are removed once older than this many hours
    /// (an upload whose row was never committed; a resend reuses the blob).
    #[arg(long, env = "TALLYHOUSE_ORPHAN_GRACE_HOURS", default_value_t = 48)]
    pub orphan_grace_hours: u32,
    /// Days finished job runs and seal check history are kept.
    #[arg(long, env = "TALLYHOUSE_JOB_HISTORY_DAYS", default_value_t = 400)]
    pub history_days: u32,
    /// Days a receipt or token signing key signs before it is rotated.
    #[arg(long, env = "TALLYHOUSE_KEY_ROTATION_DAYS", default_value_t = 90)]
    pub key_rotation_days: u32,
    /// Seconds a new signing key is published before it starts signing.
    #[arg(
        long,
        env = "TALLYHOUSE_KEY_ACTIVATION_DELAY_SECS",
        default_value_t = 600
    )]
    pub key_activation_delay_secs: u64,
}

impl JobOptions {
    /// The jobs' configuration, with ingest's record age limit (which
    /// decides when a partition can be sealed).
    pub fn config(&self, record_max_age_days: u32) -> JobConfig {
        JobConfig {
            partitions_ahead_days: self.partitions_ahead_days,
            columnar_after_days: self.columnar_after_days,
            record_max_age_days,
            seal_max_partitions: self.seal_max_partitions.max(1),
            verify_max_partitions: self.seal_verify_max_partitions.max(1),
            rollup_batch_hours: self.rollup_batch_hours.max(1),
            retention_days: self.retention_days,
            archive_max_partitions: self.archive_max_partitions.max(1),
            archive_part_bytes: self.archive_part_kib.max(5 * 1024) * 1024,
            restore_keep_days: self.restore_keep_days,
            blob_retention_days: self.blob_retention_days.max(self.retention_days),
            orphan_grace_hours: self.orphan_grace_hours,
            history_days: self.history_days.max(1),
            key_rotation_days: self.key_rotation_days.max(1),
            key_activation_delay_secs: self.key_activation_delay_secs,
        }
    }
}

/// Flags of `ingest job`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// The job: partitions-ahead, columnar, seal, verify-seals or rollup
    /// (archive, restore, cleanup and rotate-keys need the service's
    /// buckets, RPC and Vault: `tallyhouse job run <job>`).
    pub job: JobName,
    /// Connection URL of the role the job runs as: the database owner (a
    /// deploy-time credential, as for `migrate`), or the service role,
    /// which `migrate` grants what the jobs need.
    #[arg(long, env = "TALLYHOUSE_ADMIN_DATABASE_URL", hide_env_values = true)]
    pub admin_database_url: SecretString,
    /// Deployment name, a log label.
    #[arg(long, env = "TALLYHOUSE_ENVIRONMENT", default_value = "local")]
    pub environment: String,
    /// Ingest's oldest accepted record time, in days before the receive
    /// time (the same setting as `ingest serve`'s): partitions are sealed
    /// once no record can be accepted for them.
    #[arg(long, env = "TALLYHOUSE_RECORD_MAX_AGE_DAYS", default_value_t = 400)]
    pub record_max_age_days: u32,
    /// How the jobs behave.
    #[command(flatten)]
    pub options: JobOptions,
    /// Run as of this time (RFC 3339) instead of now: for tests and for
    /// replaying a missed run. Only what the job decides depends on it
    /// (horizons, ages, closed hours); run records carry real times.
    #[arg(long, value_parser = parse_time, hide = true)]
    pub now: Option<OffsetDateTime>,
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-06-01T12:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: JobArgs,
    }

    #[test]
    fn a_job_is_named_by_its_kebab_case_name() {
        let cli = Cli::try_parse_from([
            "job",
            "verify-seals",
            "--admin-database-url",
            "postgres://o@h/d",
            "--now",
            "2026-06-01T12:00:00Z",
        ])
        .unwrap();
        assert_eq!(cli.args.job, JobName::VerifySeals);
        assert_eq!(cli.args.options.partitions_ahead_days, 14);
        assert_eq!(
            cli.args.now.unwrap(),
            time::macros::datetime!(2026-06-01 12:00 UTC)
        );
        assert!(
            Cli::try_parse_from(["job", "vacuum", "--admin-database-url", "postgres://o@h/d"])
                .is_err()
        );
    }
}
