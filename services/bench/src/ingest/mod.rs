//! The `ingest` benchmark: signed packages end to end over HTTP (gateway →
//! RabbitMQ → ingest → registry, S3, PostgreSQL), with 1 and 16 concurrent
//! submitters and packages of 100 and 10,000 records, beside raw baselines
//! measured in the same run on the same records and bytes: binary COPY into
//! the same table, signature verification alone, and S3 PUT.
//!
//! The services run as separate processes built in this binary's profile
//! (release with `cargo run --release`), started by the end-to-end test
//! harness (`tests::stack`: registry, auth, ingest, query and gateway, of
//! which registry, ingest and gateway take part in a submission) with their
//! own databases, bucket, RPC namespace and Vault prefix on the local run's
//! servers (`deployment/stack-up.sh`). Everything it creates is removed at the end,
//! also on error or Ctrl-C. See docs/benchmarks.md.

mod baselines;
mod scrape;
mod workload;

use crate::cpu::Scope;
use crate::harness::{Benchmark, Context};
use crate::load::{self, CallFn, Measured};
use crate::local;
use crate::report::{Report, rounded};
use baselines::{Backend, CopyWriters, VerifyRate};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use scrape::{CPU_STAGES, IngestDelta, STAGES, Scrape};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use workload::{Idle, Pools, Submitter};

/// Concurrent submitters at each point.
const SUBMITTERS: [usize; 2] = [1, 16];
/// Records per package, with the label used in figure names.
const SIZES: [(usize, &str); 2] = [(100, "100"), (10_000, "10k")];
/// records/s end to end with 10,000-record packages and 16 submitters
/// should reach this share of raw COPY's records/s.
const TARGET_RECORDS_VS_COPY: f64 = 0.5;
/// Verifications per CPU second inside ingest should reach this share of
/// the fastest backend's, measured alone on one core.
const TARGET_VERIFY_VS_FASTEST: f64 = 0.8;

/// The variants measured at each point, in table order.
const VARIANTS: [&str; 3] = ["e2e", "copy", "s3"];

/// See the module documentation.
pub struct IngestBenchmark;

impl Benchmark for IngestBenchmark {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn about(&self) -> &'static str {
        "packages/s, records/s end to end over HTTP (1/16 submitters, 100/10k records) vs raw COPY, verify, S3 PUT"
    }

    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, anyhow::Result<Report>> {
        run(ctx).boxed()
    }

    fn missing_environment(&self) -> anyhow::Result<Option<Vec<(String, String)>>> {
        local::missing_environment()
    }

    fn cleans_up_on_interrupt(&self) -> bool {
        true
    }
}

async fn run(ctx: &Context) -> anyhow::Result<Report> {
    let mut stack = local::start_stack(
        ctx,
        "ingest",
        StackOptions {
            // The production default: the tests' 0 makes every package ask
            // the registry for its key.
            ingest_env: vec![("TALLYHOUSE_KEY_CACHE_TTL_MS", "2000".into())],
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = measure_all(ctx, &mut stack).await;
    local::stop_stack(stack).await;
    outcome
}

/// Everything measured at one (submitters, size) point.
struct Point {
    submitters: usize,
    records: usize,
    size: &'static str,
    /// Mean body size, bytes.
    body_bytes: f64,
    /// By variant label; those left out by `--only` are missing.
    results: Vec<(&'static str, Measured)>,
    /// Ingest's metrics over the point (every e2e call, warm-ups included).
    ingest: IngestDelta,
    /// Packages made inside measured calls (the pool ran dry).
    made_late: u64,
}

impl Point {
    fn key(&self) -> String {
        format!("{}_{}", self.submitters, self.size)
    }

    fn get(&self, label: &str) -> Option<&Measured> {
        self.results
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, m)| m)
    }
}

/// The verification baselines of one package size.
struct VerifyPoint {
    size: &'static str,
    /// (backend, threads, rate).
    runs: Vec<(Backend, usize, VerifyRate)>,
}

impl VerifyPoint {
    /// The backend with the most verifications per CPU second on one
    /// thread, and that rate.
    fn fastest(&self) -> Option<(Backend, f64)> {
        self.runs
            .iter()
            .filter(|(_, t, _)| *t == 1)
            .map(|(b, _, r)| (*b, r.per_cpu_sec()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

async fn measure_all(ctx: &Context, stack: &mut Stack) -> anyhow::Result<Report> {
    let most = SUBMITTERS.iter().copied().max().unwrap_or(1);
    let mut submitters = Vec::new();
    for i in 1..=most {
        let id = format!("bench-{i:02}");
        let (key, key_id) = stack.submitter_with_key(&id).await;
        submitters.push(Submitter {
            id: rpc_contracts::SubmitterId::parse(id).map_err(|e| anyhow::anyhow!(e))?,
            key,
            key_id,
        });
    }
    let submitters = Arc::new(submitters);

    let mut watched = local::watched_services(stack, &["gateway", "ingest", "registry"]);
    watched.extend(local::watched_servers(&[
        ("broker", local::AMQP_PORT, Scope::Process),
        ("postgres", local::PG_PORT, Scope::WithChildren),
        ("s3s-fs", local::S3_PORT, Scope::Process),
    ]));
    let probe = ctx.cpu.watching(watched);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(most * 2)
        .build()?;
    let url = format!("{}/v1/packages", stack.base_url);
    let writers = Arc::new(CopyWriters::connect(&stack.ingest_db_url, most).await?);
    let now = platform::clock::now();
    writers
        .ensure_partitions(
            now - time::Duration::hours(3),
            now + time::Duration::days(1),
        )
        .await?;
    let seeds = Arc::new(AtomicU64::new(1));

    let mut points = Vec::new();
    let mut verify_points = Vec::new();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for &(records, size) in &SIZES {
        // One package per submitter for the baselines: the COPY baseline
        // writes its records, the S3 baseline PUTs its bytes, the verify
        // baseline checks its signature.
        let templates: Vec<workload::Signed> = {
            let subs = submitters.clone();
            tokio::task::spawn_blocking(move || {
                subs.iter()
                    .enumerate()
                    .map(|(i, s)| workload::make_package(s, records, 1_000_000_000 + i as u64))
                    .collect()
            })
            .await?
        };
        let copy_records = Arc::new(
            submitters
                .iter()
                .zip(&templates)
                .map(|(s, t)| {
                    let package = evidence::parse_package(&t.bytes)?;
                    Ok((s.id.as_str().to_owned(), package.records))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
        let put_bodies = Arc::new(
            templates
                .iter()
                .map(|t| baselines::put_body(&t.bytes))
                .collect::<Vec<_>>(),
        );
        let body_bytes =
            templates.iter().map(|t| t.bytes.len() as f64).sum::<f64>() / templates.len() as f64;

        // Verification alone, while nothing else of ours runs.
        let mut verify = VerifyPoint {
            size,
            runs: Vec::new(),
        };
        for backend in Backend::ALL {
            for threads in [1, cores] {
                let label = format!("verify/{}/{threads}/{size}", backend.name());
                if !ctx.selected(&label) {
                    continue;
                }
                stopped(ctx)?;
                let rate = baselines::verify_rate(
                    backend,
                    &submitters,
                    &templates,
                    threads,
                    ctx.shape.duration,
                )
                .await?;
                eprintln!(
                    "bench: {label}: {:.0} verifications/s, {:.0} per CPU second",
                    rate.per_sec(),
                    rate.per_cpu_sec()
                );
                verify.runs.push((backend, threads, rate));
            }
        }
        verify_points.push(verify);
        drop(templates);

        let pools = Arc::new(Pools::new(submitters.clone(), records, seeds.clone()));
        for &n in &SUBMITTERS {
            let label = |variant: &str| format!("{variant}/{n}/{size}");
            let selected: Vec<usize> = (0..VARIANTS.len())
                .filter(|&i| ctx.selected(&label(VARIANTS[i])))
                .collect();
            if selected.is_empty() {
                continue;
            }
            stopped(ctx)?;
            let calls: Vec<CallFn> = selected
                .iter()
                .map(|&i| match VARIANTS[i] {
                    "e2e" => workload::submit_call(
                        http.clone(),
                        url.clone(),
                        pools.clone(),
                        submitters.clone(),
                        Idle::new(n),
                    ),
                    "copy" => {
                        baselines::copy_call(writers.clone(), copy_records.clone(), Idle::new(n))
                    }
                    _ => baselines::put_call(
                        stack.evidence.client().clone(),
                        stack.bucket.clone(),
                        put_bodies.clone(),
                    ),
                })
                .collect();
            let e2e = selected.iter().position(|&i| VARIANTS[i] == "e2e");
            // A first guess of packages per slice (warm-up + window); later
            // slices get what the one before took, and half again.
            let per_sec_guess = if records >= 10_000 { 10 } else { 150 } * n.min(4);
            let period = (ctx.shape.warmup + ctx.shape.slice()).as_secs_f64();
            let first_guess = (per_sec_guess as f64 * period).ceil() as usize;
            let prepare = |k: usize| -> BoxFuture<'static, anyhow::Result<()>> {
                let pools = pools.clone();
                Box::pin(async move {
                    if Some(k) == e2e {
                        pools.prepare_slice(n, first_guess).await?;
                    }
                    Ok(())
                })
            };
            let late_before = pools.made_late();
            let before = Scrape::parse(&stack.scrape_metrics("ingest").await);
            let results = tokio::select! {
                r = load::interleaved(ctx.shape, n, &probe, &calls, points.len(), &prepare) => r?,
                () = ctx.stop.cancelled() => anyhow::bail!("interrupted"),
            };
            let after = Scrape::parse(&stack.scrape_metrics("ingest").await);
            pools.clear();
            let point = Point {
                submitters: n,
                records,
                size,
                body_bytes,
                results: selected
                    .iter()
                    .zip(results)
                    .map(|(&i, m)| (VARIANTS[i], m))
                    .collect(),
                ingest: IngestDelta::between(&before, &after),
                made_late: pools.made_late() - late_before,
            };
            for (variant, m) in &point.results {
                eprintln!(
                    "bench: {}: {:.1} calls/s, {:.0} records/s, p50 {:.1} ms, p99 {:.1} ms{}",
                    label(variant),
                    m.rps(),
                    if *variant == "s3" {
                        f64::NAN
                    } else {
                        m.rps() * records as f64
                    },
                    m.latency_ms(0.5),
                    m.latency_ms(0.99),
                    if m.errors > 0 {
                        format!(
                            ", {} errors (first: {})",
                            m.errors,
                            m.first_error.as_deref().unwrap_or("?")
                        )
                    } else {
                        String::new()
                    }
                );
            }
            points.push(point);
        }
    }
    if let Ok(w) = Arc::try_unwrap(writers) {
        w.close();
    }
    Ok(report(ctx, &probe, &points, &verify_points))
}

/// Fails once the run has been interrupted.
fn stopped(ctx: &Context) -> anyhow::Result<()> {
    anyhow::ensure!(!ctx.stop.is_cancelled(), "interrupted");
    Ok(())
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

fn report(
    ctx: &Context,
    probe: &crate::cpu::CpuProbe,
    points: &[Point],
    verify_points: &[VerifyPoint],
) -> Report {
    let mut r = Report::new(
        format!(
            "ingest: signed packages end to end over HTTP vs raw baselines (closed loop; {:?} \
             measured per variant and point, in {} alternating slices each after {:?} of warm-up)",
            ctx.shape.duration, ctx.shape.rounds, ctx.shape.warmup
        ),
        &[
            "submitters",
            "records/pkg",
            "pkg/s",
            "records/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "COPY records/s",
            "vs COPY",
            "COPY p50 ms",
            "S3 PUT/s",
            "S3 MB/s",
            "S3 p50 ms",
        ],
    );
    let mut headline_copy_ratio = None;
    for p in points {
        let key = p.key();
        let (e2e, copy, s3) = (p.get("e2e"), p.get("copy"), p.get("s3"));
        let records = p.records as f64;
        let mb = p.body_bytes / 1e6;
        let ratio = match (e2e, copy) {
            (Some(e), Some(c)) if c.rps() > 0.0 => Some(e.rps() / c.rps()),
            _ => None,
        };
        r.row(vec![
            p.submitters.to_string(),
            p.records.to_string(),
            cell(e2e.map(Measured::rps), 1),
            cell(e2e.map(|m| m.rps() * records), 0),
            cell(e2e.map(|m| m.rps() * mb), 1),
            cell(e2e.map(|m| m.latency_ms(0.5)), 1),
            cell(e2e.map(|m| m.latency_ms(0.99)), 1),
            cell(copy.map(|m| m.rps() * records), 0),
            cell(ratio, 2),
            cell(copy.map(|m| m.latency_ms(0.5)), 1),
            cell(s3.map(Measured::rps), 1),
            cell(s3.map(|m| m.rps() * mb), 1),
            cell(s3.map(|m| m.latency_ms(0.5)), 1),
        ]);
        if let Some(m) = e2e {
            r.figure(format!("e2e_packages_per_s_{key}"), rounded(m.rps(), 2));
            r.figure(
                format!("e2e_records_per_s_{key}"),
                rounded(m.rps() * records, 0),
            );
            r.figure(format!("e2e_mb_per_s_{key}"), rounded(m.rps() * mb, 2));
            r.figure(format!("e2e_p50_ms_{key}"), rounded(m.latency_ms(0.5), 2));
            r.figure(format!("e2e_p99_ms_{key}"), rounded(m.latency_ms(0.99), 2));
            r.figure(format!("e2e_errors_{key}"), m.errors);
            r.figure(format!("e2e_packages_made_late_{key}"), p.made_late);
            r.figure(format!("ingest_packages_stored_{key}"), p.ingest.stored);
            r.figure(format!("ingest_records_stored_{key}"), p.ingest.records);
        }
        if let Some(m) = copy {
            r.figure(format!("copy_packages_per_s_{key}"), rounded(m.rps(), 2));
            r.figure(
                format!("copy_records_per_s_{key}"),
                rounded(m.rps() * records, 0),
            );
            r.figure(format!("copy_p50_ms_{key}"), rounded(m.latency_ms(0.5), 2));
            r.figure(format!("copy_p99_ms_{key}"), rounded(m.latency_ms(0.99), 2));
            r.figure(format!("copy_errors_{key}"), m.errors);
        }
        if let Some(m) = s3 {
            r.figure(format!("s3_puts_per_s_{key}"), rounded(m.rps(), 2));
            r.figure(format!("s3_mb_per_s_{key}"), rounded(m.rps() * mb, 2));
            r.figure(format!("s3_p50_ms_{key}"), rounded(m.latency_ms(0.5), 2));
            r.figure(format!("s3_p99_ms_{key}"), rounded(m.latency_ms(0.99), 2));
            r.figure(format!("s3_errors_{key}"), m.errors);
        }
        r.figure(format!("body_bytes_{}", p.size), rounded(p.body_bytes, 0));
        if let Some(ratio) = ratio {
            r.figure(format!("ratio_records_vs_copy_{key}"), rounded(ratio, 3));
            if p.submitters == 16 && p.records == 10_000 {
                headline_copy_ratio = Some(ratio);
            }
        }
        for (label, m) in &p.results {
            if let Some(e) = &m.first_error {
                r.note(format!(
                    "{label} at {} submitters × {} records: {} error(s), first: {e}",
                    p.submitters, p.records, m.errors
                ));
            }
        }
        if p.made_late > 0 {
            r.note(format!(
                "{} submitters × {} records: the package pool ran dry {} times (those packages were generated and signed inside the measured calls)",
                p.submitters, p.records, p.made_late
            ));
        }
    }
    r.note(
        "e2e = POST /v1/packages until 201 (gateway → broker → ingest → registry, S3, PostgreSQL); \
         COPY = the same records, binary COPY into the same table, one transaction per package, \
         same concurrency; S3 PUT = the same bytes with aws-sdk-s3, same concurrency. MB = 10^6 bytes of package body.",
    );

    let verify_ratio = verify_table(&mut r, points, verify_points);
    stage_table(&mut r, points);
    process_table(&mut r, probe, points);

    if let Some(ratio) = headline_copy_ratio {
        let meets = ratio >= TARGET_RECORDS_VS_COPY;
        r.note(format!(
            "target: records/s at 16 submitters × 10,000 records ≥ {TARGET_RECORDS_VS_COPY} × raw COPY: {} ({ratio:.2})",
            if meets { "met" } else { "NOT met" }
        ));
        r.figure("target_records_vs_copy", TARGET_RECORDS_VS_COPY);
        r.figure("meets_records_target", meets);
    }
    if let Some(ratio) = verify_ratio {
        let meets = ratio >= TARGET_VERIFY_VS_FASTEST;
        r.note(format!(
            "target: verifications per CPU second inside ingest under load (16 submitters) ≥ {TARGET_VERIFY_VS_FASTEST} × the fastest backend alone on one core: {} (lowest {ratio:.2})",
            if meets { "met" } else { "NOT met" }
        ));
        r.figure("target_verify_vs_fastest", TARGET_VERIFY_VS_FASTEST);
        r.figure("meets_verify_target", meets);
    }
    if let (Some(c), Some(v)) = (headline_copy_ratio, verify_ratio) {
        r.figure(
            "meets_targets",
            c >= TARGET_RECORDS_VS_COPY && v >= TARGET_VERIFY_VS_FASTEST,
        );
    }
    r
}

/// The verification table; returns the lowest in-service / fastest ratio
/// under load (more than one submitter).
fn verify_table(r: &mut Report, points: &[Point], verify_points: &[VerifyPoint]) -> Option<f64> {
    let mut t = Report::new(
        "",
        &[
            "records/pkg",
            "where",
            "threads",
            "verifies/s",
            "per CPU s",
            "µs CPU each",
            "vs fastest",
        ],
    );
    let mut lowest: Option<f64> = None;
    let mut lowest_any: Option<f64> = None;
    for v in verify_points {
        let fastest = v.fastest();
        for (backend, threads, rate) in &v.runs {
            let per_cpu = rate.per_cpu_sec();
            t.row(vec![
                v.size.to_owned(),
                format!("{} alone", backend.name()),
                threads.to_string(),
                cell(Some(rate.per_sec()), 0),
                cell(Some(per_cpu), 0),
                cell(Some(1e6 / per_cpu), 1),
                cell(fastest.map(|(_, f)| per_cpu / f), 2),
            ]);
            r.figure(
                format!("verify_{}_{threads}t_per_s_{}", backend.key(), v.size),
                rounded(rate.per_sec(), 0),
            );
            if *threads == 1 {
                r.figure(
                    format!("verify_{}_per_cpu_s_{}", backend.key(), v.size),
                    rounded(per_cpu, 0),
                );
            }
        }
        if let Some((backend, rate)) = fastest {
            r.figure(format!("verify_fastest_backend_{}", v.size), backend.name());
            r.figure(
                format!("verify_fastest_per_cpu_s_{}", v.size),
                rounded(rate, 0),
            );
        }
        for p in points.iter().filter(|p| p.size == v.size) {
            let Some((per_cpu, per_wall)) = p.ingest.verify_rates() else {
                continue;
            };
            let ratio = fastest.map(|(_, f)| per_cpu / f);
            t.row(vec![
                v.size.to_owned(),
                format!("in ingest, {} submitters", p.submitters),
                "-".into(),
                "-".into(),
                cell(Some(per_cpu), 0),
                cell(Some(1e6 / per_cpu), 1),
                cell(ratio, 2),
            ]);
            let key = p.key();
            r.figure(
                format!("ingest_verify_per_cpu_s_{key}"),
                rounded(per_cpu, 0),
            );
            r.figure(
                format!("ingest_verify_per_wall_s_{key}"),
                rounded(per_wall, 0),
            );
            if let Some(ratio) = ratio {
                r.figure(format!("ratio_verify_vs_fastest_{key}"), rounded(ratio, 3));
                lowest_any = Some(lowest_any.map_or(ratio, |l: f64| l.min(ratio)));
                // Throughput is measured where verifications keep ingest
                // busy: with one submitter a verification comes alone every
                // ~10 ms, its tables evicted by everything run meanwhile
                // (reported, not the target).
                if p.submitters > 1 {
                    lowest = Some(lowest.map_or(ratio, |l: f64| l.min(ratio)));
                }
            }
        }
    }
    if let Some(l) = lowest_any {
        r.figure("ratio_verify_vs_fastest_min", rounded(l, 3));
    }
    if let Some(l) = lowest {
        r.figure("ratio_verify_vs_fastest_loaded_min", rounded(l, 3));
    }
    t.note(
        "verify = decode the DER signature, SHA-256 the whole body, ECDSA P-256 verify; the same \
         packages and keys as the e2e run. 'per CPU s' = verifications per second of the \
         verifying threads' CPU time (one core's rate, whatever else runs); in ingest from \
         tallyhouse_ingest_stage_cpu_seconds_total{stage=\"verify\"} over its count.",
    );
    r.add_table(
        "Signature verification: each backend alone vs inside ingest",
        t,
    );
    lowest
}

/// Wall and CPU time per stored package by stage, from ingest's metrics.
fn stage_table(r: &mut Report, points: &[Point]) {
    let mut headers = vec!["stage".to_owned()];
    for p in points {
        headers.push(format!("{}×{} ms", p.submitters, p.size));
        headers.push(format!("{}×{} cpu ms", p.submitters, p.size));
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Report::new("", &header_refs);
    for stage in STAGES {
        let mut row = vec![stage.to_owned()];
        for p in points {
            let wall = p.ingest.wall_ms_per_package(stage);
            let cpu = p.ingest.cpu_ms_per_package(stage);
            row.push(cell(wall, 3));
            row.push(cell(cpu, 3));
            let key = p.key();
            if let Some(w) = wall {
                r.figure(format!("stage_{stage}_ms_per_package_{key}"), rounded(w, 4));
            }
            if let Some(c) = cpu {
                r.figure(
                    format!("stage_{stage}_cpu_ms_per_package_{key}"),
                    rounded(c, 4),
                );
            }
        }
        t.row(row);
    }
    t.note(format!(
        "Per package stored, over every e2e call of the point (warm-ups included); ms = wall time \
         of the stage (queueing and I/O included), cpu ms = CPU time of the thread running it, \
         for the stages computed on a thread of their own ({}).",
        CPU_STAGES.join(", ")
    ));
    r.add_table(
        "Time per package by stage inside ingest (tallyhouse_ingest_stage_seconds)",
        t,
    );
}

/// CPU time per call by process, for e2e and the baselines.
fn process_table(r: &mut Report, probe: &crate::cpu::CpuProbe, points: &[Point]) {
    let mut headers = vec!["process".to_owned()];
    let mut columns = Vec::new();
    for variant in VARIANTS {
        for p in points {
            if p.get(variant).is_some() {
                headers.push(format!("{variant} {}×{}", p.submitters, p.size));
                columns.push((variant, p));
            }
        }
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Report::new("", &header_refs);
    let names: Vec<String> = std::iter::once("bench (client)".to_owned())
        .chain(probe.watched().iter().map(|w| w.name.clone()))
        .collect();
    let mut totals = vec![0.0; columns.len()];
    for (i, name) in names.iter().enumerate() {
        let mut row = vec![name.clone()];
        for (c, (variant, p)) in columns.iter().enumerate() {
            let Some(m) = p.get(variant) else { continue };
            let us = if i == 0 {
                m.own_cpu_us_per_call()
            } else {
                m.watched_cpu_us_per_call(i - 1)
            };
            row.push(cell(us.map(|u| u / 1000.0), 2));
            if let Some(u) = us {
                totals[c] += u;
                let who = if i == 0 { "bench" } else { name.as_str() }.replace('-', "_");
                r.figure(
                    format!("{variant}_cpu_ms_per_call_{who}_{}", p.key()),
                    rounded(u / 1000.0, 3),
                );
            }
        }
        t.row(row);
    }
    let mut total_row = vec!["total".to_owned()];
    total_row.extend(totals.iter().map(|u| cell(Some(u / 1000.0), 2)));
    t.row(total_row);
    t.note(
        "ms of CPU (user + system, from /proc/<pid>/stat, 10 ms ticks) per completed call \
         (a package for e2e and COPY, a PUT for S3) over the measured windows; postgres = \
         the postmaster and all its processes (other databases' sessions included), broker = \
         the RabbitMQ node on 5672. With 2 cores, 2000 ms of CPU per second is the machine.",
    );
    r.add_table("CPU time per call by process", t);
}
