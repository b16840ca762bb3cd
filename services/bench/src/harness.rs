//! The harness every benchmark plugs into: the [`Benchmark`] trait, the
//! registry of benchmarks by name, the [`Context`] they run in, and the
//! run itself (interruptible, always cleaning up what it declared).

use crate::cli::Options;
use crate::cpu::CpuProbe;
use crate::janitor::Janitor;
use crate::load::LoadShape;
use crate::report::Report;
use futures_util::future::BoxFuture;
use platform::amqp::BrokerUri;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One named benchmark. Add a new one by implementing this trait in its own
/// module and listing it in [`registry`].
pub trait Benchmark: Sync {
    /// The name given on the command line.
    fn name(&self) -> &'static str;
    /// One line for `--list`.
    fn about(&self) -> &'static str;
    /// Runs every point of the benchmark. Broker objects it declares are
    /// registered with [`Context::janitor`] before use so that they are
    /// deleted however the run ends.
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>>;

    /// Environment variables the benchmark needs and that this process
    /// lacks: when `Some`, the harness runs the same command again in a
    /// child process with them set (a process cannot safely change its own
    /// environment once threads run), and passes on its exit status.
    fn missing_environment(&self) -> anyhow::Result<Option<Vec<(String, String)>>> {
        Ok(None)
    }

    /// Whether [`Benchmark::run`] watches [`Context::stop`] and cleans up
    /// before returning: on Ctrl-C the harness then cancels it and waits
    /// for the run to return (a second Ctrl-C gives up waiting) instead of
    /// dropping it at once.
    fn cleans_up_on_interrupt(&self) -> bool {
        false
    }
}

/// Every benchmark, in `--list` order.
pub fn registry() -> &'static [&'static dyn Benchmark] {
    &[
        &crate::rpc::RpcBenchmark,
        &crate::rpc::RpcBreakdown,
        &crate::ingest::IngestBenchmark,
        &crate::series::BENCHMARK,
        &crate::auth::BENCHMARK,
        &crate::signing::SigningBenchmark,
        &crate::rollup::RollupBenchmark,
    ]
}

/// What a benchmark runs with.
pub struct Context {
    /// The broker.
    pub amqp_uri: BrokerUri,
    /// Warm-up and measured time of each point.
    pub shape: LoadShape,
    /// Reads CPU time at the edges of each measured window.
    pub cpu: CpuProbe,
    /// Deletes the broker objects the benchmark declared.
    pub janitor: Janitor,
    /// Cancelled when the run is interrupted: background servers a
    /// benchmark starts stop on a child of it, so that none re-declares
    /// its queue after the janitor has deleted it.
    pub stop: CancellationToken,
    /// `--no-build`: use the service binaries as they are.
    pub no_build: bool,
    only: Vec<String>,
    run_id: String,
}

impl Context {
    /// A name unique to this run for `what`, usable as an RPC namespace:
    /// `bench-<run id>-<what>`.
    pub fn namespace(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.run_id)
    }

    /// Whether the measurement labelled `label` is to run (see `--only`).
    pub fn selected(&self, label: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| label.contains(p.as_str()))
    }
}

/// Runs the benchmark named in `options`, prints its table, then its figures
/// as one JSON line.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let name = options.name.as_deref().unwrap_or_default();
    let Some(benchmark) = registry().iter().find(|b| b.name() == name) else {
        let known: Vec<_> = registry().iter().map(|b| b.name()).collect();
        anyhow::bail!("no benchmark named {name:?}; known: {}", known.join(", "));
    };
    if let Some(env) = benchmark.missing_environment()? {
        return rerun_with(&env).await;
    }
    let ctx = Context {
        amqp_uri: options.amqp_uri,
        shape: LoadShape {
            warmup: Duration::from_secs_f64(options.warmup_secs),
            duration: Duration::from_secs_f64(options.duration_secs),
            rounds: options.rounds,
        },
        cpu: CpuProbe::new(options.broker_pid),
        janitor: Janitor::default(),
        stop: CancellationToken::new(),
        no_build: options.no_build,
        only: options.only,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
    };
    let started_unix_ms = platform::clock::now_unix_ms();
    let load_before = crate::cpu::load_average_1m();
    eprintln!(
        "bench {}: broker {}, {:?} measured per variant and point in {} slices, each after {:?} of warm-up",
        benchmark.name(),
        ctx.amqp_uri,
        ctx.shape.duration,
        ctx.shape.rounds,
        ctx.shape.warmup,
    );
    let outcome = {
        let run = benchmark.run(&ctx);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            _ = tokio::signal::ctrl_c() => {
                ctx.stop.cancel();
                if benchmark.cleans_up_on_interrupt() {
                    eprintln!("bench: interrupted: cleaning up (Ctrl-C again to leave things behind)");
                    tokio::select! {
                        r = &mut run => r.and(Err(anyhow::anyhow!("interrupted"))),
                        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted twice: cleanup abandoned")),
                    }
                } else {
                    Err(anyhow::anyhow!("interrupted"))
                }
            }
        }
    };
    ctx.stop.cancel();
    if let Err(e) = ctx.janitor.sweep(&ctx.amqp_uri).await {
        eprintln!("bench: cleanup failed: {e:#}");
    }
    let mut report = outcome?;
    report.figure("benchmark", benchmark.name());
    report.figure("started_unix_ms", started_unix_ms);
    report.figure("warmup_secs", ctx.shape.warmup.as_secs_f64());
    report.figure("measured_secs", ctx.shape.duration.as_secs_f64());
    report.figure("rounds", ctx.shape.rounds);
    if let (Some(before), Some(after)) = (load_before, crate::cpu::load_average_1m()) {
        report.note(format!(
            "machine: {} CPUs, 1-minute load average {before:.2} before, {after:.2} after \
             (much above what the benchmark itself adds means other work skewed it)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        report.figure("loadavg_1m_before", crate::report::rounded(before, 2));
        report.figure("loadavg_1m_after", crate::report::rounded(after, 2));
    }
    report.print();
    Ok(())
}

/// Runs this same command in a child process with `env` added, waits for
/// it (a Ctrl-C reaches the child too: this process waits for it to clean
/// up), and fails if it failed.
async fn rerun_with(env: &[(String, String)]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .spawn()?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                anyhow::ensure!(status.success(), "the benchmark process {status}");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
