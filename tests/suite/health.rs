//! Health and operations metrics against real servers: `/ready` of every
//! service with its dependency checks (and what a missing bucket or an
//! unreachable database does to it), the gateway's HTTP metrics after real
//! requests, the database pool gauges, and the dead-letter queue gauge after
//! a request really was dead-lettered.

use platform::ops::{Readiness, postgres_check, serve_ops};
use platform::rpc::{CallOptions, RpcClient, RpcMetrics, ServerOptions};
use platform::testing::{
    amqp_uri, database_admin_url, delete_topology, queue_depth, rpc_config, testkit_server,
    unique_topology,
};
use prometheus_client::registry::Registry;
use rpc_contracts::testkit::{self, EchoRequest};
use rpc_contracts::{Bytes, ErrorCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tests::free_port;
use tests::stack::{Stack, StackOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The checks each service's `/ready` must report (more may come, e.g. `vault`).
const EXPECTED_CHECKS: [(&str, &[&str]); 5] = [
    ("registry", &["broker", "database", "started"]),
    ("auth", &["broker", "database", "started"]),
    ("ingest", &["broker", "database", "s3", "started"]),
    ("query", &["broker", "database", "s3", "started"]),
    ("gateway", &["broker", "started", "token_keys"]),
];

/// `GET /ready`: the status and the JSON body.
async fn ready(addr: SocketAddr) -> (u16, Value) {
    let url = format!("http://{addr}/ready");
    let resp = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.json().await.expect("/ready answers JSON");
    (status, body)
}

/// Polls `/ready` until it answers `status` (the checks' results are cached
/// for a second), within 30 s.
async fn ready_with(addr: SocketAddr, status: u16) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = ready(addr).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < until,
            "{addr}/ready still answers {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the sample `series` (the name and labels as exposed) in a
/// Prometheus text scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the ops endpoint answers")
        .text()
        .await
        .expect("a metrics body")
}

#[tokio::test]
async fn every_service_is_ready_with_its_checks_and_a_missing_bucket_makes_ingest_and_query_unready()
 {
    let stack = Stack::start(StackOptions::default()).await;

    // A healthy stack: 200, every check ok, the gauges at 1.
    for (service, expected) in EXPECTED_CHECKS {
        let addr = stack.metrics_addr(service);
        let body = ready_with(addr, 200).await;
        assert_eq!(body["ready"], true, "{service}: {body}");
        let checks = body["checks"].as_object().expect("checks");
        for name in expected {
            assert_eq!(checks.get(*name), Some(&json!("ok")), "{service}: {body}");
        }
        for (name, state) in checks {
            assert_eq!(state, "ok", "{service}: check {name}: {body}");
        }
        let metrics = stack.scrape_metrics(service).await;
        for name in expected {
            assert_eq!(
                sample(
                    &metrics,
                    &format!("tallyhouse_ready_check{{check=\"{name}\"}}")
                ),
                Some(1.0),
                "{service}: {metrics}"
            );
        }
    }

    // The bucket goes away: ingest and query (which read and write it) say
    // so and answer 503; the registry does not use S3 and stays ready.
    stack.remove_bucket().await.expect("remove the bucket");
    for service in ["ingest", "query"] {
        let addr = stack.metrics_addr(service);
        let body = ready_with(addr, 503).await;
        assert_eq!(body["ready"], false, "{service}: {body}");
        assert_eq!(
            body["checks"]["s3"],
            format!("bucket {} not found", stack.bucket),
            "{service}: {body}"
        );
        assert_eq!(body["checks"]["database"], "ok", "{service}: {body}");
        assert_eq!(body["checks"]["broker"], "ok", "{service}: {body}");
        let metrics = stack.scrape_metrics(service).await;
        assert_eq!(
            sample(&metrics, "tallyhouse_ready_check{check=\"s3\"}"),
            Some(0.0),
            "{service}: {metrics}"
        );
    }
    let (status, body) = ready(stack.metrics_addr("registry")).await;
    assert_eq!(status, 200, "{body}");

    // It comes back: ready again, without a restart.
    stack
        .evidence
        .ensure_bucket()
        .await
        .expect("create the bucket");
    for service in ["ingest", "query"] {
        let body = ready_with(stack.metrics_addr(service), 200).await;
        assert_eq!(body["checks"]["s3"], "ok", "{service}: {body}");
    }
    stack.remove_bucket().await.expect("remove the bucket");
    stack.finish().await;
}

#[tokio::test]
async fn the_gateway_counts_requests_by_route_template_and_status_and_pools_are_gauged() {
    let stack = Stack::start(StackOptions::default()).await;
    let gateway = stack.metrics_addr("gateway");
    let ping = "tallyhouse_http_requests_total{route=\"/v1/ping\",method=\"GET\",status=\"200\"}";
    let ping_seconds =
        "tallyhouse_http_request_duration_seconds_count{route=\"/v1/ping\",method=\"GET\"}";
    let before = scrape(gateway).await;

    let http = reqwest::Client::new();
    for _ in 0..3 {
        let resp = http
            .get(format!("{}/v1/ping", stack.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // A route with parameters, without a token: refused; and no route at all.
    let package = uuid::Uuid::new_v4();
    let refused = http
        .get(format!("{}/v1/packages/acme/{package}", stack.base_url))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!((400..500).contains(&refused), "{refused}");
    let lost = uuid::Uuid::new_v4();
    let missing = http
        .get(format!("{}/no/such/route/{lost}", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let after = scrape(gateway).await;
    let delta = |series: &str| {
        sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0)
    };
    assert_eq!(delta(ping), 3.0, "{after}");
    assert_eq!(delta(ping_seconds), 3.0, "{after}");
    assert_eq!(
        delta(&format!(
            "tallyhouse_http_requests_total{{route=\"/v1/packages/{{submitter}}/{{package_id}}\",method=\"GET\",status=\"{refused}\"}}"
        )),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("tallyhouse_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "tallyhouse_http_requests_in_flight"),
        Some(0.0),
        "{after}"
    );
    // Route templates only: no raw path, so no id, ever becomes a label.
    for raw in [package.to_string(), lost.to_string()] {
        assert!(!after.contains(&raw), "{raw} in\n{after}");
    }

    // Database pools: sampled at scrape time (the scrape's own readiness
    // check has just used a connection).
    for (service, pool) in [
        ("registry", "registry"),
        ("auth", "auth"),
        ("query", "query"),
        ("ingest", "ingest"),
    ] {
        let metrics = stack.scrape_metrics(service).await;
        let gauge = |name: &str| {
            sample(
                &metrics,
                &format!("tallyhouse_db_pool_{name}{{pool=\"{pool}\"}}"),
            )
            .unwrap_or_else(|| panic!("{service}: no {name} of pool {pool} in\n{metrics}"))
        };
        let (open, idle, max) = (
            gauge("connections_open"),
            gauge("connections_idle"),
            gauge("connections_max"),
        );
        assert!(max >= 1.0, "{service}: {metrics}");
        assert!((1.0..=max).contains(&open), "{service}: {metrics}");
        assert!(idle <= open, "{service}: {metrics}");
        if service == "ingest" {
            assert_eq!(gauge("waiters"), 0.0, "{metrics}");
        }
    }
    stack.finish().await;
}

#[tokio::test]
async fn ready_names_an_unreachable_database_without_its_password_and_answers_503() {
    let topology = unique_topology("ready-db");
    let rpc_metrics = RpcMetrics::unregistered();
    let client = RpcClient::start(
        rpc_config(&topology, vec![amqp_uri()], "ready-db"),
        rpc_metrics.clone(),
    );
    assert!(
        client.wait_connected(Duration::from_secs(10)).await,
        "no broker link"
    );
    let ready_state = Readiness::new(rpc_metrics);
    let good = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&database_admin_url())
        .expect("a pool");
    ready_state.add_check("database", postgres_check(good.clone()));
    let stop = CancellationToken::new();
    let (addr, task) = serve_ops(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Registry::default(),
        ready_state.clone(),
        stop.clone(),
    )
    .await
    .expect("serve the ops endpoint");

    // Not started yet: 503, saying so.
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["started"], "starting", "{body}");
    ready_state.set(true);
    let body = ready_with(addr, 200).await;
    assert_eq!(
        body,
        json!({"ready": true, "checks": {"broker": "ok", "database": "ok", "started": "ok"}})
    );

    // The same check against a port where no PostgreSQL listens.
    let password = "pw-that-must-never-show-3f9a";
    let dead = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!(
            "postgres://nobody:{password}@127.0.0.1:{}/nothing",
            free_port()
        ))
        .expect("a lazy pool");
    ready_state.add_check("database", postgres_check(dead));
    let body = ready_with(addr, 503).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["broker"], "ok", "{body}");
    let reason = body["checks"]["database"].as_str().expect("a reason");
    assert_ne!(reason, "ok");
    assert!(!body.to_string().contains(password), "{body}");
    let metrics = scrape(addr).await;
    assert_eq!(
        sample(&metrics, "tallyhouse_ready_check{check=\"database\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert!(!metrics.contains(password));

    stop.cancel();
    let _ = task.await;
    good.close().await;
    client.close().await;
}

#[tokio::test]
async fn the_dead_letter_gauge_counts_a_request_really_dead_lettered() {
    let uri = amqp_uri();
    let topology = unique_topology("dlq-gauge");
    let mut registry = Registry::default();
    let metrics = RpcMetrics::register(&mut registry);
    let stop = CancellationToken::new();
    let server = testkit_server()
        .options(ServerOptions {
            dead_letter_sample_interval: Duration::from_millis(200),
            ..ServerOptions::default()
        })
        .build();
    let task = tokio::spawn(server.run(
        rpc_config(&topology, vec![uri.clone()], "dlq-server"),
        metrics,
        stop.clone(),
    ));
    let client = RpcClient::start(
        rpc_config(&topology, vec![uri.clone()], "dlq-client"),
        RpcMetrics::unregistered(),
    );
    let dlq = topology.dead_letter_queue(testkit::QUEUE);
    let series = format!("tallyhouse_rpc_dead_letter_messages{{queue=\"{dlq}\"}}");
    let gauge = |registry: &Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        sample(&text, &series)
    };
    let until = Instant::now() + Duration::from_secs(30);
    // Served, and the empty dead-letter queue sampled.
    loop {
        let echo = client
            .call_with::<testkit::Echo>(
                &EchoRequest {
                    payload: Bytes(b"ready?".to_vec()),
                },
                CallOptions::timeout(Duration::from_secs(2)),
            )
            .await;
        if echo.is_ok() && gauge(&registry) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < until, "never served: {echo:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let err = client
        .call::<testkit::Panic>(&EchoRequest {
            payload: Bytes(b"boom".to_vec()),
        })
        .await
        .expect_err("the handler panics");
    assert_eq!(err.code, ErrorCode::HandlerPanicked, "{err}");
    while gauge(&registry) != Some(1.0) {
        assert!(
            Instant::now() < until,
            "the gauge stays at {:?}",
            gauge(&registry)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queue_depth(&uri, &dlq).await.expect("queue depth"), 1);

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    client.close().await;
    delete_topology(&uri, &topology, &[testkit::QUEUE]).await;
}
