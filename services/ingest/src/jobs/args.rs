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
        }
    }
}

/// Flags of `ingest job`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// The job: partitions-ahead, columnar, seal, verify-seals or rollup.
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
