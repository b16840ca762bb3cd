//! Start-up glue every service binary shares: Vault, RPC configuration,
//! metrics registry, ops endpoint, shutdown token, and the exit path.

use crate::config::CommonArgs;
use crate::ops::{OpsEndpoint, Readiness, start_ops};
use crate::rpc::{RpcConfig, RpcMetrics};
use crate::vault::Vault;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: &'static str,
    version: &'static str,
}

/// What a service has once it is bootstrapped.
pub struct Service {
    /// The service's name (`gateway`, `registry`, ...).
    pub name: &'static str,
    /// Its common flags.
    pub common: CommonArgs,
    /// Its Vault client.
    pub vault: Vault,
    /// Broker addresses (with credentials from Vault) and namespace.
    pub rpc: RpcConfig,
    /// RPC metrics, registered in `registry`.
    pub rpc_metrics: RpcMetrics,
    /// Metrics registry; register the service's own metrics before [`Service::serve_ops`].
    pub registry: Registry,
    /// Cancelled on SIGINT or SIGTERM.
    pub stop: CancellationToken,
    /// What `/ready` reports (together with the broker links).
    pub ready: Readiness,
    /// The ops endpoint, serving since start-up.
    pub ops: OpsEndpoint,
}

impl Service {
    /// Starts the ops endpoint (alive, not ready), then logs in to Vault
    /// (retrying up to the start-up bound: `/ready` says so meanwhile),
    /// reads the broker credentials and prepares RPC and metrics.
    pub async fn bootstrap(name: &'static str, common: CommonArgs) -> anyhow::Result<Self> {
        let stop = crate::shutdown::token_on_signal();
        let mut registry = Registry::default();
        registry.sub_registry_with_prefix("tallyhouse").register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                service: name,
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        register_start_time(&mut registry, crate::clock::now_unix_ms());
        let rpc_metrics = RpcMetrics::register(&mut registry);
        let ready = Readiness::new(rpc_metrics.clone());
        let connected: Arc<OnceLock<Vault>> = Arc::default();
        {
            // Not ready while connecting; then ready while every lease it
            // holds is valid, Vault away or not.
            let connected = connected.clone();
            let addr = common.vault_addr.clone();
            ready.add_check("vault", move || {
                let vault = connected.get().cloned();
                let addr = addr.clone();
                async move {
                    match vault {
                        Some(vault) => vault.check(),
                        None => Err(format!("reading secrets from Vault at {addr}")),
                    }
                }
            });
        }
        let ops = start_ops(common.metrics_addr, ready.clone(), stop.clone()).await?;
        tracing::info!(service = name, addr = %ops.addr, "ops endpoint (metrics, health, ready) listening");
        let vault = common.vault(name).await?;
        let _ = connected.set(vault.clone());
        vault.keep_token(stop.clone());
        vault.register_metrics(&mut registry);
        let rpc = common.rpc_config(name, &vault).await?;
        Ok(Self {
            name,
            common,
            vault,
            rpc,
            rpc_metrics,
            registry,
            stop,
            ready,
            ops,
        })
    }

    /// Publishes the metrics registered so far on the ops endpoint (which
    /// has served `/health` and `/ready` since start-up); returns its address.
    pub async fn serve_ops(&mut self) -> anyhow::Result<SocketAddr> {
        let registry = std::mem::take(&mut self.registry);
        self.ops.publish(registry);
        Ok(self.ops.addr)
    }
}

/// `process_start_time_seconds`, the name every Prometheus client library
/// gives it: when this process started (Unix time), so that an alert on a
/// "last success" that never happened can count from there.
fn register_start_time(registry: &mut Registry, started_unix_ms: u64) {
    let started: Gauge<f64, AtomicU64> = Gauge::default();
    started.set(started_unix_ms as f64 / 1000.0);
    registry.register_with_unit(
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Unit::Seconds,
        started,
    );
}

/// Turns a service's outcome into its exit code, logging the failure once,
/// then flushes the Loki shipper (the last line, `stopped` or `fatal error`,
/// included; see [`crate::telemetry::flush_logs`]).
pub fn exit_code(service: &'static str, outcome: anyhow::Result<()>) -> ExitCode {
    let code = match outcome {
        Ok(()) => {
            tracing::info!(service, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(service, error = format!("{e:#}"), "fatal error");
            eprintln!("{service}: fatal: {e:#}");
            ExitCode::FAILURE
        }
    };
    crate::telemetry::flush_logs();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_has_the_standard_name_in_seconds() {
        let mut registry = Registry::default();
        register_start_time(&mut registry, 1_772_366_400_250);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("\nprocess_start_time_seconds 1772366400.25\n"),
            "{text}"
        );
    }
}
