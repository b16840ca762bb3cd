//! `tallyhouse sign`: detached signatures of files, in exactly the form
//! `openssl dgst -sha256 -sign key.pem FILE | base64 -w0` gives (standard
//! base64 of the ASN.1 DER ECDSA P-256/SHA-256 signature over the exact
//! bytes, no newline), which is also the `Tallyhouse-Signature` header.

use crate::commands::Context;
use crate::error::CliError;
use crate::files::{PUBLIC_MODE, read_signing_key, replace, with_suffix};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use std::path::PathBuf;

/// What to sign with.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The private key PEM (PKCS#8 or SEC1 `EC PRIVATE KEY`, unencrypted).
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// Files to sign; each gets `FILE.sig` beside it (replaced if present).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// One signed file.
#[derive(Debug, Serialize)]
pub struct Signed {
    /// The file signed.
    pub file: PathBuf,
    /// Where its signature went.
    pub signature_file: PathBuf,
    /// The signature, as in the file and the header.
    pub signature: String,
}

/// What `sign` did.
#[derive(Debug, Serialize)]
pub struct SignOutcome {
    /// The signing key's id, for the `Tallyhouse-Key-Id` header.
    pub key_id: String,
    /// The files signed.
    pub signed: Vec<Signed>,
}

/// Runs `sign`.
pub fn run(args: SignArgs, ctx: &Context) -> Result<(), CliError> {
    let key = read_signing_key(&args.key)?;
    let mut outcome = SignOutcome {
        key_id: key.public_key().key_id().to_string(),
        signed: Vec::with_capacity(args.files.len()),
    };
    for file in args.files {
        let bytes = std::fs::read(&file)
            .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
        let signature = STANDARD.encode(key.sign(&bytes));
        let signature_file = with_suffix(&file, ".sig");
        replace(&signature_file, signature.as_bytes(), PUBLIC_MODE).map_err(|e| {
            CliError::Input(format!("cannot write {}: {e}", signature_file.display()))
        })?;
        ctx.output.note(&format!(
            "signed {}: {}",
            file.display(),
            signature_file.display()
        ));
        outcome.signed.push(Signed {
            file,
            signature_file,
            signature,
        });
    }
    ctx.output
        .print(&outcome, || format!("{}\n", outcome.key_id));
    Ok(())
}
