//! The canary's metrics (`tallyhouse_canary_*`) and the small HTTP endpoint
//! that serves them with `/health`, on a port of its own (`--metrics-addr`).
//!
//! * `tallyhouse_canary_rounds_total{outcome}`: finished rounds, `success`
//!   or `failure` (both created at 0 at start-up, so `increase()` sees the
//!   first one).
//! * `tallyhouse_canary_failures_total{step}`: failed rounds by the step
//!   that failed (every step created at 0).
//! * `tallyhouse_canary_last_round_success`: 1 when the last round
//!   succeeded, 0 when it failed or none has finished yet.
//! * `tallyhouse_canary_last_success_timestamp_seconds`,
//!   `tallyhouse_canary_last_round_timestamp_seconds`: when the last
//!   successful (any) round ended (Unix seconds; 0 before the first).
//! * `tallyhouse_canary_started_timestamp_seconds`: when this process
//!   started, so that "no success for 15 minutes" can wait for a new
//!   canary's first rounds.
//! * `tallyhouse_canary_step_duration_seconds{step}`: latency of each step
//!   that succeeded; `tallyhouse_canary_round_duration_seconds`: of each
//!   round that succeeded (a failed one is counted, not timed: its time is
//!   that of a timeout or a refusal, not the platform's latency).
//!
//! Labels are closed sets (the outcome and the step names of
//! [`super::Step`]); the failure's code is logged and in `--once`'s
//! result, never a label.

use super::Step;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: &'static str,
    version: &'static str,
}

/// 5 ms to about 41 s: a step is an HTTP round trip or two, bounded by
/// the request timeout (30 s by default).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// 50 ms to about 102 s: a round is nine steps.
fn round_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The canary's metric families (cheap to clone: handles to shared values).
#[derive(Clone)]
pub struct CanaryMetrics {
    rounds: Family<OutcomeLabels, Counter>,
    failures: Family<StepLabels, Counter>,
    last_round_success: Gauge,
    last_success: F64Gauge,
    last_round: F64Gauge,
    started: F64Gauge,
    step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    round_seconds: Histogram,
}

impl CanaryMetrics {
    /// The families, registered under `tallyhouse_canary_*` in `registry`
    /// (with `tallyhouse_build_info{service="canary"}`); `started_unix` is
    /// this process's start time.
    pub fn register(registry: &mut Registry, started_unix: f64) -> Self {
        let m = Self {
            rounds: Family::default(),
            failures: Family::default(),
            last_round_success: Gauge::default(),
            last_success: F64Gauge::default(),
            last_round: F64Gauge::default(),
            started: F64Gauge::default(),
            step_seconds: Family::new_with_constructor(step_histogram),
            round_seconds: round_histogram(),
        };
        m.started.set(started_unix);
        for outcome in ["success", "failure"] {
            let _ = m.rounds.get_or_create(&OutcomeLabels { outcome });
        }
        for step in Step::ALL {
            let _ = m.failures.get_or_create(&StepLabels {
                step: step.as_str(),
            });
        }
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        sub.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                service: "canary",
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        sub.register(
            "canary_rounds",
            "Finished canary rounds (submit, read back, verify), by outcome (success, failure)",
            m.rounds.clone(),
        );
        sub.register(
            "canary_failures",
            "Failed canary rounds, by the step that failed",
            m.failures.clone(),
        );
        sub.register(
            "canary_last_round_success",
            "1 when the last canary round succeeded, 0 when it failed or none has finished yet",
            m.last_round_success.clone(),
        );
        sub.register_with_unit(
            "canary_last_success_timestamp",
            "When the last successful canary round ended (Unix time; 0 before the first)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        sub.register_with_unit(
            "canary_last_round_timestamp",
            "When the last canary round ended, whatever its outcome (Unix time; 0 before the first)",
            Unit::Seconds,
            m.last_round.clone(),
        );
        sub.register_with_unit(
            "canary_started_timestamp",
            "When this canary process started (Unix time)",
            Unit::Seconds,
            m.started.clone(),
        );
        sub.register_with_unit(
            "canary_step_duration",
            "Latency of each canary step that succeeded, by step",
            Unit::Seconds,
            m.step_seconds.clone(),
        );
        sub.register_with_unit(
            "canary_round_duration",
            "Latency of each canary round that succeeded, all steps included",
            Unit::Seconds,
            m.round_seconds.clone(),
        );
        m
    }

    /// Records one step that succeeded.
    pub fn step_succeeded(&self, step: Step, took: Duration) {
        self.step_seconds
            .get_or_create(&StepLabels {
                step: step.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a finished round: `failed_step` is `None` for a success.
    pub fn round_finished(&self, failed_step: Option<Step>, took: Duration, ended_unix: f64) {
        self.last_round.set(ended_unix);
        match failed_step {
            None => {
                self.rounds
                    .get_or_create(&OutcomeLabels { outcome: "success" })
                    .inc();
                self.round_seconds.observe(took.as_secs_f64());
                self.last_round_success.set(1);
                self.last_success.set(ended_unix);
            }
            Some(step) => {
                self.rounds
                    .get_or_create(&OutcomeLabels { outcome: "failure" })
                    .inc();
                self.failures
                    .get_or_create(&StepLabels {
                        step: step.as_str(),
                    })
                    .inc();
                self.last_round_success.set(0);
            }
        }
    }
}

/// The registry the endpoint serves; more metrics can be registered after
/// it started (the Vault client's, once it has logged in).
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// Binds `addr` and serves `/metrics` (from `registry`) and `/health` until
/// `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: SharedRegistry,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "canary metrics endpoint failed");
        }
    });
    Ok(bound)
}

async fn metrics(State(registry): State<SharedRegistry>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = registry.read().expect("canary registry lock");
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn rounds_and_failures_are_counted_by_outcome_and_step() {
        let mut registry = Registry::default();
        let m = CanaryMetrics::register(&mut registry, 1_000.0);
        let before = scrape(&registry);
        assert!(
            before.contains("tallyhouse_canary_rounds_total{outcome=\"failure\"} 0"),
            "{before}"
        );
        assert!(before.contains("tallyhouse_canary_failures_total{step=\"login\"} 0"));
        assert!(before.contains("tallyhouse_canary_last_round_success 0"));
        assert!(before.contains("tallyhouse_canary_started_timestamp_seconds 1000.0"));

        m.step_succeeded(Step::Submit, Duration::from_millis(20));
        m.round_finished(None, Duration::from_millis(300), 1_060.0);
        let ok = scrape(&registry);
        assert!(ok.contains("tallyhouse_canary_rounds_total{outcome=\"success\"} 1"));
        assert!(ok.contains("tallyhouse_canary_last_round_success 1"));
        assert!(ok.contains("tallyhouse_canary_last_success_timestamp_seconds 1060.0"));
        assert!(ok.contains("tallyhouse_canary_step_duration_seconds_count{step=\"submit\"} 1"));
        assert!(ok.contains("tallyhouse_canary_round_duration_seconds_count 1"));

        m.round_finished(Some(Step::Login), Duration::from_secs(1), 1_120.0);
        let failed = scrape(&registry);
        assert!(failed.contains("tallyhouse_canary_rounds_total{outcome=\"failure\"} 1"));
        assert!(failed.contains("tallyhouse_canary_failures_total{step=\"login\"} 1"));
        assert!(failed.contains("tallyhouse_canary_last_round_success 0"));
        assert!(
            failed.contains("tallyhouse_canary_last_success_timestamp_seconds 1060.0"),
            "a failure keeps the last success"
        );
        assert!(failed.contains("tallyhouse_canary_last_round_timestamp_seconds 1120.0"));
        assert!(
            failed.contains("tallyhouse_canary_round_duration_seconds_count 1"),
            "a failed round is not timed"
        );
    }
}
