//! What the `series`, `auth` and `signing` benchmarks share: a benchmark
//! run on a platform the end-to-end harness starts ([`OnStack`]), a point
//! of two or more variants measured in interleaved slices (with its
//! progress lines), the figures of each variant, and the table of CPU time
//! per call by process.

use crate::cpu::CpuProbe;
use crate::harness::{Benchmark, Context};
use crate::load::{self, CallFn, Measured};
use crate::local;
use crate::report::{Report, rounded};
use futures_util::future::BoxFuture;
use tests::stack::{Stack, StackOptions};

/// A benchmark that measures the services as separate release processes:
/// [`local::start_stack`] (the test harness's variables from the local
/// run, the services built first unless `--no-build`), `measure`, then
/// [`local::stop_stack`] however it ended (also on Ctrl-C).
pub struct OnStack {
    /// The name given on the command line.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Measures on the started platform.
    pub measure: for<'a> fn(&'a Context, &'a mut Stack) -> BoxFuture<'a, anyhow::Result<Report>>,
}

impl Benchmark for OnStack {
    fn name(&self) -> &'static str {
        self.name
    }

    fn about(&self) -> &'static str {
        self.about
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        Box::pin(async move {
            let mut stack = local::start_stack(ctx, self.name, StackOptions::default()).await?;
            let outcome = (self.measure)(ctx, &mut stack).await;
            local::stop_stack(stack).await;
            outcome
        })
    }

    fn missing_environment(&self) -> anyhow::Result<Option<Vec<(String, String)>>> {
        local::missing_environment()
    }

    fn cleans_up_on_interrupt(&self) -> bool {
        true
    }
}

/// The variants measured at one load.
pub struct Point {
    /// The figure-name suffix, `<in flight>` or `<in flight>_<tail>`.
    pub key: String,
    /// What the table shows for the point, e.g. `16` or `16 × 1h`.
    pub title: String,
    /// Calls in flight.
    pub in_flight: usize,
    /// In the order given; those left out by `--only` are missing.
    pub results: Vec<(&'static str, Measured)>,
}

impl Point {
    /// The measurement of `variant`, if it ran.
    pub fn get(&self, variant: &str) -> Option<&Measured> {
        self.results
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, m)| m)
    }

    /// Calls per second of `a` over calls per second of `b` (with the same
    /// calls in flight, also the mean latency of `b` over that of `a`).
    pub fn rps_ratio(&self, a: &str, b: &str) -> Option<f64> {
        let (a, b) = (self.get(a)?, self.get(b)?);
        (b.rps() > 0.0 && a.completed > 0).then(|| a.rps() / b.rps())
    }
}

/// Measures `variants` at `in_flight` calls in flight, interleaved slice
/// by slice (see [`load::interleaved`]); `tail` extends the labels
/// (`<variant>/<in flight>/<tail>`, matched by `--only`) and the figure
/// names. `None` when `--only` leaves none of them.
pub async fn measure(
    ctx: &Context,
    probe: &CpuProbe,
    in_flight: usize,
    tail: &str,
    variants: Vec<(&'static str, CallFn)>,
    offset: usize,
) -> anyhow::Result<Option<Point>> {
    let label = |variant: &str| {
        if tail.is_empty() {
            format!("{variant}/{in_flight}")
        } else {
            format!("{variant}/{in_flight}/{tail}")
        }
    };
    let (names, calls): (Vec<&'static str>, Vec<CallFn>) = variants
        .into_iter()
        .filter(|(v, _)| ctx.selected(&label(v)))
        .unzip();
    if names.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(!ctx.stop.is_cancelled(), "interrupted");
    let measured = tokio::select! {
        r = load::interleaved(ctx.shape, in_flight, probe, &calls, offset, &load::nothing_before) => r?,
        () = ctx.stop.cancelled() => anyhow::bail!("interrupted"),
    };
    for (name, m) in names.iter().zip(&measured) {
        eprintln!(
            "bench: {}: {:.1} calls/s, p50 {:.2} ms, p99 {:.2} ms, {} µs of bench CPU per call{}",
            label(name),
            m.rps(),
            m.latency_ms(0.5),
            m.latency_ms(0.99),
            cell(m.own_cpu_us_per_call(), 0),
            match &m.first_error {
                Some(e) => format!(", {} errors (first: {e})", m.errors),
                None => String::new(),
            }
        );
    }
    Ok(Some(Point {
        key: if tail.is_empty() {
            in_flight.to_string()
        } else {
            format!("{in_flight}_{tail}")
        },
        title: if tail.is_empty() {
            in_flight.to_string()
        } else {
            format!("{in_flight} × {tail}")
        },
        in_flight,
        results: names.into_iter().zip(measured).collect(),
    }))
}

/// A table cell: `v` with `decimals` places, `-` when absent.
pub fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// Sets the figures of every variant of `point`: `<variant>_rps_<key>`,
/// `<variant>_p50_ms_<key>`, `<variant>_p99_ms_<key>`,
/// `<variant>_errors_<key>` and `<variant>_cpu_us_per_call_<process>_<key>`
/// (the bench itself and each watched process); a note per variant that
/// failed.
pub fn variant_figures(r: &mut Report, probe: &CpuProbe, point: &Point) {
    let key = &point.key;
    for (variant, m) in &point.results {
        r.figure(format!("{variant}_rps_{key}"), rounded(m.rps(), 2));
        r.figure(
            format!("{variant}_p50_ms_{key}"),
            rounded(m.latency_ms(0.5), 3),
        );
        r.figure(
            format!("{variant}_p99_ms_{key}"),
            rounded(m.latency_ms(0.99), 3),
        );
        r.figure(format!("{variant}_errors_{key}"), m.errors);
        for (who, us) in cpu_per_call(probe, m) {
            if let Some(us) = us {
                r.figure(
                    format!("{variant}_cpu_us_per_call_{}_{key}", who.replace('-', "_")),
                    rounded(us, 1),
                );
            }
        }
        if let Some(e) = &m.first_error {
            r.note(format!(
                "{variant} at {}: {} error(s), first: {e}",
                point.title, m.errors
            ));
        }
    }
}

/// CPU time per call (µs) of the bench and of each watched process.
fn cpu_per_call(probe: &CpuProbe, m: &Measured) -> Vec<(String, Option<f64>)> {
    std::iter::once(("bench".to_owned(), m.own_cpu_us_per_call()))
        .chain(
            probe
                .watched()
                .iter()
                .enumerate()
                .map(|(i, w)| (w.name.clone(), m.watched_cpu_us_per_call(i))),
        )
        .collect()
}

/// Adds the table of CPU time per call (µs) by process: a column per
/// variant and point, a row per process, and their total.
pub fn process_table(r: &mut Report, probe: &CpuProbe, points: &[&Point], note: &str) {
    let mut headers = vec!["process".to_owned()];
    let mut columns = Vec::new();
    for p in points {
        for (variant, m) in &p.results {
            headers.push(format!("{variant} {}", p.title));
            columns.push(cpu_per_call(probe, m));
        }
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Report::new("", &header_refs);
    let names: Vec<String> = std::iter::once("bench (client)".to_owned())
        .chain(probe.watched().iter().map(|w| w.name.clone()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut row = vec![name.clone()];
        row.extend(columns.iter().map(|c| cell(c[i].1, 0)));
        t.row(row);
    }
    let mut total = vec!["total".to_owned()];
    total.extend(
        columns
            .iter()
            .map(|c| cell(Some(c.iter().filter_map(|(_, us)| *us).sum()), 0)),
    );
    t.row(total);
    t.note(format!(
        "µs of CPU (user + system, from /proc/<pid>/stat, 10 ms ticks) per completed call over the \
         measured windows. {note}"
    ));
    r.add_table("CPU time per call by process (µs)", t);
}
