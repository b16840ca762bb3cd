//! The RPC benchmarks: round trips per second and latency of the RPC
//! framework (`RpcClient` → `RpcServer` Echo) against raw-lapin round trips
//! doing the same broker work, all measured in the same run, point by point.
//!
//! * `rpc` compares the framework with the plain raw baseline.
//! * `rpc-breakdown` adds the framework's wire choices to the raw baseline
//!   one at a time, to show where the framework's time goes.

mod breakdown;
mod framework;
mod raw;

pub use breakdown::RpcBreakdown;

use crate::harness::{Benchmark, Context};
use crate::load::{self, CallFn, Measured};
use crate::report::{Report, rounded};
use framework::Framework;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use raw::{Raw, RawStyle};

/// Calls in flight at each point of `rpc`.
const IN_FLIGHT: [usize; 3] = [1, 16, 128];
/// Request (and reply) body sizes, with the label used in figure names.
const BODIES: [(usize, &str); 2] = [(1024, "1k"), (256 * 1024, "256k")];
/// The framework should reach this share of the raw baseline's throughput
/// at the highest load.
const TARGET_RATIO: f64 = 0.8;

/// Request bytes of `len`: a cheap, non-repeating-looking pattern.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect()
}

/// One system under test: a label (used in figure names) and how to make
/// a call with a body of a given size.
struct Variant<'a> {
    label: &'static str,
    echo: Box<dyn Fn(usize) -> CallFn + Send + Sync + 'a>,
}

impl<'a> Variant<'a> {
    fn framework(label: &'static str, f: &'a Framework) -> Self {
        Self {
            label,
            echo: Box::new(|bytes| f.echo(bytes)),
        }
    }

    fn raw(label: &'static str, r: &'a Raw) -> Self {
        Self {
            label,
            echo: Box::new(|bytes| r.echo(bytes)),
        }
    }
}

/// The measurements of every selected variant at one load.
struct Point {
    in_flight: usize,
    body: &'static str,
    /// In variant order; variants left out by `--only` are missing.
    results: Vec<(&'static str, Measured)>,
}

impl Point {
    fn key(&self) -> String {
        format!("{}_{}", self.in_flight, self.body)
    }

    fn get(&self, label: &str) -> Option<&Measured> {
        self.results
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, m)| m)
    }
}

/// Measures every selected variant at every (body, in-flight) point. Each
/// variant's measured time is split into `rounds` slices taken in turn
/// with the other variants, starting each round with a different one, so
/// that drift (other load on the machine, the broker's deferred work) does
/// not favour any of them.
async fn measure(
    ctx: &Context,
    variants: &[Variant<'_>],
    in_flight: &[usize],
    bodies: &[(usize, &'static str)],
) -> anyhow::Result<Vec<Point>> {
    let shape = ctx.shape;
    let mut points = Vec::new();
    for &(body_bytes, body) in bodies {
        for &n in in_flight {
            let label = |v: &Variant<'_>| format!("{}/{n}/{body}", v.label);
            let selected: Vec<usize> = (0..variants.len())
                .filter(|&i| ctx.selected(&label(&variants[i])))
                .collect();
            if selected.is_empty() {
                continue;
            }
            let calls: Vec<CallFn> = selected
                .iter()
                .map(|&i| (variants[i].echo)(body_bytes))
                .collect();
            let results = load::interleaved(
                shape,
                n,
                &ctx.cpu,
                &calls,
                points.len(),
                &load::nothing_before,
            )
            .await?;
            let mut point = Point {
                in_flight: n,
                body,
                results: Vec::new(),
            };
            for (&i, m) in selected.iter().zip(results) {
                eprintln!(
                    "bench: {}: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms{}",
                    label(&variants[i]),
                    m.rps(),
                    m.latency_ms(0.5),
                    m.latency_ms(0.99),
                    if m.errors > 0 {
                        format!(", {} errors", m.errors)
                    } else {
                        String::new()
                    }
                );
                point.results.push((variants[i].label, m));
            }
            points.push(point);
        }
    }
    Ok(points)
}

/// Adds `label`'s figures at point `p` to the report.
fn figures(r: &mut Report, p: &Point, label: &str, m: &Measured) {
    let key = p.key();
    r.figure(format!("{label}_rps_{key}"), rounded(m.rps(), 1));
    r.figure(
        format!("{label}_p50_ms_{key}"),
        rounded(m.latency_ms(0.5), 3),
    );
    r.figure(
        format!("{label}_p99_ms_{key}"),
        rounded(m.latency_ms(0.99), 3),
    );
    r.figure(format!("{label}_errors_{key}"), m.errors);
    if let Some(us) = m.own_cpu_us_per_call() {
        r.figure(format!("{label}_cpu_us_per_call_{key}"), rounded(us, 1));
    }
    if let Some(us) = m.broker_cpu_us_per_call() {
        r.figure(
            format!("{label}_broker_cpu_us_per_call_{key}"),
            rounded(us, 1),
        );
    }
    if let Some(e) = &m.first_error {
        r.note(format!(
            "{label} at {} in flight, {} body: {} error(s), first: {e}",
            p.in_flight, p.body, m.errors
        ));
    }
}

/// How the points were measured, for report titles.
fn shape_text(ctx: &Context) -> String {
    format!(
        "closed loop; {:?} measured per variant and point, in {} alternating slices each after {:?} of warm-up",
        ctx.shape.duration, ctx.shape.rounds, ctx.shape.warmup
    )
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// See the module documentation.
pub struct RpcBenchmark;

impl Benchmark for RpcBenchmark {
    fn name(&self) -> &'static str {
        "rpc"
    }

    fn about(&self) -> &'static str {
        "RPC round trips/s, p50/p99 at 1/16/128 in flight, 1 KiB/256 KiB: framework vs raw lapin"
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        run(ctx).boxed()
    }
}

async fn run(ctx: &Context) -> anyhow::Result<Report> {
    let framework = Framework::start(ctx).await?;
    let raw = match Raw::start(ctx, "raw", RawStyle::default()).await {
        Ok(raw) => raw,
        Err(e) => {
            framework.stop().await;
            return Err(e);
        }
    };
    let variants = [
        Variant::framework("framework", &framework),
        Variant::raw("raw", &raw),
    ];
    let points = measure(ctx, &variants, &IN_FLIGHT, &BODIES).await;
    drop(variants);
    framework.stop().await;
    raw.stop().await;
    Ok(report(&points?, ctx))
}

fn report(points: &[Point], ctx: &Context) -> Report {
    let with_broker = points
        .iter()
        .flat_map(|p| &p.results)
        .any(|(_, m)| m.cpu.broker.is_some());
    let mut headers = vec![
        "in flight",
        "body",
        "fw rps",
        "raw rps",
        "ratio",
        "fw p50 ms",
        "fw p99 ms",
        "raw p50 ms",
        "raw p99 ms",
        "fw cpu µs/call",
        "raw cpu µs/call",
    ];
    if with_broker {
        headers.extend(["fw broker µs/call", "raw broker µs/call"]);
    }
    let mut r = Report::new(
        format!(
            "rpc: Echo round trips, framework vs raw lapin ({})",
            shape_text(ctx)
        ),
        &headers,
    );
    let max_in_flight = IN_FLIGHT[IN_FLIGHT.len() - 1];
    let mut min_ratio_at_max: Option<f64> = None;
    for p in points {
        let (fw, raw) = (p.get("framework"), p.get("raw"));
        let rps = |m: Option<&Measured>| m.map(Measured::rps);
        let ms = |m: Option<&Measured>, q| m.map(|m| m.latency_ms(q));
        let ratio = match (fw, raw) {
            (Some(fw), Some(raw)) => Some(fw.rps() / raw.rps()),
            _ => None,
        };
        let mut row = vec![
            p.in_flight.to_string(),
            p.body.to_owned(),
            cell(rps(fw), 0),
            cell(rps(raw), 0),
            cell(ratio, 2),
            cell(ms(fw, 0.5), 2),
            cell(ms(fw, 0.99), 2),
            cell(ms(raw, 0.5), 2),
            cell(ms(raw, 0.99), 2),
            cell(fw.and_then(Measured::own_cpu_us_per_call), 0),
            cell(raw.and_then(Measured::own_cpu_us_per_call), 0),
        ];
        if with_broker {
            row.push(cell(fw.and_then(Measured::broker_cpu_us_per_call), 0));
            row.push(cell(raw.and_then(Measured::broker_cpu_us_per_call), 0));
        }
        r.row(row);
        if let Some(ratio) = ratio {
            r.figure(format!("ratio_vs_raw_{}", p.key()), rounded(ratio, 3));
            if p.in_flight == max_in_flight {
                min_ratio_at_max = Some(min_ratio_at_max.map_or(ratio, |m| m.min(ratio)));
            }
        }
        for (label, m) in &p.results {
            figures(&mut r, p, label, m);
        }
    }
    r.note(format!(
        "ratio = framework rps / raw rps; cpu = this process's CPU time (client and server) per call{}.",
        if with_broker { "; broker = the broker's" } else { "" }
    ));
    if let Some(lowest) = min_ratio_at_max {
        let meets = lowest >= TARGET_RATIO;
        r.note(format!(
            "target: ≥ {TARGET_RATIO} × raw at {max_in_flight} in flight: {} (lowest {lowest:.2})",
            if meets { "met" } else { "NOT met" }
        ));
        r.figure(
            format!("min_ratio_vs_raw_{max_in_flight}"),
            rounded(lowest, 3),
        );
        r.figure(format!("target_vs_raw_{max_in_flight}"), TARGET_RATIO);
        r.figure("meets_target", meets);
    }
    r
}
