//! Load without faults: `soak` (a steady rate below saturation for a long
//! time: resident memory of every service sampled from `/proc`, flat within
//! 10 % after warm-up; no error; p99 latency per minute) and `saturation`
//! (the offered rate stepped up until the platform no longer keeps up:
//! the highest rate sustained).

use crate::check::Verdict;
use crate::scenarios::{Ctx, Run, start_stack, stop_stack};
use crate::servers::proc_stats;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::stack::StackOptions;

/// Soak settings.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Length of the run.
    pub duration: Duration,
    /// Packages per second offered.
    pub rate: f64,
    /// Memory before this is not judged.
    pub warmup: Duration,
    /// Allowed spread of resident memory after warm-up.
    pub rss_band: f64,
}

/// Saturation settings.
#[derive(Debug, Clone)]
pub struct SaturationConfig {
    /// The first offered rate.
    pub start_rate: f64,
    /// Each step offers this many times the previous rate.
    pub factor: f64,
    /// Length of each step.
    pub step: Duration,
    /// At most this many steps.
    pub max_steps: usize,
    /// A step is sustained when the acknowledged rate reaches this share of
    /// the offered one, with no error and p99 at most `max_p99`.
    pub keep_up: f64,
    pub max_p99: Duration,
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// One `/proc` sample of every service.
struct Sample {
    at: Duration,
    /// (service, RSS KiB, fds, threads).
    services: Vec<(String, u64, u64, u64)>,
}

/// Runs the soak and judges it.
pub async fn soak(ctx: &Ctx, cfg: &SoakConfig) -> anyhow::Result<Verdict> {
    let mut ctx = ctx.clone();
    ctx.load.rate = cfg.rate;
    let mut stack = start_stack(&ctx, "soak", StackOptions::default()).await?;
    let outcome = async {
        let run = Run::start(&ctx, "soak", &stack).await?;
        let names = stack.process_names();
        let pids: Vec<(String, u32)> = names
            .iter()
            .map(|n| (n.clone(), stack.process(n).id()))
            .collect();
        let mut samples = Vec::new();
        let every = Duration::from_secs(5);
        let mut t = Duration::ZERO;
        while t <= cfg.duration {
            run.until(t).await;
            samples.push(Sample {
                at: run.now(),
                services: pids
                    .iter()
                    .filter_map(|(n, pid)| {
                        proc_stats(*pid).map(|s| (n.clone(), s.rss_kib, s.fds, s.threads))
                    })
                    .collect(),
            });
            if t.as_secs().is_multiple_of(60) {
                let acked = run.history().acks().len();
                eprintln!(
                    "chaos soak: {:>5} s: {acked} acknowledged, {} failed attempts",
                    t.as_secs(),
                    run.history().failures_between(Duration::ZERO, run.now())
                );
            }
            t += every;
        }
        let history = run.history().clone();
        let mut v = run
            .finish(&ctx, cfg.duration, &stack.ingest_db_url, &stack.evidence)
            .await?;
        // Per minute: acknowledgements, p99 and errors.
        let acks = history.acks();
        let minutes = cfg.duration.as_secs().div_ceil(60).max(1);
        let mut per_minute = Vec::new();
        for m in 0..minutes {
            let (from, to) = (Duration::from_secs(m * 60), Duration::from_secs((m + 1) * 60));
            let mut lat: Vec<u64> = acks
                .iter()
                .filter(|(at, _)| *at >= from && *at < to)
                .map(|(_, l)| l.as_millis() as u64)
                .collect();
            lat.sort_unstable();
            per_minute.push(json!({
                "minute": m + 1,
                "acknowledged": lat.len(),
                "p50_ms": percentile(&lat, 0.5),
                "p99_ms": percentile(&lat, 0.99),
                "errors": history.failures_between(from, to),
            }));
        }
        // Memory after warm-up, per service.
        let mut memory = BTreeMap::new();
        for (name, _) in &pids {
            let series: Vec<(Duration, u64, u64, u64)> = samples
                .iter()
                .filter_map(|s| {
                    s.services
                        .iter()
                        .find(|(n, ..)| n == name)
                        .map(|(_, r, f, th)| (s.at, *r, *f, *th))
                })
                .collect();
            let after: Vec<&(Duration, u64, u64, u64)> =
                series.iter().filter(|(at, ..)| *at >= cfg.warmup).collect();
            let (Some(first), Some(last)) = (after.first(), after.last()) else {
                v.fail(format!("{name}: no memory sample after warm-up (did it exit?)"));
                continue;
            };
            let min = after.iter().map(|s| s.1).min().unwrap_or(0);
            let max = after.iter().map(|s| s.1).max().unwrap_or(0);
            let spread = if min > 0 {
                (max - min) as f64 / min as f64
            } else {
                0.0
            };
            if spread > cfg.rss_band {
                v.fail(format!(
                    "{name}: resident memory spread {:.1} % after warm-up ({} → {} KiB, min {min}, max {max})",
                    spread * 100.0,
                    first.1,
                    last.1
                ));
            }
            memory.insert(
                name.clone(),
                json!({
                    "rss_kib_at_start": series.first().map(|s| s.1),
                    "rss_kib_after_warmup": first.1,
                    "rss_kib_end": last.1,
                    "rss_kib_min": min,
                    "rss_kib_max": max,
                    "rss_spread_pct": (spread * 1000.0).round() / 10.0,
                    "fds_after_warmup": first.2,
                    "fds_end": last.2,
                    "threads_after_warmup": first.3,
                    "threads_end": last.3,
                }),
            );
        }
        let errors: u64 = v.errors.values().sum();
        if errors > 0 {
            v.fail(format!("{errors} failed attempts during the soak"));
        }
        v.extra.insert("rate".into(), json!(cfg.rate));
        v.extra.insert("records".into(), json!(ctx.load.records));
        v.extra.insert("soak_secs".into(), json!(cfg.duration.as_secs()));
        v.extra.insert("warmup_secs".into(), json!(cfg.warmup.as_secs()));
        v.extra.insert("per_minute".into(), json!(per_minute));
        v.extra.insert("memory".into(), json!(memory));
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    outcome
}

/// Steps the rate up until the platform no longer keeps up.
pub async fn saturation(ctx: &Ctx, cfg: &SaturationConfig) -> anyhow::Result<Verdict> {
    let mut ctx = ctx.clone();
    ctx.load.rate = cfg.start_rate;
    let stack = start_stack(&ctx, "saturation", StackOptions::default()).await?;
    let outcome = async {
        let run = Run::start(&ctx, "saturation", &stack).await?;
        let history = run.history().clone();
        let mut steps = Vec::new();
        let mut best: Option<f64> = None;
        let mut peak: f64 = 0.0;
        let mut rate = cfg.start_rate;
        let mut t = Duration::ZERO;
        for _ in 0..cfg.max_steps {
            run.set_rate(rate);
            // The first second of a step lets the previous one's backlog go.
            let from = t + Duration::from_secs(1).min(cfg.step / 4);
            t += cfg.step;
            run.until(t).await;
            let window = (t - from).as_secs_f64();
            let mut lat: Vec<u64> = history
                .acks()
                .iter()
                .filter(|(at, _)| *at >= from && *at < t)
                .map(|(_, l)| l.as_millis() as u64)
                .collect();
            lat.sort_unstable();
            let achieved = lat.len() as f64 / window;
            let errors = history.failures_between(from, t);
            let p99 = percentile(&lat, 0.99);
            let kept_up = achieved >= cfg.keep_up * rate
                && errors == 0
                && p99.is_some_and(|p| p <= cfg.max_p99.as_millis() as u64);
            eprintln!(
                "chaos saturation: offered {rate:>7.1}/s: acknowledged {achieved:>7.1}/s, p99 {} ms, {errors} errors: {}",
                p99.map_or("-".into(), |p| p.to_string()),
                if kept_up { "sustained" } else { "not sustained" }
            );
            peak = peak.max(achieved);
            steps.push(json!({
                "offered_per_s": (rate * 10.0).round() / 10.0,
                "acknowledged_per_s": (achieved * 10.0).round() / 10.0,
                "p50_ms": percentile(&lat, 0.5),
                "p99_ms": p99,
                "errors": errors,
                "sustained": kept_up,
            }));
            if !kept_up {
                break;
            }
            best = Some(best.map_or(achieved, |b: f64| b.max(achieved)));
            rate *= cfg.factor;
        }
        let mut v = run
            .finish(&ctx, t, &stack.ingest_db_url, &stack.evidence)
            .await?;
        v.extra.insert("steps".into(), json!(steps));
        v.extra.insert(
            "max_sustained_per_s".into(),
            json!(best.map(|b| (b * 10.0).round() / 10.0)),
        );
        v.extra
            .insert("peak_acknowledged_per_s".into(), json!((peak * 10.0).round() / 10.0));
        v.extra.insert("submitters".into(), json!(ctx.submitters));
        v.extra.insert("records".into(), json!(ctx.load.records));
        // Overload answers past saturation are expected (503 from the
        // upload slots): only data faults fail this run.
        v.failures.retain(|f| !f.contains("never acknowledged"));
        if best.is_none() {
            v.fail("not even the first rate was sustained");
        }
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    outcome
}
