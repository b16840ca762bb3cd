//! Logs: a real service ships its events to a local receiver that speaks
//! Loki's push protocol (`POST /loki/api/v1/push`, snappy-compressed
//! protobuf), with the labels `service`, `environment` and `level` only and
//! nothing lost at a graceful stop; and a whole platform run in which every
//! stdout line is a JSON object and none holds a secret or a package.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use loki_api::logproto::PushRequest;
use loki_api::prost::Message as _;
use platform::rpc::{CallOptions, RpcClient, RpcMetrics};
use platform::testing::{
    amqp_uri, delete_topology, drop_test_database, put_secret, rpc_config, service_test_database,
    unique_topology, vault_addr, vault_root_token,
};
use rpc_contracts::SubmitterId;
use rpc_contracts::registry::{self, AddSubmitterRequest, PingRequest};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tests::{ChildProcess, service_command};
use tokio::time::Instant;

/// One line as Loki would store it: its stream's labels and the line, a
/// JSON object.
#[derive(Debug, Clone)]
struct Entry {
    labels: BTreeMap<String, String>,
    line: Value,
}

impl Entry {
    fn message(&self) -> &str {
        self.line["message"].as_str().unwrap_or_default()
    }
}

/// What the receiver was sent.
#[derive(Debug, Default)]
struct Received {
    entries: Vec<Entry>,
    /// Why a push was refused (wrong headers, bad snappy or protobuf, bad
    /// labels, a line that is not a JSON object).
    refused: Vec<String>,
}

/// A Loki stand-in on loopback: decodes each push as Loki does and keeps
/// its entries. It serves from a thread of its own, so it keeps answering
/// while the test blocks (waiting for a process to exit). It answers each
/// push after `latency`, as a loaded Loki would: the shipper sends one push
/// at a time, so the last lines wait behind one in flight, and reach it
/// only if the process waits for them on its way out.
struct LokiReceiver {
    url: String,
    received: Arc<Mutex<Received>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LokiReceiver {
    fn start(latency: Duration) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new()
            .route("/loki/api/v1/push", axum::routing::post(push))
            .with_state((received.clone(), latency));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            url,
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn entries(&self) -> Vec<Entry> {
        self.received.lock().unwrap().entries.clone()
    }

    fn refused(&self) -> Vec<String> {
        self.received.lock().unwrap().refused.clone()
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn push(
    State((received, latency)): State<(Arc<Mutex<Received>>, Duration)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    tokio::time::sleep(latency).await;
    let decoded = decode_push(&headers, &body);
    let mut received = received.lock().unwrap();
    match decoded {
        Ok(entries) => {
            received.entries.extend(entries);
            StatusCode::NO_CONTENT
        }
        Err(why) => {
            received.refused.push(why);
            StatusCode::BAD_REQUEST
        }
    }
}

/// Decodes one push the way Loki's distributor does.
fn decode_push(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Entry>, String> {
    let header = |name: header::HeaderName| {
        headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if header(header::CONTENT_TYPE) != "application/x-protobuf" {
        return Err(format!("content-type {:?}", header(header::CONTENT_TYPE)));
    }
    if header(header::CONTENT_ENCODING) != "snappy" {
        return Err(format!(
            "content-encoding {:?}",
            header(header::CONTENT_ENCODING)
        ));
    }
    // Loki's bodies are snappy's block format, not its framed stream format.
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let request = PushRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let mut entries = Vec::new();
    for stream in request.streams {
        let labels = parse_labels(&stream.labels)?;
        if stream.entries.is_empty() {
            return Err(format!("stream {} has no entries", stream.labels));
        }
        for entry in stream.entries {
            if entry.timestamp.is_none() {
                return Err(format!("an entry of {} has no timestamp", stream.labels));
            }
            let line: Value = serde_json::from_str(&entry.line)
                .map_err(|e| format!("line {:?} is not JSON: {e}", entry.line))?;
            if !line.is_object() {
                return Err(format!("line {:?} is not a JSON object", entry.line));
            }
            entries.push(Entry {
                labels: labels.clone(),
                line,
            });
        }
    }
    Ok(entries)
}

/// Parses a Loki stream selector, `{key="value",...}` (values quoted with
/// backslash escapes, as Go's `%q` writes them); a repeated key is refused.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let bad = |why: &str| format!("labels {s:?}: {why}");
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| bad("not in braces"))?;
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(&format!("bad key {key:?}")));
        }
        if chars.next() != Some('"') {
            return Err(bad("a value is not quoted"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('"') => value.push('"'),
                    Some('\\') => value.push('\\'),
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    other => return Err(bad(&format!("unsupported escape {other:?}"))),
                },
                Some(c) => value.push(c),
                None => return Err(bad("unterminated value")),
            }
        }
        if labels.insert(key.clone(), value).is_some() {
            return Err(bad(&format!("{key} twice")));
        }
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => return Err(bad(&format!("{c:?} after a value"))),
        }
    }
    Ok(labels)
}

#[test]
fn the_receiver_parses_loki_selectors_and_refuses_malformed_ones() {
    assert_eq!(
        parse_labels(r#"{service="registry",environment="a \"b\" \\ c",level="info"}"#).unwrap(),
        BTreeMap::from([
            ("service".to_owned(), "registry".to_owned()),
            ("environment".to_owned(), r#"a "b" \ c"#.to_owned()),
            ("level".to_owned(), "info".to_owned()),
        ])
    );
    for (bad, why) in [
        (r#"service="registry""#, "no braces"),
        (r#"{service=registry}"#, "unquoted value"),
        (r#"{service="a",service="b"}"#, "repeated key"),
        (r#"{service="a"level="info"}"#, "no comma"),
        (r#"{service="a}"#, "unterminated"),
        (r#"{="a"}"#, "empty key"),
    ] {
        assert!(parse_labels(bad).is_err(), "{bad} ({why}) was taken");
    }
}

/// Output of a service: each line as written and parsed, checked to be a
/// JSON object.
fn json_lines(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a line is not JSON ({e}): {line}", path.display()));
            assert!(
                value.is_object(),
                "{}: a line is not a JSON object: {line}",
                path.display()
            );
            (line.to_owned(), value)
        })
        .collect()
}

/// How many times each `(level, message)` occurs.
fn tally<'a>(events: impl Iterator<Item = (String, &'a str)>) -> HashMap<(String, &'a str), usize> {
    let mut counts = HashMap::new();
    for event in events {
        *counts.entry(event).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn a_service_ships_its_events_to_loki_under_three_labels_and_flushes_them_on_sigterm() {
    // Well under the shutdown flush's bound (3 s), even for two pushes.
    let loki = LokiReceiver::start(Duration::from_millis(200));
    let topology = unique_topology("loki");
    let prefix = topology.namespace().to_owned();
    put_secret(
        &prefix,
        "registry",
        "amqp",
        &[("username", "guest"), ("password", "guest")],
    )
    .await;
    let (db_name, _, mut env) = service_test_database(&prefix, "registry").await;
    env.push(("TALLYHOUSE_LOKI_URL", loki.url.clone()));
    let stdout_path = std::env::temp_dir().join(format!("tallyhouse-{prefix}-registry.log"));
    let mut cmd = service_command("registry", &prefix, &env);
    cmd.stdout(std::fs::File::create(&stdout_path).unwrap());
    let mut process = ChildProcess::spawn("registry", &mut cmd).expect("spawn the registry");

    let rpc = RpcClient::start(
        rpc_config(&topology, vec![amqp_uri()], "test-loki-client"),
        RpcMetrics::unregistered(),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while rpc.call::<registry::Ping>(&PingRequest {}).await.is_err() {
        assert!(process.try_wait().is_none(), "the registry exited");
        assert!(Instant::now() < until, "the registry never answered a ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One call with a trace id of ours: the registry logs inside its span.
    let trace_id = format!("loki{}", uuid::Uuid::new_v4().simple());
    rpc.call_with::<registry::AddSubmitter>(
        &AddSubmitterRequest {
            submitter_id: SubmitterId::parse("acme").unwrap(),
            name: None,
        },
        CallOptions {
            timeout: None,
            trace_id: Some(trace_id.clone()),
        },
    )
    .await
    .expect("add a submitter");
    let status = process.terminate().expect("stop the registry");
    assert!(status.success(), "the registry stopped with {status}");

    // Everything arrived before the process exited: no waiting here.
    assert_eq!(loki.refused(), Vec::<String>::new(), "pushes refused");
    let entries = loki.entries();
    assert!(!entries.is_empty(), "nothing reached Loki");
    for entry in &entries {
        let keys: Vec<&str> = entry.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["environment", "level", "service"], "{entry:?}");
        assert_eq!(entry.labels["service"], "registry");
        assert_eq!(entry.labels["environment"], "test");
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&entry.labels["level"].as_str()),
            "{entry:?}"
        );
    }
    let find = |message: &str| entries.iter().find(|e| e.message() == message);
    let started = find("telemetry initialised").expect("the start-up line");
    assert_eq!(started.labels["level"], "info");
    assert_eq!(started.line["service"], "registry");
    let call = entries
        .iter()
        .find(|e| e.line["trace_id"] == trace_id.as_str())
        .expect("a line carrying the call's trace id");
    assert_eq!(call.message(), "submitter registered");
    assert_eq!(call.line["method"], "registry.v1.add_submitter");
    assert_eq!(call.line["submitter_id"], "acme");
    assert_eq!(
        find("shutdown requested").expect("the signal line").line["signal"],
        "SIGTERM"
    );
    assert!(
        find("stopped").is_some(),
        "the last line, `stopped`, was lost"
    );

    // The same events as stdout: every line Loki got was printed, and every
    // line printed up to `stopped` reached Loki.
    let stdout: Vec<Value> = json_lines(&stdout_path)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let printed_until_stop = stdout
        .iter()
        .position(|l| l["message"] == "stopped")
        .expect("`stopped` on stdout");
    let level = |l: &Value| l["level"].as_str().unwrap_or_default().to_lowercase();
    let message = |l: &Value| l["message"].as_str().unwrap_or_default().to_owned();
    let printed_messages: Vec<(String, String)> =
        stdout.iter().map(|l| (level(l), message(l))).collect();
    let printed = tally(
        printed_messages
            .iter()
            .map(|(l, m)| (l.clone(), m.as_str())),
    );
    let printed_before = tally(
        printed_messages[..=printed_until_stop]
            .iter()
            .map(|(l, m)| (l.clone(), m.as_str())),
    );
    let shipped = tally(
        entries
            .iter()
            .map(|e| (e.labels["level"].clone(), e.message())),
    );
    for (event, n) in &shipped {
        assert!(
            printed.get(event).copied().unwrap_or(0) >= *n,
            "{event:?} shipped {n} times, printed fewer"
        );
    }
    for (event, n) in &printed_before {
        assert!(
            shipped.get(event).copied().unwrap_or(0) >= *n,
            "{event:?} printed {n} times before `stopped`, shipped fewer"
        );
    }

    rpc.close().await;
    delete_topology(&amqp_uri(), &topology, &[registry::QUEUE]).await;
    drop_test_database(&db_name).await;
    let _ = std::fs::remove_file(&stdout_path);
}

/// Every secret value stored under the stack's Vault prefix, named by its
/// path and field: passwords, secret keys, private keys, tokens (user names,
/// key ids and database names are not secrets).
async fn vault_secrets(prefix: &str) -> Vec<(String, String)> {
    let client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(vault_addr())
            .token(vault_root_token())
            .build()
            .unwrap(),
    )
    .unwrap();
    let mut secrets = Vec::new();
    let mut folders = vec![format!("{prefix}/")];
    while let Some(folder) = folders.pop() {
        let keys = vaultrs::kv2::list(&client, "secret", &folder)
            .await
            .unwrap_or_else(|e| panic!("list {folder}: {e}"));
        for key in keys {
            let path = format!("{folder}{key}");
            if key.ends_with('/') {
                folders.push(path);
                continue;
            }
            let fields: HashMap<String, String> = vaultrs::kv2::read(&client, "secret", &path)
                .await
                .unwrap_or_else(|e| panic!("read {path}: {e}"));
            let is_secret = |field: &str| {
                ["password", "secret", "private", "token"]
                    .iter()
                    .any(|s| field.contains(s))
            };
            for (field, value) in &fields {
                if !is_secret(field) {
                    continue;
                }
                let name = format!("{path}#{field}");
                let public = fields
                    .iter()
                    .any(|(other, v)| v == value && !is_secret(other));
                if public {
                    // The same value as a user name (the test broker's
                    // guest/guest): the value alone may be logged as the
                    // user; as a password it would show in these forms.
                    for form in [
                        format!(":{value}@"),
                        format!("\"{field}\":\"{value}\""),
                        format!("{field}={value}"),
                    ] {
                        secrets.push((name.clone(), form));
                    }
                } else {
                    secrets.push((name, value.clone()));
                }
            }
        }
    }
    secrets
}

/// What to look for in the logs for one secret: itself, or each line of a
/// PEM body (a logged PEM would be escaped or cut, its lines would not).
fn needles(name: &str, value: &str) -> Vec<(String, String)> {
    if value.contains("-----BEGIN") {
        value
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(|l| (format!("{name} (a PEM line)"), l.to_owned()))
            .collect()
    } else {
        vec![(name.to_owned(), value.to_owned())]
    }
}

/// Every string in a JSON value, keys included.
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(strings(v)))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn no_log_line_holds_a_secret_or_a_package_and_every_line_is_a_json_object() {
    let dir =
        std::env::temp_dir().join(format!("tallyhouse-logs-{}", uuid::Uuid::new_v4().simple()));
    let mut stack = Stack::start(StackOptions {
        log_dir: Some(dir.clone()),
        ..StackOptions::default()
    })
    .await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let marker = format!("payload-marker-{}", uuid::Uuid::new_v4().simple());
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = platform::clock::now();
    let body = serde_json::to_vec(&json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": "acme",
        "audience": "local",
        "created_at": rfc(now),
        "records": [{
            "series": "bets.stake",
            "ts": rfc(now - time::Duration::seconds(1)),
            "value": 10.5,
            "labels": {"game": "poker", "venue": marker},
        }],
    }))
    .unwrap();
    let sign = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(key.sign(bytes))
    };
    let signature = sign(&body);
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, signature: String| {
        http.post(format!("{}/v1/packages", stack.base_url))
            .header("content-type", "application/json")
            .header("tallyhouse-key-id", key_id.as_str())
            .header("tallyhouse-signature", signature)
            .body(body)
            .send()
    };
    let stored = post(body.clone(), signature.clone()).await.unwrap();
    assert_eq!(stored.status(), 201, "the package is stored");
    let trace_id = stored.headers()["tallyhouse-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The error paths, where payloads and headers tend to leak: a signature
    // of other bytes, and a signed body that is not a package.
    let forged = sign(b"other bytes");
    let refused = post(body.clone(), forged.clone()).await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let not_a_package = serde_json::to_vec(&json!({"schema": marker, "records": marker})).unwrap();
    let not_a_package_signature = sign(&not_a_package);
    let refused = post(not_a_package, not_a_package_signature.clone())
        .await
        .unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());

    // Stop every service gracefully, so their shutdown lines count too.
    for name in stack.process_names() {
        let status = stack.process(&name).terminate().unwrap();
        assert!(status.success(), "{name} stopped with {status}");
    }
    // Every output the stack captured: the services' and one-shot commands'
    // (`ingest migrate`).
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    logs.sort();

    let mut secrets = vault_secrets(stack.topology.namespace()).await;
    assert!(
        secrets
            .iter()
            .any(|(name, _)| name.ends_with("/ingest/receipt_key#private_key_pem")),
        "the receipt key was not found among {:?}",
        secrets.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    secrets.push(("the Vault token".into(), vault_root_token()));
    secrets.push(("the package's marker".into(), marker.clone()));
    secrets.push(("the signature header".into(), signature));
    secrets.push(("a forged signature header".into(), forged));
    secrets.push(("another signature header".into(), not_a_package_signature));
    let needles: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|(name, value)| needles(name, value))
        .collect();

    let mut lines = 0;
    let mut stored_lines = Vec::new();
    for log in &logs {
        for (raw, parsed) in json_lines(log) {
            lines += 1;
            if parsed["message"] == "package stored" {
                stored_lines.push(parsed.clone());
            }
            // As written, and with JSON escapes undone (a PEM's newlines).
            let decoded = strings(&parsed).join("\n");
            for (name, needle) in &needles {
                assert!(
                    !raw.contains(needle.as_str()) && !decoded.contains(needle.as_str()),
                    "{} logged {name}: {raw}",
                    log.display()
                );
            }
        }
    }
    assert!(
        logs.len() >= 3 && lines >= 3 * logs.len(),
        "too little was logged to tell: {lines} lines in {logs:?}"
    );
    // The gateway's trace id followed the request to ingest: its line
    // carries it in the enclosing `rpc_request` span.
    assert_eq!(stored_lines.len(), 1, "{stored_lines:?}");
    let spans = stored_lines[0]["spans"].as_array().expect("a span list");
    assert!(
        spans.iter().any(|s| s["trace_id"] == trace_id.as_str()),
        "ingest's line lacks the gateway's trace id {trace_id}: {}",
        stored_lines[0]
    );
    stack.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}
