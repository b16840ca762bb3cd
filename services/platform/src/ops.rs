//! The operations endpoint of every service, on its own port: `/metrics`
//! (Prometheus text format), `/health` (the process is alive) and `/ready`
//! (it can do its work: started, a broker link up, and every named
//! dependency check passing; see [`Readiness`]).

use crate::rpc::RpcMetrics;
use crate::s3::EvidenceStore;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one dependency check may take before it counts as failed:
/// under the 2 s timeout of the Nomad/Consul `/ready` checks, so they get
/// the 503 and its reason rather than a timeout.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long the results of the dependency checks are reused: `/ready` and
/// `/metrics` scrapes within this time share one run, so a scrape storm
/// cannot hammer the database, S3 or Vault.
pub const CHECK_CACHE: Duration = Duration::from_secs(1);

/// Longest reason kept from a failed check (the `/ready` body stays small).
const MAX_REASON_CHARS: usize = 160;

/// The built-in check that the service has finished starting.
pub const CHECK_STARTED: &str = "started";
/// The built-in check that at least one broker link is up.
pub const CHECK_BROKER: &str = "broker";

/// What a dependency check answers: `Ok(())`, or a short reason (no
/// secret: it is served on `/ready` and logged).
pub type CheckResult = Result<(), String>;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, CheckResult> + Send + Sync>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

/// The results of one run of the named checks, in registration order.
type Results = Arc<Vec<(&'static str, CheckResult)>>;

struct Checks {
    list: Mutex<Vec<(&'static str, CheckFn)>>,
    /// The last run and when it finished; the async lock also makes
    /// concurrent callers wait for one run instead of starting their own.
    last: tokio::sync::Mutex<Option<(Instant, Results)>>,
    /// `tallyhouse_ready_check{check}`: 1 passing, 0 failing.
    gauge: Family<CheckLabels, Gauge>,
}

/// Whether the service is ready, and why not.
///
/// Ready means: the service said it finished starting ([`Readiness::set`]),
/// at least one broker link is up (built-in checks `started` and `broker`),
/// and every named dependency check added with [`Readiness::add_check`]
/// passes. `/ready` answers 200 or 503 with a small JSON body naming each
/// check:
///
/// ```json
/// {"ready":false,"checks":{"broker":"ok","database":"ok","s3":"bucket tallyhouse-evidence not found","started":"ok"}}
/// ```
///
/// Named checks run concurrently, each bounded by [`CHECK_TIMEOUT`]; their
/// results are reused for [`CHECK_CACHE`], and concurrent callers share one
/// run. Each check's state is also the gauge `tallyhouse_ready_check{check}`
/// (1 passing, 0 failing), refreshed on `/ready` and on every `/metrics`
/// scrape; a check that starts or stops failing is logged once.
///
/// # Adding a check (e.g. Vault, from `service.rs`)
///
/// ```ignore
/// let vault = vault.clone();
/// svc.ready.add_check("vault", move || {
///     let vault = vault.clone();
///     async move {
///         vault.health().await.map_err(|e| format!("unreachable: {e}"))
///     }
/// });
/// ```
///
/// `name` is a short fixed word (`database`, `s3`, `vault`): it is a JSON
/// key and a metric label. Adding a name again replaces its check. The
/// check returns `Ok(())` or a short reason, which must not hold a secret
/// (it is served and logged); reasons are cut to 160 characters. It may be
/// called often (at most about once a second): keep it cheap (`SELECT 1`,
/// `HeadBucket`, `sys/health`). [`postgres_check`] and [`s3_bucket_check`]
/// are ready-made.
#[derive(Clone)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    rpc: RpcMetrics,
    checks: Arc<Checks>,
}

/// What `/ready` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyReport {
    /// Whether every check passes.
    pub ready: bool,
    /// Each check's state: `ok`, or why it fails.
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Not ready until [`Readiness::set`] and a broker link is up; no named
    /// checks yet.
    pub fn new(rpc: RpcMetrics) -> Self {
        Self {
            started: Arc::default(),
            rpc,
            checks: Arc::new(Checks {
                list: Mutex::default(),
                last: tokio::sync::Mutex::default(),
                gauge: Family::default(),
            }),
        }
    }

    /// Marks the service as started (or not).
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Whether it has started and a broker link is up (the built-in checks
    /// only, without running the named ones; see [`Readiness::report`]).
    pub fn get(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.rpc.broker_links_up.get() > 0
    }

    /// Adds (or replaces) the named dependency check `name`; see the type's
    /// documentation.
    pub fn add_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || check().boxed());
        let mut list = self.checks.list.lock().expect("readiness checks lock");
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = check,
            None => list.push((name, check)),
        }
    }

    /// Runs the named checks (or reuses a run younger than [`CHECK_CACHE`])
    /// and reports every check, built-in ones included.
    pub async fn report(&self) -> ReadyReport {
        let results = self.named_results().await;
        let mut checks = BTreeMap::new();
        let started = self.started.load(Ordering::SeqCst);
        let broker = self.rpc.broker_links_up.get() > 0;
        let builtin = [
            (CHECK_STARTED, started, "starting"),
            (CHECK_BROKER, broker, "no broker connection up"),
        ];
        let mut ready = true;
        for (name, ok, reason) in builtin {
            self.gauge(name, ok);
            ready &= ok;
            checks.insert(
                name,
                if ok {
                    "ok".to_owned()
                } else {
                    reason.to_owned()
                },
            );
        }
        for (name, result) in results.iter() {
            self.gauge(name, result.is_ok());
            ready &= result.is_ok();
            let state = match result {
                Ok(()) => "ok".to_owned(),
                Err(reason) => reason.clone(),
            };
            checks.insert(name, state);
        }
        ReadyReport { ready, checks }
    }

    fn gauge(&self, name: &'static str, ok: bool) {
        self.checks
            .gauge
            .get_or_create(&CheckLabels { check: name })
            .set(i64::from(ok));
    }

    async fn named_results(&self) -> Results {
        let mut last = self.checks.last.lock().await;
        if let Some((at, results)) = last.as_ref()
            && at.elapsed() < CHECK_CACHE
        {
            return results.clone();
        }
        let list: Vec<(&'static str, CheckFn)> = self
            .checks
            .list
            .lock()
            .expect("readiness checks lock")
            .clone();
        let runs = list.into_iter().map(|(name, check)| async move {
            let run = AssertUnwindSafe(check()).catch_unwind();
            let result = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(reason))) => Err(shorten(&reason)),
                Ok(Err(_)) => Err("the check panicked".to_owned()),
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (name, result)
        });
        let results: Results = Arc::new(futures_util::future::join_all(runs).await);
        let previous = last.as_ref().map(|(_, r)| r.clone());
        for (name, result) in results.iter() {
            let before = previous
                .as_ref()
                .and_then(|p| p.iter().find(|(n, _)| n == name))
                .map(|(_, r)| r.is_ok());
            match (before, result) {
                (Some(false), Ok(())) => {
                    tracing::info!(check = name, "readiness check passes again")
                }
                (None | Some(true), Err(reason)) => {
                    tracing::warn!(check = name, reason = %reason, "readiness check fails");
                }
                _ => {}
            }
        }
        *last = Some((Instant::now(), results.clone()));
        results
    }
}

/// `reason` on one line, at most [`MAX_REASON_CHARS`] characters.
fn shorten(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    if line.chars().count() <= MAX_REASON_CHARS {
        line.to_owned()
    } else {
        let mut cut: String = line.chars().take(MAX_REASON_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// A check that runs `SELECT 1` on `pool` (a connection from the pool, so
/// an exhausted pool fails it too).
pub fn postgres_check(
    pool: sqlx::PgPool,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    move || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&pool)
                .await
                .map(|_| ())
                .map_err(|e| postgres_reason(&e))
        }
        .boxed()
    }
}

fn postgres_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => "no pooled connection free in time".to_owned(),
        sqlx::Error::PoolClosed => "the pool is closed".to_owned(),
        sqlx::Error::Io(io) => format!("unreachable: {io}"),
        sqlx::Error::Database(db) => {
            format!("error {}: {}", db.code().unwrap_or_default(), db.message())
        }
        other if crate::db::is_unavailable(other) => format!("unavailable: {other}"),
        other => format!("failed: {other}"),
    }
}

/// A check that sends `HeadBucket` for the evidence bucket: the storage
/// answers, the credentials are accepted and the bucket exists.
pub fn s3_bucket_check(
    store: EvidenceStore,
) -> impl Fn() -> BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    move || {
        let store = store.clone();
        async move {
            use aws_sdk_s3::error::SdkError;
            let bucket = store.bucket().to_owned();
            match store.client().head_bucket().bucket(&bucket).send().await {
                Ok(_) => Ok(()),
                Err(SdkError::ServiceError(e)) => {
                    let status = e.raw().status().as_u16();
                    Err(match status {
                        404 => format!("bucket {bucket} not found"),
                        401 | 403 => format!("access to bucket {bucket} denied"),
                        _ => format!("HeadBucket {bucket} answered {status}"),
                    })
                }
                Err(SdkError::TimeoutError(_)) => Err("unreachable: timed out".to_owned()),
                Err(SdkError::DispatchFailure(e)) => Err(if e.is_timeout() {
                    "unreachable: timed out".to_owned()
                } else if e.is_io() {
                    "unreachable: connection failed".to_owned()
                } else {
                    "unreachable: request not sent".to_owned()
                }),
                Err(SdkError::ResponseError(_)) => Err("unreadable answer".to_owned()),
                Err(_) => Err("HeadBucket failed".to_owned()),
            }
        }
        .boxed()
    }
}

#[derive(Clone)]
struct OpsState {
    /// Replaced once, when the service has registered all its metrics
    /// (the endpoint answers from the first moment of start-up).
    registry: Arc<std::sync::RwLock<Arc<Registry>>>,
    ready: Readiness,
}

/// A running ops endpoint whose metrics can be completed later: see
/// [`start_ops`].
#[derive(Clone)]
pub struct OpsEndpoint {
    state: OpsState,
    /// The bound address.
    pub addr: SocketAddr,
}

impl OpsEndpoint {
    /// Serves `registry` from now on (with `tallyhouse_ready_check` added).
    pub fn publish(&self, mut registry: Registry) {
        registry.sub_registry_with_prefix("tallyhouse").register(
            "ready_check",
            "Readiness checks of this process (started, broker, database, s3, vault...): 1 passing, 0 failing",
            self.state.ready.checks.gauge.clone(),
        );
        *self.state.registry.write().expect("ops registry lock") = Arc::new(registry);
    }
}

/// Binds `addr` and serves `/health`, `/ready` (from `ready`) and
/// `/metrics` (empty until [`OpsEndpoint::publish`]) until `stop`: started
/// before anything that may wait (Vault, the database), so that an
/// orchestrator sees the process alive but not ready meanwhile.
pub async fn start_ops(
    addr: SocketAddr,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<OpsEndpoint> {
    let state = OpsState {
        registry: Arc::new(std::sync::RwLock::new(Arc::new(Registry::default()))),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready_handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    });
    Ok(OpsEndpoint { state, addr: bound })
}

/// Binds `addr` and serves the ops endpoints until `stop`; returns the bound
/// address (useful with port 0) and the serving task. Registers
/// `tallyhouse_ready_check{check}` in `registry`.
pub async fn serve_ops(
    addr: SocketAddr,
    mut registry: Registry,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    registry.sub_registry_with_prefix("tallyhouse").register(
        "ready_check",
        "Readiness checks of this process (started, broker, database, s3, vault...): 1 passing, 0 failing",
        ready.checks.gauge.clone(),
    );
    let state = OpsState {
        registry: Arc::new(std::sync::RwLock::new(Arc::new(registry))),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    // Refreshes tallyhouse_ready_check (cached, bounded by the check timeout).
    state.ready.report().await;
    let mut body = String::new();
    let registry = state.registry.read().expect("ops registry lock").clone();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready_handler(State(state): State<OpsState>) -> impl IntoResponse {
    let report = state.ready.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(shorten("  a\nb\tc "), "a b c");
        let long = "x".repeat(500);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[tokio::test(start_paused = true)]
    async fn checks_are_named_cached_bounded_and_gauged() {
        let metrics = RpcMetrics::unregistered();
        let ready = Readiness::new(metrics.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        ready.add_check("database", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        ready.add_check("s3", || async { Err("bucket b not found".to_owned()) });
        ready.add_check("slow", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        ready.add_check("panics", || async { panic!("on purpose") });
        let report = ready.report().await;
        assert!(!report.ready);
        assert_eq!(report.checks["started"], "starting");
        assert_eq!(report.checks["broker"], "no broker connection up");
        assert_eq!(report.checks["database"], "ok");
        assert_eq!(report.checks["s3"], "bucket b not found");
        assert_eq!(report.checks["slow"], "no answer within 1.5s");
        assert_eq!(report.checks["panics"], "the check panicked");
        // Within the cache time: the same run.
        ready.report().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::advance(CHECK_CACHE).await;
        ready.set(true);
        metrics.broker_links_up.inc();
        ready.add_check("s3", || async { Ok(()) });
        ready.add_check("slow", || async { Ok(()) });
        ready.add_check("panics", || async { Ok(()) });
        let report = ready.report().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(report.ready, "{report:?}");
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"ready":true,"checks":{"broker":"ok","database":"ok","panics":"ok","s3":"ok","slow":"ok","started":"ok"}}"#
        );
        let mut registry = Registry::default();
        registry.register("ready_check", "", ready.checks.gauge.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ready_check{check=\"s3\"} 1"), "{text}");
        assert!(text.contains("ready_check{check=\"broker\"} 1"), "{text}");
    }
}
