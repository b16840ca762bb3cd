//! The submitter side of the `tallyhouse` CLI as a real binary: keys and
//! signatures checked by `openssl`, and keygen → key add → package generate
//! → submit → receipt verify against a whole platform (registry, ingest,
//! gateway), with the rows counted in PostgreSQL, the blobs read back from
//! S3, refusals by code, and retries through a cut connection; `retry.rs`
//! runs `submit` against a scripted gateway (server errors, lost answers,
//! refusals).

mod retry;

use evidence::{PublicKey, verify_receipt};
use platform::testing::{TcpProxy, amqp_uri, put_secret, vault_addr, vault_root_token};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tests::workspace_bin;
use tokio::io::AsyncBufReadExt as _;

/// The most any one CLI run may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// What a CLI run left behind.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The stdout lines as JSON values (`--json` of `submit`).
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

/// The CLI in a scratch folder, configured for a platform (or none).
struct Cli {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Cli {
    /// A scratch folder and no platform.
    fn offline(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tallyhouse-cli-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            env: Vec::new(),
        }
    }

    /// A scratch folder, the stack's gateway, and the operator commands
    /// pointed at the stack's brokers, namespace and Vault prefix.
    async fn for_stack(tag: &str, stack: &Stack) -> Self {
        let ns = stack.topology.namespace().to_owned();
        put_secret(
            &ns,
            "cli",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        let mut cli = Self::offline(tag);
        cli.env = vec![
            ("TALLYHOUSE_GATEWAY_URL", stack.base_url.clone()),
            (
                "TALLYHOUSE_AMQP_URIS",
                format!("amqp://{}/%2f", amqp_uri().host_port()),
            ),
            ("TALLYHOUSE_RPC_NAMESPACE", ns.clone()),
            ("TALLYHOUSE_VAULT_PREFIX", ns),
            ("VAULT_ADDR", vault_addr()),
            ("VAULT_TOKEN", vault_root_token()),
        ];
        cli
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = Command::new(workspace_bin("tallyhouse"));
        cmd.env_clear()
            .current_dir(&self.dir)
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::time::timeout(RUN_BOUND, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("tallyhouse {args:?} did not finish"))
            .expect("the CLI runs");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// `keygen --out DIR`: the key id, the private and public key files.
    async fn keygen(&self, dir: &str) -> (String, PathBuf, PathBuf) {
        let run = self.run(&["keygen", "--out", dir]).await;
        run.assert_code(0);
        (
            run.stdout.trim().to_owned(),
            self.path(dir).join("key.pem"),
            self.path(dir).join("key.pub.pem"),
        )
    }

    /// The `*.json` package files in `dir`, sorted.
    fn packages(&self, dir: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn receipt_of(package: &Path) -> PathBuf {
    let mut name = package.file_name().unwrap().to_owned();
    name.push(".receipt");
    package.with_file_name(name)
}

/// Runs openssl; returns (success, stdout, stderr).
fn openssl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn openssl_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = openssl(args);
    assert!(ok, "openssl {args:?}: {stderr}");
    stdout
}

/// `openssl dgst -sha256 -verify PUB -signature DER FILE`, the DER decoded
/// from the CLI's base64 `.sig` file.
fn openssl_verifies(public: &Path, file: &Path, sig_file: &Path) -> bool {
    use base64::Engine as _;
    let text = std::fs::read_to_string(sig_file).unwrap();
    assert!(
        !text.ends_with('\n'),
        "like `base64 -w0`, the .sig has no newline"
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .expect("standard base64");
    assert_eq!(der[0], 0x30, "an ASN.1 DER SEQUENCE");
    let der_file = sig_file.with_extension("der");
    std::fs::write(&der_file, der).unwrap();
    let (ok, stdout, _) = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(public),
        "-signature",
        s(&der_file),
        s(file),
    ]);
    ok && stdout.contains("Verified OK")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn key_id_of_pem(public: &Path) -> String {
    PublicKey::from_spki_pem(&std::fs::read_to_string(public).unwrap())
        .unwrap()
        .key_id()
        .to_string()
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.query(sql).await[0]["n"].as_i64().unwrap()
}

/// Registers `submitter` with the public key file through the operator
/// commands; returns the key id `key add` printed.
async fn register(cli: &Cli, submitter: &str, public: &Path) -> String {
    cli.run(&["submitter", "add", submitter])
        .await
        .assert_code(0);
    let run = cli.run(&["key", "add", submitter, s(public)]).await;
    run.assert_code(0);
    run.stdout.trim().to_owned()
}

#[tokio::test]
async fn keygen_and_sign_interoperate_with_openssl() {
    let cli = Cli::offline("keys");
    let (key_id, private, public) = cli.keygen("keys").await;
    assert_eq!(
        mode(&private),
        0o600,
        "only the owner reads the private key"
    );
    assert!(
        std::fs::read_to_string(&private)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "PKCS#8 PEM"
    );
    openssl_ok(&["pkey", "-in", s(&private), "-noout", "-check"]);
    // The public key is byte for byte what `openssl ec -pubout` derives.
    let derived = openssl_ok(&["ec", "-in", s(&private), "-pubout"]);
    assert_eq!(std::fs::read_to_string(&public).unwrap(), derived);
    assert_eq!(key_id, key_id_of_pem(&public), "prints the RFC 7638 key id");

    // No silent overwrite; --force makes a new pair, still private.
    let before = std::fs::read(&private).unwrap();
    let run = cli.run(&["keygen", "--out", "keys"]).await;
    run.assert_code(3);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(std::fs::read(&private).unwrap(), before);
    let run = cli.run(&["keygen", "--out", "keys", "--force"]).await;
    run.assert_code(0);
    assert_ne!(run.stdout.trim(), key_id);
    assert_eq!(run.stdout.trim(), key_id_of_pem(&public));
    assert_eq!(mode(&private), 0o600);
    // Explicit paths; one without the other is a usage error.
    let run = cli
        .run(&[
            "keygen",
            "--private-key",
            "a.pem",
            "--public-key",
            "a.pub.pem",
        ])
        .await;
    run.assert_code(0);
    assert_eq!(mode(&cli.path("a.pem")), 0o600);
    assert_eq!(run.stdout.trim(), key_id_of_pem(&cli.path("a.pub.pem")));
    cli.run(&["keygen", "--private-key", "b.pem"])
        .await
        .assert_code(2);

    // A CLI signature verifies with openssl, over the exact bytes only.
    let file = cli.path("data.json");
    std::fs::write(&file, b"{\"exact\": \"bytes\"}\n").unwrap();
    let run = cli.run(&["sign", "--key", s(&private), s(&file)]).await;
    run.assert_code(0);
    assert_eq!(run.stdout.trim(), key_id_of_pem(&public));
    let sig = cli.path("data.json.sig");
    assert!(openssl_verifies(&public, &file, &sig));
    std::fs::write(&file, b"{\"exact\": \"bytes\"}").unwrap();
    assert!(
        !openssl_verifies(&public, &file, &sig),
        "one byte less fails"
    );

    // Keys made by openssl, SEC1 (ecparam) and PKCS#8 (genpkey), sign with
    // the CLI, and the key id is the one of openssl's public key.
    let sec1 = cli.path("sec1.pem");
    openssl_ok(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-out",
        s(&sec1),
    ]);
    let pkcs8 = cli.path("pkcs8.pem");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&pkcs8),
    ]);
    for key in [&sec1, &pkcs8] {
        let public = key.with_extension("pub");
        openssl_ok(&["ec", "-in", s(key), "-pubout", "-out", s(&public)]);
        let run = cli
            .run(&["sign", "--key", s(key), s(&file), "--json"])
            .await;
        run.assert_code(0);
        let out: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(out["key_id"], key_id_of_pem(&public), "{}", key.display());
        assert!(openssl_verifies(&public, &file, &sig), "{}", key.display());
    }
    // A key on another curve is refused by name.
    let p384 = cli.path("p384.pem");
    openssl_ok(&["ecparam", "-name", "secp384r1", "-genkey", "-out", s(&p384)]);
    let run = cli.run(&["sign", "--key", s(&p384), s(&file)]).await;
    run.assert_code(3);
    assert!(run.stderr.contains("P-384"), "{}", run.stderr);
    cli.finish();
}

#[tokio::test]
async fn package_generate_is_repeatable_with_a_seed_and_new_without() {
    let cli = Cli::offline("generate");
    let args = |out: &'static str| {
        [
            "package",
            "generate",
            "--submitter",
            "acme",
            "--records",
            "12",
            "--count",
            "3",
            "--seed",
            "7",
            "--created-at",
            "2026-03-01T12:00:00Z",
            "--out",
            out,
            "--json",
        ]
    };
    let run = cli.run(&args("a")).await;
    run.assert_code(0);
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed["packages"].as_array().unwrap().len(), 3);
    cli.run(&args("b")).await.assert_code(0);
    let (a, b) = (cli.packages("a"), cli.packages("b"));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.file_name(), y.file_name(), "same seed, same package ids");
        let bytes = std::fs::read(x).unwrap();
        assert_eq!(bytes, std::fs::read(y).unwrap(), "same seed, same bytes");
        let package = evidence::parse_package(&bytes).expect("a valid package");
        assert_eq!(package.submitter_id.as_str(), "acme");
        assert_eq!(package.audience, "local");
        assert_eq!(package.records.len(), 12);
        assert_eq!(
            x.file_stem().unwrap().to_str().unwrap(),
            package.package_id.to_string()
        );
    }
    // The same again into the same folder is fine; other bytes under the
    // same names are refused unless forced.
    cli.run(&args("a")).await.assert_code(0);
    let mut other = args("a").to_vec();
    other[11] = "2026-03-01T13:00:00Z";
    cli.run(&other).await.assert_code(3);
    other.push("--force");
    cli.run(&other).await.assert_code(0);
    assert_ne!(std::fs::read(&a[0]).unwrap(), std::fs::read(&b[0]).unwrap());

    // Without a seed, every run makes new packages.
    for _ in 0..2 {
        cli.run(&["package", "generate", "--submitter", "acme", "--out", "c"])
            .await
            .assert_code(0);
    }
    assert_eq!(cli.packages("c").len(), 2);
    cli.finish();
}

#[tokio::test]
async fn keygen_key_add_generate_submit_and_verify_store_every_package_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let cli = Cli::for_stack("flow", &stack).await;
    let (key_id, private, public) = cli.keygen("keys").await;
    assert_eq!(register(&cli, "demo", &public).await, key_id);
    cli.run(&[
        "package",
        "generate",
        "--submitter",
        "demo",
        "--count",
        "3",
        "--records",
        "20",
        "--out",
        "packages",
    ])
    .await
    .assert_code(0);
    let packages = cli.packages("packages");
    assert_eq!(packages.len(), 3);

    let run = cli.run(&["submit", "--key", s(&private), "packages"]).await;
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("3 stored, 0 already stored, 0 skipped, 0 rejected"),
        "{}",
        run.stdout
    );
    let jwks = stack.jwks().await;
    let mut receipts = Vec::new();
    for package in &packages {
        let receipt_file = receipt_of(package);
        let receipt = std::fs::read_to_string(&receipt_file).expect("a receipt beside it");
        let bytes = std::fs::read(package).unwrap();
        let claims = verify_receipt(&receipt, &jwks).expect("a receipt of the platform");
        assert_eq!(claims.sha256, evidence::sha256_hex(&bytes));
        assert_eq!(claims.records, 20);
        // The CLI agrees, from the gateway's key set.
        let run = cli
            .run(&[
                "receipt",
                "verify",
                s(&receipt_file),
                "--package",
                s(package),
            ])
            .await;
        run.assert_code(0);
        assert!(
            run.stdout.contains(&claims.package_id.to_string()) && run.stdout.contains("matches"),
            "{}",
            run.stdout
        );
        // The blob is the exact bytes of the file.
        let row = &stack
            .query(&format!(
                "SELECT blob_key, key_id FROM packages WHERE package_id = '{}'",
                claims.package_id
            ))
            .await[0];
        assert_eq!(row["key_id"], key_id.as_str());
        let blob = stack
            .evidence
            .get_blob(row["blob_key"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(blob.as_deref(), Some(bytes.as_slice()));
        receipts.push(receipt);
    }
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 3);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 60);
    assert_eq!(stack.blobs().await.len(), 3);

    // Again: everything has a receipt, so nothing is sent.
    let run = cli
        .run(&["submit", "--key", s(&private), "packages", "--json"])
        .await;
    run.assert_code(0);
    let lines = run.json_lines();
    assert!(
        lines[..3].iter().all(|l| l["status"] == "skipped"),
        "{lines:?}"
    );
    assert_eq!(lines[3]["summary"]["skipped"], 3);

    // --resubmit: 200s, and the original receipts, byte for byte.
    let run = cli
        .run(&[
            "submit",
            "--key",
            s(&private),
            "packages",
            "--resubmit",
            "--json",
        ])
        .await;
    run.assert_code(0);
    let lines = run.json_lines();
    for line in &lines[..3] {
        assert_eq!(line["status"], "already_stored", "{line}");
        assert_eq!(line["http_status"], 200, "{line}");
    }
    assert_eq!(lines[3]["summary"]["already_stored"], 3);
    for (package, receipt) in packages.iter().zip(&receipts) {
        assert_eq!(
            &std::fs::read_to_string(receipt_of(package)).unwrap(),
            receipt
        );
    }
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 3);

    // Verification against a key set file, and what must fail.
    let jwks_file = cli.path("jwks.json");
    std::fs::write(&jwks_file, serde_json::json!({ "keys": jwks }).to_string()).unwrap();
    let receipt_file = receipt_of(&packages[0]);
    let run = cli
        .run(&[
            "receipt",
            "verify",
            s(&receipt_file),
            "--jwks",
            s(&jwks_file),
            "--json",
        ])
        .await;
    run.assert_code(0);
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["valid"], true);
    assert_eq!(out["claims"]["submitter_id"], "demo");

    // A receipt with one claim changed no longer verifies.
    let tampered = cli.path("tampered.receipt");
    let mut parts: Vec<String> = receipts[0].split('.').map(str::to_owned).collect();
    {
        use base64::Engine as _;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: Value = serde_json::from_slice(&url.decode(&parts[1]).unwrap()).unwrap();
        payload["records"] = 21.into();
        parts[1] = url.encode(payload.to_string());
    }
    std::fs::write(&tampered, parts.join(".")).unwrap();
    let run = cli
        .run(&[
            "receipt",
            "verify",
            s(&tampered),
            "--package",
            s(&packages[0]),
        ])
        .await;
    run.assert_code(5);
    assert!(run.stderr.contains("does not verify"), "{}", run.stderr);
    // A package whose bytes differ (one space more) is not the one receipted.
    let changed = cli.path("changed.json");
    let mut bytes = std::fs::read(&packages[0]).unwrap();
    bytes.push(b' ');
    std::fs::write(&changed, &bytes).unwrap();
    let run = cli
        .run(&[
            "receipt",
            "verify",
            s(&receipt_file),
            "--package",
            s(&changed),
        ])
        .await;
    run.assert_code(5);
    assert!(
        run.stderr.contains("is not the one") && run.stderr.contains("SHA-256"),
        "{}",
        run.stderr
    );
    // Another package's receipt does not fit either.
    let run = cli
        .run(&[
            "receipt",
            "verify",
            s(&receipt_of(&packages[1])),
            "--package",
            s(&packages[0]),
        ])
        .await;
    run.assert_code(5);
    cli.finish();
    stack.finish().await;
}

#[tokio::test]
async fn refused_packages_exit_non_zero_with_their_code_and_get_no_receipt() {
    let stack = Stack::start(StackOptions::default()).await;
    let cli = Cli::for_stack("refused", &stack).await;
    let (_, private, public) = cli.keygen("keys").await;
    register(&cli, "acme", &public).await;
    cli.run(&["submitter", "add", "other"]).await.assert_code(0);
    let generate = |submitter: &'static str| {
        [
            "package",
            "generate",
            "--submitter",
            submitter,
            "--records",
            "5",
            "--out",
            "packages",
            "--json",
        ]
    };
    let run = cli.run(&generate("acme")).await;
    run.assert_code(0);
    let good: Value = serde_json::from_str(&run.stdout).unwrap();
    let good = PathBuf::from(good["packages"][0]["file"].as_str().unwrap());
    // Signed with acme's key but claiming another submitter.
    let run = cli.run(&generate("other")).await;
    run.assert_code(0);
    let foreign: Value = serde_json::from_str(&run.stdout).unwrap();
    let foreign = PathBuf::from(foreign["packages"][0]["file"].as_str().unwrap());
    let malformed = cli.path("packages/malformed.json");
    std::fs::write(
        &malformed,
        // Everything but `created_at`.
        br#"{"schema":"tallyhouse.package.v1","package_id":"0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30","submitter_id":"acme","audience":"local","records":[{"series":"bets.count","ts":"2026-01-01T00:00:00Z","value":1}]}"#,
    )
    .unwrap();

    let run = cli
        .run(&["submit", "--key", s(&private), "packages", "--json"])
        .await;
    run.assert_code(1);
    assert!(run.stderr.contains("2 rejected"), "{}", run.stderr);
    let lines = run.json_lines();
    let by_file = |file: &Path| {
        lines
            .iter()
            .find(|l| l["file"].as_str() == Some(s(file)))
            .unwrap_or_else(|| panic!("no line for {}: {lines:?}", file.display()))
            .clone()
    };
    let line = by_file(&good);
    assert_eq!(line["status"], "stored", "{line}");
    let line = by_file(&foreign);
    assert_eq!(line["status"], "rejected", "{line}");
    assert_eq!(line["code"], "key_submitter_mismatch", "{line}");
    assert_eq!(line["http_status"], 403, "{line}");
    assert_eq!(line["attempts"], 1, "a refusal is not retried: {line}");
    let line = by_file(Path::new("packages/malformed.json"));
    assert_eq!(line["status"], "rejected", "{line}");
    assert_eq!(line["code"], "malformed_package", "{line}");
    assert!(
        line["detail"].as_str().unwrap().contains("created_at"),
        "the detail names the field: {line}"
    );
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["stored"], 1);
    assert_eq!(summary["rejected"], 2);
    assert_eq!(summary["rejected_by_code"]["key_submitter_mismatch"], 1);
    assert_eq!(summary["rejected_by_code"]["malformed_package"], 1);

    assert!(cli.dir.join(receipt_of(&good)).exists());
    assert!(!cli.dir.join(receipt_of(&foreign)).exists());
    assert!(!receipt_of(&malformed).exists());
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);

    // For people: one line per package with its code, then the summary;
    // the receipted one is skipped, the refused ones are tried again.
    let run = cli.run(&["submit", "--key", s(&private), "packages"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("key_submitter_mismatch")
            && run.stdout.contains("malformed_package")
            && run.stdout.contains(
                "0 stored, 0 already stored, 1 skipped, 2 rejected \
                 (key_submitter_mismatch: 1, malformed_package: 1)"
            ),
        "{}",
        run.stdout
    );
    cli.finish();
    stack.finish().await;
}

#[tokio::test]
async fn submit_retries_through_a_cut_connection_with_the_same_bytes_and_stores_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let cli = Cli::for_stack("retry", &stack).await;
    let (_, private, public) = cli.keygen("keys").await;
    register(&cli, "acme", &public).await;
    cli.run(&[
        "package",
        "generate",
        "--submitter",
        "acme",
        "--out",
        "packages",
    ])
    .await
    .assert_code(0);
    let package = cli.packages("packages").remove(0);

    // The gateway is reachable only through a proxy, cut for now.
    let gateway_addr = stack
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway's address");
    let proxy = TcpProxy::start(gateway_addr).await.unwrap();
    proxy.cut();
    let mut child = cli
        .command(&[
            "submit",
            "--key",
            s(&private),
            "--gateway",
            &format!("http://{}", proxy.addr()),
            "--retries",
            "30",
            "--json",
            s(&package),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    // Once it has failed and said it will retry, the connection comes back.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(RUN_BOUND, stderr.next_line())
            .await
            .expect("the CLI reports its retry")
            .unwrap()
            .unwrap_or_else(|| panic!("stderr closed before a retry: {seen:?}"));
        let retrying = line.contains("retrying");
        seen.push(line);
        if retrying {
            break;
        }
    }
    proxy.restore();
    let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("the CLI finishes")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{seen:?}");
    let report: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(report["status"], "stored", "{report}");
    assert!(report["attempts"].as_u64().unwrap() >= 2, "{report}");

    // Stored once, the very bytes of the file, with a receipt for them.
    let bytes = std::fs::read(&package).unwrap();
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    let row = &stack
        .query("SELECT encode(sha256, 'hex') AS sha, blob_key FROM packages")
        .await[0];
    assert_eq!(row["sha"], evidence::sha256_hex(&bytes));
    let blob = stack
        .evidence
        .get_blob(row["blob_key"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(blob.as_deref(), Some(bytes.as_slice()));
    let receipt = std::fs::read_to_string(receipt_of(&package)).unwrap();
    let claims = verify_receipt(&receipt, &stack.jwks().await).unwrap();
    assert_eq!(claims.sha256, evidence::sha256_hex(&bytes));
    drop(proxy);
    cli.finish();
    stack.finish().await;
}

impl Cli {
    /// Runs the CLI with `stdin` written to its standard input.
    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the CLI runs");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("tallyhouse {args:?} did not finish"))
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

#[tokio::test]
async fn back_office_login_keeps_a_private_token_and_reads_packages_raw_and_series() {
    let stack = Stack::start(StackOptions::default()).await;
    let cli = Cli::for_stack("backoffice", &stack).await;
    let password = "a long enough password for ana";
    // The operator bootstraps a user over RPC; the password only on stdin.
    cli.run_with_stdin(
        &[
            "user",
            "add",
            "ana",
            "--role",
            "analyst",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    )
    .await
    .assert_code(0);

    // A package to read.
    let (_, private, public) = cli.keygen("keys").await;
    register(&cli, "bo-demo", &public).await;
    cli.run(&[
        "package",
        "generate",
        "--submitter",
        "bo-demo",
        "--records",
        "60",
        "--out",
        "pk",
    ])
    .await
    .assert_code(0);
    cli.run(&["submit", "--key", s(&private), "pk"])
        .await
        .assert_code(0);
    let package = cli.packages("pk").remove(0);
    let bytes = std::fs::read(&package).unwrap();
    let parsed = evidence::parse_package(&bytes).unwrap();

    // Reading before logging in is refused with a hint.
    let config = cli.path("config");
    let config_arg = s(&config).to_owned();
    let run = cli
        .run(&["packages", "list", "--config-dir", &config_arg])
        .await;
    run.assert_code(1);
    assert!(run.stderr.contains("tallyhouse login"), "{}", run.stderr);

    cli.run_with_stdin(
        &[
            "login",
            "ana",
            "--password-stdin",
            "--config-dir",
            &config_arg,
        ],
        &format!("{password}\n"),
    )
    .await
    .assert_code(0);
    let token_file = config.join("tokens.json");
    assert_eq!(mode(&token_file) & 0o777, 0o600);
    assert!(
        !std::fs::read_to_string(&token_file)
            .unwrap()
            .contains(password)
    );

    let run = cli
        .run(&["packages", "list", "--json", "--config-dir", &config_arg])
        .await;
    run.assert_code(0);
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["package_id"], parsed.package_id.to_string());

    // The raw bytes and their signature, verified by openssl.
    let id = parsed.package_id.to_string();
    cli.run(&[
        "packages",
        "raw",
        "bo-demo",
        &id,
        "--out",
        "raw.json",
        "--config-dir",
        &config_arg,
    ])
    .await
    .assert_code(0);
    assert_eq!(std::fs::read(cli.path("raw.json")).unwrap(), bytes);
    assert!(openssl_verifies(
        &public,
        &cli.path("raw.json"),
        &cli.path("raw.json.sig")
    ));

    // Series as CSV: the counts add up to the stakes sent.
    let stakes = parsed
        .records
        .iter()
        .filter(|r| r.series == "bets.stake")
        .count() as u64;
    let from = (parsed.created_at - time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let to = (parsed.created_at + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let run = cli
        .run(&[
            "series",
            "bo-demo",
            "bets.stake",
            "--from",
            &from,
            "--to",
            &to,
            "--bucket",
            "10m",
            "--agg",
            "count",
            "--csv",
            "--config-dir",
            &config_arg,
        ])
        .await;
    run.assert_code(0);
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("bucket,value,count"));
    let total: u64 = lines
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, stakes);

    // Logout revokes and forgets the token.
    cli.run(&["logout", "--config-dir", &config_arg])
        .await
        .assert_code(0);
    let run = cli
        .run(&["packages", "list", "--config-dir", &config_arg])
        .await;
    run.assert_code(1);
    cli.finish();
    stack.finish().await;
}
