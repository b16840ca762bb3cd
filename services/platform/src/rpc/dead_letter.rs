//! Depth of the dead-letter queue of the queue a server consumes,
//! `tallyhouse_rpc_dead_letter_messages{queue}`: sampled on the server's own
//! broker connection (a channel of its own, so a failed declare never
//! closes the consuming channel) with a passive `queue.declare`, whose
//! answer carries the queue's ready message count. No management API.

use crate::amqp::guard;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;

/// Aborts the sampling task when the session that started it ends.
pub(crate) struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Samples `queue`'s depth into `gauge` now and every `every` until the
/// returned guard drops.
pub(crate) fn spawn_sampler(
    conn: Arc<Connection>,
    queue: String,
    gauge: Gauge,
    every: Duration,
    op_timeout: Duration,
) -> Sampler {
    Sampler(tokio::spawn(async move {
        let mut channel: Option<Channel> = None;
        let mut failing = false;
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match depth(&conn, &mut channel, &queue, op_timeout).await {
                Ok(n) => {
                    gauge.set(i64::from(n));
                    failing = false;
                }
                Err(e) => {
                    // A failed declare closes its channel: open another next time.
                    channel = None;
                    if !failing {
                        tracing::warn!(queue = %queue, error = %e, "cannot read the dead-letter queue depth");
                        failing = true;
                    }
                }
            }
        }
    }))
}

async fn depth(
    conn: &Connection,
    channel: &mut Option<Channel>,
    queue: &str,
    op_timeout: Duration,
) -> anyhow::Result<u32> {
    let ch = match channel.as_ref().filter(|c| c.status().connected()) {
        Some(ch) => ch.clone(),
        None => {
            let ch = guard("channel.open", op_timeout, conn.create_channel()).await?;
            *channel = Some(ch.clone());
            ch
        }
    };
    let declared = guard(
        "queue.declare passive",
        op_timeout,
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}
