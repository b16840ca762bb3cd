//! The end-to-end canary, `tallyhouse canary`, as a real process against a
//! whole platform (gateway, registry, ingest, query, auth; RabbitMQ,
//! PostgreSQL, OpenBao, S3): registered the way
//! `deployment/vault-provision.sh --register-canary` does it (the CLI's
//! operator commands, its credentials only in Vault), one round with
//! `--once` leaves its package in PostgreSQL and S3 and its reads in the
//! audit trail; the looping canary publishes success and every step's
//! latency; a failing step ends the round with its name and code, exit
//! status 1 and a failure counted for that step.

use evidence::SigningKey;
use platform::testing::{amqp_uri, put_secret, vault_addr, vault_root_token};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tests::{ChildProcess, free_port, workspace_bin};
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

/// The canary's submitter and user, as secrets.json fixes them.
const CANARY: &str = "tallyhouse-canary";
/// The steps of a round, in order (`Step::ALL` of the CLI).
const STEPS: [&str; 9] = [
    "vault", "submit", "keys", "receipt", "login", "list", "raw", "series", "logout",
];
/// The most a CLI run may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// What a finished `tallyhouse` run left.
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
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

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// The canary of one stack: its key, password and the CLI's environment.
pub(crate) struct Canary {
    namespace: String,
    env: Vec<(&'static str, String)>,
    key: SigningKey,
    password: String,
    dir: std::path::PathBuf,
}

impl Canary {
    /// Generates the canary's key and password into the stack's Vault
    /// prefix (`<ns>/canary/canary`) and registers the submitter, its key
    /// and the analyst user with the CLI's operator commands.
    pub(crate) async fn register(stack: &Stack) -> Self {
        let ns = stack.topology.namespace().to_owned();
        put_secret(
            &ns,
            "cli",
            "amqp",
            &[("username", "guest"), ("password", "guest")],
        )
        .await;
        let dir = std::env::temp_dir().join(format!(
            "tallyhouse-canary-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let canary = Self {
            env: vec![
                ("TALLYHOUSE_GATEWAY_URL", stack.base_url.clone()),
                (
                    "TALLYHOUSE_AMQP_URIS",
                    format!("amqp://{}/%2f", amqp_uri().host_port()),
                ),
                ("TALLYHOUSE_RPC_NAMESPACE", ns.clone()),
                ("TALLYHOUSE_VAULT_PREFIX", ns.clone()),
                ("VAULT_ADDR", vault_addr()),
                ("VAULT_TOKEN", vault_root_token()),
            ],
            namespace: ns,
            key: SigningKey::generate(),
            password: format!("canary {}", uuid::Uuid::new_v4().simple()),
            dir,
        };
        canary.store_secret(&canary.password.clone()).await;
        let public = canary.dir.join("canary.pub.pem");
        std::fs::write(&public, canary.key.public_key().to_spki_pem()).unwrap();
        canary
            .run(
                &["submitter", "add", CANARY, "--name", "Tallyhouse canary"],
                None,
            )
            .await
            .assert_code(0);
        let added = canary
            .run(&["key", "add", CANARY, public.to_str().unwrap()], None)
            .await;
        added.assert_code(0);
        assert_eq!(added.stdout.trim(), canary.key_id());
        canary
            .run(
                &[
                    "user",
                    "add",
                    CANARY,
                    "--role",
                    "analyst",
                    "--password-stdin",
                ],
                Some(&format!("{}\n", canary.password)),
            )
            .await
            .assert_code(0);
        canary
    }

    fn key_id(&self) -> String {
        self.key.public_key().key_id().to_string()
    }

    /// Writes the canary's secret with `password` (the registered one, or
    /// another to make logins fail).
    async fn store_secret(&self, password: &str) {
        put_secret(
            &self.namespace,
            "canary",
            "canary",
            &[
                ("submitter_id", CANARY),
                ("private_key_pem", &self.key.to_pkcs8_pem()),
                ("username", CANARY),
                ("password", password),
            ],
        )
        .await;
    }

    fn command(&self, args: &[&str], env: &[(&'static str, String)]) -> Command {
        let mut cmd = Command::new(workspace_bin("tallyhouse"));
        cmd.env_clear().current_dir(&self.dir).args(args);
        for (k, v) in self.env.iter().chain(env) {
            cmd.env(k, v);
        }
        cmd
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.run_with(args, &[], stdin).await
    }

    async fn run_with(
        &self,
        args: &[&str],
        env: &[(&'static str, String)],
        stdin: Option<&str>,
    ) -> Run {
        let mut cmd = tokio::process::Command::from(self.command(args, env));
        cmd.kill_on_drop(true)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the CLI runs");
        if let Some(text) = stdin {
            let mut input = child.stdin.take().unwrap();
            input.write_all(text.as_bytes()).await.unwrap();
            drop(input);
        }
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

    /// `tallyhouse --json canary --once` with `env` on top.
    async fn once(&self, env: &[(&'static str, String)]) -> Run {
        self.run_with(&["--json", "canary", "--once"], env, None)
            .await
    }

    /// The looping canary (one round an hour: the first at once), metrics
    /// on `metrics`, its output in `<dir>/canary.log`.
    fn spawn_loop(&self, metrics: SocketAddr) -> ChildProcess {
        let log = std::fs::File::create(self.dir.join("canary.log")).unwrap();
        let mut cmd = self.command(
            &["canary"],
            &[
                ("TALLYHOUSE_CANARY_INTERVAL", "1h".into()),
                ("TALLYHOUSE_CANARY_METRICS_ADDR", metrics.to_string()),
            ],
        );
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        ChildProcess::spawn("canary", &mut cmd).expect("spawn the canary")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("canary.log")).unwrap_or_default()
    }

    /// Runs the looping canary until its first round has finished and
    /// returns that scrape; stops it (SIGTERM, exit 0) and checks its log.
    pub(crate) async fn first_round_metrics(&self) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut process = self.spawn_loop(addr);
        let scrape = until_a_round_finished(&mut process, addr).await;
        let status = process.terminate().unwrap();
        let log = self.log();
        assert!(
            status.success(),
            "the canary stops cleanly: {status}\n{log}"
        );
        assert!(
            log.contains("canary started") && log.contains("canary round"),
            "{log}"
        );
        for secret in [self.password.as_str(), "PRIVATE KEY", "eyJ"] {
            assert!(
                !log.contains(secret),
                "the canary's log shows {secret:?}:\n{log}"
            );
        }
        scrape
    }

    pub(crate) fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the sample `series` (name and labels as written) in a scrape.
pub(crate) fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// Scrapes `addr` until a round has finished (success or failure).
async fn until_a_round_finished(process: &mut ChildProcess, addr: SocketAddr) -> String {
    let until = Instant::now() + RUN_BOUND;
    let http = reqwest::Client::new();
    loop {
        if let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await
            && let Ok(text) = resp.text().await
        {
            let rounds = ["success", "failure"]
                .iter()
                .filter_map(|o| {
                    sample(
                        &text,
                        &format!("tallyhouse_canary_rounds_total{{outcome=\"{o}\"}}"),
                    )
                })
                .sum::<f64>();
            if rounds >= 1.0 {
                return text;
            }
        }
        assert!(
            process.try_wait().is_none(),
            "the canary exited before its first round"
        );
        assert!(
            Instant::now() < until,
            "no canary round finished within {RUN_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn steps_of(report: &Value) -> Vec<(String, bool)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_canary_round_stores_its_package_reads_it_back_and_publishes_success() {
    let stack = Stack::start(StackOptions::default()).await;
    let canary = Canary::register(&stack).await;

    // One round by hand: every step, in order, and the report says so.
    let run = canary.once(&[]).await;
    run.assert_code(0);
    let report = run.json();
    assert_eq!(report["outcome"], "success", "{report}");
    assert_eq!(report["submitter_id"], CANARY);
    assert!(report["failed_step"].is_null() && report["code"].is_null());
    let steps = steps_of(&report);
    assert_eq!(
        steps,
        STEPS.map(|s| (s.to_owned(), true)).to_vec(),
        "{report}"
    );
    let package_id = report["package_id"].as_str().unwrap().to_owned();

    // The package is the canary's, stored once, signed with its key.
    let rows = stack
        .query(&format!(
            "SELECT submitter_id, encode(sha256, 'hex') AS sha256, size_bytes, record_count, \
             key_id, audience, blob_key FROM packages WHERE package_id = '{package_id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["submitter_id"], CANARY);
    assert_eq!(row["key_id"], canary.key_id().as_str());
    assert_eq!(row["audience"], "local");
    assert_eq!(row["record_count"], 1);
    // Its one record of canary.round, valued at its own time in Unix seconds.
    let records = stack
        .query(&format!(
            "SELECT series, value, extract(epoch FROM ts)::float8 AS epoch, labels \
             FROM records WHERE package_id = '{package_id}'"
        ))
        .await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["series"], "canary.round");
    assert_eq!(records[0]["value"], records[0]["epoch"]);
    assert_eq!(records[0]["labels"], serde_json::json!({"probe": "canary"}));
    // The raw bytes are in the bucket under their SHA-256.
    let blob_key = row["blob_key"].as_str().unwrap();
    let bytes = stack
        .evidence
        .get_blob(blob_key)
        .await
        .unwrap()
        .expect("the package's blob is in S3");
    assert_eq!(
        evidence::sha256_hex(&bytes),
        row["sha256"].as_str().unwrap()
    );
    assert_eq!(bytes.len() as i64, row["size_bytes"].as_i64().unwrap());
    assert!(stack.blobs().await.iter().any(|k| k == blob_key));
    // The back-office reads were audited as the canary user's.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let actions: Vec<String> = platform::testing::query_json(
            &stack.auth_db_url,
            &format!(
                "SELECT action FROM audit_log WHERE actor = '{CANARY}' AND outcome = 'success'"
            ),
        )
        .await
        .iter()
        .map(|r| r["action"].as_str().unwrap_or_default().to_owned())
        .collect();
        if ["read.packages", "read.raw", "read.series"]
            .iter()
            .all(|a| actions.iter().any(|x| x == a))
        {
            break;
        }
        assert!(Instant::now() < until, "audit trail: {actions:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The looping canary: its first round succeeds, with metrics.
    let scrape = canary.first_round_metrics().await;
    let value = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
    };
    assert_eq!(
        value("tallyhouse_canary_rounds_total{outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        value("tallyhouse_canary_rounds_total{outcome=\"failure\"}"),
        0.0
    );
    assert_eq!(value("tallyhouse_canary_last_round_success"), 1.0);
    assert_eq!(value("tallyhouse_canary_round_duration_seconds_count"), 1.0);
    for step in STEPS {
        assert_eq!(
            value(&format!(
                "tallyhouse_canary_step_duration_seconds_count{{step=\"{step}\"}}"
            )),
            1.0,
            "{step}"
        );
        assert_eq!(
            value(&format!(
                "tallyhouse_canary_failures_total{{step=\"{step}\"}}"
            )),
            0.0
        );
    }
    let started = value("tallyhouse_canary_started_timestamp_seconds");
    let succeeded = value("tallyhouse_canary_last_success_timestamp_seconds");
    assert!(
        started > 1.0e9 && succeeded >= started,
        "{started} {succeeded}"
    );
    assert_eq!(
        value("tallyhouse_canary_last_round_timestamp_seconds"),
        succeeded
    );
    assert!(scrape.contains("tallyhouse_build_info{service=\"canary\""));
    // Two rounds, two packages of the canary.
    let n = stack
        .query(&format!(
            "SELECT count(*) AS n FROM packages WHERE submitter_id = '{CANARY}'"
        ))
        .await;
    assert_eq!(n[0]["n"], 2);

    canary.finish();
    stack.finish().await;
}

#[tokio::test]
async fn a_failing_step_ends_the_round_with_its_name_code_exit_status_and_counter() {
    let stack = Stack::start(StackOptions::default()).await;
    let canary = Canary::register(&stack).await;
    // Vault now holds another password than the user's.
    canary.store_secret("not the canary's password").await;

    let run = canary.once(&[]).await;
    run.assert_code(1);
    assert!(
        run.stderr.contains("failed at login: invalid_credentials"),
        "{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["outcome"], "failure");
    assert_eq!(report["failed_step"], "login", "{report}");
    assert_eq!(report["code"], "invalid_credentials");
    assert_eq!(
        steps_of(&report),
        [
            ("vault", true),
            ("submit", true),
            ("keys", true),
            ("receipt", true),
            ("login", false)
        ]
        .map(|(s, ok)| (s.to_owned(), ok))
        .to_vec()
    );
    // What came before the failing step did happen: the package is stored.
    let package_id = report["package_id"].as_str().unwrap();
    let rows = stack
        .query(&format!(
            "SELECT submitter_id FROM packages WHERE package_id = '{package_id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);

    // Looping: the failure is counted for its step, and nothing succeeded.
    let scrape = canary.first_round_metrics().await;
    let value = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
    };
    assert_eq!(
        value("tallyhouse_canary_rounds_total{outcome=\"failure\"}"),
        1.0
    );
    assert_eq!(
        value("tallyhouse_canary_rounds_total{outcome=\"success\"}"),
        0.0
    );
    assert_eq!(
        value("tallyhouse_canary_failures_total{step=\"login\"}"),
        1.0
    );
    assert_eq!(
        value("tallyhouse_canary_failures_total{step=\"submit\"}"),
        0.0
    );
    assert_eq!(value("tallyhouse_canary_last_round_success"), 0.0);
    assert_eq!(
        value("tallyhouse_canary_last_success_timestamp_seconds"),
        0.0
    );
    assert_eq!(
        value("tallyhouse_canary_step_duration_seconds_count{step=\"submit\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "tallyhouse_canary_step_duration_seconds_count{step=\"login\"}"
        ),
        None,
        "a failed step is counted, not timed"
    );
    assert!(canary.log().contains("\"code\":\"invalid_credentials\""));

    // The gateway unreachable: the submit step fails, nothing is sent.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let run = canary.once(&[("TALLYHOUSE_GATEWAY_URL", dead)]).await;
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report["failed_step"], "submit", "{report}");
    assert_eq!(report["code"], "unreachable");

    // No secret in Vault (another prefix): the vault step fails.
    let run = canary
        .once(&[(
            "TALLYHOUSE_VAULT_PREFIX",
            format!("nothing-{}", uuid::Uuid::new_v4().simple()),
        )])
        .await;
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report["failed_step"], "vault", "{report}");
    assert_eq!(report["code"], "vault_refused");
    assert!(report["package_id"].is_null(), "no package was made");

    canary.finish();
    stack.finish().await;
}
