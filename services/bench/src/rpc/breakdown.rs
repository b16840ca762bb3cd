//! The `rpc-breakdown` benchmark: where the framework's time goes. The raw
//! baseline takes on the framework's wire choices one at a time (queue
//! arguments, headers, per-message expiration, then the JSON envelope) before the
//! framework itself is measured; each step's change in throughput and CPU
//! per call is that choice's cost, and what remains between the last raw
//! step and the framework is the framework's in-process machinery.

use super::framework::Framework;
use super::raw::{Raw, RawStyle};
use super::{BODIES, Point, Variant, cell, figures, measure, shape_text};
use crate::harness::{Benchmark, Context};
use crate::load::Measured;
use crate::report::{Report, rounded};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

/// The load the breakdown is measured at: where the target applies.
const IN_FLIGHT: [usize; 1] = [128];

/// The raw steps, cumulative, each with its figure label.
const STEPS: [(&str, RawStyle); 5] = [
    (
        "raw",
        RawStyle {
            queue_args: false,
            headers: false,
            expiration: false,
            json: false,
        },
    ),
    (
        "raw_queue_args",
        RawStyle {
            queue_args: true,
            headers: false,
            expiration: false,
            json: false,
        },
    ),
    (
        "raw_headers",
        RawStyle {
            queue_args: true,
            headers: true,
            expiration: false,
            json: false,
        },
    ),
    (
        "raw_expiration",
        RawStyle {
            queue_args: true,
            headers: true,
            expiration: true,
            json: false,
        },
    ),
    (
        "raw_json",
        RawStyle {
            queue_args: true,
            headers: true,
            expiration: true,
            json: true,
        },
    ),
];

/// See the module documentation.
pub struct RpcBreakdown;

impl Benchmark for RpcBreakdown {
    fn name(&self) -> &'static str {
        "rpc-breakdown"
    }

    fn about(&self) -> &'static str {
        "raw lapin taking on the framework's queue args, headers, expiration, JSON body in turn, vs the framework (128 in flight)"
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        run(ctx).boxed()
    }
}

async fn run(ctx: &Context) -> anyhow::Result<Report> {
    let framework = Framework::start(ctx).await?;
    let mut raws = Vec::new();
    for (label, style) in STEPS {
        match Raw::start(ctx, &label.replace('_', "-"), style).await {
            Ok(raw) => raws.push(raw),
            Err(e) => {
                framework.stop().await;
                for raw in raws {
                    raw.stop().await;
                }
                return Err(e);
            }
        }
    }
    let mut variants: Vec<Variant<'_>> = STEPS
        .iter()
        .zip(&raws)
        .map(|((label, _), raw)| Variant::raw(label, raw))
        .collect();
    variants.push(Variant::framework("framework", &framework));
    let points = measure(ctx, &variants, &IN_FLIGHT, &BODIES).await;
    drop(variants);
    framework.stop().await;
    for raw in raws {
        raw.stop().await;
    }
    Ok(report(&points?, ctx))
}

fn report(points: &[Point], ctx: &Context) -> Report {
    let mut r = Report::new(
        format!(
            "rpc-breakdown: raw lapin taking on the framework's choices one at a time ({})",
            shape_text(ctx)
        ),
        &[
            "in flight",
            "body",
            "variant",
            "rps",
            "ratio vs raw",
            "p50 ms",
            "p99 ms",
            "cpu µs/call",
            "Δ cpu",
            "broker µs/call",
            "Δ broker",
        ],
    );
    for p in points {
        let raw_rps = p.get("raw").map(Measured::rps);
        let mut previous: Option<&Measured> = None;
        for (label, m) in &p.results {
            let ratio = raw_rps.map(|raw| m.rps() / raw);
            let delta = |f: fn(&Measured) -> Option<f64>| Some(f(m)? - f(previous?)?);
            r.row(vec![
                p.in_flight.to_string(),
                p.body.to_owned(),
                (*label).to_owned(),
                cell(Some(m.rps()), 0),
                cell(ratio, 2),
                cell(Some(m.latency_ms(0.5)), 2),
                cell(Some(m.latency_ms(0.99)), 2),
                cell(m.own_cpu_us_per_call(), 0),
                cell(delta(Measured::own_cpu_us_per_call), 0),
                cell(m.broker_cpu_us_per_call(), 0),
                cell(delta(Measured::broker_cpu_us_per_call), 0),
            ]);
            if let Some(ratio) = ratio.filter(|_| *label != "raw") {
                r.figure(
                    format!("ratio_vs_raw_{}_{label}", p.key()),
                    rounded(ratio, 3),
                );
            }
            figures(&mut r, p, label, m);
            previous = Some(m);
        }
    }
    r.note("Steps are cumulative: raw_queue_args = raw + the framework's queue arguments (delivery limit, at-least-once dead-lettering, reject-publish);");
    r.note("raw_headers = + its content type, deadline and trace-id headers, 32-character ids; raw_expiration = + per-message expiration; raw_json = + its JSON/base64 body.");
    r.note("cpu = this process's CPU time (caller and responder) per call; broker = the broker's (with --broker-pid); Δ = change from the row above.");
    r
}
