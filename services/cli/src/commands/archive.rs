//! `tallyhouse archive …`: bring an archived partition back (operator).
//! The `archive` job exports partitions past the records retention to the
//! archive bucket and drops them; `archive restore` asks an ingest instance
//! to run the `restore` job for one, which checks the archive against its
//! manifest and the partition's seal before it commits (docs/lifecycle.md).

use crate::commands::Context;
use crate::commands::job::run_job;
use crate::error::CliError;
use rpc_contracts::jobs::{JobName, RunJobRequest};
use std::time::Duration;

/// Archive commands.
#[derive(Debug, clap::Subcommand)]
pub enum ArchiveCommand {
    /// Restore an archived partition (`records_pYYYYMMDD`) from the archive
    /// bucket, verified against its manifest and seal; waits for the run
    /// and fails if it failed. The archive job drops it again after
    /// TALLYHOUSE_RESTORE_KEEP_DAYS.
    Restore {
        /// The partition, e.g. records_p20210301.
        #[arg(value_parser = parse_partition)]
        partition: String,
        /// Start the run and return at once (follow it with `job show`).
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the run goes on).
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
}

fn parse_partition(s: &str) -> Result<String, String> {
    let digits = s.strip_prefix("records_p").unwrap_or("");
    if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a partition name (records_pYYYYMMDD)"))
    }
}

/// Runs an archive command.
pub async fn run(cmd: ArchiveCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        ArchiveCommand::Restore {
            partition,
            no_wait,
            wait_secs,
        } => {
            run_job(
                ctx,
                RunJobRequest {
                    job: JobName::Restore,
                    partition: Some(partition),
                },
                (!no_wait).then_some(Duration::from_secs(wait_secs)),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_daily_partition_names_are_taken() {
        assert!(parse_partition("records_p20210301").is_ok());
        assert!(parse_partition("records_p2021031").is_err());
        assert!(parse_partition("packages").is_err());
        assert!(parse_partition("records_p2021030x").is_err());
    }
}
