//! The back office through the gateway, against a whole running stack
//! (gateway, auth, query, registry, ingest; RabbitMQ, PostgreSQL, OpenBao,
//! S3): logins and tokens, the JWT attack suite, the role matrix, audited
//! evidence reads, and login throttling.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use evidence::SigningKey;
use evidence::generate::{PackageSpec, generate_package};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use rpc_contracts::SubmitterId;
use rpc_contracts::auth::{self, AccessClaims, Password, Role};
use serde_json::{Value, json};
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
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

async fn login(stack: &Stack, username: &str, password: &str) -> reqwest::Response {
    http()
        .post(format!("{}/v1/auth/login", stack.base_url))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn token_for(stack: &Stack, username: &str) -> String {
    let resp = login(stack, username, PASSWORD).await;
    assert_eq!(resp.status(), 200, "login of {username}");
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http().request(method, format!("{}{path}", stack.base_url));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `GET /v1/auth/me` with `token` until it answers `want` (revocation
/// reaches every gateway within its status cache time), at most 10 s.
async fn until_me_is(stack: &Stack, token: &str, want: StatusCode) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call(stack, Method::GET, "/v1/auth/me", Some(token), None).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < until, "me stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The auth service's signing key, as the stack provisioned it in OpenBao:
/// the tests forge tokens with it to attack every other check.
async fn auth_signing_key(stack: &Stack) -> SigningKey {
    let client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(platform::testing::vault_addr())
            .token(platform::testing::vault_root_token())
            .build()
            .unwrap(),
    )
    .unwrap();
    let path = format!("{}/auth/jwt_key", stack.topology.namespace());
    let secret: std::collections::HashMap<String, String> =
        vaultrs::kv2::read(&client, "secret", &path).await.unwrap();
    SigningKey::from_pkcs8_pem(&secret["private_key_pem"]).unwrap()
}

fn now() -> i64 {
    platform::clock::now().unix_timestamp()
}

fn forge(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let enc = EncodingKey::from_ec_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn login_gives_a_day_long_es256_token_that_logout_revokes() {
    let stack = Stack::start(StackOptions::default()).await;
    add_user(&stack, "alice", &[Role::Analyst]).await;

    let resp = login(&stack, "alice", PASSWORD).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86_400);
    let token = body["access_token"].as_str().unwrap().to_owned();

    let header = decode_part(&token, 0);
    assert_eq!(header["alg"], "ES256");
    let kid = header["kid"].as_str().unwrap();
    let claims: AccessClaims = serde_json::from_value(decode_part(&token, 1)).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.roles, vec![Role::Analyst]);
    assert_eq!(claims.exp - claims.iat, 86_400);
    assert_eq!(claims.iss, auth::DEFAULT_TOKEN_ISSUER);
    assert_eq!(claims.aud, auth::DEFAULT_TOKEN_AUDIENCE);
    // The token's key is published beside the receipt keys.
    assert!(stack.jwks().await.iter().any(|k| k["kid"] == kid));

    let me = until_me_is(&stack, &token, StatusCode::OK).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["roles"], json!(["analyst"]));

    let (status, _) = call(&stack, Method::POST, "/v1/auth/logout", Some(&token), None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&stack, Method::GET, "/v1/auth/me", Some(&token), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "invalid_token");

    // A wrong password and an unknown user get the same answer.
    let mut details = Vec::new();
    for (user, password) in [("alice", "wrong password here"), ("nobody", PASSWORD)] {
        let resp = login(&stack, user, password).await;
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_credentials");
        details.push(body["detail"].as_str().unwrap().to_owned());
    }
    assert_eq!(details[0], details[1]);
    stack.finish().await;
}

#[tokio::test]
async fn the_jwt_attack_suite_is_refused_and_a_well_forged_control_token_passes() {
    let stack = Stack::start(StackOptions::default()).await;
    add_user(&stack, "mallory", &[Role::Analyst]).await;
    let real = token_for(&stack, "mallory").await;
    let kid = decode_part(&real, 0)["kid"].as_str().unwrap().to_owned();
    let claims = decode_part(&real, 1);
    let key = auth_signing_key(&stack).await;
    let t = now();
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // The control: a token forged with the real key and the real claims is
    // accepted, so every refusal below is down to the one thing changed.
    let control = forge(&key, Some(&kid), &claims);
    until_me_is(&stack, &control, StatusCode::OK).await;

    let attacker = SigningKey::generate();
    let public_pem = key.public_key().to_spki_pem();
    let mut attacks: Vec<(&str, String)> = vec![];
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            B64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#)),
            B64.encode(claims.to_string())
        ),
    ));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    attacks.push((
        "HS256 with the public key as secret",
        jsonwebtoken::encode(
            &hs,
            &claims,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap(),
    ));
    attacks.push((
        "expired",
        forge(
            &key,
            Some(&kid),
            &with(json!({"iat": t - 90_000, "nbf": t - 90_000, "exp": t - 3600})),
        ),
    ));
    attacks.push((
        "not yet valid",
        forge(
            &key,
            Some(&kid),
            &with(json!({"iat": t + 3600, "nbf": t + 3600, "exp": t + 7200})),
        ),
    ));
    attacks.push((
        "wrong aud",
        forge(&key, Some(&kid), &with(json!({"aud": "someone-else"}))),
    ));
    attacks.push((
        "wrong iss",
        forge(&key, Some(&kid), &with(json!({"iss": "evil-issuer"}))),
    ));
    attacks.push(("no exp", {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove("exp");
        forge(&key, Some(&kid), &c)
    }));
    attacks.push(("unknown kid", forge(&key, Some("no-such-kid"), &claims)));
    attacks.push(("no kid", forge(&key, None, &claims)));
    attacks.push((
        "injected kid",
        forge(&key, Some("../../../../dev/null"), &claims),
    ));
    attacks.push((
        "attacker key under the real kid",
        forge(&attacker, Some(&kid), &claims),
    ));
    // A header pointing at the attacker's own keys is ignored: the token is
    // checked against the real key and fails.
    let mut jku = Header::new(Algorithm::ES256);
    jku.kid = Some(kid.clone());
    jku.jku = Some("http://127.0.0.1:1/attacker-jwks.json".into());
    jku.x5u = Some("http://127.0.0.1:1/attacker.pem".into());
    let attacker_enc = EncodingKey::from_ec_pem(attacker.to_pkcs8_pem().as_bytes()).unwrap();
    attacks.push((
        "jku and x5u to the attacker",
        jsonwebtoken::encode(&jku, &claims, &attacker_enc).unwrap(),
    ));
    let mut parts: Vec<String> = real.split('.').map(str::to_owned).collect();
    parts[1] = B64.encode(with(json!({"roles": ["admin", "auditor"], "sub": "admin"})).to_string());
    attacks.push(("tampered payload", parts.join(".")));
    attacks.push(("truncated", real[..real.len() - 10].to_owned()));
    attacks.push(("garbage", "not.a.token".to_owned()));

    for (name, token) in &attacks {
        let (status, body) = call(&stack, Method::GET, "/v1/auth/me", Some(token), None).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["code"], "invalid_token", "{name}");
    }
    // Not a bearer token at all, and no token.
    let resp = http()
        .get(format!("{}/v1/auth/me", stack.base_url))
        .header("authorization", format!("Basic {}", STANDARD.encode("a:b")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, body) = call(&stack, Method::GET, "/v1/auth/me", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");

    // A token from before logout.
    let before_logout = token_for(&stack, "mallory").await;
    until_me_is(&stack, &before_logout, StatusCode::OK).await;
    let (status, _) = call(
        &stack,
        Method::POST,
        "/v1/auth/logout",
        Some(&before_logout),
        None,
    )
    .await;
    assert_eq!(status, 204);
    until_me_is(&stack, &before_logout, StatusCode::UNAUTHORIZED).await;

    // A token of a user disabled since, and a forged copy of it.
    add_user(&stack, "root", &[Role::Admin]).await;
    let admin = token_for(&stack, "root").await;
    let (status, body) = call(
        &stack,
        Method::PATCH,
        "/v1/users/mallory",
        Some(&admin),
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    until_me_is(&stack, &real, StatusCode::UNAUTHORIZED).await;
    until_me_is(&stack, &control, StatusCode::UNAUTHORIZED).await;
    stack.finish().await;
}

/// Every endpoint × every role. The expectations are written here, from the
/// issue's roles, not derived from the gateway's own tables.
#[tokio::test]
async fn the_role_matrix_holds_for_every_endpoint_and_refusals_are_audited() {
    let stack = Stack::start(StackOptions::default()).await;
    for (user, role) in [
        ("adm", Role::Admin),
        ("ana", Role::Analyst),
        ("aud", Role::Auditor),
    ] {
        add_user(&stack, user, &[role]).await;
    }
    let (_key, key_id) = stack.submitter_with_key("op-matrix").await;
    let tokens = [
        ("adm", token_for(&stack, "adm").await),
        ("ana", token_for(&stack, "ana").await),
        ("aud", token_for(&stack, "aud").await),
    ];
    let t0 = "2026-01-01T00:00:00Z";
    let t1 = "2026-01-02T00:00:00Z";
    let pkg = "/v1/packages/op-matrix/6f1c0b8e-3d0a-4b7e-9d55-0d4b1c6b1a11";
    let new_key = SigningKey::generate().public_key().to_spki_pem();
    // (method, path, body, who may: adm, ana, aud)
    let matrix: Vec<(Method, String, Option<Value>, [bool; 3])> = vec![
        (Method::GET, "/v1/auth/me".into(), None, [true, true, true]),
        (
            Method::GET,
            "/v1/packages".into(),
            None,
            [false, true, true],
        ),
        (Method::GET, pkg.into(), None, [false, true, true]),
        (Method::GET, format!("{pkg}/raw"), None, [false, true, true]),
        (
            Method::GET,
            format!("/v1/series?submitter=op-matrix&series=bets.stake&from={t0}&to={t1}"),
            None,
            [false, true, true],
        ),
        (Method::GET, "/v1/audit".into(), None, [false, false, true]),
        (Method::GET, "/v1/users".into(), None, [true, false, true]),
        (
            Method::POST,
            "/v1/users".into(),
            Some(json!({"username": "newbie", "roles": ["analyst"], "password": PASSWORD})),
            [true, false, false],
        ),
        (
            Method::PATCH,
            "/v1/users/newbie".into(),
            Some(json!({"roles": ["analyst", "auditor"]})),
            [true, false, false],
        ),
        (
            Method::PUT,
            "/v1/users/newbie/password".into(),
            Some(json!({"password": "another long password"})),
            [true, false, false],
        ),
        (
            Method::GET,
            "/v1/lockouts".into(),
            None,
            [true, false, true],
        ),
        (
            Method::DELETE,
            "/v1/lockouts/account/nobody".into(),
            None,
            [true, false, false],
        ),
        (
            Method::GET,
            "/v1/submitters".into(),
            None,
            [true, false, true],
        ),
        (
            Method::POST,
            "/v1/submitters".into(),
            Some(json!({"submitter_id": "op-new"})),
            [true, false, false],
        ),
        (
            Method::GET,
            "/v1/submitters/op-matrix/keys".into(),
            None,
            [true, false, true],
        ),
        (
            Method::POST,
            "/v1/submitters/op-matrix/keys".into(),
            Some(json!({"public_key_pem": new_key})),
            [true, false, false],
        ),
        (
            Method::POST,
            format!("/v1/submitters/op-matrix/keys/{key_id}/revoke"),
            Some(json!({})),
            [true, false, false],
        ),
    ];
    let mut denials = 0;
    for (method, path, body, allowed) in &matrix {
        for (i, (user, token)) in tokens.iter().enumerate() {
            let (status, answer) =
                call(&stack, method.clone(), path, Some(token), body.clone()).await;
            if allowed[i] {
                assert!(
                    status != 401 && status != 403 && !status.is_server_error(),
                    "{user} {method} {path}: expected to be let in, got {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{user} {method} {path}: {answer}");
                assert_eq!(answer["code"], "forbidden");
                denials += 1;
            }
        }
        // Without a token, every one of them is 401.
        let (status, _) = call(&stack, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "anonymous {method} {path}");
    }
    // Every refusal left an audit entry.
    let page = stack
        .rpc
        .call::<auth::ListAudit>(&auth::ListAuditRequest {
            before_id: None,
            limit: 1000,
            actor: None,
            action: Some("denied".into()),
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), denials);
    assert!(
        page.entries
            .iter()
            .all(|e| e.record.status == Some(403) && e.record.actor.is_some())
    );
    stack.finish().await;
}

#[tokio::test]
async fn evidence_reads_reverify_offline_and_are_audited_with_rows_and_bytes() {
    let stack = Stack::start(StackOptions::default()).await;
    add_user(&stack, "ana", &[Role::Analyst]).await;
    add_user(&stack, "aud", &[Role::Auditor]).await;
    let (key, key_id) = stack.submitter_with_key("op-reads").await;
    let created_at = platform::clock::now();
    let made: Vec<_> = (0..3)
        .map(|seed| {
            let spec = PackageSpec::new(
                SubmitterId::parse("op-reads").unwrap(),
                "local",
                300,
                created_at,
                seed,
            );
            generate_package(&spec)
        })
        .collect();
    for p in &made {
        let resp = http()
            .post(format!("{}/v1/packages", stack.base_url))
            .header("content-type", "application/json")
            .header("tallyhouse-key-id", key_id.to_string())
            .header("tallyhouse-signature", STANDARD.encode(key.sign(&p.bytes)))
            .body(p.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let ana = token_for(&stack, "ana").await;

    // Pages of 2 over 3 packages, newest first, then a bad parameter.
    let (status, page1) = call(
        &stack,
        Method::GET,
        "/v1/packages?submitter=op-reads&limit=2",
        Some(&ana),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(page1["packages"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = call(
        &stack,
        Method::GET,
        &format!("/v1/packages?submitter=op-reads&limit=2&cursor={cursor}"),
        Some(&ana),
        None,
    )
    .await;
    assert_eq!(page2["packages"].as_array().unwrap().len(), 1);
    let mut ids: Vec<String> = page1["packages"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["packages"].as_array().unwrap())
        .map(|p| p["package_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut sent: Vec<String> = made.iter().map(|p| p.package_id.to_string()).collect();
    sent.sort();
    assert_eq!(ids, sent);
    for (query, field) in [
        ("limit=0", "limit"),
        ("from=yesterday", "from"),
        ("submiter=op-reads", "submiter"),
        ("submitter=Not%20An%20Id", "submitter"),
    ] {
        let (status, body) = call(
            &stack,
            Method::GET,
            &format!("/v1/packages?{query}"),
            Some(&ana),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "bad_request");
        assert_eq!(body["field"], field, "{query}");
    }

    // The raw bytes are exactly what was sent, and re-verify with openssl
    // from the headers alone.
    let p = &made[0];
    let resp = http()
        .get(format!(
            "{}/v1/packages/op-reads/{}/raw",
            stack.base_url, p.package_id
        ))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["tallyhouse-key-id"],
        key_id.to_string().as_str()
    );
    let signature = resp.headers()["tallyhouse-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    let digest = resp.headers()["repr-digest"].to_str().unwrap().to_owned();
    let raw = resp.bytes().await.unwrap();
    assert_eq!(raw.as_ref(), p.bytes.as_slice());
    assert_eq!(
        digest,
        format!("sha-256=:{}:", STANDARD.encode(evidence::sha256(&p.bytes)))
    );
    let dir = std::env::temp_dir().join(format!("th-raw-{}", p.package_id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("package.json"), &raw).unwrap();
    std::fs::write(dir.join("sig.der"), STANDARD.decode(&signature).unwrap()).unwrap();
    std::fs::write(dir.join("pub.pem"), key.public_key().to_spki_pem()).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            "package.json",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
    let _ = std::fs::remove_dir_all(&dir);

    // Metadata and receipt.
    let (status, detail) = call(
        &stack,
        Method::GET,
        &format!("/v1/packages/op-reads/{}", p.package_id),
        Some(&ana),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(detail["summary"]["sha256"], evidence::sha256_hex(&p.bytes));
    assert_eq!(detail["signature"], signature);
    let (status, missing) = call(
        &stack,
        Method::GET,
        &format!("/v1/packages/op-reads/{}", uuid::Uuid::new_v4()),
        Some(&ana),
        None,
    )
    .await;
    assert_eq!(status, 404, "{missing}");

    // Series as CSV: one line per bucket with records, counts adding up to
    // the records of that series sent.
    let records: Vec<_> = made
        .iter()
        .flat_map(|p| evidence::parse_package(&p.bytes).unwrap().records)
        .collect();
    let stakes = records.iter().filter(|r| r.series == "bets.stake").count() as u64;
    let from = (created_at - time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let to = (created_at + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let resp = http()
        .get(format!("{}/v1/series", stack.base_url))
        .query(&[
            ("submitter", "op-reads"),
            ("series", "bets.stake"),
            ("from", &from),
            ("to", &to),
            ("bucket", "5m"),
            ("agg", "count"),
        ])
        .header("accept", "text/csv")
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = resp.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("bucket,value,count"));
    let rows: Vec<&str> = lines.collect();
    let total: u64 = rows
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, stakes);

    // The auditor sees each of those reads with its counts.
    let aud = token_for(&stack, "aud").await;
    let (status, trail) = call(
        &stack,
        Method::GET,
        "/v1/audit?actor=ana&limit=100",
        Some(&aud),
        None,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    let find = |action: &str| {
        entries
            .iter()
            .filter(move |e| e["record"]["action"] == action)
            .collect::<Vec<_>>()
    };
    let lists = find("read.packages");
    assert!(
        lists
            .iter()
            .any(|e| e["record"]["rows"] == 2 && e["record"]["submitter_id"] == "op-reads")
    );
    let raws = find("read.raw");
    assert_eq!(raws.len(), 1);
    assert_eq!(raws[0]["record"]["bytes"], p.bytes.len());
    assert_eq!(raws[0]["record"]["target"], p.package_id.to_string());
    let series = find("read.series");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["record"]["rows"], rows.len());
    assert!(
        find("login")
            .iter()
            .all(|e| e["record"]["outcome"] == "success")
    );
    stack.finish().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_visible_to_admins_and_cleared_by_them() {
    let stack = Stack::start(StackOptions::default()).await;
    add_user(&stack, "victim", &[Role::Analyst]).await;
    add_user(&stack, "root", &[Role::Admin]).await;
    let admin = token_for(&stack, "root").await;

    let mut throttled = None;
    for _ in 0..30 {
        let resp = login(&stack, "victim", "not the password at all").await;
        match resp.status() {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled = Some(resp);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let resp = throttled.expect("failed logins were never throttled");
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "login_throttled");
    // Even the right password is not considered while throttled.
    assert_eq!(login(&stack, "victim", PASSWORD).await.status(), 429);

    let (status, list) = call(&stack, Method::GET, "/v1/lockouts", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert!(
        list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["scope"] == "account" && e["key"] == "victim")
    );
    let (status, cleared) = call(
        &stack,
        Method::DELETE,
        "/v1/lockouts/account/victim",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cleared["cleared"], true);
    // The address may be throttled too; clear it like an admin would.
    for e in list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["scope"] == "address")
    {
        let key = e["key"].as_str().unwrap();
        call(
            &stack,
            Method::DELETE,
            &format!("/v1/lockouts/address/{key}"),
            Some(&admin),
            None,
        )
        .await;
    }
    assert_eq!(login(&stack, "victim", PASSWORD).await.status(), 200);
    stack.finish().await;
}

/// The gateway's `/ready` body.
async fn gateway_ready(stack: &Stack) -> (StatusCode, Value) {
    let resp = http()
        .get(format!("http://{}/ready", stack.metrics_addr("gateway")))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_gateway_started_before_auth_is_not_ready_and_never_calls_a_valid_token_invalid() {
    // The class of bug: a process that caches something from another
    // service at start-up (here the gateway, auth's token keys) and starts
    // first. It must not report ready, and must not turn "auth has not
    // answered yet" into "your token is invalid".
    let mut stack = Stack::start(StackOptions::default()).await;
    add_user(&stack, "early", &[Role::Analyst]).await;
    let token = token_for(&stack, "early").await;

    stack.stop("auth");
    stack.restart("gateway");
    // The new gateway serves HTTP, but has no token keys yet.
    let until = Instant::now() + Duration::from_secs(30);
    let (status, report) = loop {
        let ping = http()
            .get(format!("{}/v1/ping", stack.base_url))
            .send()
            .await;
        if ping.is_ok() {
            break gateway_ready(&stack).await;
        }
        assert!(
            Instant::now() < until,
            "the restarted gateway never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{report}");
    assert_ne!(report["checks"]["token_keys"], "ok", "{report}");
    let (status, body) = call(&stack, Method::GET, "/v1/auth/me", Some(&token), None).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a valid token while auth is away: {body}"
    );
    assert_eq!(body["code"], "unavailable", "{body}");

    stack.restart("auth");
    // The very first request once auth answers is accepted: the gateway
    // fetches the keys for it, whatever its own schedule.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(&stack, Method::GET, "/v1/auth/me", Some(&token), None).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["username"], "early", "{body}");
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("a valid token answered {other} while auth came back: {body}"),
        }
        assert!(Instant::now() < until, "auth never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, report) = gateway_ready(&stack).await;
        if status == StatusCode::OK {
            assert_eq!(report["checks"]["token_keys"], "ok", "{report}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the gateway never became ready: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.finish().await;
}
