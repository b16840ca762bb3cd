//! Reading ingest's own metrics (see `services/ingest/src/metrics.rs`)
//! from its metrics port: samples by series, and what changed between two
//! scrapes.

use std::collections::HashMap;

/// The stages of `tallyhouse_ingest_stage_seconds`, in pipeline order.
pub const STAGES: [&str; 8] = [
    "key_lookup",
    "verify_queue",
    "verify",
    "parse",
    "dedupe",
    "receipt_sign",
    "blob_put",
    "db_write",
];

/// The stages that are also timed in CPU time
/// (`tallyhouse_ingest_stage_cpu_seconds_total`).
/// (`verify` includes the body's SHA-256, computed once and kept as its
/// identity: there is no separate `hash` stage.)
pub const CPU_STAGES: [&str; 3] = ["verify", "parse", "receipt_sign"];

/// One scrape: each sample's value by its series (`name{labels}` as
/// exposed).
#[derive(Debug, Clone, Default)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus / OpenMetrics text exposition.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of `series`, 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// What ingest did between two scrapes.
#[derive(Debug, Clone, Default)]
pub struct IngestDelta {
    /// Packages stored.
    pub stored: f64,
    /// Records stored.
    pub records: f64,
    /// Per stage: (passes, wall seconds, CPU seconds where timed).
    pub stages: Vec<(&'static str, f64, f64, Option<f64>)>,
}

impl IngestDelta {
    /// The change from `before` to `after`.
    pub fn between(before: &Scrape, after: &Scrape) -> Self {
        let d = |series: String| after.get(&series) - before.get(&series);
        Self {
            stored: d(
                "tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"}".to_owned(),
            ),
            records: d("tallyhouse_ingest_records_total".to_owned()),
            stages: STAGES
                .iter()
                .map(|&stage| {
                    let count = d(format!(
                        "tallyhouse_ingest_stage_seconds_count{{stage=\"{stage}\"}}"
                    ));
                    let sum = d(format!(
                        "tallyhouse_ingest_stage_seconds_sum{{stage=\"{stage}\"}}"
                    ));
                    let cpu = CPU_STAGES.contains(&stage).then(|| {
                        d(format!(
                            "tallyhouse_ingest_stage_cpu_seconds_total{{stage=\"{stage}\"}}"
                        ))
                    });
                    (stage, count, sum, cpu)
                })
                .collect(),
        }
    }

    /// Passes, wall seconds and CPU seconds of `stage`.
    pub fn stage(&self, stage: &str) -> Option<(f64, f64, Option<f64>)> {
        self.stages
            .iter()
            .find(|s| s.0 == stage)
            .map(|s| (s.1, s.2, s.3))
    }

    /// Milliseconds of wall time of `stage` per stored package.
    pub fn wall_ms_per_package(&self, stage: &str) -> Option<f64> {
        let (_, sum, _) = self.stage(stage)?;
        (self.stored > 0.0).then(|| sum * 1000.0 / self.stored)
    }

    /// Milliseconds of CPU time of `stage` per stored package.
    pub fn cpu_ms_per_package(&self, stage: &str) -> Option<f64> {
        let (_, _, cpu) = self.stage(stage)?;
        (self.stored > 0.0).then(|| cpu.map(|c| c * 1000.0 / self.stored))?
    }

    /// Signature verifications per second of verification CPU time (what
    /// one core verifies inside ingest), and per second of the calls' wall
    /// time.
    pub fn verify_rates(&self) -> Option<(f64, f64)> {
        let (count, wall, cpu) = self.stage("verify")?;
        let cpu = cpu?;
        (count > 0.0 && cpu > 0.0 && wall > 0.0).then(|| (count / cpu, count / wall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_per_stage_and_per_package() {
        let before = Scrape::parse(
            "# TYPE x counter\n\
             tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"} 2\n\
             tallyhouse_ingest_stage_seconds_count{stage=\"verify\"} 2\n\
             tallyhouse_ingest_stage_seconds_sum{stage=\"verify\"} 0.002\n\
             tallyhouse_ingest_stage_cpu_seconds_total{stage=\"verify\"} 0.001\n",
        );
        let after = Scrape::parse(
            "tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"} 12\n\
             tallyhouse_ingest_records_total 1000\n\
             tallyhouse_ingest_stage_seconds_count{stage=\"verify\"} 12\n\
             tallyhouse_ingest_stage_seconds_sum{stage=\"verify\"} 0.012\n\
             tallyhouse_ingest_stage_cpu_seconds_total{stage=\"verify\"} 0.006\n\
             # EOF\n",
        );
        let d = IngestDelta::between(&before, &after);
        assert_eq!(d.stored, 10.0);
        assert_eq!(d.records, 1000.0);
        assert!((d.wall_ms_per_package("verify").unwrap() - 1.0).abs() < 1e-9);
        assert!((d.cpu_ms_per_package("verify").unwrap() - 0.5).abs() < 1e-9);
        let (per_cpu, per_wall) = d.verify_rates().unwrap();
        assert!((per_cpu - 2000.0).abs() < 1e-6 && (per_wall - 1000.0).abs() < 1e-6);
        assert_eq!(d.cpu_ms_per_package("blob_put"), None);
    }
}
