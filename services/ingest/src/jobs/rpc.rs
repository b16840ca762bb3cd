//! The jobs inside `ingest serve`: the RunJob and ListJobRuns calls
//! (`tallyhouse job run|runs`), and the job metrics' refresh.
//!
//! A RunJob call takes the job's lock and records the run on a connection
//! of its own, answers the run id, and lets the run go on in the background
//! (a run can outlast the call's deadline). The service connects as its
//! service role, which `migrate` grants what the jobs need; a run stopped by
//! the service's shutdown is marked `abandoned` by the next one.

use crate::jobs::metrics::JobMetrics;
use crate::jobs::{JobConfig, JobName, Origin, Resources, Start};
use platform::db::{DatabaseArgs, DatabaseCredentials};
use platform::rpc::RpcServerBuilder;
use prometheus_client::registry::Registry;
use rpc_contracts::jobs::{
    self, JobOutcome, JobRun, JobRunList, ListJobRunsRequest, MAX_RUNS_PAGE, RunJobRequest,
    RunJobResponse,
};
use rpc_contracts::{ErrorCode, RpcError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Row as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The jobs as the service runs them.
#[derive(Clone)]
pub struct Lifecycle {
    args: Arc<DatabaseArgs>,
    options: Arc<Mutex<PgConnectOptions>>,
    pool: PgPool,
    config: Arc<JobConfig>,
    resources: Arc<std::sync::OnceLock<Resources>>,
}

const APPLICATION: &str = "tallyhouse-ingest-jobs";

impl Lifecycle {
    /// Prepares the connections (made on first use), registers the job
    /// metrics in `registry` and starts their refresh, which ends on `stop`.
    pub fn start(
        args: &DatabaseArgs,
        creds: &DatabaseCredentials,
        config: JobConfig,
        registry: &mut Registry,
        stop: CancellationToken,
    ) -> Self {
        let options = platform::db::connect_options(APPLICATION, args, creds);
        // A small pool for the run list and the metrics; connections are
        // renewed often so that a new login (see `use_login`) takes over.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .max_lifetime(Duration::from_secs(300))
            .connect_lazy_with(options.clone());
        JobMetrics::register(registry).spawn_refresh(pool.clone(), stop);
        Self {
            args: Arc::new(args.clone()),
            options: Arc::new(Mutex::new(options)),
            pool,
            config: Arc::new(config),
            resources: Arc::default(),
        }
    }

    /// Gives the jobs the service's buckets, RPC client and Vault (once,
    /// when the service has them; until then those jobs answer
    /// `unavailable`).
    pub fn provide(&self, resources: Resources) {
        let _ = self.resources.set(resources);
    }

    /// Connects with `creds` from now on (a renewed database login).
    pub fn use_login(&self, creds: &DatabaseCredentials) {
        let options = platform::db::connect_options(APPLICATION, &self.args, creds);
        self.pool.set_connect_options(options.clone());
        *self.options.lock().expect("options lock") = options;
    }

    /// Serves RunJob and ListJobRuns on `builder` (ingest's queue).
    pub fn register(&self, builder: RpcServerBuilder) -> RpcServerBuilder {
        let run = self.clone();
        let list = self.clone();
        builder
            .on::<jobs::RunJob, _, _>(move |_ctx, req: RunJobRequest| {
                let lifecycle = run.clone();
                async move { lifecycle.run_job(req).await }
            })
            .on::<jobs::ListJobRuns, _, _>(move |_ctx, req: ListJobRunsRequest| {
                let lifecycle = list.clone();
                async move { lifecycle.list_runs(req).await }
            })
    }

    #[tracing::instrument(skip_all, fields(job = %req.job))]
    async fn run_job(&self, req: RunJobRequest) -> Result<RunJobResponse, RpcError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "{what}");
            RpcError::new(ErrorCode::Unavailable, format!("{what}; retry later"))
        };
        match (req.job, &req.partition) {
            (JobName::Restore, None) => {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    "partition: restore needs the partition to bring back (records_pYYYYMMDD)",
                ));
            }
            (JobName::Restore, Some(p)) if crate::jobs::partitions::day_of(p).is_none() => {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!("partition: {p:?} is not a partition name (records_pYYYYMMDD)"),
                ));
            }
            (JobName::Restore, Some(_)) | (_, None) => {}
            (job, Some(_)) => {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!("partition: only restore takes a partition, not {job}"),
                ));
            }
        }
        let Some(resources) = self.resources.get().cloned() else {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                "the service is still starting; retry later",
            ));
        };
        let resources = Resources {
            partition: req.partition.clone(),
            ..resources
        };
        let options = self.options.lock().expect("options lock").clone();
        let conn = options
            .application_name(&format!("tallyhouse-job-{}", req.job))
            .connect()
            .await
            .map_err(|e| unavailable("cannot connect to the time-series database", &e))?;
        let run = match super::start(conn, req.job, Origin::Rpc).await {
            Ok(Start::Locked) => {
                return Ok(RunJobResponse {
                    started: false,
                    run_id: None,
                    message: format!("another run of {} holds its lock", req.job),
                });
            }
            Ok(Start::Started(run)) => run,
            Err(e) => return Err(unavailable("cannot start the job", &format!("{e:#}"))),
        };
        let run_id = run.run_id();
        let config = self.config.clone();
        tokio::spawn(async move {
            run.execute(&config, platform::clock::now(), &resources)
                .await;
        });
        Ok(RunJobResponse {
            started: true,
            run_id: Some(run_id),
            message: format!("{} started as run {run_id}", req.job),
        })
    }

    async fn list_runs(&self, req: ListJobRunsRequest) -> Result<JobRunList, RpcError> {
        if !(1..=MAX_RUNS_PAGE).contains(&req.limit) {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("limit: must be 1 to {MAX_RUNS_PAGE}, not {}", req.limit),
            ));
        }
        let rows = sqlx::query(
            "SELECT run_id, job, origin, started_at, finished_at, outcome, items, summary
             FROM job_runs
             WHERE ($1::text IS NULL OR job = $1) AND ($2::bigint IS NULL OR run_id = $2)
             ORDER BY run_id DESC LIMIT $3",
        )
        .bind(req.job.map(|j| j.as_str()))
        .bind(req.run_id)
        .bind(i64::from(req.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| platform::db::rpc_error("listing job runs", &e))?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let corrupt = |e: String| RpcError::new(ErrorCode::Internal, e);
            let job: String = row.get(1);
            let outcome: Option<String> = row.get(5);
            runs.push(JobRun {
                run_id: row.get(0),
                job: job.parse().map_err(corrupt)?,
                origin: row.get(2),
                started_at: row.get(3),
                finished_at: row.get(4),
                outcome: outcome
                    .map(|o| o.parse::<JobOutcome>())
                    .transpose()
                    .map_err(corrupt)?,
                items: row.get(6),
                summary: row.get(7),
            });
        }
        Ok(JobRunList { runs })
    }
}
