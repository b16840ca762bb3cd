//! Hostile HTTP against the real gateway, on a whole running platform:
//! oversized heads, slow heads and bodies (slowloris), floods of failed
//! logins and of invalid signatures, and traversal and injection attempts in
//! every path and query parameter. Outcomes only (status codes, problem
//! codes, what was stored, that a legitimate caller got through while the
//! attack went on), never durations; the one time bound is a hang guard.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use evidence::SigningKey;
use evidence::generate::{PackageSpec, generate_package};
use reqwest::{Method, StatusCode};
use rpc_contracts::auth::{self, Password, Role};
use rpc_contracts::{KeyId, SubmitterId};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tests::{ChildProcess, free_port, service_command};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct horse battery staple";

/// The longest any awaited outcome may take before the test calls it a
/// hang: a guard against waiting forever, not a measurement.
const GUARD: Duration = Duration::from_secs(60);

/// A client without kept-alive connections: every request on a fresh one,
/// so no test depends on how long the gateway keeps an idle connection.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A package of `records` records for `submitter`, and its signature
/// header made with `key`.
fn signed(key: &SigningKey, submitter: &str, records: usize) -> (Vec<u8>, String) {
    let spec = PackageSpec::new(
        SubmitterId::parse(submitter).unwrap(),
        "local",
        records,
        platform::clock::now(),
        uuid::Uuid::new_v4().as_u64_pair().0,
    );
    let bytes = generate_package(&spec).bytes;
    let signature = STANDARD.encode(key.sign(&bytes));
    (bytes, signature)
}

/// `POST /v1/packages`: the status and the JSON body.
async fn submit(base: &str, key_id: &KeyId, body: &[u8], signature: &str) -> (StatusCode, Value) {
    let resp = http()
        .post(format!("{base}/v1/packages"))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header("tallyhouse-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Submits until the answer is not a 503 (a submitter retries the same
/// bytes on 503), at most 50 times; the final status.
async fn submit_retrying(base: &str, key_id: &KeyId, body: &[u8], signature: &str) -> StatusCode {
    for _ in 0..50 {
        let (status, _) = submit(base, key_id, body, signature).await;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    StatusCode::SERVICE_UNAVAILABLE
}

async fn add_user(stack: &Stack, username: &str, roles: &[Role]) {
    stack
        .rpc
        .call::<auth::AddUser>(&auth::AddUserRequest {
            username: username.to_owned(),
            roles: roles.to_vec(),
            password: Password(PASSWORD.to_owned()),
            actor: None,
        })
        .await
        .expect("add user");
}

async fn login(base: &str, username: &str, password: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("the gateway answers")
}

async fn token_for(base: &str, username: &str) -> String {
    let resp = login(base, username, PASSWORD).await;
    assert_eq!(resp.status(), 200, "login of {username}");
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.query(sql).await[0]["n"].as_i64().unwrap()
}

/// A second gateway on the stack's namespace, with `env` (its limits).
async fn gateway_with(stack: &Stack, env: &[(&'static str, String)]) -> (ChildProcess, String) {
    let port = free_port();
    let mut all = vec![("TALLYHOUSE_HTTP_ADDR", format!("127.0.0.1:{port}"))];
    all.extend(env.iter().cloned());
    let mut child = ChildProcess::spawn(
        "gateway-with-limits",
        &mut service_command("gateway", stack.topology.namespace(), &all),
    )
    .expect("spawn gateway");
    let base = format!("http://127.0.0.1:{port}");
    tokio::time::timeout(GUARD, async {
        loop {
            let ping = http().get(format!("{base}/v1/ping")).send().await;
            if ping.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(child.try_wait().is_none(), "the gateway exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the second gateway never answered /v1/ping");
    (child, base)
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads one response (head, then `content-length` bytes or up to the end
/// of the connection); `None` if the connection ends before a head.
async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    while length.is_none_or(|l| body.len() < l) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `bytes` on a new connection and reads the answer.
async fn exchange(addr: &str, bytes: &[u8]) -> Option<RawResponse> {
    tokio::time::timeout(GUARD, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before reading everything.
        let _ = stream.write_all(bytes).await;
        read_response(&mut stream).await
    })
    .await
    .expect("the gateway hung on a request")
}

/// Whether the server ends the connection (EOF or reset) while the client
/// keeps sending `unit` every 200 ms: the answer it sent first, if any.
async fn trickle_until_closed(mut stream: TcpStream, unit: &'static [u8]) -> Option<RawResponse> {
    loop {
        tokio::select! {
            response = read_response(&mut stream) => return response,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(unit).await.is_err() {
                    return read_response(&mut stream).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn oversized_heads_and_slow_requests_are_cut_off_while_others_are_served() {
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let (_gateway, base) = gateway_with(
        &stack,
        &[
            ("TALLYHOUSE_HTTP_HEADER_READ_TIMEOUT_MS", "1000".into()),
            ("TALLYHOUSE_HTTP_BODY_READ_TIMEOUT_MS", "1500".into()),
            ("TALLYHOUSE_HTTP_MAX_HEADER_BYTES", "8192".into()),
        ],
    )
    .await;
    let addr = base.trim_start_matches("http://").to_owned();

    // Oversized heads: one header past the limit, or too many headers, are
    // answered 431, on this gateway (8 KiB) and the stack's (the default).
    for target in [addr.as_str(), stack.base_url.trim_start_matches("http://")] {
        let long = format!(
            "GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET /v1/ping HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        for (what, request) in [("a long header", long), ("300 headers", many)] {
            let resp = exchange(target, request.as_bytes()).await;
            assert_eq!(resp.map(|r| r.status), Some(431), "{what} on {target}");
        }
        // A head far past any buffer: refused (431, or the connection cut).
        let huge = format!(
            "GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
            "a".repeat(1024 * 1024)
        );
        let resp = exchange(target, huge.as_bytes()).await;
        assert!(resp.as_ref().is_none_or(|r| r.status == 431), "{resp:?}");
    }

    // Slow heads (slowloris): connections that keep sending header lines
    // and never finish the head.
    let mut slow_heads = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow_heads.push(tokio::spawn(trickle_until_closed(stream, b"X-Slow: 1\r\n")));
    }
    // Slow bodies: complete heads, then a package and a login body that
    // never finish arriving.
    let (body, signature) = signed(&key, "acme", 3);
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/packages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
         tallyhouse-key-id: {key_id}\r\ntallyhouse-signature: {signature}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let slow_package = tokio::spawn(trickle_until_closed(stream, b" "));
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 200\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    let slow_login = tokio::spawn(trickle_until_closed(stream, b" "));

    // Meanwhile the gateway serves everyone else.
    let ping = http().get(format!("{base}/v1/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    let (legit, legit_signature) = signed(&key, "acme", 5);
    let (status, receipt) = submit(&base, &key_id, &legit, &legit_signature).await;
    assert_eq!(status, 201, "{receipt}");

    // Every slow head is cut off by the gateway though it kept sending,
    // without an answer (hyper closes a head that times out).
    for task in slow_heads {
        let outcome = tokio::time::timeout(GUARD, task)
            .await
            .expect("a slowloris connection was never closed")
            .unwrap();
        assert!(outcome.is_none(), "{outcome:?}");
    }
    // Every slow body gets a bad_request problem, and its connection ends.
    for (what, task) in [("package", slow_package), ("login", slow_login)] {
        let resp = tokio::time::timeout(GUARD, task)
            .await
            .unwrap_or_else(|_| panic!("the slow {what} body was never cut off"))
            .unwrap()
            .unwrap_or_else(|| panic!("the slow {what} body got no answer"));
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(resp.json()["code"], "bad_request", "{what}: {resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{what}");
    }
    // The slow package was not stored; the legitimate one was.
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    stack.finish().await;
}

/// Outcomes of a flood, by (status, problem code).
type Outcomes = Arc<Mutex<BTreeMap<(u16, String), usize>>>;

#[tokio::test]
async fn floods_of_bad_signatures_and_failed_logins_hold_their_limits_and_submitters_get_through() {
    // One verification at a time in ingest: the flood and the legitimate
    // submitter share the one slot.
    let stack = Stack::start(StackOptions {
        ingest_env: vec![("TALLYHOUSE_VERIFY_CONCURRENCY", "1".into())],
        ..StackOptions::default()
    })
    .await;
    let base = stack.base_url.clone();
    let (key, key_id) = stack.submitter_with_key("acme").await;

    // Invalid signatures: well-formed, by another key, over a package of
    // 2,000 records (the body is hashed before the signature is refused).
    let (flood_body, _) = signed(&key, "acme", 2_000);
    let forged = STANDARD.encode(SigningKey::generate().sign(&flood_body));
    let outcomes: Outcomes = Arc::default();
    let stop = CancellationToken::new();
    let mut flooders = Vec::new();
    for _ in 0..16 {
        let (base, key_id, body, forged) = (
            base.clone(),
            key_id.clone(),
            flood_body.clone(),
            forged.clone(),
        );
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let (status, body) = submit(&base, &key_id, &body, &forged).await;
                let code = body["code"].as_str().unwrap_or_default().to_owned();
                *outcomes
                    .lock()
                    .unwrap()
                    .entry((status.as_u16(), code))
                    .or_default() += 1;
            }
        }));
    }
    let refused = || {
        outcomes
            .lock()
            .unwrap()
            .get(&(401, "bad_signature".to_owned()))
            .copied()
            .unwrap_or(0)
    };
    tokio::time::timeout(GUARD, async {
        while refused() < 16 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the flood never got under way");
    // During the flood, a legitimate submitter gets every package through.
    for _ in 0..10 {
        let (body, signature) = signed(&key, "acme", 20);
        assert_eq!(
            submit_retrying(&base, &key_id, &body, &signature).await,
            201
        );
    }
    let refused_during = refused();
    stop.cancel();
    for f in flooders {
        f.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    eprintln!(
        "invalid-signature flood: {outcomes:?}, {refused_during} refused before the legitimate packages were all in"
    );
    for ((status, code), n) in &outcomes {
        assert!(
            (*status, code.as_str()) == (401, "bad_signature")
                || (*status, code.as_str()) == (503, "unavailable"),
            "{n} flood requests got {status} {code}: {outcomes:?}"
        );
    }
    assert!(refused_during >= 16, "{outcomes:?}");
    // Nothing of the flood got in.
    assert_eq!(
        count(&stack, "SELECT count(*) AS n FROM packages").await,
        10
    );

    // Failed logins, many at once, for one account and for names that are
    // no user: refused, then throttled, and the throttle holds.
    add_user(&stack, "victim", &[Role::Analyst]).await;
    add_user(&stack, "changer", &[Role::Analyst]).await;
    let changer = token_for(&base, "changer").await;
    let mut attempts = Vec::new();
    for i in 0..48 {
        let base = base.clone();
        let username = if i % 2 == 0 {
            "victim".to_owned()
        } else {
            format!("nobody-{i}")
        };
        attempts.push(tokio::spawn(async move {
            let resp = login(&base, &username, "not the password at all").await;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").cloned();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }));
    }
    let mut throttled = 0;
    for attempt in attempts {
        let (status, retry_after, body) = attempt.await.unwrap();
        match status {
            401 => assert_eq!(body["code"], "invalid_credentials", "{body}"),
            429 => {
                throttled += 1;
                assert_eq!(body["code"], "login_throttled", "{body}");
                let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
            }
            other => panic!("a failed login got {other}: {body}"),
        }
    }
    eprintln!("login flood: {throttled} of 48 failed logins throttled");
    assert!(throttled > 0, "48 failed logins were never throttled");
    // The right password does not get past the throttle either.
    assert_eq!(login(&base, "victim", PASSWORD).await.status(), 429);

    // Wrong current passwords on a password change are throttled the same
    // way, with the delay in Retry-After and a detail that is a sentence.
    let mut last = None;
    for _ in 0..30 {
        let resp = http()
            .put(format!("{base}/v1/auth/password"))
            .bearer_auth(&changer)
            .json(&json!({"current_password": "wrong", "new_password": "a new long password 123"}))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            last = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 401);
    }
    let resp = last.expect("wrong current passwords were never throttled");
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "login_throttled");
    assert!(!body["detail"].as_str().unwrap().contains('{'), "{body}");
    stack.finish().await;
}

/// Path and query values an attacker tries: traversal, SQL and template
/// injection, header injection, NUL, overlong and odd Unicode.
const HOSTILE: &[&str] = &[
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "acme/../../etc/passwd",
    "' OR '1'='1",
    "1; DROP TABLE packages;--",
    "acme' UNION SELECT password FROM users--",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "a\r\nX-Injected: 1",
    "a\u{0}b",
    "*",
    "%",
    "\u{202e}gnp.exe",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
];

/// Every route with a path or query parameter, `{}` marking where a value
/// goes, with the method and JSON body it is called with.
fn hostile_requests(
    submitter: &str,
    package: &str,
    key_id: &str,
) -> Vec<(Method, String, Option<Value>)> {
    let week = "from=2026-01-01T00:00:00Z&to=2026-01-08T00:00:00Z";
    let get = |p: String| (Method::GET, p, None);
    let mut out = Vec::new();
    for v in HOSTILE {
        let p = urlencode(v);
        out.extend([
            get(format!("/v1/packages?submitter={p}")),
            get(format!("/v1/packages?from={p}")),
            get(format!("/v1/packages?to={p}")),
            get(format!("/v1/packages?limit={p}")),
            get(format!("/v1/packages?cursor={p}")),
            get(format!("/v1/packages?{p}=1")),
            get(format!("/v1/packages/{p}/{package}")),
            get(format!("/v1/packages/{submitter}/{p}")),
            get(format!("/v1/packages/{p}/{package}/raw")),
            get(format!("/v1/packages/{submitter}/{p}/raw")),
            get(format!("/v1/series?submitter={p}&series=bets.stake&{week}&bucket=1h")),
            get(format!("/v1/series?submitter={submitter}&series={p}&{week}&bucket=1h")),
            get(format!("/v1/series?submitter={submitter}&series=bets.stake&from={p}&to=2026-01-08T00:00:00Z&bucket=1h")),
            get(format!("/v1/series?submitter={submitter}&series=bets.stake&{week}&bucket={p}")),
            get(format!("/v1/series?submitter={submitter}&series=bets.stake&{week}&bucket=1h&agg={p}")),
            get(format!("/v1/series?submitter={submitter}&series=bets.stake&{week}&bucket=1h&label.game={p}")),
            get(format!("/v1/series?submitter={submitter}&series=bets.stake&{week}&bucket=1h&label.{p}=x")),
            get(format!("/v1/audit?before={p}")),
            get(format!("/v1/audit?limit={p}")),
            get(format!("/v1/audit?actor={p}")),
            get(format!("/v1/audit?action={p}")),
            get(format!("/v1/submitters/{p}/keys")),
            (Method::PATCH, format!("/v1/users/{p}"), Some(json!({"disabled": false}))),
            (
                Method::PUT,
                format!("/v1/users/{p}/password"),
                Some(json!({"password": "a long enough password 123"})),
            ),
            (Method::DELETE, format!("/v1/lockouts/{p}/x"), None),
            (Method::DELETE, format!("/v1/lockouts/account/{p}"), None),
            (Method::DELETE, format!("/v1/lockouts/address/{p}"), None),
            (
                Method::POST,
                format!("/v1/submitters/{p}/keys"),
                Some(json!({"public_key_pem": "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n"})),
            ),
            (Method::POST, format!("/v1/submitters/{p}/keys/{key_id}/revoke"), Some(json!({}))),
            (Method::POST, format!("/v1/submitters/{submitter}/keys/{p}/revoke"), Some(json!({}))),
        ]);
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What nothing may ever show: the contents of files outside the service.
fn leaks(body: &str) -> bool {
    body.contains("root:x:0:0") || body.contains("[fonts]") || body.contains("/bin/bash")
}

#[tokio::test]
async fn traversal_and_injection_in_every_path_and_query_parameter_get_stable_problems() {
    let stack = Stack::start(StackOptions::default()).await;
    let base = stack.base_url.clone();
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let (body, signature) = signed(&key, "acme", 5);
    let (status, _) = submit(&base, &key_id, &body, &signature).await;
    assert_eq!(status, 201);
    let package = evidence::parse_package(&body)
        .unwrap()
        .package_id
        .to_string();
    add_user(
        &stack,
        "root-admin",
        &[Role::Admin, Role::Analyst, Role::Auditor],
    )
    .await;
    let token = token_for(&base, "root-admin").await;

    const STABLE: &[&str] = &["bad_request", "not_found", "conflict"];
    let requests = hostile_requests("acme", &package, key_id.as_str());
    let mut failures = Vec::new();
    // A few at a time; each one twice, to see the same answer.
    for batch in requests.chunks(8) {
        let mut calls = Vec::new();
        for (method, path, body) in batch.iter().cloned() {
            let (base, token) = (base.clone(), token.clone());
            calls.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..2 {
                    let mut req = http()
                        .request(method.clone(), format!("{base}{path}"))
                        .bearer_auth(&token);
                    if let Some(body) = &body {
                        req = req.json(body);
                    }
                    let resp = req.send().await.expect("the gateway answers");
                    let status = resp.status().as_u16();
                    let content_type = resp
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap_or_default().to_owned());
                    let injected = resp.headers().contains_key("x-injected");
                    let text = resp.text().await.unwrap_or_default();
                    seen.push((status, content_type, injected, text));
                }
                (method, path, seen)
            }));
        }
        for call in calls {
            let (method, path, seen) = call.await.unwrap();
            let (status, content_type, injected, text) = &seen[0];
            let code = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            let problem = format!("{method} {path}: {status} {text:.200}");
            // A refusal is a problem document with one of the stable codes.
            let unstable_refusal = *status >= 400
                && (content_type.as_deref() != Some("application/problem+json")
                    || !code.as_deref().is_some_and(|c| STABLE.contains(&c)));
            if *status >= 500 || *injected || leaks(text) || unstable_refusal {
                failures.push(problem);
            } else if seen[1].0 != *status {
                failures.push(format!("{problem} then {}", seen[1].0));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}: {failures:#?}",
        failures.len(),
        requests.len()
    );

    // Targets a client library would normalise, sent as they are.
    let addr = base.trim_start_matches("http://");
    for target in [
        "/v1/packages/../../../../etc/passwd",
        "/v1/openapi.json/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/v1/packages/acme/..%2f..%2f..%2fetc%2fpasswd/raw",
        "//etc/passwd",
        "/v1/packages/%ff%fe/x",
        "/v1/audit?actor=%00",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let resp = exchange(addr, request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{target}: no answer"));
        assert!((400..500).contains(&resp.status), "{target}: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json"),
            "{target}: {resp:?}"
        );
        let code = resp.json()["code"].as_str().unwrap_or_default().to_owned();
        assert!(STABLE.contains(&code.as_str()), "{target}: {resp:?}");
        assert!(!leaks(&resp.body), "{target}");
    }
    // The stored package is untouched, and nothing else was stored.
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    stack.finish().await;
}
