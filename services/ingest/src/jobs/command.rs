//! `ingest job <name>`: one run of one job, as the Nomad periodic jobs
//! start it. Exits 0 when the run succeeded or another run holds the job's
//! lock, non-zero when it failed (the periodic job's restart policy then
//! retries; every step is safe to redo).

use crate::jobs::args::JobArgs;
use crate::jobs::{Origin, Start};
use anyhow::Context as _;
use rpc_contracts::jobs::JobOutcome;
use secrecy::ExposeSecret as _;
use sqlx::ConnectOptions as _;

/// Runs `ingest job`.
pub async fn run(args: &JobArgs) -> anyhow::Result<()> {
    if super::needs_service(args.job) {
        anyhow::bail!(
            "{job} runs in the ingest service, which has the buckets, RPC and Vault it needs: \
             use `tallyhouse job run {job} --wait`",
            job = args.job
        );
    }
    let options: sqlx::postgres::PgConnectOptions = args
        .admin_database_url
        .expose_secret()
        .parse()
        .context("parsing --admin-database-url")?;
    let conn = options
        .application_name(&format!("tallyhouse-job-{}", args.job))
        .connect()
        .await
        .context("connecting to the time-series database")?;
    let config = args.options.config(args.record_max_age_days);
    let now = args.now.unwrap_or_else(platform::clock::now);
    match super::start(conn, args.job, Origin::Command).await? {
        Start::Locked => Ok(()),
        Start::Started(run) => {
            let finished = run
                .execute(&config, now, &super::Resources::default())
                .await;
            match finished.outcome {
                JobOutcome::Failed => anyhow::bail!(
                    "job {} failed: {}",
                    args.job,
                    finished.report.failed.unwrap_or_default()
                ),
                _ => Ok(()),
            }
        }
    }
}
