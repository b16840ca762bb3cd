//! `chaos`: fault injection under load, soak and saturation for the whole
//! platform on loopback. `chaos all` runs every fault scenario (`--short`:
//! the CI subset, shorter), `chaos <scenario>` one, `chaos soak` and
//! `chaos saturation` the load runs; a table per run, then as the LAST line
//! of stdout one JSON object with every run's counts. Exits non-zero when a
//! run fails (lost, duplicated or unexpected packages, a row without its
//! blob, or no recovery). See docs/reliability.md.

mod check;
mod doc;
mod load;
mod scenarios;
mod servers;
mod soak;

// The benchmark's local-run machinery (environment from `.run/state`,
// server checks, building the services), shared as source.
#[allow(dead_code)]
#[path = "../cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../local.rs"]
mod local;
/// What `local` needs of the benchmark harness.
mod harness {
    /// The one setting `local::start_stack` reads.
    #[allow(dead_code)]
    pub struct Context {
        pub no_build: bool,
    }
}

use check::Verdict;
use clap::Parser;
use load::LoadConfig;
use scenarios::{Ctx, Scenario, scenarios};
use serde_json::json;
use servers::DelaySpec;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Fault injection under load, soak and saturation (see docs/reliability.md).
#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Options {
    /// What to run: `all` (every fault scenario), a scenario name, `soak`
    /// or `saturation`; several may be given.
    #[arg(default_value = "all")]
    what: Vec<String>,

    /// Lists the scenarios and exits.
    #[arg(long)]
    list: bool,

    /// The CI form: with `all`, only the scenarios marked short, each with
    /// shorter phases and a lower rate.
    #[arg(long)]
    short: bool,

    /// New packages per second offered during a fault scenario (default 40,
    /// 20 with --short).
    #[arg(long)]
    rate: Option<f64>,

    /// Concurrent submitters.
    #[arg(long, default_value_t = 8)]
    submitters: usize,

    /// Records per package.
    #[arg(long, default_value_t = 20)]
    records: usize,

    /// Days before today the record times are spread over: every 4
    /// packages report a day no earlier package used, so daily partitions
    /// are created concurrently all through a run (0: every package reports
    /// the hour before now). Must stay under ingest's record age limit
    /// (400 days).
    #[arg(long, default_value_t = 360)]
    record_days: u32,

    /// Load before the fault, seconds (default 10, 5 with --short).
    #[arg(long)]
    warmup_secs: Option<u64>,

    /// How long a fault is held, seconds (default 10, 8 with --short; some
    /// scenarios need longer and take it).
    #[arg(long)]
    fault_secs: Option<u64>,

    /// Load after the heal, seconds (default 20, 10 with --short).
    #[arg(long)]
    after_secs: Option<u64>,

    /// After the load, how long packages under way may take, seconds.
    #[arg(long, default_value_t = 90)]
    drain_secs: u64,

    /// Length of `soak`, seconds.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,

    /// Packages per second during `soak` (below saturation).
    #[arg(long, default_value_t = 40.0)]
    soak_rate: f64,

    /// Memory before this is not judged in `soak`, seconds (default: a
    /// fifth of the run).
    #[arg(long)]
    soak_warmup_secs: Option<u64>,

    /// Length of each `saturation` step, seconds.
    #[arg(long, default_value_t = 20)]
    saturation_step_secs: u64,

    /// First offered rate of `saturation`; each step offers 1.5 times more.
    #[arg(long, default_value_t = 20.0)]
    saturation_start_rate: f64,

    /// Writes the tables into this Markdown file, between its
    /// `<!-- chaos:… -->` markers (e.g. docs/reliability.md).
    #[arg(long)]
    write_doc: Option<PathBuf>,

    /// `network-delay`: mean one-way delay added to every chunk between the
    /// services and the broker, milliseconds (below the call deadlines).
    #[arg(long, default_value_t = 200)]
    delay_ms: u64,

    /// `network-delay`: the delay is drawn uniformly from
    /// `delay-ms ± delay-jitter-ms`.
    #[arg(long, default_value_t = 100)]
    delay_jitter_ms: u64,

    /// `network-delay`: one-way delay of a second phase that makes a
    /// submission's round trips exceed the 10 s call deadline, milliseconds
    /// (± a tenth of it, at most `--delay-jitter-ms`); 0 skips it (default
    /// 2000, 0 with --short). From about 2300 the 5 s publisher-confirm
    /// timeout (two crossings) is met first: 503 disconnected, not 504.
    #[arg(long)]
    deadline_delay_ms: Option<u64>,

    /// Use the service binaries already built next to this one.
    #[arg(long)]
    no_build: bool,
}

/// Runs this same command again with `env` added (a process cannot safely
/// change its own environment once threads run) and passes on its status.
fn rerun_with(env: &[(String, String)]) -> ExitCode {
    let status = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
    });
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("chaos: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chaos: cannot run itself again: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    if options.list {
        for s in scenarios() {
            println!(
                "{:<18} {}{}",
                s.name,
                s.injected,
                if s.short { " [short]" } else { "" }
            );
        }
        println!(
            "{:<18} a steady rate for --soak-secs: memory, errors, p99 per minute",
            "soak"
        );
        println!(
            "{:<18} the rate stepped up: the highest rate sustained",
            "saturation"
        );
        return ExitCode::SUCCESS;
    }
    match local::missing_environment() {
        Ok(Some(env)) => return rerun_with(&env),
        Ok(None) => {}
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One selected run.
enum Job {
    Fault(Scenario),
    Soak,
    Saturation,
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Fault(s) => s.name,
            Job::Soak => "soak",
            Job::Saturation => "saturation",
        }
    }
}

fn select(options: &Options) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for what in &options.what {
        match what.as_str() {
            "all" => jobs.extend(
                scenarios()
                    .into_iter()
                    .filter(|s| !options.short || s.short)
                    .map(Job::Fault),
            ),
            "soak" => jobs.push(Job::Soak),
            "saturation" => jobs.push(Job::Saturation),
            name => {
                let s = scenarios()
                    .into_iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = scenarios().iter().map(|s| s.name).collect();
                        anyhow::anyhow!(
                            "no scenario {name:?}; known: all, {}, soak, saturation",
                            known.join(", ")
                        )
                    })?;
                jobs.push(Job::Fault(s));
            }
        }
    }
    Ok(jobs)
}

async fn run(options: Options) -> anyhow::Result<bool> {
    let jobs = select(&options)?;
    let repo = local::repository_root()?;
    local::check_servers().await?;
    if !options.no_build {
        local::build_services(&repo, &tests::stack::BINARIES).await?;
    }
    local::check_binaries(&tests::stack::BINARIES)?;
    let short = options.short;
    let secs = |v: Option<u64>, full: u64, short_v: u64| {
        Duration::from_secs(v.unwrap_or(if short { short_v } else { full }))
    };
    let ctx = Ctx {
        repo: repo.clone(),
        load: LoadConfig {
            rate: options.rate.unwrap_or(if short { 20.0 } else { 40.0 }),
            records: options.records.max(1),
            record_days: options.record_days,
            attempt_timeout: Duration::from_secs(15),
            retry_after_cap: Duration::from_secs(2),
            give_up_after: Duration::from_secs(120),
        },
        submitters: options.submitters.max(1),
        warmup: secs(options.warmup_secs, 10, 5),
        fault: secs(options.fault_secs, 10, 8),
        after: secs(options.after_secs, 20, 10),
        drain: Duration::from_secs(options.drain_secs),
        verify_blobs: 25,
        delay: DelaySpec::around(
            Duration::from_millis(options.delay_ms),
            Duration::from_millis(options.delay_jitter_ms),
        ),
        deadline_delay: match options
            .deadline_delay_ms
            .unwrap_or(if short { 0 } else { 2000 })
        {
            0 => None,
            ms => Some(DelaySpec::around(
                Duration::from_millis(ms),
                Duration::from_millis(options.delay_jitter_ms.min(ms / 10)),
            )),
        },
    };
    let started_unix_ms = platform::clock::now_unix_ms();
    let when = platform::clock::now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let load_before = cpu::load_average_1m();
    let when = format!(
        "{} UTC{}",
        when.get(..16).unwrap_or(&when).replace('T', " "),
        load_before.map_or(String::new(), |l| format!(", load {l:.1}"))
    );

    let mut results: Vec<(Job, Verdict)> = Vec::new();
    for job in jobs {
        let name = job.name();
        eprintln!("chaos: === {name} ===");
        let ctx2 = ctx.clone();
        let soak_cfg = soak::SoakConfig {
            duration: Duration::from_secs(options.soak_secs),
            rate: options.soak_rate,
            warmup: Duration::from_secs(options.soak_warmup_secs.unwrap_or(options.soak_secs / 5)),
            rss_band: 0.10,
        };
        let sat_cfg = soak::SaturationConfig {
            start_rate: options.saturation_start_rate,
            factor: 1.5,
            step: Duration::from_secs(options.saturation_step_secs),
            max_steps: 12,
            keep_up: 0.95,
            max_p99: Duration::from_secs(2),
        };
        let run = match &job {
            Job::Fault(s) => {
                let f = s.run;
                tokio::spawn(async move { f(&ctx2).await })
            }
            Job::Soak => {
                let mut c = ctx2;
                c.submitters = c.submitters.max(8);
                tokio::spawn(async move { soak::soak(&c, &soak_cfg).await })
            }
            Job::Saturation => {
                let mut c = ctx2;
                c.submitters = c.submitters.max(48);
                tokio::spawn(async move { soak::saturation(&c, &sat_cfg).await })
            }
        };
        let verdict = match run.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let mut v = Verdict::default();
                v.fail(format!("did not run to the end: {e:#}"));
                v
            }
            Err(e) => {
                let mut v = Verdict::default();
                v.fail(format!("panicked: {e}"));
                v
            }
        };
        eprintln!(
            "chaos: {name}: {} — {} sent, {} acknowledged, lost {}, duplicated {}, unexpected {}, recovered {}, rows without blob {}, errors {:?}, recovery {:?} ms",
            if verdict.passed() { "PASS" } else { "FAIL" },
            verdict.packages,
            verdict.acknowledged,
            verdict.lost,
            verdict.duplicated,
            verdict.unexpected,
            verdict.recovered,
            verdict.rows_without_blob,
            verdict.errors,
            verdict.recovery_ms,
        );
        for f in &verdict.failures {
            eprintln!("chaos: {name}: failure: {f}");
        }
        for n in &verdict.notes {
            eprintln!("chaos: {name}: note: {n}");
        }
        results.push((job, verdict));
    }

    // The table for people.
    println!(
        "{:<18} {:>6} {:>6} {:>8} {:>5} {:>5} {:>5} {:>6} {:>7} {:>7} {:>10} {:>10}  result",
        "run",
        "sent",
        "acked",
        "attempts",
        "lost",
        "dup",
        "unexp",
        "recov",
        "noblob",
        "errors",
        "recovery",
        "max gap"
    );
    for (job, v) in &results {
        let ms = |x: Option<u64>| x.map_or("-".to_owned(), |m| format!("{m} ms"));
        println!(
            "{:<18} {:>6} {:>6} {:>8} {:>5} {:>5} {:>5} {:>6} {:>7} {:>7} {:>10} {:>10}  {}",
            job.name(),
            v.packages,
            v.acknowledged,
            v.attempts,
            v.lost,
            v.duplicated,
            v.unexpected,
            v.recovered,
            v.rows_without_blob,
            v.errors.values().sum::<u64>(),
            ms(v.recovery_ms),
            ms(v.max_ack_gap_ms),
            if v.passed() {
                "pass".to_owned()
            } else {
                format!("FAIL: {}", v.failures.join("; "))
            }
        );
    }

    if let Some(path) = &options.write_doc {
        let order = scenarios();
        let faults: Vec<(&Scenario, &Verdict)> = results
            .iter()
            .filter_map(|(j, v)| match j {
                Job::Fault(s) => Some((s, v)),
                _ => None,
            })
            .collect();
        if !faults.is_empty() {
            doc::write_faults(path, &order, &faults, &when, short)?;
        }
        for (job, v) in &results {
            match job {
                Job::Soak => doc::write_soak(path, v, &when)?,
                Job::Saturation => doc::write_saturation(path, v, &when)?,
                Job::Fault(_) => {}
            }
        }
        eprintln!("chaos: wrote the tables into {}", path.display());
    }

    let all_passed = results.iter().all(|(_, v)| v.passed());
    let mut runs = serde_json::Map::new();
    for (job, v) in &results {
        runs.insert(job.name().to_owned(), v.json());
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, v)| !v.passed())
        .map(|(j, _)| j.name())
        .collect();
    println!(
        "{}",
        json!({
            "chaos": runs,
            "pass": all_passed,
            "failed": failed,
            "short": short,
            "rate": ctx.load.rate,
            "submitters": ctx.submitters,
            "records": ctx.load.records,
            "started_unix_ms": started_unix_ms,
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": cpu::load_average_1m(),
        })
    );
    Ok(all_passed)
}
