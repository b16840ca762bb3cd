//! `tallyhouse submit` against a scripted gateway on 127.0.0.1 (port 0)
//! that answers each `POST /v1/packages` as a test says: a server error, a
//! hang-up after reading the request, a refusal, or a real receipt (signed
//! by a key it serves on `GET /v1/keys`). It records every request, so the
//! tests see what the CLI resent, how often and when, without a platform.

use super::{Cli, receipt_of, s};
use evidence::{
    PublicKey, ReceiptClaims, ReceiptSigner, decode_signature_header, sha256_hex, verify_receipt,
};
use rpc_contracts::SubmitterId;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::macros::datetime;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How the scripted gateway answers one package request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A problem+json answer: status, code, and `Retry-After` seconds.
    Problem(u16, &'static str, Option<u64>),
    /// Close the connection after reading the request, without an answer
    /// (the answer is lost: the CLI cannot tell whether it was stored).
    HangUp,
    /// 201 with a receipt for the bytes received.
    Store,
}

/// One `POST /v1/packages` as received.
#[derive(Debug, Clone)]
struct Post {
    body: Vec<u8>,
    key_id: String,
    signature: String,
    at: Instant,
}

struct Script {
    answers: VecDeque<Answer>,
    /// The answer once `answers` is used up.
    then: Answer,
    posts: Vec<Post>,
}

/// The scripted gateway; it stops when dropped.
struct ScriptedGateway {
    url: String,
    script: Arc<Mutex<Script>>,
    signer: Arc<ReceiptSigner>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedGateway {
    async fn start(answers: &[Answer], then: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script {
            answers: answers.iter().copied().collect(),
            then,
            posts: Vec::new(),
        }));
        let signer = Arc::new(ReceiptSigner::generate());
        let (shared, key) = (script.clone(), signer.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone(), key.clone()));
            }
        });
        Self {
            url,
            script,
            signer,
            task,
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.script.lock().unwrap().posts.clone()
    }

    /// The key set it serves on `GET /v1/keys`.
    fn jwks(&self) -> Vec<Value> {
        vec![self.signer.jwk()]
    }
}

impl Drop for ScriptedGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request and answers it (`Connection: close`: one request per
/// connection, so every attempt the CLI makes is one the test sees).
async fn serve(stream: TcpStream, script: Arc<Mutex<Script>>, signer: Arc<ReceiptSigner>) {
    let mut stream = BufReader::new(stream);
    let mut request_line = String::new();
    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers
        .get("content-length")
        .map_or(0, |v| v.parse::<usize>().unwrap());
    let mut body = vec![0; length];
    if stream.read_exact(&mut body).await.is_err() {
        return;
    }
    let (status, extra, answer) = if request_line.starts_with("GET /v1/keys ") {
        (200, None, json!({"keys": [signer.jwk()]}))
    } else if request_line.starts_with("POST /v1/packages ") {
        let answer = {
            let mut script = script.lock().unwrap();
            script.posts.push(Post {
                body: body.clone(),
                key_id: headers
                    .get("tallyhouse-key-id")
                    .cloned()
                    .unwrap_or_default(),
                signature: headers
                    .get("tallyhouse-signature")
                    .cloned()
                    .unwrap_or_default(),
                at: Instant::now(),
            });
            let then = script.then;
            script.answers.pop_front().unwrap_or(then)
        };
        match answer {
            Answer::HangUp => return,
            Answer::Store => (201, None, json!({"receipt": receipt_for(&signer, &body)})),
            Answer::Problem(status, code, retry_after) => (
                status,
                retry_after.map(|secs| format!("retry-after: {secs}\r\n")),
                json!({
                    "type": format!("urn:tallyhouse:problem:{code}"),
                    "title": code,
                    "status": status,
                    "detail": format!("scripted {status}"),
                    "code": code,
                    "trace_id": format!("trace-{status}"),
                }),
            ),
        }
    } else {
        (
            404,
            None,
            json!({"code": "not_found", "detail": "no such path"}),
        )
    };
    let body = answer.to_string();
    let content_type = if status < 300 {
        "application/json"
    } else {
        "application/problem+json"
    };
    let head = format!(
        "HTTP/1.1 {status} Scripted\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n{}\r\n",
        body.len(),
        extra.unwrap_or_default()
    );
    let stream = stream.get_mut();
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A receipt for `body` as the platform would sign it.
fn receipt_for(signer: &ReceiptSigner, body: &[u8]) -> String {
    let package: Value = serde_json::from_slice(body).unwrap();
    let claims = ReceiptClaims {
        package_id: package["package_id"].as_str().unwrap().parse().unwrap(),
        submitter_id: SubmitterId::parse(package["submitter_id"].as_str().unwrap()).unwrap(),
        sha256: sha256_hex(body),
        size: body.len() as u64,
        records: package["records"].as_array().unwrap().len() as u64,
        received_at: datetime!(2026-03-01 12:00:06 UTC),
    };
    signer.sign(&claims).unwrap()
}

/// Writes a package file `name` (the scripted gateway only reads it back).
fn package(cli: &Cli, name: &str) -> PathBuf {
    let path = cli.path(name);
    let body = json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": "acme",
        "audience": "local",
        "created_at": "2026-03-01T12:00:00Z",
        "records": [{"series": "bets.count", "ts": "2026-03-01T12:00:00Z", "value": 1}],
    });
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn submit_resends_the_same_bytes_through_server_errors_and_a_lost_answer_until_stored() {
    let cli = Cli::offline("retry-5xx");
    let (key_id, private, public) = cli.keygen("keys").await;
    let file = package(&cli, "p.json");
    let gateway = ScriptedGateway::start(
        &[
            Answer::Problem(500, "internal", Some(1)),
            Answer::Problem(502, "unknown_method", None),
            Answer::HangUp,
            Answer::Problem(504, "deadline_exceeded", None),
        ],
        Answer::Store,
    )
    .await;

    let run = cli
        .run(&[
            "submit",
            "--key",
            s(&private),
            "--gateway",
            &gateway.url,
            "--retries",
            "4",
            "--json",
            s(&file),
        ])
        .await;
    run.assert_code(0);
    let lines = run.json_lines();
    assert_eq!(lines[0]["status"], "stored", "{}", lines[0]);
    assert_eq!(lines[0]["http_status"], 201, "{}", lines[0]);
    assert_eq!(lines[0]["attempts"], 5, "{}", lines[0]);
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(
        (&summary["stored"], &summary["failed"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(
        run.stderr.matches("tallyhouse: retrying").count(),
        4,
        "each retry is announced: {}",
        run.stderr
    );

    // Five times the very bytes of the file, with one signature that
    // verifies over them.
    let bytes = std::fs::read(&file).unwrap();
    let posts = gateway.posts();
    assert_eq!(posts.len(), 5, "{posts:?}");
    let public = PublicKey::from_spki_pem(&std::fs::read_to_string(public).unwrap()).unwrap();
    for post in &posts {
        assert_eq!(post.body, bytes, "the same bytes every time");
        assert_eq!(post.key_id, key_id);
        assert_eq!(post.signature, posts[0].signature, "signed once");
    }
    public
        .verify(
            &bytes,
            &decode_signature_header(&posts[0].signature).unwrap(),
        )
        .expect("the signature is over the bytes sent");
    // The first answer asked for a second's wait: longer than the first
    // backoff step (0.25-0.5 s), and honoured.
    let waited = posts[1].at - posts[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1, waited {waited:?}"
    );

    let receipt = std::fs::read_to_string(receipt_of(&file)).unwrap();
    let claims = verify_receipt(&receipt, &gateway.jwks()).expect("the receipt is saved");
    assert_eq!(claims.sha256, sha256_hex(&bytes));
    cli.finish();
}

#[tokio::test]
async fn submit_gives_up_on_a_lasting_server_error_saying_a_resend_is_safe() {
    let cli = Cli::offline("retry-500");
    let (_, private, _) = cli.keygen("keys").await;
    let file = package(&cli, "p.json");
    let gateway = ScriptedGateway::start(&[], Answer::Problem(500, "internal", None)).await;
    let submit = ["submit", "--key", s(&private), "--gateway", &gateway.url];

    let run = cli
        .run(&[&submit[..], &["--retries", "2", "--json", s(&file)]].concat())
        .await;
    run.assert_code(4);
    assert_eq!(
        gateway.posts().len(),
        3,
        "one attempt and two retries, no more"
    );
    let lines = run.json_lines();
    let line = &lines[0];
    assert_eq!(line["status"], "failed", "not a rejection: {line}");
    assert_eq!(line["attempts"], 3, "{line}");
    assert_eq!(line["http_status"], 500, "{line}");
    assert_eq!(line["code"], "internal", "{line}");
    assert_eq!(line["trace_id"], "trace-500", "{line}");
    assert_eq!(
        line["detail"], "server error, safe to resend: scripted 500",
        "{line}"
    );
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["failed"], 1, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
    assert!(
        run.stderr
            .contains("1 failed after retries (safe to resend)"),
        "{}",
        run.stderr
    );
    assert!(!receipt_of(&file).exists());

    // For people, the same.
    let run = cli
        .run(&[&submit[..], &["--retries", "0", s(&file)]].concat())
        .await;
    run.assert_code(4);
    assert_eq!(gateway.posts().len(), 4, "--retries 0: one attempt");
    assert!(
        run.stdout.contains(&format!(
            "failed          {}  after 1 attempt: server error, safe to resend: scripted 500 \
             (internal, HTTP 500, trace trace-500)",
            file.display()
        )) && run.stdout.contains("0 rejected, 1 failed after retries"),
        "{}",
        run.stdout
    );
    cli.finish();
}

#[tokio::test]
async fn submit_does_not_resend_what_the_caller_must_fix() {
    let cli = Cli::offline("retry-4xx");
    let (_, private, _) = cli.keygen("keys").await;
    std::fs::create_dir_all(cli.path("packages")).unwrap();
    let first = package(&cli, "packages/a.json");
    let second = package(&cli, "packages/b.json");
    // Were a refusal resent, the resend would be stored: one more request,
    // and a receipt.
    let gateway = ScriptedGateway::start(
        &[
            Answer::Problem(400, "malformed_package", None),
            Answer::Problem(422, "wrong_audience", None),
        ],
        Answer::Store,
    )
    .await;
    let run = cli
        .run(&[
            "submit",
            "--key",
            s(&private),
            "--gateway",
            &gateway.url,
            "--concurrency",
            "1",
            "--json",
            "packages",
        ])
        .await;
    run.assert_code(1);
    assert_eq!(gateway.posts().len(), 2, "one request per package");
    let lines = run.json_lines();
    for (line, status, code) in [
        (&lines[0], 400, "malformed_package"),
        (&lines[1], 422, "wrong_audience"),
    ] {
        assert_eq!(line["status"], "rejected", "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert_eq!(line["http_status"], status, "{line}");
        assert_eq!(line["code"], code, "{line}");
        assert!(
            !line["detail"].as_str().unwrap().contains("safe to resend"),
            "{line}"
        );
    }
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(
        (&summary["rejected"], &summary["failed"]),
        (&json!(2), &json!(0))
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert!(!receipt_of(&first).exists() && !receipt_of(&second).exists());
    cli.finish();
}
