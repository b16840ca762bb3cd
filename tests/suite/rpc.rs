//! The RPC runtime against the real RabbitMQ: round trips, concurrency,
//! deadlines, routing failures, typed errors, panics, crashes, broker
//! restarts, several brokers and dead-lettering.

use platform::amqp::BrokerUri;
use platform::rpc::{CallOptions, RpcClient, RpcConfig, RpcMetrics, ServerOptions};
use platform::testing::{
    DedicatedBroker, TcpProxy, amqp_uri, delete_topology, queue_depth, rpc_config, testkit_server,
    unique_topology,
};
use rpc_contracts::testkit::{self, EchoRequest, FailRequest, SleepRequest};
use rpc_contracts::{Bytes, ErrorCode, RpcError, Topology, registry};
use std::process::Command;
use std::time::Duration;
use tests::{ChildProcess, workspace_bin};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One test's world: a namespace, an in-process testkit server and a client.
struct World {
    topology: Topology,
    uri: BrokerUri,
    client: RpcClient,
    server_stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl World {
    async fn new(tag: &str) -> Self {
        let uri = amqp_uri();
        let topology = unique_topology(tag);
        let mut world = Self::client_only(tag, uri, topology).await;
        world.start_server(ServerOptions::default());
        world.wait_served().await;
        world
    }

    async fn client_only(tag: &str, uri: BrokerUri, topology: Topology) -> Self {
        let client = RpcClient::start(
            rpc_config(&topology, vec![uri.clone()], &format!("{tag}-client")),
            RpcMetrics::unregistered(),
        );
        assert!(
            client.wait_connected(Duration::from_secs(10)).await,
            "client never connected"
        );
        Self {
            topology,
            uri,
            client,
            server_stop: CancellationToken::new(),
            server: None,
        }
    }

    fn config(&self, name: &str) -> RpcConfig {
        rpc_config(&self.topology, vec![self.uri.clone()], name)
    }

    fn start_server(&mut self, options: ServerOptions) {
        let server = testkit_server()
            .instance("in-process")
            .options(options)
            .build();
        let config = self.config("server");
        let stop = self.server_stop.clone();
        self.server = Some(tokio::spawn(server.run(
            config,
            RpcMetrics::unregistered(),
            stop,
        )));
    }

    /// Waits until the testkit queue is bound and answered.
    async fn wait_served(&self) {
        wait_served(&self.client).await;
    }

    async fn echo(&self, payload: &[u8]) -> Result<testkit::EchoResponse, RpcError> {
        self.client
            .call::<testkit::Echo>(&EchoRequest {
                payload: Bytes(payload.to_vec()),
            })
            .await
    }

    async fn finish(mut self) {
        self.server_stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
        self.client.close().await;
        delete_topology(
            &self.uri,
            &self.topology,
            &[testkit::QUEUE, registry::QUEUE],
        )
        .await;
    }
}

async fn wait_served(client: &RpcClient) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .call_with::<testkit::Echo>(
                &EchoRequest {
                    payload: Bytes(b"ready?".to_vec()),
                },
                CallOptions::timeout(Duration::from_secs(2)),
            )
            .await;
        match r {
            Ok(_) => return,
            Err(e) if Instant::now() < until => {
                tracing::debug!(%e, "not served yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the testkit server never answered: {e}"),
        }
    }
}

#[tokio::test]
async fn round_trip_returns_the_payload_from_the_server() {
    let w = World::new("round-trip").await;
    let reply = w.echo(b"hello tallyhouse").await.expect("echo");
    assert_eq!(reply.payload.0, b"hello tallyhouse");
    assert_eq!(reply.instance, "in-process");
    assert_eq!(reply.delivery_count, 0);
    w.finish().await;
}

#[tokio::test]
async fn a_thousand_calls_in_flight_each_get_their_own_reply() {
    let w = World::new("thousand").await;
    let calls = (0..1000u32).map(|i| {
        let client = w.client.clone();
        async move {
            let payload = format!("call-{i}").into_bytes();
            let reply = client
                .call_with::<testkit::Echo>(
                    &EchoRequest {
                        payload: Bytes(payload.clone()),
                    },
                    CallOptions::timeout(Duration::from_secs(60)),
                )
                .await;
            (payload, reply)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    for (sent, reply) in results {
        let reply = reply.expect("every call answered");
        assert_eq!(reply.payload.0, sent, "a reply went to the wrong call");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    w.finish().await;
}

#[tokio::test]
async fn a_slow_handler_gives_deadline_exceeded_at_the_deadline() {
    let w = World::new("deadline").await;
    let started = Instant::now();
    let err = w
        .client
        .call_with::<testkit::Sleep>(
            &SleepRequest { millis: 3_000 },
            CallOptions::timeout(Duration::from_millis(300)),
        )
        .await
        .expect_err("the handler sleeps past the deadline");
    let elapsed = started.elapsed();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded, "{err}");
    assert!(err.retryable);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "returned late: {elapsed:?}"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_routing_key_nobody_serves_fails_with_no_route_within_a_second() {
    let uri = amqp_uri();
    let w = World::client_only("no-route", uri, unique_topology("no-route")).await;
    let started = Instant::now();
    let err = w
        .client
        .call_with::<registry::Ping>(
            &registry::PingRequest {},
            CallOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .expect_err("nothing serves registry in this namespace");
    assert_eq!(err.code, ErrorCode::NoRoute, "{err}");
    assert!(!err.retryable);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    w.finish().await;
}

#[tokio::test]
async fn handler_errors_arrive_typed_with_code_message_and_retryable() {
    let w = World::new("typed-error").await;
    let cases = [
        RpcError::new(ErrorCode::Conflict, "package 42 exists with other bytes"),
        RpcError::new(ErrorCode::Unavailable, "database down"),
        RpcError::new(ErrorCode::BadRequest, "records[0].ts: not RFC 3339").with_retryable(false),
        RpcError::new(ErrorCode::NotFound, "no such key").with_retryable(true),
    ];
    for sent in cases {
        let got = w
            .client
            .call::<testkit::Fail>(&FailRequest {
                error: sent.clone(),
            })
            .await
            .expect_err("the handler fails");
        assert_eq!(
            got, sent,
            "the error must arrive exactly as the handler returned it"
        );
    }
    w.finish().await;
}

#[tokio::test]
async fn a_panicking_handler_replies_an_error_keeps_serving_and_dead_letters_the_request() {
    let w = World::new("panic").await;
    let err = w
        .client
        .call::<testkit::Panic>(&EchoRequest {
            payload: Bytes(b"boom".to_vec()),
        })
        .await
        .expect_err("the handler panics");
    assert_eq!(err.code, ErrorCode::HandlerPanicked, "{err}");
    // The process (this test) and its server are still alive and serving.
    assert_eq!(
        w.echo(b"still here")
            .await
            .expect("echo after panic")
            .payload
            .0,
        b"still here"
    );
    let dlq = w.topology.dead_letter_queue(testkit::QUEUE);
    let depth = poll_until(Duration::from_secs(10), || async {
        let d = queue_depth(&w.uri, &dlq).await.unwrap_or(0);
        (d == 1).then_some(d)
    })
    .await;
    assert_eq!(
        depth,
        Some(1),
        "the panicking request must be in the dead-letter queue"
    );
    w.finish().await;
}

#[tokio::test]
async fn expired_requests_are_dropped_without_work() {
    // A request that waits in the queue past its deadline is not handled:
    // with no server up, publish with a short deadline, then start the server.
    let uri = amqp_uri();
    let topology = unique_topology("expired");
    let mut w = World::client_only("expired", uri, topology).await;
    w.start_server(ServerOptions::default());
    w.wait_served().await;
    // Stop the server, leaving the queue and its binding in place.
    w.server_stop.cancel();
    let _ = w.server.take().unwrap().await;
    w.server_stop = CancellationToken::new();
    let err = w
        .client
        .call_with::<testkit::Echo>(
            &EchoRequest {
                payload: Bytes(b"late".to_vec()),
            },
            CallOptions::timeout(Duration::from_millis(200)),
        )
        .await
        .expect_err("nobody consumes");
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queue = w.topology.queue(testkit::QUEUE);
    assert_eq!(
        queue_depth(&w.uri, &queue).await.unwrap(),
        0,
        "the broker expires it"
    );
    w.start_server(ServerOptions::default());
    w.wait_served().await;
    w.finish().await;
}

async fn poll_until<T, F, Fut>(bound: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + bound;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fixture(
    uri: &BrokerUri,
    topology: &Topology,
    instance: &str,
    delivery_limit: u32,
) -> ChildProcess {
    // The fixture takes the URI with credentials on its command line: test brokers only.
    let raw = format!("amqp://guest:guest@{}/%2f", uri.host_port());
    ChildProcess::spawn(
        instance,
        Command::new(workspace_bin("rpc-fixture"))
            .args(["--amqp-uri", &raw])
            .args(["--namespace", topology.namespace()])
            .args(["--instance", instance])
            .args(["--delivery-limit", &delivery_limit.to_string()]),
    )
    .expect("spawn rpc-fixture")
}

#[tokio::test]
async fn a_server_killed_mid_call_has_the_request_redelivered_to_another_instance() {
    let uri = amqp_uri();
    let topology = unique_topology("kill");
    let w = World::client_only("kill", uri.clone(), topology.clone()).await;
    let mut first = fixture(&uri, &topology, "first", 5);
    w.wait_served().await;

    let client = w.client.clone();
    let call = tokio::spawn(async move {
        client
            .call_with::<testkit::Sleep>(
                &SleepRequest { millis: 1_500 },
                CallOptions::timeout(Duration::from_secs(30)),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill(); // SIGKILL while the handler sleeps: no reply, no ack
    let _second = fixture(&uri, &topology, "second", 5);

    let reply = call
        .await
        .unwrap()
        .expect("the call is answered by the second instance");
    assert_eq!(reply.instance, "second");
    assert!(reply.delivery_count >= 1, "it is a redelivery: {reply:?}");
    w.finish().await;
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letter_queue_after_the_delivery_limit() {
    let uri = amqp_uri();
    let topology = unique_topology("poison");
    let w = World::client_only("poison", uri.clone(), topology.clone()).await;
    let limit = 2;
    let mut server = fixture(&uri, &topology, "poisoned-0", limit);
    w.wait_served().await;

    let client = w.client.clone();
    let call = tokio::spawn(async move {
        client
            .call_with::<testkit::Crash>(
                &EchoRequest {
                    payload: Bytes(b"poison".to_vec()),
                },
                CallOptions::timeout(Duration::from_secs(60)),
            )
            .await
    });
    // Each delivery aborts the server; keep restarting it until the broker
    // gives up on the message.
    let dlq = topology.dead_letter_queue(testkit::QUEUE);
    let mut restarts = 0;
    let dead = poll_until(Duration::from_secs(60), || {
        if server.try_wait().is_some() {
            restarts += 1;
            server = fixture(&uri, &topology, &format!("poisoned-{restarts}"), limit);
        }
        let (uri, dlq) = (uri.clone(), dlq.clone());
        async move { (queue_depth(&uri, &dlq).await.unwrap_or(0) == 1).then_some(()) }
    })
    .await;
    assert!(
        dead.is_some(),
        "the poison message never reached the dead-letter queue"
    );
    assert!(
        restarts as u32 > limit,
        "it must have been delivered past the limit ({restarts} crashes)"
    );
    // The server that is up now is healthy and serves other calls.
    let reply = w
        .echo(b"after poison")
        .await
        .expect("served after the poison message");
    assert_eq!(reply.payload.0, b"after poison");
    call.abort();
    w.finish().await;
}

#[tokio::test]
async fn calls_fail_typed_during_a_broker_restart_and_succeed_after_it() {
    let broker = tokio::task::spawn_blocking(DedicatedBroker::start)
        .await
        .unwrap()
        .expect("start a dedicated RabbitMQ node");
    let uri = broker.uri();
    let topology = unique_topology("restart");
    let mut w = World::client_only("restart", uri.clone(), topology).await;
    w.start_server(ServerOptions::default());
    w.wait_served().await;
    assert_eq!(w.echo(b"before").await.unwrap().payload.0, b"before");

    let broker = tokio::task::spawn_blocking(move || broker.stop_app().map(|()| broker))
        .await
        .unwrap()
        .expect("stop the broker");
    // During the outage: typed, retryable failures, well before the deadline.
    for _ in 0..3 {
        let started = Instant::now();
        let err = w
            .client
            .call_with::<testkit::Echo>(
                &EchoRequest {
                    payload: Bytes(b"during".to_vec()),
                },
                CallOptions::timeout(Duration::from_secs(10)),
            )
            .await
            .expect_err("no broker");
        assert_eq!(err.code, ErrorCode::Disconnected, "{err}");
        assert!(err.retryable);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "hung for {:?}",
            started.elapsed()
        );
    }
    let broker = tokio::task::spawn_blocking(move || broker.start_app().map(|()| broker))
        .await
        .unwrap()
        .expect("start the broker again");
    // Both client and server reconnect by themselves.
    let recovered = poll_until(Duration::from_secs(30), || async {
        w.echo(b"after").await.ok()
    })
    .await
    .expect("calls succeed after the broker is back");
    assert_eq!(recovered.payload.0, b"after");
    w.finish().await;
    drop(broker);
}

#[tokio::test]
async fn with_two_brokers_a_lost_link_fails_its_calls_at_once_and_the_other_keeps_serving() {
    let uri = amqp_uri();
    let target: std::net::SocketAddr = uri
        .host_port()
        .parse()
        .expect("host:port of the test broker");
    let proxy = TcpProxy::start(target).await.unwrap();
    let topology = unique_topology("two-brokers");
    // The client holds two connections: one through the proxy, one direct.
    let client = RpcClient::start(
        rpc_config(
            &topology,
            vec![proxy.uri("guest", "guest"), uri.clone()],
            "two-links",
        ),
        RpcMetrics::unregistered(),
    );
    let mut w = World {
        topology,
        uri: uri.clone(),
        client,
        server_stop: CancellationToken::new(),
        server: None,
    };
    w.start_server(ServerOptions::default());
    w.wait_served().await;
    assert!(
        poll_until(Duration::from_secs(10), || async {
            (w.client.connected_links() == 2).then_some(())
        })
        .await
        .is_some()
    );

    // Calls spread round robin over both links; cut the proxied one mid-call.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let c = w.client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = c
                    .call_with::<testkit::Sleep>(
                        &SleepRequest { millis: 2_000 },
                        CallOptions::timeout(Duration::from_secs(20)),
                    )
                    .await;
                (r, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let mut failed = 0;
    let mut succeeded = 0;
    for call in calls {
        let (r, elapsed) = call.await.unwrap();
        match r {
            Ok(_) => succeeded += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Disconnected, "{e}");
                assert!(
                    elapsed < Duration::from_millis(1_800),
                    "failed only after {elapsed:?}"
                );
                failed += 1;
            }
        }
    }
    assert!(failed >= 1, "calls on the cut link must fail");
    assert!(succeeded >= 1, "calls on the other link must succeed");
    // With one link down, every new call still succeeds.
    for i in 0..20u8 {
        assert_eq!(
            w.echo(&[i])
                .await
                .expect("served over the remaining link")
                .payload
                .0,
            [i]
        );
    }
    assert_eq!(w.client.connected_links(), 1);
    // The lost link comes back by itself.
    proxy.restore();
    assert!(
        poll_until(Duration::from_secs(15), || async {
            (w.client.connected_links() == 2).then_some(())
        })
        .await
        .is_some(),
        "the proxied link did not reconnect"
    );
    w.finish().await;
}
