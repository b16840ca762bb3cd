//! Closed-loop load: N tasks each issue calls back to back, through an
//! unmeasured warm-up and then a measured window. Calls that complete inside
//! the window are counted and their latency recorded in per-task HDR
//! histograms (fixed size, so memory does not grow with the call count);
//! CPU time is sampled at the window's edges.

use crate::cpu::{CpuProbe, CpuSample};
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long each point is measured, and in how many slices.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Load applied but not measured before each slice, so the pipeline
    /// fills and queues settle.
    pub warmup: Duration,
    /// Measured time of one variant at one point, all slices together.
    pub duration: Duration,
    /// Slices the measured time is split into; benchmarks that compare
    /// variants alternate between them slice by slice, so that background
    /// load and broker housekeeping fall on every variant alike.
    pub rounds: u32,
}

impl LoadShape {
    /// The measured window of one slice.
    pub fn slice(&self) -> Duration {
        self.duration / self.rounds.max(1)
    }
}

/// One call of the system under test: `Ok` when the reply came back intact.
pub type CallFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What one point measured.
#[derive(Debug)]
pub struct Measured {
    /// Calls that succeeded inside the window.
    pub completed: u64,
    /// Calls that failed inside the window.
    pub errors: u64,
    /// The first failure seen, for the report.
    pub first_error: Option<String>,
    /// Length of the window.
    pub window: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency_us: Histogram<u64>,
    /// CPU time spent during the window.
    pub cpu: CpuSample,
}

impl Measured {
    /// Successful round trips per second.
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return f64::NAN;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Adds another slice's measurements to these.
    pub fn absorb(&mut self, other: Measured) -> anyhow::Result<()> {
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.window += other.window;
        self.latency_us.add(&other.latency_us)?;
        self.cpu = self.cpu.plus(&other.cpu);
        Ok(())
    }

    /// CPU time per successful call, in microseconds, of this process.
    pub fn own_cpu_us_per_call(&self) -> Option<f64> {
        per_call(self.cpu.own, self.completed)
    }

    /// CPU time per successful call, in microseconds, of the broker.
    pub fn broker_cpu_us_per_call(&self) -> Option<f64> {
        per_call(self.cpu.broker, self.completed)
    }

    /// CPU time per successful call, in microseconds, of the `i`-th
    /// watched process (see [`CpuProbe::watching`]).
    pub fn watched_cpu_us_per_call(&self, i: usize) -> Option<f64> {
        per_call(self.cpu.watched.get(i).copied().flatten(), self.completed)
    }
}

fn per_call(cpu: Option<Duration>, calls: u64) -> Option<f64> {
    (calls > 0).then_some(())?;
    Some(cpu?.as_secs_f64() * 1e6 / calls as f64)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: about 140 KiB per task.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What one task saw.
struct Tally {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

/// Runs `in_flight` tasks calling `call` back to back: `warmup`, then a
/// measured `window`. Calls still in flight at the end are awaited, not counted.
pub async fn closed_loop(
    warmup: Duration,
    window: Duration,
    in_flight: usize,
    cpu: &CpuProbe,
    call: CallFn,
) -> anyhow::Result<Measured> {
    let from = Instant::now() + warmup;
    let to = from + window;
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        tasks.spawn(worker(call.clone(), from, to));
    }
    tokio::time::sleep_until(from).await;
    let before = cpu.sample();
    tokio::time::sleep_until(to).await;
    let spent = cpu.sample().since(&before);

    let mut measured = Measured {
        completed: 0,
        errors: 0,
        first_error: None,
        window,
        latency_us: new_histogram(),
        cpu: spent,
    };
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        measured.completed += tally.completed;
        measured.errors += tally.errors;
        if measured.first_error.is_none() {
            measured.first_error = tally.first_error;
        }
        measured.latency_us.add(&tally.latency_us)?;
    }
    Ok(measured)
}

async fn worker(call: CallFn, from: Instant, to: Instant) -> Tally {
    let mut tally = Tally {
        completed: 0,
        errors: 0,
        first_error: None,
        latency_us: new_histogram(),
    };
    loop {
        let began = Instant::now();
        if began >= to {
            return tally;
        }
        let outcome = call().await;
        let ended = Instant::now();
        let counted = ended >= from && ended < to;
        match outcome {
            Ok(()) if counted => {
                let us = ended.duration_since(began).as_micros() as u64;
                tally.latency_us.saturating_record(us.max(1));
                tally.completed += 1;
            }
            Ok(()) => {}
            Err(e) => {
                if counted {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e);
                }
                // Do not spin on a call that fails at once.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Measures each of `calls` at `in_flight` calls in flight for
/// `shape.duration`, cut into `shape.rounds` slices taken in turn with the
/// others, starting each round with a different one (round `r` starts with
/// call `(r + offset) % n`), so that drift (other load on the machine,
/// servers' deferred work) does not favour any of them. `before_slice(k)`
/// runs, unmeasured, before each slice of call `k` (e.g. to prepare the
/// inputs the slice will use).
pub async fn interleaved<'a>(
    shape: LoadShape,
    in_flight: usize,
    cpu: &CpuProbe,
    calls: &[CallFn],
    offset: usize,
    before_slice: &(dyn Fn(usize) -> BoxFuture<'a, anyhow::Result<()>> + Sync),
) -> anyhow::Result<Vec<Measured>> {
    let mut results: Vec<Option<Measured>> = calls.iter().map(|_| None).collect();
    for round in 0..shape.rounds as usize {
        for turn in 0..calls.len() {
            let k = (turn + round + offset) % calls.len();
            before_slice(k).await?;
            let m = closed_loop(
                shape.warmup,
                shape.slice(),
                in_flight,
                cpu,
                calls[k].clone(),
            )
            .await?;
            match &mut results[k] {
                Some(total) => total.absorb(m)?,
                slot => *slot = Some(m),
            }
        }
    }
    results
        .into_iter()
        .map(|m| m.ok_or_else(|| anyhow::anyhow!("no slice measured (rounds = 0)")))
        .collect()
}

/// A `before_slice` for [`interleaved`] that does nothing.
pub fn nothing_before(_: usize) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async { Ok(()) })
}
