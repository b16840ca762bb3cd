//! One canary round, step by step, through the public gateway only: read
//! the canary's credentials (Vault), sign and submit a fresh package, fetch
//! the platform's receipt keys, verify the receipt against them and the
//! bytes sent, log in as the canary's back-office user, find the package in
//! the list, download its original bytes (same SHA-256, the canary's own key
//! id and a signature that verifies), read its record back from the series,
//! and log out. The first step that fails ends the round; a round that
//! logged in logs out even then (best effort, not a step).
//!
//! The checks on what the platform answers are pure functions, tested
//! below; the requests go through the CLI's gateway client
//! ([`crate::gateway::Gateway`]) and receipt checks
//! ([`crate::commands::receipt::package_mismatch`]).

use super::{Step, StepError};
use crate::commands::receipt::package_mismatch;
use crate::gateway::{AttemptError, Gateway, problem};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use evidence::{ReceiptClaims, SigningKey, decode_signature_header, sha256, sha256_hex};
use reqwest::Method;
use rpc_contracts::SubmitterId;
use rpc_contracts::query::{PackagePage, PackageSummary, SeriesPoint};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::future::Future;
use time::format_description::well_known::Rfc3339;
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::time::Instant;
use uuid::Uuid;

/// The series every canary record is in.
pub const SERIES: &str = "canary.round";

/// What the canary signs and logs in with (from Vault, read every round).
pub struct Credentials {
    /// The canary submitter.
    pub submitter_id: SubmitterId,
    /// Its signing key; the key id is derived from it.
    pub key: SigningKey,
    /// The key's id (RFC 7638 thumbprint).
    pub key_id: String,
    /// The canary's back-office user.
    pub username: String,
    /// Its password.
    pub password: SecretString,
}

/// The package of one round and what its record must read back as.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Its `package_id`.
    pub package_id: Uuid,
    /// The exact bytes signed and sent.
    pub bytes: Vec<u8>,
    /// The record's time: the round's start, to the millisecond.
    pub ts: OffsetDateTime,
    /// The record's value: `ts` in Unix seconds (with its milliseconds), so
    /// a reader can tell it from any other round's.
    pub value: f64,
}

impl Probe {
    /// A package from `submitter` for `audience`, created `now`, with one
    /// record of [`SERIES`] at `now` (to the millisecond) whose value is
    /// that time in Unix seconds.
    pub fn new(
        submitter: &SubmitterId,
        audience: &str,
        package_id: Uuid,
        now: OffsetDateTime,
    ) -> Self {
        let now = now.to_offset(time::UtcOffset::UTC);
        let ts = now
            .replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
            .unwrap_or(now);
        // The double nearest to the decimal `<seconds>.<millis>`, as a JSON
        // reader (and PostgreSQL) parses it.
        let value = format!("{}.{:03}", ts.unix_timestamp(), ts.millisecond())
            .parse::<f64>()
            .expect("a decimal number");
        let rfc = |t: OffsetDateTime| t.format(&Rfc3339).expect("a UTC time formats");
        let package = serde_json::json!({
            "schema": "tallyhouse.package.v1",
            "package_id": package_id,
            "submitter_id": submitter.to_string(),
            "audience": audience,
            "created_at": rfc(now),
            "records": [{
                "series": SERIES,
                "ts": rfc(ts),
                "value": value,
                "labels": {"probe": "canary"},
            }],
        });
        Self {
            package_id,
            bytes: serde_json::to_vec(&package).expect("a JSON value serialises"),
            ts,
            value,
        }
    }

    /// The query window of its record, `[ts, ts + 1 ms)`, and the start of
    /// the 1 s bucket (aligned on the epoch) that holds it.
    pub fn window(&self) -> (OffsetDateTime, OffsetDateTime, OffsetDateTime) {
        let bucket = self.ts.replace_nanosecond(0).unwrap_or(self.ts);
        (self.ts, self.ts + TimeDuration::MILLISECOND, bucket)
    }
}

/// One step as it went.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Which.
    pub step: Step,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took.
    pub seconds: f64,
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step succeeded.
    Success,
    /// A step failed (`failed_step`).
    Failure,
}

/// What one round did: the result of `tallyhouse canary --once`.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Success or failure.
    pub outcome: Outcome,
    /// When the round started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// How long the whole round took.
    pub seconds: f64,
    /// The canary submitter, once read from Vault.
    pub submitter_id: Option<String>,
    /// The package of this round, once made.
    pub package_id: Option<Uuid>,
    /// The step that failed.
    pub failed_step: Option<Step>,
    /// Its stable error code (the gateway's problem `code`, or the
    /// canary's own, e.g. `receipt_mismatch`).
    pub code: Option<String>,
    /// What went wrong, for people.
    pub detail: Option<String>,
    /// Every step attempted, in order.
    pub steps: Vec<StepReport>,
}

impl RoundReport {
    /// Whether the round succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Success
    }
}

/// Runs the steps of a round, timing each.
pub struct Steps {
    done: Vec<StepReport>,
}

/// The step that failed, and why.
pub struct Failure {
    step: Step,
    error: StepError,
}

impl Steps {
    fn new() -> Self {
        Self { done: Vec::new() }
    }

    /// Runs `step`, records how it went.
    pub async fn run<T>(
        &mut self,
        step: Step,
        work: impl Future<Output = Result<T, StepError>>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let result = work.await;
        self.done.push(StepReport {
            step,
            ok: result.is_ok(),
            seconds: started.elapsed().as_secs_f64(),
        });
        result.map_err(|error| Failure { step, error })
    }
}

/// Where a round gets its credentials: read anew every round, so that a
/// rotated password or key is picked up and an unreadable Vault is a
/// failed round rather than a dead canary.
pub trait CredentialSource {
    /// The canary's credentials, or why they cannot be had.
    fn credentials(&mut self) -> impl Future<Output = Result<Credentials, StepError>>;
}

/// What is known as the round goes, for the report.
#[derive(Default)]
struct Known {
    submitter_id: Option<String>,
    package_id: Option<Uuid>,
}

/// One round against `gateway` for `audience`, started `started_at`.
pub async fn run(
    gateway: &Gateway,
    audience: &str,
    source: &mut impl CredentialSource,
    started_at: OffsetDateTime,
) -> RoundReport {
    let clock = Instant::now();
    let mut steps = Steps::new();
    let mut known = Known::default();
    let outcome = steps_of(
        gateway, audience, source, started_at, &mut steps, &mut known,
    )
    .await;
    let (outcome, failed_step, code, detail) = match outcome {
        Ok(()) => (Outcome::Success, None, None, None),
        Err(Failure { step, error }) => (
            Outcome::Failure,
            Some(step),
            Some(error.code),
            Some(error.detail),
        ),
    };
    RoundReport {
        outcome,
        started_at,
        seconds: clock.elapsed().as_secs_f64(),
        submitter_id: known.submitter_id,
        package_id: known.package_id,
        failed_step,
        code,
        detail,
        steps: steps.done,
    }
}

async fn steps_of(
    gw: &Gateway,
    audience: &str,
    source: &mut impl CredentialSource,
    started_at: OffsetDateTime,
    steps: &mut Steps,
    known: &mut Known,
) -> Result<(), Failure> {
    let creds = steps.run(Step::Vault, source.credentials()).await?;
    known.submitter_id = Some(creds.submitter_id.to_string());
    let probe = Probe::new(&creds.submitter_id, audience, Uuid::new_v4(), started_at);
    known.package_id = Some(probe.package_id);

    let receipt = steps.run(Step::Submit, submit(gw, &creds, &probe)).await?;
    let keys = steps
        .run(Step::Keys, async {
            gw.receipt_keys().await.map_err(attempt_error)
        })
        .await?;
    let claims = steps
        .run(Step::Receipt, async {
            check_receipt(&receipt, &keys, &creds.submitter_id, &probe)
        })
        .await?;
    let token = steps.run(Step::Login, login(gw, &creds)).await?;
    let read_back = async {
        steps
            .run(
                Step::List,
                list(gw, &token, &creds.submitter_id, &probe, &claims),
            )
            .await?;
        steps
            .run(Step::Raw, raw(gw, &token, &creds, &probe))
            .await?;
        steps
            .run(
                Step::Series,
                series(gw, &token, &creds.submitter_id, &probe),
            )
            .await
    }
    .await;
    if let Err(failure) = read_back {
        // Best effort: a failed round does not leave its token valid.
        let _ = logout(gw, &token).await;
        return Err(failure);
    }
    steps.run(Step::Logout, logout(gw, &token)).await
}

/// A failed attempt at the gateway as a step error: the problem's own code,
/// or `unreachable`.
fn attempt_error(e: AttemptError) -> StepError {
    match e {
        AttemptError::Transport(why) => StepError::new("unreachable", why),
        AttemptError::Problem(p) => StepError::new(p.code.clone(), p.to_string()),
    }
}

/// Sends `req`: a 2xx answer, or the problem (or the transport failure).
async fn send(gw: &Gateway, req: reqwest::RequestBuilder) -> Result<reqwest::Response, StepError> {
    let resp = req
        .send()
        .await
        .map_err(|e| StepError::new("unreachable", gw.describe_error(&e)))?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(attempt_error(AttemptError::Problem(problem(resp).await)))
    }
}

async fn json<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    resp: reqwest::Response,
) -> Result<T, StepError> {
    resp.json()
        .await
        .map_err(|e| StepError::new("unreadable_answer", gw.describe_error(&e)))
}

async fn submit(gw: &Gateway, creds: &Credentials, probe: &Probe) -> Result<String, StepError> {
    let signature = STANDARD.encode(creds.key.sign(&probe.bytes));
    let accepted = gw
        .submit(&probe.bytes, &creds.key_id, &signature)
        .await
        .map_err(attempt_error)?;
    if !accepted.created {
        // A fresh package id cannot have been stored before.
        return Err(StepError::new(
            "not_created",
            format!(
                "the gateway answered 200 (stored before) for the new package {}",
                probe.package_id
            ),
        ));
    }
    Ok(accepted.receipt)
}

/// The receipt verifies against the platform's keys and attests exactly
/// the package sent.
pub fn check_receipt(
    receipt: &str,
    keys: &[serde_json::Value],
    submitter: &SubmitterId,
    probe: &Probe,
) -> Result<ReceiptClaims, StepError> {
    let claims = evidence::verify_receipt(receipt, keys).map_err(|e| {
        StepError::new(
            "receipt_invalid",
            format!("the receipt does not verify: {e}"),
        )
    })?;
    let mut wrong = Vec::new();
    if claims.package_id != probe.package_id {
        wrong.push(format!(
            "package_id {} (sent {})",
            claims.package_id, probe.package_id
        ));
    }
    if &claims.submitter_id != submitter {
        wrong.push(format!(
            "submitter_id {} (sent {submitter})",
            claims.submitter_id
        ));
    }
    if let Some(why) = package_mismatch(&claims, &probe.bytes) {
        wrong.push(why);
    }
    if claims.records != 1 {
        wrong.push(format!("{} records (sent 1)", claims.records));
    }
    if wrong.is_empty() {
        Ok(claims)
    } else {
        Err(StepError::new(
            "receipt_mismatch",
            format!(
                "the receipt is not for the package sent: {}",
                wrong.join("; ")
            ),
        ))
    }
}

async fn login(gw: &Gateway, creds: &Credentials) -> Result<SecretString, StepError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: SecretString,
    }
    let resp = send(
        gw,
        gw.request(Method::POST, "/v1/auth/login")
            .json(&serde_json::json!({
                "username": creds.username,
                "password": creds.password.expose_secret(),
            })),
    )
    .await?;
    Ok(json::<Answer>(gw, resp).await?.access_token)
}

async fn logout(gw: &Gateway, token: &SecretString) -> Result<(), StepError> {
    send(
        gw,
        gw.request(Method::POST, "/v1/auth/logout")
            .bearer_auth(token.expose_secret()),
    )
    .await
    .map(|_| ())
}

async fn list(
    gw: &Gateway,
    token: &SecretString,
    submitter: &SubmitterId,
    probe: &Probe,
    claims: &ReceiptClaims,
) -> Result<(), StepError> {
    // Newest received first: the round's package is at the top unless
    // another round of the same submitter came in the same minute.
    let from = (claims.received_at - TimeDuration::MINUTE)
        .format(&Rfc3339)
        .unwrap_or_default();
    let resp = send(
        gw,
        gw.request(Method::GET, "/v1/packages")
            .query(&[
                ("submitter", submitter.to_string()),
                ("from", from),
                ("limit", "100".to_owned()),
            ])
            .bearer_auth(token.expose_secret()),
    )
    .await?;
    let page: PackagePage = json(gw, resp).await?;
    check_listed(&page.packages, probe)
}

/// The package is listed with the SHA-256, size and record count sent.
pub fn check_listed(packages: &[PackageSummary], probe: &Probe) -> Result<(), StepError> {
    let Some(listed) = packages.iter().find(|p| p.package_id == probe.package_id) else {
        return Err(StepError::new(
            "package_not_listed",
            format!(
                "package {} is not among the {} listed since its receipt",
                probe.package_id,
                packages.len()
            ),
        ));
    };
    let (sha, size) = (sha256_hex(&probe.bytes), probe.bytes.len() as u64);
    if listed.sha256 != sha || listed.size != size || listed.records != 1 {
        return Err(StepError::new(
            "listing_mismatch",
            format!(
                "listed with SHA-256 {}, {} bytes, {} records; sent {sha}, {size} bytes, 1 record",
                listed.sha256, listed.size, listed.records
            ),
        ));
    }
    Ok(())
}

async fn raw(
    gw: &Gateway,
    token: &SecretString,
    creds: &Credentials,
    probe: &Probe,
) -> Result<(), StepError> {
    let path = format!(
        "/v1/packages/{}/{}/raw",
        creds.submitter_id, probe.package_id
    );
    let resp = send(
        gw,
        gw.request(Method::GET, &path)
            .bearer_auth(token.expose_secret()),
    )
    .await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let headers = RawHeaders {
        key_id: header("tallyhouse-key-id"),
        signature: header("tallyhouse-signature"),
        digest: header("repr-digest"),
    };
    let bytes = resp.bytes().await.map_err(|e| {
        StepError::new(
            "unreachable",
            format!("download cut: {}", gw.describe_error(&e)),
        )
    })?;
    check_raw(&bytes, &headers, creds, probe)
}

/// The evidence headers of a raw download.
#[derive(Debug, Clone, Default)]
pub struct RawHeaders {
    /// `Tallyhouse-Key-Id`.
    pub key_id: String,
    /// `Tallyhouse-Signature`.
    pub signature: String,
    /// `Repr-Digest`.
    pub digest: String,
}

/// The downloaded bytes are the ones sent (same SHA-256), as the gateway's
/// `Repr-Digest` says, kept with the canary's key id and a signature that
/// verifies with its public key.
pub fn check_raw(
    bytes: &[u8],
    headers: &RawHeaders,
    creds: &Credentials,
    probe: &Probe,
) -> Result<(), StepError> {
    let got = sha256_hex(bytes);
    let sent = sha256_hex(&probe.bytes);
    if got != sent {
        return Err(StepError::new(
            "raw_mismatch",
            format!(
                "downloaded {} bytes with SHA-256 {got}; sent {} bytes with SHA-256 {sent}",
                bytes.len(),
                probe.bytes.len()
            ),
        ));
    }
    let digest = format!("sha-256=:{}:", STANDARD.encode(sha256(bytes)));
    if headers.digest != digest {
        return Err(StepError::new(
            "digest_mismatch",
            format!(
                "Repr-Digest is {:?}, the bytes' is {digest:?}",
                headers.digest
            ),
        ));
    }
    if headers.key_id != creds.key_id {
        return Err(StepError::new(
            "signature_mismatch",
            format!(
                "kept with key id {:?}, the canary signed with {}",
                headers.key_id, creds.key_id
            ),
        ));
    }
    let verified = decode_signature_header(&headers.signature)
        .and_then(|der| creds.key.public_key().verify(bytes, &der));
    verified.map_err(|e| {
        StepError::new(
            "signature_mismatch",
            format!("the kept signature does not verify with the canary's key: {e}"),
        )
    })
}

async fn series(
    gw: &Gateway,
    token: &SecretString,
    submitter: &SubmitterId,
    probe: &Probe,
) -> Result<(), StepError> {
    #[derive(Deserialize)]
    struct Answer {
        points: Vec<SeriesPoint>,
    }
    let (from, to, _) = probe.window();
    let rfc = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let resp = send(
        gw,
        gw.request(Method::GET, "/v1/series")
            .query(&[
                ("submitter", submitter.to_string()),
                ("series", SERIES.to_owned()),
                ("from", rfc(from)),
                ("to", rfc(to)),
                ("bucket", "1s".to_owned()),
                ("agg", "sum".to_owned()),
                ("label.probe", "canary".to_owned()),
            ])
            .header("accept", "application/json")
            .bearer_auth(token.expose_secret()),
    )
    .await?;
    let answer: Answer = json(gw, resp).await?;
    check_series(&answer.points, probe)
}

/// The series holds exactly the round's record: one bucket at its time,
/// one record, its value.
pub fn check_series(points: &[SeriesPoint], probe: &Probe) -> Result<(), StepError> {
    let (_, _, bucket) = probe.window();
    let Some(point) = points.iter().find(|p| p.bucket == bucket) else {
        return Err(StepError::new(
            "series_missing",
            format!(
                "no {SERIES} record at {} ({} buckets answered)",
                probe.ts.format(&Rfc3339).unwrap_or_default(),
                points.len()
            ),
        ));
    };
    if point.count != 1 || point.value != probe.value {
        return Err(StepError::new(
            "series_mismatch",
            format!(
                "{} holds {} record(s) summing to {}; the round wrote 1 record of {}",
                probe.ts.format(&Rfc3339).unwrap_or_default(),
                point.count,
                point.value,
                probe.value
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn creds() -> Credentials {
        let key = SigningKey::generate();
        Credentials {
            submitter_id: SubmitterId::parse("tallyhouse-canary").unwrap(),
            key_id: key.public_key().key_id().to_string(),
            key,
            username: "tallyhouse-canary".into(),
            password: SecretString::from("not a real one".to_owned()),
        }
    }

    fn probe() -> Probe {
        Probe::new(
            &SubmitterId::parse("tallyhouse-canary").unwrap(),
            "local",
            Uuid::new_v4(),
            datetime!(2026-03-01 12:00:05.678_9 UTC),
        )
    }

    #[test]
    fn the_probe_is_a_valid_package_with_one_checkable_record() {
        let p = probe();
        let package = evidence::parse_package(&p.bytes).expect("a valid package");
        package.check_audience("local").unwrap();
        assert_eq!(package.package_id, p.package_id);
        assert_eq!(package.records.len(), 1);
        let record = &package.records[0];
        assert_eq!(record.series, SERIES);
        assert_eq!(p.ts, datetime!(2026-03-01 12:00:05.678 UTC), "milliseconds");
        assert_eq!(record.ts, p.ts);
        assert_eq!(record.value, p.value);
        assert_eq!(p.value, 1_772_366_405.678);
        assert_eq!(
            p.window(),
            (
                p.ts,
                datetime!(2026-03-01 12:00:05.679 UTC),
                datetime!(2026-03-01 12:00:05 UTC)
            )
        );
        let text = String::from_utf8(p.bytes.clone()).unwrap();
        assert!(
            text.contains("\"created_at\":\"2026-03-01T12:00:05.6789Z\""),
            "{text}"
        );
    }

    #[test]
    fn a_receipt_must_verify_and_attest_the_bytes_sent() {
        let p = probe();
        let submitter = SubmitterId::parse("tallyhouse-canary").unwrap();
        let signer = evidence::ReceiptSigner::generate();
        let keys = vec![signer.jwk()];
        let claims = |bytes: &[u8], package_id: Uuid| ReceiptClaims {
            package_id,
            submitter_id: submitter.clone(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            records: 1,
            received_at: datetime!(2026-03-01 12:00:06 UTC),
        };
        let good = signer.sign(&claims(&p.bytes, p.package_id)).unwrap();
        assert!(check_receipt(&good, &keys, &submitter, &p).is_ok());

        let other_bytes = signer.sign(&claims(b"{}", p.package_id)).unwrap();
        let e = check_receipt(&other_bytes, &keys, &submitter, &p).unwrap_err();
        assert_eq!(e.code, "receipt_mismatch", "{}", e.detail);
        let other_id = signer.sign(&claims(&p.bytes, Uuid::new_v4())).unwrap();
        assert_eq!(
            check_receipt(&other_id, &keys, &submitter, &p)
                .unwrap_err()
                .code,
            "receipt_mismatch"
        );
        let stranger = evidence::ReceiptSigner::generate();
        let forged = stranger.sign(&claims(&p.bytes, p.package_id)).unwrap();
        assert_eq!(
            check_receipt(&forged, &keys, &submitter, &p)
                .unwrap_err()
                .code,
            "receipt_invalid"
        );
    }

    fn summary(p: &Probe, sha256: String, size: u64) -> PackageSummary {
        PackageSummary {
            submitter_id: SubmitterId::parse("tallyhouse-canary").unwrap(),
            package_id: p.package_id,
            sha256,
            size,
            records: 1,
            created_at: p.ts,
            received_at: p.ts,
        }
    }

    #[test]
    fn the_package_must_be_listed_as_sent() {
        let p = probe();
        let good = summary(&p, sha256_hex(&p.bytes), p.bytes.len() as u64);
        assert!(check_listed(std::slice::from_ref(&good), &p).is_ok());
        assert_eq!(
            check_listed(&[], &p).unwrap_err().code,
            "package_not_listed"
        );
        let wrong = summary(&p, sha256_hex(b"x"), p.bytes.len() as u64);
        assert_eq!(
            check_listed(&[wrong], &p).unwrap_err().code,
            "listing_mismatch"
        );
    }

    #[test]
    fn raw_bytes_must_be_the_ones_sent_with_the_canarys_signature() {
        let c = creds();
        let p = probe();
        let headers = RawHeaders {
            key_id: c.key_id.clone(),
            signature: STANDARD.encode(c.key.sign(&p.bytes)),
            digest: format!("sha-256=:{}:", STANDARD.encode(sha256(&p.bytes))),
        };
        assert!(check_raw(&p.bytes, &headers, &c, &p).is_ok());
        let cases: [(&str, Vec<u8>, RawHeaders); 4] = [
            ("raw_mismatch", b"{}".to_vec(), headers.clone()),
            (
                "digest_mismatch",
                p.bytes.clone(),
                RawHeaders {
                    digest: "sha-256=:AAAA:".into(),
                    ..headers.clone()
                },
            ),
            (
                "signature_mismatch",
                p.bytes.clone(),
                RawHeaders {
                    key_id: "another".into(),
                    ..headers.clone()
                },
            ),
            (
                "signature_mismatch",
                p.bytes.clone(),
                RawHeaders {
                    signature: STANDARD.encode(SigningKey::generate().sign(&p.bytes)),
                    ..headers.clone()
                },
            ),
        ];
        for (code, bytes, h) in cases {
            assert_eq!(check_raw(&bytes, &h, &c, &p).unwrap_err().code, code);
        }
    }

    #[test]
    fn the_series_must_hold_exactly_the_rounds_record() {
        let p = probe();
        let point = |bucket, value, count| SeriesPoint {
            bucket,
            value,
            count,
        };
        let (_, _, second) = p.window();
        assert!(check_series(&[point(second, p.value, 1)], &p).is_ok());
        for (points, code, why) in [
            (vec![], "series_missing", "nothing answered"),
            (
                vec![point(second - TimeDuration::SECOND, p.value, 1)],
                "series_missing",
                "another bucket",
            ),
            (
                vec![point(second, p.value * 2.0, 2)],
                "series_mismatch",
                "two records in the millisecond",
            ),
            (
                vec![point(second, p.value + 1.0, 1)],
                "series_mismatch",
                "another value",
            ),
        ] {
            assert_eq!(check_series(&points, &p).unwrap_err().code, code, "{why}");
        }
    }
}
