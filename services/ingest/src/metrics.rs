//! The ingest service's own metrics, served on its metrics port beside the
//! RPC metrics. The names below are stable: dashboards and the `ingest`
//! benchmark read them; change them only with both.
//!
//! * `tallyhouse_ingest_stage_seconds{stage}` (histogram): wall time of one
//!   stage of one `SubmitPackage` call. Stages, in the order a package goes
//!   through them (a refused package stops at the stage that refused it):
//!   * `key_lookup`: the signing key from the cache or the registry;
//!   * `verify_queue`: waiting for a verification slot and a blocking thread
//!     (verification runs at most `--verify-concurrency` at once);
//!   * `verify`: the ECDSA P-256 verification over the exact body, SHA-256
//!     of the body included (that digest is also the body's identity: the
//!     body is hashed once), the call itself and nothing else;
//!   * `parse`: parsing and validating the body;
//!   * `dedupe`: looking up an earlier package with the same id;
//!   * `receipt_sign`: signing the receipt;
//!   * `blob_put`: writing the body to the evidence store;
//!   * `db_write`: missing partitions, then the package row and its records
//!     (binary COPY) in one transaction, commit included.
//! * `tallyhouse_ingest_stage_cpu_seconds_total{stage}` (counter): CPU time
//!   of the thread running the stages that are pure computation on a
//!   thread of their own (`verify`, `parse`, `receipt_sign`).
//!   Divided by the number of calls it is the CPU cost of the stage, which,
//!   unlike wall time, does not grow when other processes share the cores.
//! * `tallyhouse_ingest_packages_total{outcome, code}` (counter): finished
//!   `SubmitPackage` calls. `outcome` is `stored` (a new package), `duplicate`
//!   (the same bytes again: the stored receipt is returned), `rejected` (the
//!   caller's fault: a bad signature, a malformed package, a conflict…) or
//!   `failed` (ours: storage unavailable, an internal error); `code` is the
//!   wire error code (`bad_signature`, `unavailable`…), `none` when stored or
//!   duplicate.
//!   Every `outcome`/`code` pair exists at 0 from start-up (`code` is the
//!   closed set of wire codes), as does every stage of the two families
//!   above, so that `increase()` and `rate()` see the first event of a kind.
//! * `tallyhouse_ingest_records_total` (counter): records of stored packages.
//! * `tallyhouse_ingest_bytes_total` (counter): body bytes of stored packages.
//!
//! Per submitter, for the per-submitter dashboard and the silent-submitter
//! alert. `submitter` is the registered submitter that owns the signing key,
//! known once the key is found in the registry: the label takes values only
//! from the registered set (a bounded set that operators add to), never from
//! what a caller sends; submissions refused before that (unknown key, bad
//! headers) are counted only in `tallyhouse_ingest_packages_total`.
//!
//! * `tallyhouse_ingest_submitter_packages_total{submitter, outcome, code}`
//!   (counter): finished submissions of a known submitter, as above.
//! * `tallyhouse_ingest_submitter_last_package_timestamp_seconds{submitter}`
//!   (gauge): receive time (Unix seconds) of the submitter's last accepted
//!   package (stored or duplicate), since this process started.
//! * `tallyhouse_ingest_submitter_lag_seconds{submitter}` (gauge): how long
//!   after its `created_at` the submitter's last stored package arrived.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use rpc_contracts::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A stage of a submission (see the module documentation).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Stage {
    /// The signing key from the cache or the registry.
    KeyLookup,
    /// Waiting for a verification slot and a blocking thread.
    VerifyQueue,
    /// The signature verification call.
    Verify,
    /// Parsing the body.
    Parse,
    /// The idempotency look-up.
    Dedupe,
    /// Signing the receipt.
    ReceiptSign,
    /// Writing the body to the evidence store.
    BlobPut,
    /// Partitions, package row and records, commit.
    DbWrite,
}

impl Stage {
    /// Every stage, in the order a package goes through them.
    pub const ALL: [Self; 8] = [
        Self::KeyLookup,
        Self::VerifyQueue,
        Self::Verify,
        Self::Parse,
        Self::Dedupe,
        Self::ReceiptSign,
        Self::BlobPut,
        Self::DbWrite,
    ];

    /// The stages run by [`IngestMetrics::compute`], whose CPU time is counted.
    pub const COMPUTED: [Self; 3] = [Self::Verify, Self::Parse, Self::ReceiptSign];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyLookup => "key_lookup",
            Self::VerifyQueue => "verify_queue",
            Self::Verify => "verify",
            Self::Parse => "parse",
            Self::Dedupe => "dedupe",
            Self::ReceiptSign => "receipt_sign",
            Self::BlobPut => "blob_put",
            Self::DbWrite => "db_write",
        }
    }
}

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of the stage metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: Stage,
}

/// How a submission ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// A new package was stored.
    Stored,
    /// The same bytes were stored before; the stored receipt was returned.
    Duplicate,
    /// Refused: the caller's fault.
    Rejected,
    /// Not stored because of a failure on our side (retryable or internal).
    Failed,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        })
    }
}

/// An error code label; `none` for a success.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct CodeLabel(Option<ErrorCode>);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.map_or("none", ErrorCode::as_str))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PackageLabels {
    outcome: Outcome,
    code: CodeLabel,
}

impl PackageLabels {
    fn of(outcome: Result<bool, ErrorCode>) -> Self {
        match outcome {
            Ok(true) => Self {
                outcome: Outcome::Stored,
                code: CodeLabel(None),
            },
            Ok(false) => Self {
                outcome: Outcome::Duplicate,
                code: CodeLabel(None),
            },
            Err(code) => Self {
                outcome: if is_failure(code) {
                    Outcome::Failed
                } else {
                    Outcome::Rejected
                },
                code: CodeLabel(Some(code)),
            },
        }
    }
}

/// Labels of the per-submitter outcome counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmitterPackageLabels {
    submitter: String,
    outcome: Outcome,
    code: CodeLabel,
}

/// Labels of the per-submitter gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmitterLabels {
    submitter: String,
}

/// Whether an error is ours rather than the caller's.
fn is_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::Internal
            | ErrorCode::DeadlineExceeded
            | ErrorCode::Disconnected
            | ErrorCode::NoRoute
            | ErrorCode::HandlerPanicked
            | ErrorCode::Unknown
    )
}

fn stage_histogram() -> Histogram {
    // 10 µs to ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// The ingest metric families (cheap to clone: handles to shared values).
#[derive(Clone)]
pub struct IngestMetrics {
    stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    stage_cpu_seconds: Family<StageLabels, Counter<f64, AtomicU64>>,
    packages: Family<PackageLabels, Counter>,
    records: Counter,
    bytes: Counter,
    submitter_packages: Family<SubmitterPackageLabels, Counter>,
    submitter_last_package: Family<SubmitterLabels, Gauge>,
    submitter_lag: Family<SubmitterLabels, Gauge<f64, AtomicU64>>,
}

impl IngestMetrics {
    /// The families, registered under `tallyhouse_ingest_*` in `registry`,
    /// with every series whose labels are known in advance at 0 (all but
    /// the per-submitter ones).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            stage_seconds: Family::new_with_constructor(stage_histogram),
            stage_cpu_seconds: Family::default(),
            packages: Family::default(),
            records: Counter::default(),
            bytes: Counter::default(),
            submitter_packages: Family::default(),
            submitter_last_package: Family::default(),
            submitter_lag: Family::default(),
        };
        for stage in Stage::ALL {
            let _ = m.stage_seconds.get_or_create(&StageLabels { stage });
        }
        for stage in Stage::COMPUTED {
            let _ = m.stage_cpu_seconds.get_or_create(&StageLabels { stage });
        }
        let outcomes = [Ok(true), Ok(false)]
            .into_iter()
            .chain(ErrorCode::ALL.iter().copied().map(Err));
        for outcome in outcomes {
            let _ = m.packages.get_or_create(&PackageLabels::of(outcome));
        }
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        sub.register_with_unit(
            "ingest_stage",
            "Wall time of one stage of one package submission, by stage",
            Unit::Seconds,
            m.stage_seconds.clone(),
        );
        sub.register_with_unit(
            "ingest_stage_cpu",
            "CPU time of the thread running the computing stages (verify, parse, receipt_sign), by stage",
            Unit::Seconds,
            m.stage_cpu_seconds.clone(),
        );
        sub.register(
            "ingest_packages",
            "Finished package submissions, by outcome (stored, duplicate, rejected, failed) and error code",
            m.packages.clone(),
        );
        sub.register(
            "ingest_records",
            "Records of stored packages",
            m.records.clone(),
        );
        sub.register(
            "ingest_bytes",
            "Body bytes of stored packages",
            m.bytes.clone(),
        );
        sub.register(
            "ingest_submitter_packages",
            "Finished package submissions by registered submitter (a bounded set: the owner of the signing key), outcome and error code",
            m.submitter_packages.clone(),
        );
        sub.register_with_unit(
            "ingest_submitter_last_package_timestamp",
            "Receive time (Unix) of the last package accepted (stored or duplicate) from each registered submitter (a bounded set), since this process started",
            Unit::Seconds,
            m.submitter_last_package.clone(),
        );
        sub.register_with_unit(
            "ingest_submitter_lag",
            "How long after its created_at the last stored package of each registered submitter (a bounded set) arrived",
            Unit::Seconds,
            m.submitter_lag.clone(),
        );
        m
    }

    /// Records `elapsed` as one pass through `stage`.
    pub fn observe(&self, stage: Stage, elapsed: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabels { stage })
            .observe(elapsed.as_secs_f64());
    }

    /// Runs the computation `f` on this thread, recording its wall time and
    /// the thread's CPU time as `stage`.
    pub fn compute<R>(&self, stage: Stage, f: impl FnOnce() -> R) -> R {
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        let out = f();
        let spent = thread_cpu_time().saturating_sub(cpu);
        self.observe(stage, wall.elapsed());
        self.stage_cpu_seconds
            .get_or_create(&StageLabels { stage })
            .inc_by(spent.as_secs_f64());
        out
    }

    /// Counts a finished submission: `Ok(created)` or the error code.
    pub fn finished(&self, outcome: Result<bool, ErrorCode>) {
        self.packages
            .get_or_create(&PackageLabels::of(outcome))
            .inc();
    }

    /// Counts a finished submission of the registered `submitter` (the
    /// owner of the signing key) received at `received_at`, and moves its
    /// last-package time when the package was accepted.
    pub fn submitter_finished(
        &self,
        submitter: &str,
        outcome: Result<bool, ErrorCode>,
        received_at: time::OffsetDateTime,
    ) {
        let PackageLabels { outcome: o, code } = PackageLabels::of(outcome);
        self.submitter_packages
            .get_or_create(&SubmitterPackageLabels {
                submitter: submitter.to_owned(),
                outcome: o,
                code,
            })
            .inc();
        if outcome.is_ok() {
            let gauge = self.submitter_last_package.get_or_create(&SubmitterLabels {
                submitter: submitter.to_owned(),
            });
            // Several calls finish at once: never move it backwards.
            let at = received_at.unix_timestamp();
            let mut seen = gauge.get();
            while seen < at {
                match gauge
                    .inner()
                    .compare_exchange(seen, at, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => break,
                    Err(now) => seen = now,
                }
            }
        }
    }

    /// Records how long after its creation a stored package of `submitter` arrived.
    pub fn submitter_lag(&self, submitter: &str, lag: time::Duration) {
        self.submitter_lag
            .get_or_create(&SubmitterLabels {
                submitter: submitter.to_owned(),
            })
            .set(lag.as_seconds_f64().max(0.0));
    }

    /// Counts the records and bytes of a stored package.
    pub fn stored(&self, records: usize, bytes: usize) {
        self.records.inc_by(records as u64);
        self.bytes.inc_by(bytes as u64);
    }
}

/// The COPY pool's figures for `tallyhouse_db_pool_*` (see
/// `platform::db_metrics`), read at scrape time.
pub fn pool_stats(
    pool: deadpool_postgres::Pool,
) -> impl Fn() -> platform::db_metrics::PoolStats + Send + Sync + 'static {
    move || {
        let status = pool.status();
        platform::db_metrics::PoolStats {
            open: status.size as u64,
            idle: status.available as u64,
            max: status.max_size as u64,
            waiters: Some(status.waiting as u64),
        }
    }
}

/// The `database` readiness check of ingest: `SELECT 1` on a connection of
/// the COPY pool (see `platform::ops::Readiness`).
pub fn database_check(
    pool: deadpool_postgres::Pool,
) -> impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static
{
    move || {
        let pool = pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Timeout(_) => {
                    "no pooled connection free in time".to_owned()
                }
                deadpool_postgres::PoolError::Backend(e) => format!("unreachable: {e}"),
                other => format!("unavailable: {other}"),
            })?;
            client
                .query_one("SELECT 1", &[])
                .await
                .map(|_| ())
                .map_err(|e| format!("failed: {e}"))
        })
    }
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_with_known_labels_is_there_at_zero_from_the_start() {
        let mut registry = Registry::default();
        let _m = IngestMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut expected = vec![
            "tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"} 0".to_owned(),
            "tallyhouse_ingest_packages_total{outcome=\"duplicate\",code=\"none\"} 0".to_owned(),
            "tallyhouse_ingest_packages_total{outcome=\"failed\",code=\"internal\"} 0".to_owned(),
            "tallyhouse_ingest_packages_total{outcome=\"rejected\",code=\"bad_signature\"} 0"
                .to_owned(),
            "tallyhouse_ingest_records_total 0".to_owned(),
        ];
        for stage in Stage::ALL {
            expected.push(format!(
                "tallyhouse_ingest_stage_seconds_count{{stage=\"{}\"}} 0",
                stage.as_str()
            ));
        }
        for stage in Stage::COMPUTED {
            expected.push(format!(
                "tallyhouse_ingest_stage_cpu_seconds_total{{stage=\"{}\"}} 0",
                stage.as_str()
            ));
        }
        for line in &expected {
            assert!(text.contains(line.as_str()), "missing {line} in\n{text}");
        }
        let packages = text
            .lines()
            .filter(|l| l.starts_with("tallyhouse_ingest_packages_total{"))
            .count();
        assert_eq!(packages, 2 + ErrorCode::ALL.len(), "{text}");
        // Submitters are not known in advance.
        assert!(!text.contains("submitter=\""), "{text}");
    }

    #[test]
    fn names_labels_and_units_are_the_documented_ones() {
        let mut registry = Registry::default();
        let m = IngestMetrics::register(&mut registry);
        m.observe(Stage::BlobPut, Duration::from_millis(3));
        let n = m.compute(Stage::Verify, || (0..100_000u64).sum::<u64>());
        assert_eq!(n, 4_999_950_000);
        m.finished(Ok(true));
        m.finished(Ok(false));
        m.finished(Err(ErrorCode::BadSignature));
        m.finished(Err(ErrorCode::Unavailable));
        m.stored(25, 4096);
        let at = time::macros::datetime!(2026-03-01 12:00 UTC);
        m.submitter_finished("acme", Ok(true), at);
        m.submitter_finished("acme", Ok(false), at - time::Duration::hours(1));
        m.submitter_finished(
            "acme",
            Err(ErrorCode::BadSignature),
            at + time::Duration::hours(1),
        );
        m.submitter_lag("acme", time::Duration::seconds(90));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_ingest_stage_seconds_count{stage=\"blob_put\"} 1",
            "tallyhouse_ingest_stage_seconds_count{stage=\"verify\"} 1",
            "tallyhouse_ingest_stage_cpu_seconds_total{stage=\"verify\"} ",
            "tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"} 1",
            "tallyhouse_ingest_packages_total{outcome=\"duplicate\",code=\"none\"} 1",
            "tallyhouse_ingest_packages_total{outcome=\"rejected\",code=\"bad_signature\"} 1",
            "tallyhouse_ingest_packages_total{outcome=\"failed\",code=\"unavailable\"} 1",
            "tallyhouse_ingest_records_total 25",
            "tallyhouse_ingest_bytes_total 4096",
            "tallyhouse_ingest_submitter_packages_total{submitter=\"acme\",outcome=\"stored\",code=\"none\"} 1",
            "tallyhouse_ingest_submitter_packages_total{submitter=\"acme\",outcome=\"duplicate\",code=\"none\"} 1",
            "tallyhouse_ingest_submitter_packages_total{submitter=\"acme\",outcome=\"rejected\",code=\"bad_signature\"} 1",
            // The latest accepted package, not the later rejected one nor the older duplicate.
            "tallyhouse_ingest_submitter_last_package_timestamp_seconds{submitter=\"acme\"} 1772366400",
            "tallyhouse_ingest_submitter_lag_seconds{submitter=\"acme\"} 90.0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn thread_cpu_time_advances_with_work_on_this_thread() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(thread_cpu_time() > before);
    }
}
