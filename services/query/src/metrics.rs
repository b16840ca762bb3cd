//! What the query service serves, beyond the per-call RPC metrics the
//! runtime records: rows answered per call, records aggregated into series
//! points, and original bytes read from the evidence store.

use platform::rpc::metrics::MethodLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// The query service's own metrics, under `tallyhouse_query_*`.
#[derive(Clone, Default)]
pub struct QueryMetrics {
    rows: Family<MethodLabels, Counter>,
    records: Counter,
    raw_bytes: Counter,
}

impl QueryMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        sub.register(
            "query_rows_served",
            "Rows answered (packages listed or read, series points), by routing key",
            m.rows.clone(),
        );
        sub.register(
            "query_records_aggregated",
            "Records aggregated into the series points answered",
            m.records.clone(),
        );
        sub.register_with_unit(
            "query_raw_served",
            "Original package bytes answered by read_raw",
            Unit::Bytes,
            m.raw_bytes.clone(),
        );
        m
    }

    /// Counts `n` rows answered by `method`.
    pub fn rows(&self, method: &'static str, n: usize) {
        self.rows
            .get_or_create(&MethodLabels { method })
            .inc_by(n as u64);
    }

    /// Counts `n` records aggregated.
    pub fn records(&self, n: u64) {
        self.records.inc_by(n);
    }

    /// Counts `n` raw bytes answered.
    pub fn raw_bytes(&self, n: usize) {
        self.raw_bytes.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_units_and_the_method_label() {
        let mut registry = Registry::default();
        let m = QueryMetrics::register(&mut registry);
        m.rows("query.v1.list_packages", 3);
        m.records(40);
        m.raw_bytes(1000);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_query_rows_served_total{method=\"query.v1.list_packages\"} 3",
            "tallyhouse_query_records_aggregated_total 40",
            "tallyhouse_query_raw_served_bytes_total 1000",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
