//! One broker connection kept alive in the background: connect, set up,
//! run until the connection drops, back off, reconnect. Client and server
//! plug their own set-up and run loop into it.

use crate::amqp::{Backoff, BrokerUri};
use crate::rpc::RpcConfig;
use crate::rpc::metrics::RpcMetrics;
use futures_util::StreamExt as _;
use lapin::Connection;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Keeps `uri` connected until `stop` is cancelled. For each connection,
/// `session` runs until it returns (the connection or its channel is gone)
/// or the connection reports an error; then the connection is closed and,
/// after a backoff, opened again.
pub(crate) async fn keep_connected<F, Fut>(
    uri: BrokerUri,
    config: RpcConfig,
    metrics: RpcMetrics,
    stop: CancellationToken,
    mut session: F,
) where
    F: FnMut(Arc<Connection>, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let name = config.connection_name.clone();
    while !stop.is_cancelled() {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            conn = uri.connect(&name, config.op_timeout) => conn,
        };
        match conn {
            Ok(conn) => {
                let conn = Arc::new(conn);
                tracing::info!(broker = %uri, "broker connected");
                backoff.reset();
                metrics.broker_links_up.inc();
                let mut events = conn.events_listener();
                let broken = async move {
                    while let Some(event) = events.next().await {
                        if let lapin::Event::Error(e) = event {
                            return e.to_string();
                        }
                    }
                    "connection closed".to_owned()
                };
                let outcome = tokio::select! {
                    r = session(conn.clone(), stop.clone()) => match r {
                        Ok(()) => "session ended".to_owned(),
                        Err(e) => format!("{e:#}"),
                    },
                    reason = broken => reason,
                };
                metrics.broker_links_up.dec();
                let _ = crate::amqp::guard(
                    "connection.close",
                    config.op_timeout,
                    conn.close(200, "bye".into()),
                )
                .await;
                if stop.is_cancelled() {
                    tracing::info!(broker = %uri, "broker connection closed for shutdown");
                    return;
                }
                tracing::warn!(broker = %uri, reason = %outcome, "broker connection lost");
            }
            Err(e) => tracing::warn!(broker = %uri, error = %e, "cannot connect to broker"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
