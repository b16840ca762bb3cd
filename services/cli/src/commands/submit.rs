//! `tallyhouse submit`: signs package files and posts them to the gateway,
//! a few at a time, retrying what is worth retrying with the same bytes and
//! signature (the platform is idempotent on the package id and the bytes'
//! SHA-256), checks every receipt against the platform's keys and the bytes
//! sent, and saves it beside the package as `FILE.receipt`.

use crate::commands::Context;
use crate::commands::receipt::package_mismatch;
use crate::error::CliError;
use crate::files::{PUBLIC_MODE, read_signing_key, replace, with_suffix};
use crate::gateway::{AttemptError, Gateway, GatewayArgs};
use crate::output::time;
use crate::progress::Progress;
use crate::retry::{NextTry, RetryPolicy, Retryable as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use evidence::{ReceiptClaims, ReceiptError, SigningKey, verify_receipt};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The suffix of a saved receipt: `FILE.receipt`.
pub const RECEIPT_SUFFIX: &str = ".receipt";
/// How a package that kept getting a server error through every retry is
/// reported: the platform failed, not the package, and sending the same
/// bytes again is safe (it deduplicates them).
pub const SERVER_ERROR: &str = "server error, safe to resend";

/// What to submit, where, and how hard to try.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The submitter's private key PEM (PKCS#8 or SEC1, unencrypted); its
    /// public key must be registered for the packages' submitter.
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// How to reach the gateway.
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Retries per package after a failure worth retrying (no answer, a
    /// timeout, 408, 429, or a server error: 500, 502, 503, 504...), with
    /// the same bytes, exponential backoff and jitter.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Bound on each request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout_secs: u64,
    /// Packages in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Also send packages that already have a receipt (the platform
    /// answers 200 with the original receipt, which is saved again).
    #[arg(long)]
    pub resubmit: bool,
    /// Package files, or folders whose `*.json` files are packages.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// What became of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored now (201); the receipt was saved.
    Stored,
    /// Stored before with these bytes (200); the original receipt was saved.
    AlreadyStored,
    /// It has a receipt already and --resubmit was not given.
    Skipped,
    /// The gateway refused it for good: a 4xx that is the caller's to fix
    /// (or a 501/505, which no resend changes).
    Rejected,
    /// Every attempt failed with something worth retrying (no answer, a
    /// server error, 408, 429): not stored, safe to send again.
    Failed,
    /// The gateway's receipt does not verify, or is not for these bytes;
    /// it was not saved.
    InvalidReceipt,
    /// The file could not be read, or the receipt not written.
    Error,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyStored => "already stored",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::InvalidReceipt => "bad receipt",
            Self::Error => "error",
        }
    }
}

/// One line of the report (one JSON object with --json).
#[derive(Debug, Serialize)]
pub struct PackageReport {
    /// The package file.
    pub file: PathBuf,
    /// What became of it.
    pub status: Status,
    /// Its `package_id`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package_id: Option<String>,
    /// Where its receipt is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_file: Option<PathBuf>,
    /// Records, from the receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// When the platform received it, from the receipt (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// The HTTP status of the last answer, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The problem `code` of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The gateway's trace id of the last answer, to quote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Requests sent for it.
    pub attempts: u32,
}

impl PackageReport {
    fn new(file: PathBuf, status: Status) -> Self {
        Self {
            file,
            status,
            package_id: None,
            receipt_file: None,
            records: None,
            received_at: None,
            http_status: None,
            code: None,
            detail: None,
            trace_id: None,
            attempts: 0,
        }
    }

    /// Records the last failure of a package the gateway did not accept
    /// after `attempts`: failed if it was worth retrying (a server error
    /// says it is one, and that a resend is safe), rejected if not.
    fn not_accepted(&mut self, error: AttemptError, attempts: u32) {
        self.attempts = attempts;
        self.status = if error.retryable() {
            Status::Failed
        } else {
            Status::Rejected
        };
        match error {
            AttemptError::Transport(why) => self.detail = Some(why),
            AttemptError::Problem(p) => {
                self.detail = Some(if self.status == Status::Failed && p.server_error() {
                    format!("{SERVER_ERROR}: {}", p.detail)
                } else {
                    p.detail
                });
                self.http_status = Some(p.status);
                self.code = Some(p.code);
                self.trace_id = p.trace_id;
            }
        }
    }

    fn human(&self) -> String {
        let extra = match self.status {
            Status::Stored | Status::AlreadyStored => format!(
                "package {}, {} records, receipt {}",
                self.package_id.as_deref().unwrap_or("-"),
                self.records.unwrap_or(0),
                self.receipt_file
                    .as_deref()
                    .map_or_else(|| "-".into(), |p| p.display().to_string())
            ),
            Status::Skipped => format!(
                "has {} (--resubmit sends it again)",
                self.receipt_file
                    .as_deref()
                    .map_or_else(|| "a receipt".into(), |p| p.display().to_string())
            ),
            Status::Rejected => {
                let mut s = format!(
                    "{}: {}",
                    self.code.as_deref().unwrap_or("-"),
                    self.detail.as_deref().unwrap_or("-")
                );
                if let Some(status) = self.http_status {
                    s.push_str(&format!(" (HTTP {status}"));
                    if let Some(trace) = &self.trace_id {
                        s.push_str(&format!(", trace {trace}"));
                    }
                    s.push(')');
                }
                s
            }
            Status::Failed => {
                let mut s = format!(
                    "after {} attempt{}: {}",
                    self.attempts,
                    if self.attempts == 1 { "" } else { "s" },
                    self.detail.as_deref().unwrap_or("-")
                );
                // The last refusal, if it was one (not a receipt that
                // could not be checked after a 200 or 201).
                if let (Some(status), Some(code)) = (self.http_status, &self.code) {
                    s.push_str(&format!(" ({code}, HTTP {status}"));
                    if let Some(trace) = &self.trace_id {
                        s.push_str(&format!(", trace {trace}"));
                    }
                    s.push(')');
                }
                s
            }
            Status::InvalidReceipt | Status::Error => self.detail.clone().unwrap_or_default(),
        };
        format!(
            "{:<14}  {}  {extra}",
            self.status.label(),
            self.file.display()
        )
    }
}

/// Counts by outcome.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Stored now.
    pub stored: u64,
    /// Stored before (same bytes).
    pub already_stored: u64,
    /// Not sent: a receipt exists.
    pub skipped: u64,
    /// Refused for good.
    pub rejected: u64,
    /// Refused, by problem `code`.
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Failed after every retry.
    pub failed: u64,
    /// Answered with a receipt that does not verify or match.
    pub invalid_receipt: u64,
    /// Local errors (unreadable package, unwritable receipt).
    pub errors: u64,
}

impl Summary {
    fn count(&mut self, report: &PackageReport) {
        match report.status {
            Status::Stored => self.stored += 1,
            Status::AlreadyStored => self.already_stored += 1,
            Status::Skipped => self.skipped += 1,
            Status::Rejected => {
                self.rejected += 1;
                let code = report.code.clone().unwrap_or_else(|| "unknown".into());
                *self.rejected_by_code.entry(code).or_default() += 1;
            }
            Status::Failed => self.failed += 1,
            Status::InvalidReceipt => self.invalid_receipt += 1,
            Status::Error => self.errors += 1,
        }
    }

    fn human(&self) -> String {
        let mut rejected = format!("{} rejected", self.rejected);
        if !self.rejected_by_code.is_empty() {
            let codes: Vec<String> = self
                .rejected_by_code
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect();
            rejected.push_str(&format!(" ({})", codes.join(", ")));
        }
        let mut parts = vec![
            format!("{} stored", self.stored),
            format!("{} already stored", self.already_stored),
            format!("{} skipped", self.skipped),
            rejected,
            format!("{} failed after retries", self.failed),
        ];
        if self.invalid_receipt > 0 {
            parts.push(format!("{} with a bad receipt", self.invalid_receipt));
        }
        if self.errors > 0 {
            parts.push(format!("{} local errors", self.errors));
        }
        parts.join(", ")
    }

    /// The command's failure, if any package was not stored: rejections
    /// first (exit 1), then bad receipts (5), local errors (3), and
    /// failures after retries (4: no answer or a server error to the end;
    /// safe to send again).
    fn outcome(&self) -> Result<(), CliError> {
        let message = || {
            let parts: Vec<String> = [
                (self.rejected, "rejected"),
                (self.invalid_receipt, "answered with a bad receipt"),
                (self.errors, "with a local error"),
                (self.failed, "failed after retries (safe to resend)"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            format!("not every package was stored: {}", parts.join(", "))
        };
        if self.rejected > 0 {
            Err(CliError::Rejected(message()))
        } else if self.invalid_receipt > 0 {
            Err(CliError::Verification(message()))
        } else if self.errors > 0 {
            Err(CliError::Input(message()))
        } else if self.failed > 0 {
            Err(CliError::Connect(message()))
        } else {
            Ok(())
        }
    }
}

/// What every package's task shares.
struct Batch<'a> {
    gateway: Gateway,
    key: SigningKey,
    key_id: String,
    policy: RetryPolicy,
    keys: ReceiptKeys,
    progress: &'a Progress,
}

/// Runs `submit`.
pub async fn run(args: SubmitArgs, ctx: &Context) -> Result<(), CliError> {
    let key = read_signing_key(&args.key)?;
    let gateway = Gateway::new(
        &args.gateway.url,
        Duration::from_secs(args.timeout_secs.max(1)),
    )?;
    let files = package_files(&args.paths)?;
    if files.is_empty() {
        eprintln!("tallyhouse: no package files (*.json) found in the paths given");
    }
    let (to_send, to_skip): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|f| args.resubmit || !with_suffix(f, RECEIPT_SUFFIX).exists());

    let mut summary = Summary::default();
    let progress = Progress::new(to_send.len() as u64);
    let report = |r: &PackageReport, summary: &mut Summary| {
        summary.count(r);
        if ctx.output.json {
            match serde_json::to_string(r) {
                Ok(line) => progress.out(&line),
                Err(e) => progress.err(&format!("tallyhouse: cannot encode a report: {e}")),
            }
        } else {
            progress.out(&r.human());
        }
    };
    for file in to_skip {
        let mut r = PackageReport::new(file.clone(), Status::Skipped);
        r.receipt_file = Some(with_suffix(&file, RECEIPT_SUFFIX));
        report(&r, &mut summary);
    }

    let policy = RetryPolicy::new(args.retries);
    let batch = Batch {
        keys: ReceiptKeys::new(gateway.clone(), policy),
        key_id: key.public_key().key_id().to_string(),
        gateway,
        key,
        policy,
        progress: &progress,
    };
    let mut results = futures_util::stream::iter(to_send)
        .map(|file| batch.submit(file))
        .buffer_unordered(usize::from(args.concurrency));
    while let Some(r) = results.next().await {
        progress.inc();
        report(&r, &mut summary);
    }
    drop(results);
    progress.finish();

    if ctx.output.json {
        #[derive(Serialize)]
        struct Last<'a> {
            summary: &'a Summary,
        }
        ctx.output.json_line(&Last { summary: &summary });
    } else {
        ctx.output.text(&summary.human());
    }
    summary.outcome()
}

impl Batch<'_> {
    /// Sends one package until it is stored, refused, or out of retries.
    async fn submit(&self, file: PathBuf) -> PackageReport {
        let mut report = PackageReport::new(file.clone(), Status::Error);
        self.progress.message(file.display().to_string());
        let bytes = match tokio::fs::read(&file).await {
            Ok(b) => b,
            Err(e) => {
                report.detail = Some(format!("cannot read {}: {e}", file.display()));
                return report;
            }
        };
        report.package_id = package_id_of(&bytes);
        // Signed once: every retry sends the same bytes and signature.
        let signature = STANDARD.encode(self.key.sign(&bytes));
        let sent = self
            .policy
            .run(
                || self.gateway.submit(&bytes, &self.key_id, &signature),
                |next| announce(self.progress, &file.display().to_string(), next),
            )
            .await;
        let accepted = match sent {
            Ok((accepted, attempts)) => {
                report.attempts = attempts;
                accepted
            }
            Err((error, attempts)) => {
                report.not_accepted(error, attempts);
                return report;
            }
        };
        report.http_status = Some(if accepted.created { 201 } else { 200 });

        let claims = match self.keys.verify(&accepted.receipt, self.progress).await {
            Ok(claims) => claims,
            Err(KeysFailure::Unavailable(why)) => {
                report.status = Status::Failed;
                report.detail = Some(format!(
                    "stored, but the receipt could not be checked (submit again to fetch it): {why}"
                ));
                return report;
            }
            Err(KeysFailure::Invalid(e)) => {
                report.status = Status::InvalidReceipt;
                report.detail = Some(format!("the gateway's receipt does not verify: {e}"));
                return report;
            }
        };
        if let Some(why) = package_mismatch(&claims, &bytes) {
            report.status = Status::InvalidReceipt;
            report.detail = Some(format!(
                "the gateway's receipt is not for the bytes sent: {why}"
            ));
            return report;
        }
        report.package_id = Some(claims.package_id.to_string());
        report.records = Some(claims.records);
        report.received_at = Some(time(claims.received_at));

        let receipt_file = with_suffix(&file, RECEIPT_SUFFIX);
        if let Err(e) = replace(&receipt_file, accepted.receipt.as_bytes(), PUBLIC_MODE) {
            report.detail = Some(format!(
                "stored, but the receipt could not be written to {} (submit again to fetch \
                 it): {e}",
                receipt_file.display()
            ));
            return report;
        }
        report.receipt_file = Some(receipt_file);
        report.status = if accepted.created {
            Status::Stored
        } else {
            Status::AlreadyStored
        };
        report
    }
}

/// Says on stderr that `what` is tried again, when and why.
fn announce(progress: &Progress, what: &str, next: NextTry<'_, AttemptError>) {
    progress.err(&format!(
        "tallyhouse: retrying {what} in {:.1} s (attempt {} of {}): {}",
        next.delay.as_secs_f64(),
        next.attempt,
        next.of,
        next.error
    ));
}

/// Why a receipt could not be checked.
enum KeysFailure {
    /// The platform's keys could not be fetched.
    Unavailable(String),
    /// The receipt does not verify against them.
    Invalid(ReceiptError),
}

/// The platform's receipt keys, fetched once for the batch (again when a
/// receipt names a key not in the set: the platform rotated its key).
struct ReceiptKeys {
    gateway: Gateway,
    policy: RetryPolicy,
    // A tokio mutex, held while fetching so that concurrent packages wait
    // for one fetch rather than each making its own.
    keys: tokio::sync::Mutex<Option<Vec<serde_json::Value>>>,
}

impl ReceiptKeys {
    fn new(gateway: Gateway, policy: RetryPolicy) -> Self {
        Self {
            gateway,
            policy,
            keys: tokio::sync::Mutex::new(None),
        }
    }

    async fn verify(&self, token: &str, progress: &Progress) -> Result<ReceiptClaims, KeysFailure> {
        let mut keys = self.keys.lock().await;
        let mut fresh = false;
        loop {
            let set = match keys.as_ref() {
                Some(set) => set,
                None => {
                    let fetched = self
                        .policy
                        .run(
                            || self.gateway.receipt_keys(),
                            |next| announce(progress, "the platform's keys", next),
                        )
                        .await
                        .map_err(|(e, _)| KeysFailure::Unavailable(e.to_string()))?;
                    fresh = true;
                    keys.insert(fetched.0)
                }
            };
            match verify_receipt(token, set) {
                Err(ReceiptError::UnknownKey(_)) if !fresh => *keys = None,
                other => return other.map_err(KeysFailure::Invalid),
            }
        }
    }
}

/// The `package_id` in a package's bytes, if they are JSON that has one
/// (for reports; the gateway is the judge of validity).
fn package_id_of(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        package_id: Option<String>,
    }
    serde_json::from_slice::<Head>(bytes)
        .ok()
        .and_then(|h| h.package_id)
}

/// The package files among `paths`: files as given, and the `*.json`
/// files directly in each folder (not hidden ones, not receipts), sorted
/// by name; each file once.
pub fn package_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
        let mut found = if meta.is_dir() {
            folder_packages(path)?
        } else {
            vec![path.clone()]
        };
        found.retain(|f| seen.insert(f.clone()));
        files.extend(found);
    }
    Ok(files)
}

fn folder_packages(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let cannot = |e: std::io::Error| CliError::Input(format!("cannot list {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_package = name.ends_with(".json")
            && !name.starts_with('.')
            && !name.ends_with(".receipt.json")
            && path.is_file();
        if is_package {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Problem;

    #[test]
    fn folders_give_their_json_files_sorted_without_receipts_or_hidden_files() {
        let dir =
            std::env::temp_dir().join(format!("tallyhouse-cli-submit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.json")).unwrap();
        for name in [
            "b.json",
            "a.json",
            "a.json.receipt",
            "a.json.sig",
            "x.receipt.json",
            ".hidden.json",
            "notes.txt",
        ] {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
        let found =
            package_files(&[dir.clone(), dir.join("a.json"), dir.join("notes.txt")]).unwrap();
        assert_eq!(
            found,
            vec![
                dir.join("a.json"),
                dir.join("b.json"),
                dir.join("notes.txt")
            ],
            "a file named on the command line is taken as it is, once"
        );
        assert!(package_files(&[dir.join("missing.json")]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_summary_counts_by_outcome_and_picks_the_exit_code() {
        let mut summary = Summary::default();
        for status in [Status::Stored, Status::Stored, Status::Skipped] {
            summary.count(&PackageReport::new(PathBuf::from("p.json"), status));
        }
        assert!(summary.outcome().is_ok());
        assert_eq!(
            summary.human(),
            "2 stored, 0 already stored, 1 skipped, 0 rejected, 0 failed after retries"
        );
        summary.count(&PackageReport::new(PathBuf::from("f.json"), Status::Failed));
        assert!(matches!(summary.outcome(), Err(CliError::Connect(_))));
        let mut rejected = PackageReport::new(PathBuf::from("r.json"), Status::Rejected);
        rejected.code = Some("malformed_package".into());
        summary.count(&rejected);
        assert!(matches!(summary.outcome(), Err(CliError::Rejected(_))));
        assert!(
            summary
                .human()
                .contains("1 rejected (malformed_package: 1)"),
            "{}",
            summary.human()
        );
    }

    #[test]
    fn a_server_error_to_the_end_is_a_failure_safe_to_resend_not_a_rejection() {
        let problem = |status, code: &str| {
            AttemptError::Problem(Problem::from_parts(
                status,
                None,
                None,
                &format!(r#"{{"code":"{code}","detail":"it went wrong","trace_id":"t1"}}"#),
            ))
        };
        let mut summary = Summary::default();
        for (status, code) in [
            (500, "internal"),
            (502, "unknown_method"),
            (504, "deadline_exceeded"),
        ] {
            let mut r = PackageReport::new(PathBuf::from("p.json"), Status::Error);
            r.not_accepted(problem(status, code), 6);
            assert_eq!(r.status, Status::Failed, "{status}");
            assert_eq!(r.http_status, Some(status));
            assert_eq!(r.code.as_deref(), Some(code));
            assert_eq!(
                r.human(),
                format!(
                    "failed          p.json  after 6 attempts: server error, safe to resend: \
                     it went wrong ({code}, HTTP {status}, trace t1)"
                )
            );
            summary.count(&r);
        }
        assert_eq!((summary.failed, summary.rejected), (3, 0));
        let Err(e) = summary.outcome() else {
            panic!("not every package was stored")
        };
        assert!(matches!(e, CliError::Connect(_)), "exit 4: {e:?}");
        assert!(
            e.to_string()
                .contains("3 failed after retries (safe to resend)"),
            "{e}"
        );

        // Retryable but not the server's: no such claim. Not retryable: a
        // rejection, however many packages failed.
        let mut r = PackageReport::new(PathBuf::from("p.json"), Status::Error);
        r.not_accepted(problem(429, "login_throttled"), 6);
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.detail.as_deref(), Some("it went wrong"));
        let mut r = PackageReport::new(PathBuf::from("p.json"), Status::Error);
        r.not_accepted(AttemptError::Transport("connection reset".into()), 6);
        assert_eq!(
            (r.status, r.detail.as_deref()),
            (Status::Failed, Some("connection reset"))
        );
        for (status, code) in [
            (400, "malformed_package"),
            (422, "wrong_audience"),
            (501, "http_501"),
        ] {
            let mut r = PackageReport::new(PathBuf::from("p.json"), Status::Error);
            r.not_accepted(problem(status, code), 1);
            assert_eq!(r.status, Status::Rejected, "{status}");
            assert!(!r.human().contains(SERVER_ERROR), "{}", r.human());
            summary.count(&r);
        }
        assert_eq!((summary.failed, summary.rejected), (3, 3));
        assert!(matches!(summary.outcome(), Err(CliError::Rejected(_))));
    }

    #[test]
    fn the_package_id_is_read_when_there_is_one() {
        assert_eq!(
            package_id_of(br#"{"package_id":"p1","records":[]}"#).as_deref(),
            Some("p1")
        );
        assert_eq!(package_id_of(b"not json"), None);
    }
}
