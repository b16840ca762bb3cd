//! `tallyhouse job …`: start a data lifecycle job now and follow its runs
//! (operator). The job runs inside an ingest instance (RunJob); the same
//! jobs run on a schedule as Nomad periodic jobs (docs/lifecycle.md).

use crate::commands::Context;
use crate::error::CliError;
use crate::output::{record, table, time, time_or_dash};
use rpc_contracts::jobs::{
    self, JobName, JobOutcome, JobRun, ListJobRunsRequest, MAX_RUNS_PAGE, RunJobRequest,
};
use std::time::Duration;

/// Job commands.
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Start a run of a job now (partitions-ahead, columnar, seal,
    /// verify-seals, rollup, archive, cleanup, rotate-keys; a restore is
    /// `archive restore`). When another run holds the job's lock, says so
    /// and succeeds without starting one.
    Run {
        /// The job.
        job: JobName,
        /// Wait for the run to end and show it; fail if it failed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the run
        /// goes on).
        #[arg(long, default_value_t = 3600, requires = "wait")]
        wait_secs: u64,
    },
    /// The most recent runs, newest first.
    Runs {
        /// Only this job's.
        job: Option<JobName>,
        /// At most this many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RUNS_PAGE)))]
        limit: u32,
    },
    /// One run, with its summary.
    Show {
        /// The run id (`job runs`).
        run_id: i64,
    },
}

/// Starts a run of `request.job`; with `wait`, follows it until it ends
/// (or `wait` passes) and fails when it did not end `ok`.
pub async fn run_job(
    ctx: &Context,
    request: RunJobRequest,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let job = request.job;
    let started = ctx.rpc.call::<jobs::RunJob>(&request).await?;
    let (run_id, wait) = match (started.run_id, wait) {
        (Some(run_id), Some(wait)) => (run_id, wait),
        _ => {
            ctx.output.print(&started, || started.message.clone());
            return Ok(());
        }
    };
    ctx.output.note(&started.message);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let run = one(ctx, run_id).await?;
        if let Some(outcome) = run.outcome {
            ctx.output.print(&run, || show(&run));
            return match outcome {
                JobOutcome::Ok => Ok(()),
                _ => Err(CliError::Rejected(format!(
                    "run {run_id} of {job} ended {}",
                    outcome.as_str()
                ))),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Rejected(format!(
                "run {run_id} of {job} is still running after {} s \
                 (follow it with `tallyhouse job show {run_id}`)",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a job command.
pub async fn run(cmd: JobCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        JobCommand::Run {
            job,
            wait,
            wait_secs,
        } => {
            run_job(
                ctx,
                RunJobRequest {
                    job,
                    partition: None,
                },
                wait.then_some(Duration::from_secs(wait_secs)),
            )
            .await?;
        }
        JobCommand::Runs { job, limit } => {
            let list = ctx
                .rpc
                .call::<jobs::ListJobRuns>(&ListJobRunsRequest {
                    job,
                    run_id: None,
                    limit,
                })
                .await?;
            ctx.output.print(&list, || {
                let rows: Vec<Vec<String>> = list
                    .runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.run_id.to_string(),
                            r.job.to_string(),
                            r.origin.clone(),
                            time(r.started_at),
                            duration(r),
                            outcome(r).to_owned(),
                            r.items.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "RUN",
                        "JOB",
                        "ORIGIN",
                        "STARTED_AT",
                        "DURATION",
                        "OUTCOME",
                        "ITEMS",
                    ],
                    &rows,
                )
            });
        }
        JobCommand::Show { run_id } => {
            let run = one(ctx, run_id).await?;
            ctx.output.print(&run, || show(&run));
        }
    }
    Ok(())
}

async fn one(ctx: &Context, run_id: i64) -> Result<JobRun, CliError> {
    ctx.rpc
        .call::<jobs::ListJobRuns>(&ListJobRunsRequest {
            job: None,
            run_id: Some(run_id),
            limit: 1,
        })
        .await?
        .runs
        .pop()
        .ok_or_else(|| CliError::Input(format!("no run {run_id}")))
}

fn outcome(run: &JobRun) -> &'static str {
    run.outcome.map_or("running", JobOutcome::as_str)
}

fn duration(run: &JobRun) -> String {
    run.finished_at.map_or_else(
        || "-".to_owned(),
        |end| format!("{:.1}s", (end - run.started_at).as_seconds_f64()),
    )
}

fn show(run: &JobRun) -> String {
    record(&[
        ("run_id", run.run_id.to_string()),
        ("job", run.job.to_string()),
        ("origin", run.origin.clone()),
        ("started_at", time(run.started_at)),
        ("finished_at", time_or_dash(run.finished_at)),
        ("duration", duration(run)),
        ("outcome", outcome(run).to_owned()),
        ("items", run.items.to_string()),
        (
            "summary",
            serde_json::to_string_pretty(&run.summary).unwrap_or_default(),
        ),
    ])
}
