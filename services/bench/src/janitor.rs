//! Deletes the queues and exchanges a benchmark declared, whether it
//! finished, failed or was interrupted.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use platform::amqp::{BrokerUri, guard};
use std::sync::Mutex;
use std::time::Duration;

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker objects to delete at the end of a run.
#[derive(Default)]
pub struct Janitor {
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Janitor {
    /// Deletes queue `name` at the end of the run.
    pub fn queue(&self, name: impl Into<String>) {
        self.queues.lock().expect("janitor lock").push(name.into());
    }

    /// Deletes exchange `name` at the end of the run.
    pub fn exchange(&self, name: impl Into<String>) {
        self.exchanges
            .lock()
            .expect("janitor lock")
            .push(name.into());
    }

    /// Deletes every registered object: queues first, then exchanges. A
    /// failed deletion is reported and the others still tried.
    pub async fn sweep(&self, uri: &BrokerUri) -> anyhow::Result<()> {
        let queues = std::mem::take(&mut *self.queues.lock().expect("janitor lock"));
        let exchanges = std::mem::take(&mut *self.exchanges.lock().expect("janitor lock"));
        if queues.is_empty() && exchanges.is_empty() {
            return Ok(());
        }
        let conn = uri.connect("bench-janitor", OP_TIMEOUT).await?;
        let mut channel = guard("channel.open", OP_TIMEOUT, conn.create_channel()).await?;
        let mut failed = 0;
        for queue in &queues {
            let deleted = guard(
                "queue.delete",
                OP_TIMEOUT,
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
            if let Err(e) = deleted {
                eprintln!("bench: cannot delete queue {queue}: {e}");
                failed += 1;
                // A failed operation closes the channel.
                channel = guard("channel.open", OP_TIMEOUT, conn.create_channel()).await?;
            }
        }
        for exchange in &exchanges {
            let deleted = guard(
                "exchange.delete",
                OP_TIMEOUT,
                channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await;
            if let Err(e) = deleted {
                eprintln!("bench: cannot delete exchange {exchange}: {e}");
                failed += 1;
                channel = guard("channel.open", OP_TIMEOUT, conn.create_channel()).await?;
            }
        }
        let _ = guard(
            "connection.close",
            OP_TIMEOUT,
            conn.close(200, "bye".into()),
        )
        .await;
        anyhow::ensure!(failed == 0, "{failed} broker object(s) left behind");
        eprintln!(
            "bench: deleted {} queue(s) and {} exchange(s)",
            queues.len(),
            exchanges.len()
        );
        Ok(())
    }
}
