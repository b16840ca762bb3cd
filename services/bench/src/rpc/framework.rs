//! The framework side of the `rpc` benchmark: an `RpcServer` serving the
//! testkit Echo call and an `RpcClient` calling it, in a namespace of their
//! own.

use crate::harness::Context;
use crate::load::CallFn;
use anyhow::Context as _;
use futures_util::FutureExt as _;
use platform::rpc::{RpcClient, RpcConfig, RpcMetrics, RpcServer};
use rpc_contracts::testkit::{self, Echo, EchoRequest, EchoResponse};
use rpc_contracts::{Bytes, ErrorCode, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Echo server and a client connected to it.
pub struct Framework {
    client: RpcClient,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

impl Framework {
    /// Starts the server and the client and waits until a call goes through.
    pub async fn start(ctx: &Context) -> anyhow::Result<Self> {
        let topology = Topology::new(ctx.namespace("rpc")).map_err(anyhow::Error::msg)?;
        ctx.janitor.queue(topology.queue(testkit::QUEUE));
        ctx.janitor
            .queue(topology.dead_letter_queue(testkit::QUEUE));
        ctx.janitor.exchange(topology.exchange());
        ctx.janitor.exchange(topology.dead_letter_exchange());
        let config =
            RpcConfig::new(vec![ctx.amqp_uri.clone()], "bench-rpc").with_topology(topology);

        let stop = ctx.stop.child_token();
        let server = RpcServer::builder(testkit::QUEUE)
            .on::<Echo, _, _>(|ctx, req| async move {
                Ok(EchoResponse {
                    payload: req.payload,
                    instance: ctx.instance.to_string(),
                    delivery_count: ctx.delivery_count,
                })
            })
            .build();
        let server =
            tokio::spawn(server.run(config.clone(), RpcMetrics::unregistered(), stop.clone()));
        let client = RpcClient::start(config, RpcMetrics::unregistered());
        let framework = Self {
            client,
            stop,
            server,
        };
        if let Err(e) = framework.wait_ready().await {
            framework.stop().await;
            return Err(e);
        }
        Ok(framework)
    }

    /// Waits until the client is connected and the server has bound its
    /// queue (calls fail with `no_route` until then).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.client.wait_connected(READY_TIMEOUT).await,
            "the RPC client did not connect within {READY_TIMEOUT:?}"
        );
        let probe = EchoRequest {
            payload: Bytes(b"ready?".to_vec()),
        };
        let until = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match self.client.call::<Echo>(&probe).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == ErrorCode::NoRoute && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("the Echo server did not answer"),
            }
        }
    }

    /// One Echo call of `body_bytes` bytes, checking the payload comes back.
    pub fn echo(&self, body_bytes: usize) -> CallFn {
        let client = self.client.clone();
        let request = Arc::new(EchoRequest {
            payload: Bytes(super::payload(body_bytes)),
        });
        Arc::new(move || {
            let client = client.clone();
            let request = request.clone();
            async move {
                let response = client
                    .call::<Echo>(&request)
                    .await
                    .map_err(|e| e.to_string())?;
                if response.payload != request.payload {
                    return Err("the echoed payload differs".to_owned());
                }
                Ok(())
            }
            .boxed()
        })
    }

    /// Closes the client, stops the server and waits for it.
    pub async fn stop(self) {
        self.client.close().await;
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .is_err()
        {
            eprintln!("bench: the Echo server did not stop within 30 s");
        }
    }
}
