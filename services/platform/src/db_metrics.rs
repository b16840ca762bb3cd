//! Database connection pool metrics, read from the pools at scrape time
//! (a prometheus-client collector: nothing is sampled between scrapes).
//!
//! * `tallyhouse_db_pool_connections_open{pool}`: connections open, idle or in use;
//! * `tallyhouse_db_pool_connections_idle{pool}`: open connections not in use;
//! * `tallyhouse_db_pool_connections_max{pool}`: the pool's limit;
//! * `tallyhouse_db_pool_waiters{pool}`: tasks waiting for a connection,
//!   for pools that tell (deadpool's; `sqlx` does not expose it).
//!
//! `pool` is a short fixed name given by the service (`registry`, `records`...).
//! A pool at its limit with no idle connection and waiters is saturated:
//! queries wait up to the acquire timeout, then fail with `unavailable`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// One pool's figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle or in use).
    pub open: u64,
    /// Open connections not in use.
    pub idle: u64,
    /// Most connections the pool opens.
    pub max: u64,
    /// Tasks waiting for a connection, when the pool tells.
    pub waiters: Option<u64>,
}

impl PoolStats {
    /// The figures of a `sqlx` pool.
    pub fn of_sqlx<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
        Self {
            open: u64::from(pool.size()),
            idle: pool.num_idle() as u64,
            max: u64::from(pool.options().get_max_connections()),
            waiters: None,
        }
    }
}

type Source = Arc<dyn Fn() -> PoolStats + Send + Sync>;

/// Reads one figure of a pool's stats (`None`: the pool does not tell).
type Figure = fn(&PoolStats) -> Option<u64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

/// The pools of one process, registered once as one collector (see
/// [`PoolMetrics::register`]).
#[derive(Clone, Default)]
pub struct PoolMetrics {
    pools: Vec<(&'static str, Source)>,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pools.iter().map(|(name, _)| name))
            .finish()
    }
}

impl PoolMetrics {
    /// No pools yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `sqlx` pool named `name` (a cheap clone of the pool is kept).
    pub fn sqlx<DB: sqlx::Database>(self, name: &'static str, pool: sqlx::Pool<DB>) -> Self {
        self.source(name, move || PoolStats::of_sqlx(&pool))
    }

    /// Adds a pool named `name` whose figures `stats` reads (any pool kind,
    /// e.g. deadpool's `Pool::status`). Called at every scrape: keep it cheap.
    pub fn source(
        mut self,
        name: &'static str,
        stats: impl Fn() -> PoolStats + Send + Sync + 'static,
    ) -> Self {
        self.pools.push((name, Arc::new(stats)));
        self
    }

    /// Registers the pools' metrics under `tallyhouse_db_pool_*`. Call it once
    /// per registry, with every pool added.
    pub fn register(self, registry: &mut Registry) {
        registry
            .sub_registry_with_prefix("tallyhouse")
            .register_collector(Box::new(self));
    }
}

/// Registers the metrics of the one `sqlx` pool of a service.
pub fn register_sqlx<DB: sqlx::Database>(
    registry: &mut Registry,
    name: &'static str,
    pool: sqlx::Pool<DB>,
) {
    PoolMetrics::new().sqlx(name, pool).register(registry);
}

impl Collector for PoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.pools.is_empty() {
            return Ok(());
        }
        let stats: Vec<(PoolLabels, PoolStats)> = self
            .pools
            .iter()
            .map(|(pool, source)| (PoolLabels { pool }, source()))
            .collect();
        let families: [(&str, &str, Figure); 4] = [
            (
                "db_pool_connections_open",
                "Database connections open (idle or in use), by pool",
                |s| Some(s.open),
            ),
            (
                "db_pool_connections_idle",
                "Open database connections not in use, by pool",
                |s| Some(s.idle),
            ),
            (
                "db_pool_connections_max",
                "Most database connections a pool opens, by pool",
                |s| Some(s.max),
            ),
            (
                "db_pool_waiters",
                "Tasks waiting for a database connection, by pool (pools that tell)",
                |s| s.waiters,
            ),
        ];
        for (name, help, value) in families {
            let samples: Vec<(&PoolLabels, u64)> = stats
                .iter()
                .filter_map(|(labels, s)| value(s).map(|v| (labels, v)))
                .collect();
            if samples.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (labels, v) in samples {
                let gauge = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                gauge.encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pool_is_sampled_at_scrape_time() {
        let open = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let seen = open.clone();
        let mut registry = Registry::default();
        PoolMetrics::new()
            .source("records", move || PoolStats {
                open: seen.load(std::sync::atomic::Ordering::SeqCst),
                idle: 1,
                max: 10,
                waiters: Some(0),
            })
            .source("other", || PoolStats {
                open: 2,
                idle: 0,
                max: 2,
                waiters: None,
            })
            .register(&mut registry);
        open.store(4, std::sync::atomic::Ordering::SeqCst);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "# TYPE tallyhouse_db_pool_connections_open gauge",
            "tallyhouse_db_pool_connections_open{pool=\"records\"} 4",
            "tallyhouse_db_pool_connections_open{pool=\"other\"} 2",
            "tallyhouse_db_pool_connections_idle{pool=\"records\"} 1",
            "tallyhouse_db_pool_connections_max{pool=\"other\"} 2",
            "tallyhouse_db_pool_waiters{pool=\"records\"} 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(!text.contains("waiters{pool=\"other\"}"), "{text}");
    }
}
