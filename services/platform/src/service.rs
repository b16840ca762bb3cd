//! Start-up glue every service binary shares: Vault, RPC configuration,
//! metrics registry, ops endpoint, shutdown token, and the exit path.

use crate::config::CommonArgs;
use crate::ops::{Readiness, serve_ops};
use crate::rpc::{RpcConfig, RpcMetrics};
use crate::vault::Vault;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::process::ExitCode;
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
}

impl Service {
    /// Reads the service's secrets from Vault and prepares RPC and metrics.
    pub async fn bootstrap(name: &'static str, common: CommonArgs) -> anyhow::Result<Self> {
        let vault = common.vault(name)?;
        let rpc = common.rpc_config(name, &vault).await?;
        let mut registry = Registry::default();
        registry.sub_registry_with_prefix("tallyhouse").register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                service: name,
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let rpc_metrics = RpcMetrics::register(&mut registry);
        let ready = Readiness::new(rpc_metrics.clone());
        Ok(Self {
            name,
            common,
            vault,
            rpc,
            rpc_metrics,
            registry,
            stop: crate::shutdown::token_on_signal(),
            ready,
        })
    }

    /// Starts the ops endpoint (metrics, health, ready) on the metrics address.
    pub async fn serve_ops(&mut self) -> anyhow::Result<SocketAddr> {
        let registry = std::mem::take(&mut self.registry);
        let (addr, _task) = serve_ops(
            self.common.metrics_addr,
            registry,
            self.ready.clone(),
            self.stop.clone(),
        )
        .await?;
        tracing::info!(service = self.name, %addr, "ops endpoint (metrics, health, ready) listening");
        Ok(addr)
    }
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
