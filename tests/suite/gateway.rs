//! The gateway and the registry as real processes, configured the way the
//! run command configures them (secrets from OpenBao), through HTTP.

use platform::testing::{amqp_uri, delete_topology, put_secret, unique_topology};
use rpc_contracts::registry;
use std::time::Duration;
use tests::{ChildProcess, free_port, service_command};
use tokio::time::Instant;

fn service(bin: &str, namespace: &str, env: &[(&str, String)]) -> ChildProcess {
    ChildProcess::spawn(bin, &mut service_command(bin, namespace, env)).expect("spawn service")
}

async fn get(url: &str) -> Option<reqwest::Response> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .ok()
}

#[tokio::test]
async fn ping_through_the_gateway_is_no_route_until_the_registry_serves_then_ok() {
    let topology = unique_topology("gw");
    let prefix = topology.namespace().to_owned();
    // The services get the test broker's guest account.
    for svc in ["gateway", "registry"] {
        put_secret(
            &prefix,
            svc,
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut gateway = service(
        "gateway",
        topology.namespace(),
        &[("TALLYHOUSE_HTTP_ADDR", format!("127.0.0.1:{port}"))],
    );

    // The gateway comes up alone.
    let until = Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/health"))
        .await
        .is_none_or(|r| !r.status().is_success())
    {
        assert!(Instant::now() < until, "the gateway never answered /health");
        assert!(gateway.try_wait().is_none(), "the gateway exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing serves registry.v1.ping yet: 503, problem+json, code no_route, Retry-After.
    let resp = get(&format!("{base}/v1/ping"))
        .await
        .expect("gateway answers");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers().contains_key("tallyhouse-trace-id"));
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "no_route", "{problem}");
    assert_eq!(problem["status"], 503);

    // With the registry up, the ping goes gateway → broker → registry → back.
    let (registry_db, _, db_env) =
        platform::testing::service_test_database(&prefix, "registry").await;
    let mut registry = service("registry", topology.namespace(), &db_env);
    let until = Instant::now() + Duration::from_secs(30);
    let pong = loop {
        if let Some(r) = get(&format!("{base}/v1/ping")).await
            && r.status() == 200
        {
            break r.json::<registry::PingResponse>().await.unwrap();
        }
        assert!(Instant::now() < until, "the ping never succeeded");
        assert!(registry.try_wait().is_none(), "the registry exited");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(pong.service, "registry");
    assert!(
        pong.instance.starts_with("registry.v1-"),
        "{}",
        pong.instance
    );

    // Both stop gracefully on SIGTERM.
    assert!(
        gateway.terminate().unwrap().success(),
        "gateway exit status"
    );
    assert!(
        registry.terminate().unwrap().success(),
        "registry exit status"
    );
    delete_topology(&amqp_uri(), &topology, &[registry::QUEUE]).await;
    platform::testing::drop_test_database(&registry_db).await;
}

#[tokio::test]
async fn a_service_refused_by_vault_exits_non_zero_naming_vault() {
    let topology = unique_topology("novault");
    let cmd = service_command(
        "registry",
        topology.namespace(),
        &[
            ("VAULT_TOKEN", "not-a-valid-token".to_owned()),
            // Everything but the secrets is configured.
            ("TALLYHOUSE_DATABASE_NAME", "unused".to_owned()),
        ],
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the registry gives up at once when Vault refuses it")
    .unwrap();
    assert!(
        !out.status.success(),
        "a service without its secrets must not run"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Vault at "),
        "the message must name Vault: {stderr}"
    );
    assert!(
        !stderr.contains("not-a-valid-token"),
        "the token must not be printed: {stderr}"
    );
}
