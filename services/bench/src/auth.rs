//! The `auth` benchmark: what back-office authentication costs.
//!
//! * **Requests.** `GET /v1/auth/me` with a valid bearer token (the
//!   gateway verifies the ES256 JWT, looks its revocation status up in its
//!   cache, asks the auth service when the cache has none, and answers 200)
//!   against the same route without a token (the gateway answers 401 at
//!   once). No endpoint answers both with and without a token alike: the
//!   public ones (`/v1/keys`, `/v1/ping`) ignore the `Authorization`
//!   header, and every back-office one refuses a request without it; `me`
//!   is the back-office route that does nothing but the check (no RPC of
//!   its own, no audit entry), so its 401 is the same route minus the
//!   authentication.
//! * **The pieces alone**: the gateway's token verification
//!   (`jsonwebtoken::decode` with the ES256 key from the auth service's
//!   JWKS, as `gateway/src/token.rs` calls it) in this process, and the
//!   revocation check (`auth.v1.check_token` over RPC) that the gateway
//!   makes once per token per cache period.
//! * **Logins**: `POST /v1/auth/login` with the right password against
//!   Argon2id alone in this process (verifying the same password against
//!   the same stored PHC hash, read from the auth service's database, on
//!   tokio's blocking pool as the service does), at 1 call in flight and at
//!   one per core.
//!
//! The services run as in `ingest` (see `crate::local`). See
//! docs/benchmarks.md.

use crate::compare::{self, OnStack, Point, cell};
use crate::cpu::{CpuProbe, Scope};
use crate::harness::Context;
use crate::load::CallFn;
use crate::local;
use crate::report::{Report, rounded};
use ::tests::stack::Stack;
use futures_util::FutureExt as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rpc_contracts::auth::{self, AccessClaims, Role, TokenIdentity};
use std::sync::Arc;
use std::time::Duration;

/// Requests in flight at each point of the request comparison and of the
/// pieces alone.
const IN_FLIGHT: [usize; 2] = [1, 16];
/// An authenticated request should reach this share of the unauthenticated
/// request rate on the same route.
const TARGET_AUTH_VS_ANONYMOUS: f64 = 0.8;
/// The back-office user.
const USERNAME: &str = "bench-auth";

/// See the module documentation.
pub const BENCHMARK: OnStack = OnStack {
    name: "auth",
    about: "GET /v1/auth/me with a bearer token vs its 401 without; logins/s vs Argon2id alone",
    measure: |ctx, stack| measure_all(ctx, stack).boxed(),
};

/// The stored password hash and the Argon2id it names.
struct StoredHash {
    phc: String,
    argon2: argon2::Argon2<'static>,
    /// m (KiB), t, p.
    params: (u32, u32, u32),
}

async fn measure_all(ctx: &Context, stack: &mut Stack) -> anyhow::Result<Report> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?;
    let (password, token) = local::back_office_user(stack, &http, USERNAME, Role::Analyst).await?;
    let stored = stored_hash(&stack.auth_db_url, USERNAME).await?;
    let verifier = Arc::new(Verifier::new(stack, &token).await?);
    let claims = verifier
        .verify(&token)
        .map_err(|e| anyhow::anyhow!("the bench cannot verify the access token: {e}"))?;

    let mut watched = local::watched_services(stack, &["gateway", "auth"]);
    watched.extend(local::watched_servers(&[
        ("broker", local::AMQP_PORT, Scope::Process),
        ("postgres", local::PG_PORT, Scope::WithChildren),
    ]));
    let probe = ctx.cpu.watching(watched);
    let me_url = format!("{}/v1/auth/me", stack.base_url);
    let login_url = format!("{}/v1/auth/login", stack.base_url);

    let mut requests = Vec::new();
    for &n in &IN_FLIGHT {
        let variants = vec![
            (
                "bearer",
                get_call(http.clone(), me_url.clone(), Some(token.clone()), 200),
            ),
            (
                "anonymous",
                get_call(http.clone(), me_url.clone(), None, 401),
            ),
        ];
        if let Some(p) = compare::measure(ctx, &probe, n, "", variants, requests.len()).await? {
            requests.push(p);
        }
    }
    let identity = TokenIdentity {
        jti: claims.jti,
        sub: claims.sub.clone(),
        issued_at: time::OffsetDateTime::from_unix_timestamp(claims.iat)?,
        expires_at: time::OffsetDateTime::from_unix_timestamp(claims.exp)?,
        version: claims.ver,
    };
    let es256 = Arc::new(Es256::new(&verifier, &token)?);
    let mut pieces = Vec::new();
    for &n in &IN_FLIGHT {
        let mut variants = vec![("check_token", check_token_call(stack, identity.clone()))];
        if n == 1 {
            // Computation alone: one thread's rate is the point.
            variants.extend([
                ("jwt_verify", verify_call(verifier.clone(), token.clone())),
                ("es256_unparsed", es256_call(es256.clone(), false)),
                ("es256_parsed", es256_call(es256.clone(), true)),
            ]);
        }
        if let Some(p) = compare::measure(ctx, &probe, n, "", variants, pieces.len()).await? {
            pieces.push(p);
        }
    }
    let stored = Arc::new(stored);
    let mut logins = Vec::new();
    let mut in_auth = Vec::new();
    for n in [1, cores] {
        let variants = vec![
            (
                "login",
                login_call(http.clone(), login_url.clone(), password.clone()),
            ),
            ("argon2", argon2_call(stored.clone(), password.clone())),
        ];
        let before = stack.scrape_metrics("auth").await;
        if let Some(p) = compare::measure(ctx, &probe, n, "", variants, logins.len()).await? {
            let after = stack.scrape_metrics("auth").await;
            in_auth.push(argon2_ms_in_auth(&before, &after));
            logins.push(p);
        }
    }
    Ok(report(
        ctx,
        &probe,
        &requests,
        &pieces,
        &Logins {
            points: logins,
            argon2_ms_in_auth: in_auth,
            stored,
        },
    ))
}

/// The user's PHC string from the auth service's database, and Argon2id
/// with the parameters it names.
async fn stored_hash(auth_db_url: &str, username: &str) -> anyhow::Result<StoredHash> {
    let (client, connection) = tokio_postgres::connect(auth_db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let phc: String = client
        .query_one(
            "SELECT password_hash FROM users WHERE username = $1",
            &[&username],
        )
        .await?
        .get(0);
    let parsed = argon2::PasswordHash::new(&phc)
        .map_err(|e| anyhow::anyhow!("the stored hash is not a PHC string: {e}"))?;
    anyhow::ensure!(
        parsed.algorithm.as_str() == "argon2id",
        "the stored hash is {}, not argon2id",
        parsed.algorithm
    );
    let params = argon2::Params::try_from(&parsed)
        .map_err(|e| anyhow::anyhow!("the stored hash's parameters: {e}"))?;
    let triple = (params.m_cost(), params.t_cost(), params.p_cost());
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Ok(StoredHash {
        phc,
        argon2,
        params: triple,
    })
}

/// Access-token verification as the gateway does it (`gateway/src/token.rs`):
/// header decoded, `kid` looked up, `jsonwebtoken::decode` with ES256
/// pinned, then issuer, audience and times compared.
struct Verifier {
    kid: String,
    key: DecodingKey,
    /// The key's uncompressed SEC1 point.
    point: Vec<u8>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl Verifier {
    /// With the key of `token`'s `kid` from the auth service's JWKS, and
    /// the issuer and audience `token` carries.
    async fn new(stack: &Stack, token: &str) -> anyhow::Result<Self> {
        let jwks = stack
            .rpc
            .call::<auth::TokenKeys>(&auth::TokenKeysRequest {})
            .await
            .map_err(|e| anyhow::anyhow!("auth.v1.token_keys: {e}"))?;
        let kid = jsonwebtoken::decode_header(token)?
            .kid
            .ok_or_else(|| anyhow::anyhow!("the access token has no kid"))?;
        let jwk = jwks
            .keys
            .iter()
            .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some(&kid))
            .ok_or_else(|| anyhow::anyhow!("no key {kid} in the auth service's JWKS"))?;
        let component = |c: &str| {
            jwk.get(c)
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow::anyhow!("the JWK has no {c}"))
        };
        let key = DecodingKey::from_ec_components(component("x")?, component("y")?)?;
        let point = evidence::PublicKey::from_jwk(jwk)?
            .sec1_uncompressed()
            .to_vec();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let unverified: AccessClaims = {
            let payload = token.split('.').nth(1).unwrap_or_default();
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
            serde_json::from_slice(&bytes)?
        };
        Ok(Self {
            kid,
            key,
            point,
            validation,
            issuer: unverified.iss,
            audience: unverified.aud,
        })
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err("unexpected header".into());
        }
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.key, &self.validation)
            .map_err(|e| e.to_string())?
            .claims;
        let now = (platform::clock::now_unix_ms() / 1000) as i64;
        if claims.iss != self.issuer
            || claims.aud != self.audience
            || now >= claims.exp
            || now < claims.nbf
        {
            return Err("claims refused".into());
        }
        Ok(claims)
    }
}

/// The ES256 signature check alone, on the token's signing input, with
/// aws-lc-rs: with the public key given as bytes on each call (what
/// `jsonwebtoken` does inside `decode`) or parsed once.
struct Es256 {
    point: Vec<u8>,
    parsed: aws_lc_rs::signature::ParsedPublicKey,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl Es256 {
    fn new(verifier: &Verifier, token: &str) -> anyhow::Result<Self> {
        use base64::Engine as _;
        let (signing_input, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| anyhow::anyhow!("the access token is not a compact JWS"))?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature)?;
        let point = verifier.point.clone();
        let parsed = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        )
        .map_err(|e| anyhow::anyhow!("aws-lc-rs refused the token key: {e}"))?;
        let es256 = Self {
            point,
            parsed,
            signing_input: signing_input.as_bytes().to_vec(),
            signature,
        };
        es256
            .verify(true)
            .and(es256.verify(false))
            .map_err(|e| anyhow::anyhow!("ES256 alone: {e}"))?;
        Ok(es256)
    }

    fn verify(&self, parsed: bool) -> Result<(), String> {
        let outcome = if parsed {
            self.parsed.verify_sig(&self.signing_input, &self.signature)
        } else {
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                &self.point,
            )
            .verify(&self.signing_input, &self.signature)
        };
        outcome.map_err(|_| "the signature does not verify".to_owned())
    }
}

fn es256_call(es256: Arc<Es256>, parsed: bool) -> CallFn {
    Arc::new(move || {
        let outcome = es256.verify(parsed);
        Box::pin(async move {
            tokio::task::yield_now().await;
            outcome
        })
    })
}

/// `GET url` (with `token` as bearer if given) until the answer has been
/// read; `Ok` when its status is `want`.
fn get_call(http: reqwest::Client, url: String, token: Option<String>, want: u16) -> CallFn {
    Arc::new(move || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        Box::pin(async move {
            let mut req = http.get(&url);
            if let Some(token) = &token {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            if status.as_u16() != want {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
            Ok(())
        })
    })
}

fn verify_call(verifier: Arc<Verifier>, token: String) -> CallFn {
    Arc::new(move || {
        let outcome = verifier.verify(&token).map(drop);
        // A call that never waits would keep its worker thread from the
        // timer that closes the window: hand it back once per call.
        Box::pin(async move {
            tokio::task::yield_now().await;
            outcome
        })
    })
}

fn check_token_call(stack: &Stack, token: TokenIdentity) -> CallFn {
    let rpc = stack.rpc.clone();
    Arc::new(move || {
        let (rpc, token) = (rpc.clone(), token.clone());
        Box::pin(async move {
            let status = rpc
                .call::<auth::CheckToken>(&auth::CheckTokenRequest { token })
                .await
                .map_err(|e| e.to_string())?;
            if status.active {
                Ok(())
            } else {
                Err("the token is not active".into())
            }
        })
    })
}

fn login_call(http: reqwest::Client, url: String, password: String) -> CallFn {
    let body = serde_json::json!({ "username": USERNAME, "password": password }).to_string();
    Arc::new(move || {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        Box::pin(async move {
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            let token: auth::AccessToken = serde_json::from_slice(&body).map_err(|_| {
                format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            })?;
            if token.access_token.is_empty() {
                return Err("an empty access token".into());
            }
            Ok(())
        })
    })
}

fn argon2_call(stored: Arc<StoredHash>, password: String) -> CallFn {
    use argon2::PasswordVerifier as _;
    let password = Arc::new(password);
    Arc::new(move || {
        let (stored, password) = (stored.clone(), password.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let parsed = argon2::PasswordHash::new(&stored.phc).map_err(|e| e.to_string())?;
                stored
                    .argon2
                    .verify_password(password.as_bytes(), &parsed)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    })
}

/// The login points, with the mean time of one Argon2id verification
/// inside the auth service over each (its own histogram).
struct Logins {
    points: Vec<Point>,
    argon2_ms_in_auth: Vec<Option<f64>>,
    stored: Arc<StoredHash>,
}

/// Mean milliseconds per Argon2id verification in the auth service between
/// two scrapes of its metrics (`tallyhouse_auth_argon2_seconds`, from
/// before the blocking task is spawned until it returns).
fn argon2_ms_in_auth(before: &str, after: &str) -> Option<f64> {
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let delta = |series: &str| value(after, series) - value(before, series);
    let count = delta("tallyhouse_auth_argon2_seconds_count{operation=\"verify\"}");
    let sum = delta("tallyhouse_auth_argon2_seconds_sum{operation=\"verify\"}");
    (count > 0.0).then(|| sum * 1000.0 / count)
}

/// CPU µs per call of watched process `name` for `m`.
fn process_us(probe: &CpuProbe, m: Option<&crate::load::Measured>, name: &str) -> Option<f64> {
    let i = probe.watched().iter().position(|w| w.name == name)?;
    m?.watched_cpu_us_per_call(i)
}

fn report(
    ctx: &Context,
    probe: &CpuProbe,
    requests: &[Point],
    pieces: &[Point],
    logins: &Logins,
) -> Report {
    let mut r = Report::new(
        format!(
            "auth: GET /v1/auth/me with a valid bearer token (200) vs without one (401) (closed loop; \
             {:?} measured per variant and point, in {} alternating slices each after {:?} of warm-up)",
            ctx.shape.duration, ctx.shape.rounds, ctx.shape.warmup
        ),
        &[
            "in flight",
            "bearer req/s",
            "bearer p50 ms",
            "bearer p99 ms",
            "no token req/s",
            "no token p50 ms",
            "no token p99 ms",
            "ratio",
            "gateway µs CPU bearer",
            "gateway µs CPU no token",
        ],
    );
    let mut lowest: Option<f64> = None;
    for p in requests {
        let (b, a) = (p.get("bearer"), p.get("anonymous"));
        let ratio = p.rps_ratio("bearer", "anonymous");
        let (gb, ga) = (
            process_us(probe, b, "gateway"),
            process_us(probe, a, "gateway"),
        );
        r.row(vec![
            p.title.clone(),
            cell(b.map(|m| m.rps()), 0),
            cell(b.map(|m| m.latency_ms(0.5)), 2),
            cell(b.map(|m| m.latency_ms(0.99)), 2),
            cell(a.map(|m| m.rps()), 0),
            cell(a.map(|m| m.latency_ms(0.5)), 2),
            cell(a.map(|m| m.latency_ms(0.99)), 2),
            cell(ratio, 2),
            cell(gb, 0),
            cell(ga, 0),
        ]);
        compare::variant_figures(&mut r, probe, p);
        if let Some(ratio) = ratio {
            r.figure(
                format!("ratio_bearer_vs_anonymous_{}", p.key),
                rounded(ratio, 3),
            );
            lowest = Some(lowest.map_or(ratio, |l: f64| l.min(ratio)));
        }
        if let (Some(gb), Some(ga)) = (gb, ga) {
            r.figure(
                format!("gateway_auth_cpu_us_per_request_{}", p.key),
                rounded(gb - ga, 1),
            );
        }
    }
    r.note(
        "bearer = GET /v1/auth/me with an analyst's token until its 200 answer is read (the gateway \
         verifies the ES256 JWT and finds the token's status in its 2 s cache, asking auth.v1.check_token \
         when the cache has none); no token = the same route without Authorization, answered 401 by \
         the gateway before any of that. ratio = bearer req/s / no-token req/s.",
    );

    let mut t = Report::new(
        "",
        &[
            "in flight",
            "what",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "µs CPU each",
        ],
    );
    for p in pieces {
        for (variant, m) in &p.results {
            let cpu = if *variant != "check_token" {
                m.own_cpu_us_per_call()
            } else {
                // The bench's RPC client and the auth service.
                match (m.own_cpu_us_per_call(), process_us(probe, Some(m), "auth")) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                }
            };
            t.row(vec![
                p.title.clone(),
                (*variant).to_owned(),
                cell(Some(m.rps()), 0),
                cell(Some(m.latency_ms(0.5)), 3),
                cell(Some(m.latency_ms(0.99)), 3),
                cell(cpu, 1),
            ]);
        }
        compare::variant_figures(&mut r, probe, p);
    }
    t.note(
        "jwt_verify = the gateway's token verification in this process (header, kid, \
         jsonwebtoken::decode with ES256 on aws-lc-rs, issuer/audience/times); es256_unparsed = \
         the signature check alone as jsonwebtoken makes it (aws-lc-rs UnparsedPublicKey: the key \
         point parsed and checked on every call); es256_parsed = the same with the key parsed once \
         (aws-lc-rs ParsedPublicKey); CPU = this process. \
         check_token = auth.v1.check_token over RPC from this process (what the gateway asks once \
         per token per cache period); CPU = this process and the auth service (PostgreSQL and the \
         broker are in the process table).",
    );
    r.add_table(
        "The pieces alone: token verification and the revocation check",
        t,
    );

    let mut t = Report::new(
        "",
        &[
            "in flight",
            "logins/s",
            "login p50 ms",
            "login p99 ms",
            "Argon2id/s",
            "Argon2id p50 ms",
            "ratio",
            "auth ms CPU/login",
            "Argon2id ms in auth",
            "bench ms CPU/Argon2id",
        ],
    );
    for (p, in_auth) in logins.points.iter().zip(&logins.argon2_ms_in_auth) {
        let (l, a) = (p.get("login"), p.get("argon2"));
        let ratio = p.rps_ratio("login", "argon2");
        t.row(vec![
            p.title.clone(),
            cell(l.map(|m| m.rps()), 1),
            cell(l.map(|m| m.latency_ms(0.5)), 1),
            cell(l.map(|m| m.latency_ms(0.99)), 1),
            cell(a.map(|m| m.rps()), 1),
            cell(a.map(|m| m.latency_ms(0.5)), 1),
            cell(ratio, 2),
            cell(process_us(probe, l, "auth").map(|u| u / 1000.0), 1),
            cell(*in_auth, 1),
            cell(
                a.and_then(|m| m.own_cpu_us_per_call()).map(|u| u / 1000.0),
                1,
            ),
        ]);
        compare::variant_figures(&mut r, probe, p);
        if let Some(ms) = in_auth {
            r.figure(format!("argon2_ms_in_auth_{}", p.key), rounded(*ms, 2));
        }
        if let Some(ratio) = ratio {
            r.figure(
                format!("ratio_login_vs_argon2_{}", p.key),
                rounded(ratio, 3),
            );
        }
    }
    let (m, t_cost, p_cost) = logins.stored.params;
    t.note(format!(
        "login = POST /v1/auth/login with the right password until the token is read (gateway → \
         auth: throttle check, user row, Argon2id verify on a hashing slot, token signing, audit). \
         Argon2id = verifying the same password against the same stored hash in this process, on \
         tokio's blocking pool (one Argon2id computation, m = {m} KiB, t = {t_cost}, p = {p_cost}, \
         as stored by the auth service). ratio = logins/s / Argon2id/s. Argon2id ms in auth = \
         the service's own tallyhouse_auth_argon2_seconds{{operation=\"verify\"}} over the point \
         (mean wall time per verification, warm-ups included)."
    ));
    r.add_table("Logins vs Argon2id alone", t);
    r.figure("argon2_m_kib", m);
    r.figure("argon2_t", t_cost);
    r.figure("argon2_p", p_cost);

    compare::process_table(
        &mut r,
        probe,
        &requests.iter().chain(&logins.points).collect::<Vec<_>>(),
        "postgres = the postmaster and all its processes; broker = the RabbitMQ node on 5672.",
    );
    if let Some(lowest) = lowest {
        let meets = lowest >= TARGET_AUTH_VS_ANONYMOUS;
        r.note(format!(
            "target: authenticated ≥ {TARGET_AUTH_VS_ANONYMOUS} × unauthenticated requests/s on the same route at every point: {} (lowest {lowest:.2})",
            if meets { "met" } else { "NOT met" }
        ));
        r.figure("min_ratio_bearer_vs_anonymous", rounded(lowest, 3));
        r.figure("target_bearer_vs_anonymous", TARGET_AUTH_VS_ANONYMOUS);
        r.figure("meets_target", meets);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_time_in_auth_is_the_mean_between_two_scrapes() {
        let before = "# TYPE tallyhouse_auth_argon2_seconds histogram\n\
            tallyhouse_auth_argon2_seconds_sum{operation=\"verify\"} 0.5\n\
            tallyhouse_auth_argon2_seconds_count{operation=\"verify\"} 10\n";
        let after = "tallyhouse_auth_argon2_seconds_sum{operation=\"verify\"} 1.7\n\
            tallyhouse_auth_argon2_seconds_count{operation=\"verify\"} 70\n\
            tallyhouse_auth_argon2_seconds_count{operation=\"hash\"} 3\n";
        let ms = argon2_ms_in_auth(before, after).unwrap();
        assert!((ms - 20.0).abs() < 1e-9, "{ms}");
        assert_eq!(argon2_ms_in_auth(after, after), None);
    }
}
