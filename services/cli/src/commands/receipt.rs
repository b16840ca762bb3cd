//! `tallyhouse receipt verify`: checks a receipt (the platform's ES256 JWS)
//! against the platform's key set, and optionally that it is the receipt of
//! a given package file (same SHA-256, same size). Also the checks `submit`
//! applies to every receipt before saving it.

use crate::commands::Context;
use crate::error::CliError;
use crate::gateway::{AttemptError, Gateway, GatewayArgs};
use crate::output::{record, time};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use evidence::{ReceiptClaims, sha256_hex, verify_receipt};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Receipt commands.
#[derive(Debug, clap::Subcommand)]
pub enum ReceiptCommand {
    /// Verify a receipt against the platform's keys and print its claims;
    /// with --package, also check that it is the receipt of that file.
    Verify(VerifyArgs),
}

/// What to verify, and against which keys.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The receipt file (a compact JWS, as `submit` saves it in FILE.receipt).
    #[arg(value_name = "RECEIPT")]
    pub receipt: PathBuf,
    /// The package file: its exact bytes must have the receipt's SHA-256
    /// and size.
    #[arg(long, value_name = "FILE")]
    pub package: Option<PathBuf>,
    /// The platform's key set from a file (`{"keys": [...]}`, as `GET
    /// /v1/keys` answers) instead of asking the gateway.
    #[arg(long, value_name = "FILE")]
    pub jwks: Option<PathBuf>,
    /// How to reach the gateway (used without --jwks).
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Bound on fetching the key set from the gateway, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout_secs: u64,
}

/// How a package file compares with its receipt.
#[derive(Debug, Serialize)]
pub struct PackageCheck {
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether both equal the receipt's.
    pub matches: bool,
}

/// The outcome of `receipt verify`.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// Whether everything checked holds.
    pub valid: bool,
    /// The platform key that signed the receipt (its `kid`).
    pub receipt_key_id: Option<String>,
    /// What the receipt attests.
    pub claims: ReceiptClaims,
    /// The package comparison, with --package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageCheck>,
}

/// Runs a receipt command.
pub async fn run(cmd: ReceiptCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        ReceiptCommand::Verify(args) => verify(args, ctx).await,
    }
}

async fn verify(args: VerifyArgs, ctx: &Context) -> Result<(), CliError> {
    let token = std::fs::read_to_string(&args.receipt).map_err(|e| {
        CliError::Input(format!(
            "cannot read the receipt {}: {e}",
            args.receipt.display()
        ))
    })?;
    let token = token.trim();
    let package = match &args.package {
        Some(path) => Some((
            path.clone(),
            std::fs::read(path).map_err(|e| {
                CliError::Input(format!("cannot read the package {}: {e}", path.display()))
            })?,
        )),
        None => None,
    };
    let keys = match &args.jwks {
        Some(file) => keys_from_file(file)?,
        None => {
            let gateway = Gateway::new(
                &args.gateway.url,
                Duration::from_secs(args.timeout_secs.max(1)),
            )?;
            fetch_keys(&gateway).await?
        }
    };
    let claims = verify_receipt(token, &keys).map_err(|e| {
        CliError::Verification(format!(
            "the receipt {} does not verify: {e}",
            args.receipt.display()
        ))
    })?;
    let mut mismatch = None;
    let package = package.map(|(file, bytes)| {
        mismatch = package_mismatch(&claims, &bytes).map(|why| {
            format!(
                "the package {} is not the one the receipt {} is for: {why}",
                file.display(),
                args.receipt.display()
            )
        });
        PackageCheck {
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            matches: mismatch.is_none(),
            file,
        }
    });
    let verified = Verified {
        valid: mismatch.is_none(),
        receipt_key_id: receipt_key_id(token),
        claims,
        package,
    };
    ctx.output.print(&verified, || human(&verified));
    match mismatch {
        Some(why) => Err(CliError::Verification(why)),
        None => Ok(()),
    }
}

fn human(v: &Verified) -> String {
    let c = &v.claims;
    let mut fields = vec![
        (
            "receipt",
            format!(
                "valid, signed by platform key {}",
                v.receipt_key_id.as_deref().unwrap_or("-")
            ),
        ),
        ("package_id", c.package_id.to_string()),
        ("submitter_id", c.submitter_id.to_string()),
        ("sha256", c.sha256.clone()),
        ("size", c.size.to_string()),
        ("records", c.records.to_string()),
        ("received_at", time(c.received_at)),
    ];
    if let Some(p) = &v.package {
        let verdict = if p.matches {
            format!("{} matches (same SHA-256 and size)", p.file.display())
        } else {
            format!(
                "{} DOES NOT MATCH (SHA-256 {}, {} bytes)",
                p.file.display(),
                p.sha256,
                p.size
            )
        };
        fields.push(("package", verdict));
    }
    record(&fields)
}

/// What differs between a receipt and the bytes it should be for, if
/// anything.
pub fn package_mismatch(claims: &ReceiptClaims, bytes: &[u8]) -> Option<String> {
    let sha256 = sha256_hex(bytes);
    let size = bytes.len() as u64;
    let mut differences = Vec::new();
    if sha256 != claims.sha256 {
        differences.push(format!(
            "its SHA-256 is {sha256}, the receipt's is {}",
            claims.sha256
        ));
    }
    if size != claims.size {
        differences.push(format!(
            "it has {size} bytes, the receipt says {}",
            claims.size
        ));
    }
    (!differences.is_empty()).then(|| differences.join("; "))
}

/// The `kid` in a receipt's header, if it can be read.
pub fn receipt_key_id(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

/// The platform's receipt keys from the gateway; a failure is reported as
/// unreachable (exit 4) or refused (exit 1).
pub async fn fetch_keys(gateway: &Gateway) -> Result<Vec<serde_json::Value>, CliError> {
    gateway.receipt_keys().await.map_err(|e| match e {
        AttemptError::Transport(why) => {
            CliError::Connect(format!("cannot fetch the platform's keys: {why}"))
        }
        AttemptError::Problem(p) => CliError::Rejected(format!(
            "the gateway refused to list the platform's keys: {p}"
        )),
    })
}

/// Reads a key set file: a JWKS object (`{"keys": [...]}`) or a bare array
/// of JWKs.
pub fn keys_from_file(path: &Path) -> Result<Vec<serde_json::Value>, CliError> {
    let unusable =
        |why: String| CliError::Input(format!("the key set {} is unusable: {why}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| unusable(format!("not JSON ({e})")))?;
    let keys = match value {
        serde_json::Value::Array(keys) => keys,
        serde_json::Value::Object(mut set) => match set.remove("keys") {
            Some(serde_json::Value::Array(keys)) => keys,
            _ => return Err(unusable("expected {\"keys\": [...]}".into())),
        },
        _ => return Err(unusable("expected {\"keys\": [...]}".into())),
    };
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evidence::ReceiptSigner;
    use time::macros::datetime;

    fn claims_for(bytes: &[u8]) -> ReceiptClaims {
        ReceiptClaims {
            package_id: "0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30".parse().unwrap(),
            submitter_id: rpc_contracts::SubmitterId::parse("acme").unwrap(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            records: 1,
            received_at: datetime!(2026-01-01 00:00 UTC),
        }
    }

    #[test]
    fn a_package_matches_only_its_exact_bytes() {
        let claims = claims_for(b"{\"a\":1}");
        assert_eq!(package_mismatch(&claims, b"{\"a\":1}"), None);
        let why = package_mismatch(&claims, b"{\"a\":2}").unwrap();
        assert!(why.contains("SHA-256") && !why.contains("bytes"), "{why}");
        let why = package_mismatch(&claims, b"{\"a\": 1}").unwrap();
        assert!(why.contains("SHA-256") && why.contains("8 bytes"), "{why}");
    }

    #[test]
    fn the_receipt_key_id_is_read_from_the_header() {
        let signer = ReceiptSigner::generate();
        let token = signer.sign(&claims_for(b"x")).unwrap();
        assert_eq!(
            receipt_key_id(&token).as_deref(),
            Some(signer.key_id().as_str())
        );
        assert_eq!(receipt_key_id("garbage"), None);
    }
}
