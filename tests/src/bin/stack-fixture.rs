//! A whole isolated platform (`tests::stack::Stack`) for tests written
//! outside Rust. It starts the platform on the test command's servers, adds
//! an admin (`fixture-admin`), an analyst (`fixture-victim`), a submitter
//! with a key and one stored package, and prints one JSON line:
//! `base_url`, `admin_token`, `victim_token`, `submitter_id`, `key_id`,
//! `package_id`, and `log_dir` (where the services write their logs). Then
//! it serves until its standard input closes (or SIGINT / SIGTERM), and
//! removes everything it made.
//!
//! tests/python/test_schemathesis.py runs it; run by hand with the
//! `TALLYHOUSE_TEST_*` variables `deployment/test.sh` exports.

use base64::Engine as _;
use rpc_contracts::auth::{self, Password, Role};
use std::io::Write as _;
use tests::stack::{Stack, StackOptions};
use tokio::io::AsyncReadExt as _;

/// The admin's password: this platform lives only as long as the process.
const ADMIN_PASSWORD: &str = "stack fixture admin password";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The services log to files (stdout carries only the JSON line).
    let log_dir =
        std::env::temp_dir().join(format!("tallyhouse-stack-fixture-{}", std::process::id()));
    let stack = Stack::start(StackOptions {
        log_dir: Some(log_dir.clone()),
        ..StackOptions::default()
    })
    .await;
    let outcome = match prepare(&stack, &log_dir).await {
        Ok(line) => {
            let printed = {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush())
            };
            if printed.is_ok() {
                wait_for_the_end().await;
            }
            printed.map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    stack.finish().await;
    if outcome.is_ok() {
        // The caller had the logs while the platform ran.
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    outcome
}

/// Users, a submitter, a package; the JSON line to print.
async fn prepare(stack: &Stack, log_dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    stack
        .rpc
        .call::<auth::AddUser>(&auth::AddUserRequest {
            username: "fixture-admin".into(),
            roles: vec![Role::Admin, Role::Analyst, Role::Auditor],
            password: Password(ADMIN_PASSWORD.into()),
            actor: None,
        })
        .await?;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/v1/auth/login", stack.base_url))
        .json(&serde_json::json!({"username": "fixture-admin", "password": ADMIN_PASSWORD}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // A second account, for the calls that change or end their caller's
    // own session (logout, role and password changes), so the admin's
    // token keeps working.
    stack
        .rpc
        .call::<auth::AddUser>(&auth::AddUserRequest {
            username: "fixture-victim".into(),
            roles: vec![Role::Analyst],
            password: Password(ADMIN_PASSWORD.into()),
            actor: None,
        })
        .await?;
    let victim: serde_json::Value = http
        .post(format!("{}/v1/auth/login", stack.base_url))
        .json(&serde_json::json!({"username": "fixture-victim", "password": ADMIN_PASSWORD}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (key, key_id) = stack.submitter_with_key("fixture-submitter").await;
    let now = platform::clock::now();
    let package = evidence::generate::generate_package(&evidence::generate::PackageSpec::new(
        rpc_contracts::SubmitterId::parse("fixture-submitter").map_err(anyhow::Error::msg)?,
        "local",
        12,
        now,
        1,
    ));
    http.post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header(
            "tallyhouse-signature",
            base64::engine::general_purpose::STANDARD.encode(key.sign(&package.bytes)),
        )
        .body(package.bytes)
        .send()
        .await?
        .error_for_status()?;
    Ok(serde_json::json!({
        "base_url": stack.base_url,
        "admin_token": login["access_token"],
        "victim_token": victim["access_token"],
        "submitter_id": "fixture-submitter",
        "key_id": key_id.as_str(),
        "package_id": package.package_id,
        "log_dir": log_dir,
    }))
}

/// Until standard input reaches its end, or a stop signal comes.
async fn wait_for_the_end() {
    let stop = platform::shutdown::token_on_signal();
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            read = stdin.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}
