//! RPC metrics, client and server side: calls, errors by code, latency and
//! calls in flight, labelled by routing key.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use rpc_contracts::ErrorCode;
use std::fmt::Write as _;

/// Label set naming a routing key.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The routing key, e.g. `registry.v1.ping`.
    pub method: &'static str,
}

/// Label set naming a broker queue.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue's name, e.g. `tallyhouse.registry.v1.dead-letter`.
    pub queue: String,
}

/// Label set naming a routing key and an error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The routing key.
    pub method: &'static str,
    /// The wire error code.
    pub code: CodeLabel,
}

/// An [`ErrorCode`] as a metric label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct CodeLabel(pub ErrorCode);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One side's (client or server) RPC metric families.
#[derive(Clone)]
pub struct SideMetrics {
    pub(crate) calls: Family<MethodLabels, Counter>,
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub(crate) in_flight: Family<MethodLabels, Gauge>,
}

impl SideMetrics {
    fn new() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry, side: &str) {
        registry.register(
            format!("rpc_{side}_calls"),
            format!("RPC calls {side}-side, by routing key"),
            self.calls.clone(),
        );
        registry.register(
            format!("rpc_{side}_errors"),
            format!("RPC calls {side}-side that ended in an error, by routing key and code"),
            self.errors.clone(),
        );
        registry.register_with_unit(
            format!("rpc_{side}_duration"),
            format!("RPC call duration {side}-side, by routing key"),
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            format!("rpc_{side}_in_flight"),
            format!("RPC calls in progress {side}-side, by routing key"),
            self.in_flight.clone(),
        );
    }

    /// Records one finished call.
    pub(crate) fn record(&self, method: &'static str, seconds: f64, error: Option<ErrorCode>) {
        let labels = MethodLabels { method };
        self.calls.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
        if let Some(code) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    method,
                    code: CodeLabel(code),
                })
                .inc();
        }
    }

    /// Creates the series of `method` that a call would create, at 0:
    /// calls, latency and calls in flight (not the errors, one series per
    /// method and code: see [`RpcMetrics::serving`]).
    fn known(&self, method: &'static str) {
        let labels = MethodLabels { method };
        let _ = self.calls.get_or_create(&labels);
        let _ = self.latency.get_or_create(&labels);
        let _ = self.in_flight.get_or_create(&labels);
    }

    /// Counts a call in flight until the guard drops.
    pub(crate) fn in_flight(&self, method: &'static str) -> InFlight {
        let gauge = self.in_flight.get_or_create_owned(&MethodLabels { method });
        gauge.inc();
        InFlight(gauge)
    }
}

/// Decrements the in-flight gauge on drop (so cancelled calls are counted out too).
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Client- and server-side RPC metrics of one process.
#[derive(Clone)]
pub struct RpcMetrics {
    pub(crate) client: SideMetrics,
    pub(crate) server: SideMetrics,
    pub(crate) expired: Family<MethodLabels, Counter>,
    pub(crate) dead_lettered: Family<MethodLabels, Counter>,
    pub(crate) broker_links_up: Gauge,
    pub(crate) dead_letter_messages: Family<QueueLabels, Gauge>,
}

impl RpcMetrics {
    /// Metrics registered under `tallyhouse_rpc_*` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        m.client.register(sub, "client");
        m.server.register(sub, "server");
        sub.register(
            "rpc_server_expired",
            "Requests dropped unprocessed because their deadline had passed",
            m.expired.clone(),
        );
        sub.register(
            "rpc_server_dead_lettered",
            "Requests rejected to the dead-letter queue (handler panics)",
            m.dead_lettered.clone(),
        );
        sub.register(
            "rpc_broker_links_up",
            "Broker connections currently up in this process",
            m.broker_links_up.clone(),
        );
        sub.register(
            "rpc_dead_letter_messages",
            "Messages waiting in the dead-letter queue of each queue this process serves (sampled)",
            m.dead_letter_messages.clone(),
        );
        m
    }

    /// Creates every per-method server series of `method`, which this
    /// process serves, at 0 (calls, latency, in flight, expired,
    /// dead-lettered), so that a scrape has them before the first call and
    /// `increase()` sees the first expiry or dead letter. The errors are
    /// left to the first error: one series per method and error code would
    /// be every method times every code, most of them impossible, for
    /// alerts that are ratios over minutes.
    pub fn serving(&self, method: &'static str) {
        self.server.known(method);
        let labels = MethodLabels { method };
        let _ = self.expired.get_or_create(&labels);
        let _ = self.dead_lettered.get_or_create(&labels);
    }

    /// Metrics that are recorded but exposed nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            client: SideMetrics::new(),
            server: SideMetrics::new(),
            expired: Family::default(),
            dead_lettered: Family::default(),
            broker_links_up: Gauge::default(),
            dead_letter_messages: Family::default(),
        }
    }
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self::unregistered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_carry_units_and_labels_are_typed() {
        let mut registry = Registry::default();
        let m = RpcMetrics::register(&mut registry);
        m.client
            .record("registry.v1.ping", 0.002, Some(ErrorCode::NoRoute));
        let _guard = m.client.in_flight("registry.v1.ping");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_rpc_client_calls_total{method=\"registry.v1.ping\"} 1",
            "tallyhouse_rpc_client_errors_total{method=\"registry.v1.ping\",code=\"no_route\"} 1",
            "tallyhouse_rpc_client_duration_seconds_count{method=\"registry.v1.ping\"} 1",
            "tallyhouse_rpc_client_in_flight{method=\"registry.v1.ping\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn the_methods_a_server_serves_are_exposed_at_zero_before_any_call() {
        let mut registry = Registry::default();
        let m = RpcMetrics::register(&mut registry);
        m.serving("registry.v1.ping");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_rpc_server_calls_total{method=\"registry.v1.ping\"} 0",
            "tallyhouse_rpc_server_duration_seconds_count{method=\"registry.v1.ping\"} 0",
            "tallyhouse_rpc_server_in_flight{method=\"registry.v1.ping\"} 0",
            "tallyhouse_rpc_server_expired_total{method=\"registry.v1.ping\"} 0",
            "tallyhouse_rpc_server_dead_lettered_total{method=\"registry.v1.ping\"} 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        // Neither the client side nor the errors.
        assert!(
            !text.contains("tallyhouse_rpc_client_calls_total{"),
            "{text}"
        );
        assert!(
            !text.contains("tallyhouse_rpc_server_errors_total{"),
            "{text}"
        );
    }
}
