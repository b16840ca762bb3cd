//! The dashboards and alert rules of grafana/ against what the services
//! really expose: a stack serves one package, every service is scraped (and
//! the end-to-end canary, after one round against the stack), and every
//! metric name a Prometheus expression of grafana/dashboards/*.json or
//! grafana/alerts/*.yaml uses must be in those scrapes (or be one of the
//! few names other exporters provide). And before any traffic: a freshly
//! started platform already has a series of every name they use whose
//! labels are known in advance, those label sets at 0 (so that `increase()`
//! sees the first event, and a "stopped" alert sees what never happened).

use crate::canary::sample;
use evidence::SigningKey;
use rpc_contracts::auth::{self, LoginRequest, Password};
use rpc_contracts::jobs::{JobName, JobOutcome};
use rpc_contracts::query::{self, ListPackages, ListPackagesRequest};
use rpc_contracts::{ALL_CALLS, ErrorCode, ServiceQueue, ingest, registry};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::stack::{BINARIES, Stack, StackOptions};
use tokio::time::Instant;

/// Names that come from elsewhere than the Tallyhouse services: Prometheus
/// itself (`up`).
const EXTERNAL: [&str; 1] = ["up"];

/// Gauges a service exports only in some set-ups (a Vault token with an
/// expiry, secrets leased from Vault's database engine), with the source
/// file that encodes them and the name written there (checked).
const CONDITIONAL: [(&str, &str, &str); 2] = [
    (
        "tallyhouse_vault_token_seconds_remaining",
        "services/platform/src/vault.rs",
        "\"token_seconds_remaining\"",
    ),
    (
        "tallyhouse_vault_lease_seconds_remaining",
        "services/platform/src/vault.rs",
        "\"lease_seconds_remaining\"",
    ),
];

/// Names (by prefix) whose label values come from the traffic itself, so
/// that a process that has served nothing may have no series of them yet,
/// with the reason. Everything else grafana/ uses must be in a fresh scrape.
const FROM_TRAFFIC: [(&str, &str); 6] = [
    (
        "tallyhouse_ingest_submitter_",
        "submitter: the registered submitter a package came from",
    ),
    ("tallyhouse_http_requests_total", "status: the response's"),
    (
        "tallyhouse_http_request_duration_seconds",
        "route: the route a request matched (not listed apart from the router)",
    ),
    (
        "tallyhouse_rpc_client_",
        "method: the calls a process makes (not declared in advance)",
    ),
    (
        "tallyhouse_rpc_server_errors_total",
        "code: every method times every error code is not created in advance",
    ),
    (
        "tallyhouse_canary_",
        "another process (its series exist from its start: canary/metrics.rs)",
    ),
];

/// The four names a fresh platform used to lack (issue 14).
const ONCE_MISSING: [&str; 4] = [
    "tallyhouse_auth_lockouts_total",
    "tallyhouse_lifecycle_job_last_success_timestamp_seconds",
    "tallyhouse_rpc_server_dead_lettered_total",
    "tallyhouse_rpc_server_expired_total",
];

/// The stages of a package submission (services/ingest/src/metrics.rs).
const INGEST_STAGES: [&str; 8] = [
    "key_lookup",
    "verify_queue",
    "verify",
    "parse",
    "dedupe",
    "receipt_sign",
    "blob_put",
    "db_write",
];

/// PromQL words that look like metric names but are not.
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
];

/// Modifiers whose parenthesised list holds label names, not expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// The metric names used by a PromQL expression: identifiers outside
/// strings, label matchers and ranges that are neither functions, keywords,
/// Grafana variables nor label lists of `by (...)` and the like.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable or a number or duration (`5m`, `1e3`).
            i += 1;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (x) (...)`: an aggregation whose modifier comes first.
            let word_after: String = chars[next..].iter().take_while(|c| is_part(**c)).collect();
            let called = (next < chars.len() && chars[next] == '(')
                || (next > i && (word_after == "by" || word_after == "without"));
            if called && LABEL_LISTS.contains(&word.as_str()) {
                i = skip_to(next + 1, ')');
            } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The PromQL of a dashboard: targets and query variables on the
/// `prometheus` datasource (`label_values(m, label)` counts as `m`).
fn dashboard_expressions(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(obj) => {
            let on_prometheus = obj
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .is_some_and(|uid| uid == "prometheus");
            if on_prometheus {
                if let Some(expr) = obj.get("expr").and_then(Value::as_str) {
                    out.push(expr.to_owned());
                }
                if let Some(query) = obj
                    .get("query")
                    .and_then(|q| q.get("query"))
                    .and_then(Value::as_str)
                {
                    let query = query
                        .strip_prefix("label_values(")
                        .and_then(|q| q.rsplit_once(','))
                        .map_or(query, |(series, _label)| series);
                    out.push(query.to_owned());
                }
            }
            obj.values().for_each(|v| dashboard_expressions(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_expressions(v, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rule file, plain or block scalars
/// (`>-`, `|`), read line by line (the rules use no other YAML forms for
/// `expr`; promtool checks the file itself in tests/python/test_grafana.py).
fn rule_expressions(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed
            .strip_prefix("expr:")
            .or_else(|| trimmed.strip_prefix("- expr:"))
        else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('>') || value.starts_with('|') {
            let indent = line.len() - trimmed.len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(value.to_owned());
        }
    }
    out
}

/// Every sample name a scrape declares: the `# TYPE` families expanded the
/// way OpenMetrics names their samples (so families with no sample yet
/// count), and the sample lines themselves.
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.sign(body))
}

fn package(submitter: &str) -> Value {
    let now = platform::clock::now();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": submitter,
        "audience": "local",
        "created_at": rfc(now),
        "records": [{"series": "bets.stake", "ts": rfc(now), "value": 1.5, "labels": {"game": "poker"}}]
    })
}

#[test]
fn the_expression_scanner_finds_metric_names_only() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job=~"$job",x="y z"}[$__rate_interval]))) > 1e3"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) / on (job) group_left (v) b or vector(0) and c offset 5m"),
        ["a_total", "b", "c"]
    );
    assert_eq!(
        names("time() - max(max_over_time(timestamp(increase(s{o=\"x\"}[5m]) > 0)[1d:1m]))"),
        ["s"]
    );
    assert_eq!(
        names("time() - min by (l) (a{l=\"x\"} + on (job, instance) group_left () b) > 3 * 900"),
        ["a", "b"]
    );
    assert_eq!(
        rule_expressions(
            "  - alert: A\n    expr: >-\n      a\n      / b\n    for: 1m\n  - record: r\n    expr: up == 0\n"
        ),
        ["a / b", "up == 0"]
    );
}

/// Every metric name grafana/ uses, with the file that uses it.
fn used_names() -> BTreeSet<(String, String)> {
    let dir = grafana_dir();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    let dashboards = files(&dir.join("dashboards"), "json");
    assert!(dashboards.len() >= 5, "dashboards: {dashboards:?}");
    for path in &dashboards {
        let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut exprs = Vec::new();
        dashboard_expressions(&doc, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no PromQL", path.display());
        for expr in exprs {
            used.extend(
                metric_names(&expr)
                    .into_iter()
                    .map(|n| (n, path.display().to_string())),
            );
        }
    }
    let rules = files(&dir.join("alerts"), "yaml");
    assert!(!rules.is_empty());
    for path in &rules {
        let exprs = rule_expressions(&std::fs::read_to_string(path).unwrap());
        assert!(!exprs.is_empty(), "{}: no expr", path.display());
        for expr in exprs {
            used.extend(
                metric_names(&expr)
                    .into_iter()
                    .map(|n| (n, path.display().to_string())),
            );
        }
    }
    used
}

/// The names of the samples in a scrape (families with no sample are not
/// encoded at all).
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line[..line.find(['{', ' ']).unwrap_or(line.len())].to_owned())
        .collect()
}

/// The values of `label` among the samples of `name` in a scrape.
fn label_values(scrape: &str, name: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|labels| {
            let start = labels.find(&needle)? + needle.len();
            let len = labels[start..].find('"')?;
            Some(labels[start..start + len].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboards_and_alerts_use_is_one_the_services_expose() {
    let used = used_names();

    // What the services expose, after one package went through.
    let stack = Stack::start(StackOptions::default()).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let body = serde_json::to_vec(&package("acme")).unwrap();
    let signature = sign(&key, &body);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header("tallyhouse-signature", signature)
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 201);
    // A refusal (ingest's error counters), a failed login (auth's logins,
    // Argon2id and slot wait) and a query (query's rows served).
    let other = serde_json::to_vec(&package("acme")).unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header(
            "tallyhouse-signature",
            sign(&SigningKey::generate(), &other),
        )
        .body(other)
        .send()
        .await
        .expect("the gateway answers");
    // bad_signature, refused by ingest (the gateway maps it to 400 or 401).
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let login = stack
        .rpc
        .call::<auth::Login>(&LoginRequest {
            username: "nobody".into(),
            password: Password("wrong".into()),
            client_addr: None,
            trace_id: None,
        })
        .await;
    assert_eq!(login.unwrap_err().code, ErrorCode::InvalidCredentials);
    let page = stack
        .query_call::<ListPackages>(&ListPackagesRequest {
            submitter_id: None,
            from: None,
            to: None,
            limit: 10,
            cursor: None,
        })
        .await
        .expect("list packages");
    assert_eq!(page.packages.len(), 1);

    let mut exposed = BTreeSet::new();
    for service in BINARIES {
        let scrape = stack.scrape_metrics(service).await;
        let names = exposed_names(&scrape);
        assert!(
            names.contains("tallyhouse_build_info")
                && names.contains("tallyhouse_rpc_broker_links_up"),
            "{service}: {scrape}"
        );
        exposed.extend(names);
    }
    // The canary, `tallyhouse canary`: a process of its own, scraped after
    // its first round against this stack.
    let canary = crate::canary::Canary::register(&stack).await;
    let scrape = canary.first_round_metrics().await;
    exposed.extend(exposed_names(&scrape));
    for family in [
        "tallyhouse_canary_rounds_total",
        "tallyhouse_canary_failures_total",
        "tallyhouse_canary_last_round_success",
        "tallyhouse_canary_last_success_timestamp_seconds",
        "tallyhouse_canary_started_timestamp_seconds",
        "tallyhouse_canary_step_duration_seconds_bucket",
        "tallyhouse_ingest_packages_total",
        "tallyhouse_query_rows_served_total",
        "tallyhouse_auth_logins_total",
        "tallyhouse_http_requests_total",
        "tallyhouse_http_request_duration_seconds_bucket",
        "tallyhouse_http_requests_in_flight",
        "tallyhouse_ready_check",
        "tallyhouse_db_pool_connections_open",
        "tallyhouse_db_pool_connections_idle",
        "tallyhouse_db_pool_connections_max",
        "tallyhouse_db_pool_waiters",
        "tallyhouse_rpc_dead_letter_messages",
        "tallyhouse_ingest_submitter_packages_total",
        "tallyhouse_ingest_submitter_last_package_timestamp_seconds",
        "tallyhouse_ingest_submitter_lag_seconds",
    ] {
        assert!(exposed.contains(family), "{family} not in the scrapes");
    }
    for (name, source, literal) in CONDITIONAL {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(source);
        let code = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert!(
            code.contains(literal),
            "{source} encodes no {literal} ({name})"
        );
    }

    let missing: Vec<_> = used
        .iter()
        .filter(|(name, _)| {
            !exposed.contains(name)
                && !EXTERNAL.contains(&name.as_str())
                && !CONDITIONAL
                    .iter()
                    .any(|(conditional, _, _)| conditional == name)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metric names used in grafana/ that no service exposes: {missing:#?}\nexposed: {exposed:#?}"
    );
    let used_names: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        used_names.contains("tallyhouse_ingest_packages_total"),
        "{used_names:?}"
    );
    canary.finish();
    stack.finish().await;
}

/// The queue a service serves (`None`: the gateway serves none).
fn served_queue(service: &str) -> Option<ServiceQueue> {
    match service {
        "registry" => Some(registry::QUEUE),
        "auth" => Some(auth::QUEUE),
        "ingest" => Some(ingest::QUEUE),
        "query" => Some(query::QUEUE),
        "gateway" => None,
        other => panic!("no queue known for {other}"),
    }
}

/// Polls `http://<addr>/ready` until it answers 200, within 60 s.
async fn until_ready(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::get(format!("http://{addr}/ready")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < until, "{addr} not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fresh_platform_exposes_what_grafana_uses_with_its_known_label_sets_at_zero() {
    let used = used_names();
    let before = platform::clock::now_unix_ms() as f64 / 1000.0;
    // No traffic but the harness's readiness pings.
    let mut stack = Stack::start(StackOptions::default()).await;
    let mut scrapes = BTreeMap::new();
    for service in BINARIES {
        scrapes.insert(service, stack.scrape_metrics(service).await);
    }
    let after = platform::clock::now_unix_ms() as f64 / 1000.0;
    let exposed: BTreeSet<String> = scrapes.values().flat_map(|s| sample_names(s)).collect();

    // Every name grafana/ uses has a series, but those whose labels only
    // traffic can give (and the few set-up dependent and external ones).
    let missing: Vec<_> = used
        .iter()
        .filter(|(name, _)| {
            !exposed.contains(name)
                && !EXTERNAL.contains(&name.as_str())
                && !CONDITIONAL.iter().any(|(c, _, _)| c == name)
                && !FROM_TRAFFIC
                    .iter()
                    .any(|(prefix, _)| name.starts_with(prefix))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metric names used in grafana/ that a fresh platform does not expose: {missing:#?}\nexposed: {exposed:#?}"
    );
    for name in ONCE_MISSING {
        assert!(exposed.contains(name), "{name} not in a fresh scrape");
    }

    for (service, scrape) in &scrapes {
        // When the process started, for "never happened" alerts.
        let started = sample(scrape, "process_start_time_seconds")
            .unwrap_or_else(|| panic!("{service}: no process_start_time_seconds\n{scrape}"));
        assert!(
            before - 5.0 <= started && started <= after,
            "{service}: started at {started}, not in [{before}, {after}]"
        );
        // Every method it serves, at 0 where the pings do not reach.
        let methods: BTreeSet<String> = ALL_CALLS
            .iter()
            .filter(|(queue, _)| Some(*queue) == served_queue(service))
            .map(|(_, method)| (*method).to_owned())
            .collect();
        assert_eq!(methods.is_empty(), *service == "gateway", "{service}");
        for family in [
            "tallyhouse_rpc_server_calls_total",
            "tallyhouse_rpc_server_duration_seconds_count",
            "tallyhouse_rpc_server_in_flight",
            "tallyhouse_rpc_server_expired_total",
            "tallyhouse_rpc_server_dead_lettered_total",
        ] {
            assert_eq!(
                label_values(scrape, family, "method"),
                methods,
                "{service}: {family}\n{scrape}"
            );
        }
        for method in &methods {
            for family in [
                "tallyhouse_rpc_server_expired_total",
                "tallyhouse_rpc_server_dead_lettered_total",
            ] {
                assert_eq!(
                    sample(scrape, &format!("{family}{{method=\"{method}\"}}")),
                    Some(0.0),
                    "{service}: {family} {method}"
                );
            }
        }
    }

    let auth = &scrapes["auth"];
    for outcome in ["success", "invalid_credentials", "throttled", "error"] {
        let series = format!("tallyhouse_auth_logins_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(auth, &series), Some(0.0), "{series}\n{auth}");
    }
    for scope in ["account", "address"] {
        let series = format!("tallyhouse_auth_lockouts_total{{scope=\"{scope}\"}}");
        assert_eq!(sample(auth, &series), Some(0.0), "{series}\n{auth}");
    }
    assert_eq!(
        label_values(auth, "tallyhouse_auth_argon2_seconds_count", "operation"),
        BTreeSet::from(["hash".to_owned(), "verify".to_owned()]),
        "{auth}"
    );

    let ingest = &scrapes["ingest"];
    let packages: Vec<&str> = ingest
        .lines()
        .filter(|l| l.starts_with("tallyhouse_ingest_packages_total{"))
        .collect();
    assert_eq!(
        packages.len(),
        2 + ErrorCode::ALL.len(),
        "stored, duplicate and every code: {packages:#?}"
    );
    assert!(packages.iter().all(|l| l.ends_with(" 0")), "{packages:#?}");
    for series in [
        "tallyhouse_ingest_packages_total{outcome=\"stored\",code=\"none\"}",
        "tallyhouse_ingest_packages_total{outcome=\"failed\",code=\"internal\"}",
        "tallyhouse_ingest_packages_total{outcome=\"rejected\",code=\"bad_signature\"}",
    ] {
        assert_eq!(sample(ingest, series), Some(0.0), "{series}\n{ingest}");
    }
    assert_eq!(
        label_values(ingest, "tallyhouse_ingest_stage_seconds_count", "stage"),
        INGEST_STAGES.iter().map(|s| (*s).to_owned()).collect(),
        "{ingest}"
    );
    for job in JobName::ALL {
        for family in [
            "tallyhouse_lifecycle_job_last_success_timestamp_seconds",
            "tallyhouse_lifecycle_job_last_run_failed",
        ] {
            let series = format!("{family}{{lifecycle_job=\"{job}\"}}");
            assert_eq!(sample(ingest, &series), Some(0.0), "{series}\n{ingest}");
        }
    }

    // A job that succeeded before an ingest instance started: that instance
    // shows the success from the database within its first seconds, not
    // after a refresh period (15 s).
    let run = stack.run_job(JobName::Rollup, None).await;
    assert_eq!(run.outcome, Some(JobOutcome::Ok), "{run:?}");
    let finished = run.finished_at.expect("a finished run") - time::OffsetDateTime::UNIX_EPOCH;
    let addr = stack.spawn_ingest("ingest-restarted", &[]);
    until_ready(addr).await;
    let series =
        "tallyhouse_lifecycle_job_last_success_timestamp_seconds{lifecycle_job=\"rollup\"}";
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown = sample(&scrape, series).expect(series);
        if shown > 0.0 {
            assert!(
                (shown - finished.as_seconds_f64()).abs() < 0.001,
                "{series} {shown}, the run ended at {finished}"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "{series} still 0 5 s after start-up:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.finish().await;
}
