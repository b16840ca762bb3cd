//! `tallyhouse keygen`: a new P-256 signing key for a submitter. The
//! private key is PKCS#8 PEM in a file only its owner can read; the public
//! key is SPKI PEM, byte for byte what `openssl ec -pubout` writes, ready
//! for `tallyhouse key add`.

use crate::commands::Context;
use crate::error::CliError;
use crate::files::{PRIVATE_MODE, PUBLIC_MODE, replace, write_new};
use crate::output::record;
use evidence::SigningKey;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// File name of the private key under `--out`.
pub const PRIVATE_KEY_FILE: &str = "key.pem";
/// File name of the public key under `--out`.
pub const PUBLIC_KEY_FILE: &str = "key.pub.pem";

/// Where to write the new key.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("destination")
        .required(true)
        .args(["out", "private_key"])
))]
pub struct KeygenArgs {
    /// Folder to write `key.pem` (private, mode 0600) and `key.pub.pem`
    /// (public) into; created if missing.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["private_key", "public_key"])]
    pub out: Option<PathBuf>,
    /// Where to write the private key (PKCS#8 PEM, mode 0600).
    #[arg(long, value_name = "PATH", requires = "public_key")]
    pub private_key: Option<PathBuf>,
    /// Where to write the public key (SPKI PEM).
    #[arg(long, value_name = "PATH", requires = "private_key")]
    pub public_key: Option<PathBuf>,
    /// Replace existing key files (the old private key is lost).
    #[arg(long)]
    pub force: bool,
}

/// What `keygen` made.
#[derive(Debug, Serialize)]
pub struct Generated {
    /// The key id (RFC 7638 thumbprint), as the platform will know it.
    pub key_id: String,
    /// The private key file.
    pub private_key: PathBuf,
    /// The public key file.
    pub public_key: PathBuf,
}

/// Runs `keygen`.
pub fn run(args: KeygenArgs, ctx: &Context) -> Result<(), CliError> {
    let (private_path, public_path) = match (&args.out, args.private_key, args.public_key) {
        (Some(dir), _, _) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                CliError::Input(format!("cannot create the folder {}: {e}", dir.display()))
            })?;
            (dir.join(PRIVATE_KEY_FILE), dir.join(PUBLIC_KEY_FILE))
        }
        (None, Some(private), Some(public)) => (private, public),
        // clap requires --out or both paths.
        _ => {
            return Err(CliError::Input(
                "give --out DIR, or --private-key PATH and --public-key PATH".into(),
            ));
        }
    };
    if private_path == public_path {
        return Err(CliError::Input(
            "the private and the public key need two different files".into(),
        ));
    }
    // Refuse before writing anything, so a refusal never leaves half a pair.
    if !args.force {
        for path in [&private_path, &public_path] {
            if path.exists() {
                return Err(exists(path));
            }
        }
    }

    let key = SigningKey::generate();
    let public = key.public_key();
    let private_pem = key.to_pkcs8_pem();
    if private_pem.is_empty() {
        return Err(CliError::Input("the new key could not be encoded".into()));
    }
    write(
        &private_path,
        private_pem.as_bytes(),
        PRIVATE_MODE,
        args.force,
    )?;
    write(
        &public_path,
        public.to_spki_pem().as_bytes(),
        PUBLIC_MODE,
        args.force,
    )?;

    let made = Generated {
        key_id: public.key_id().to_string(),
        private_key: private_path,
        public_key: public_path,
    };
    ctx.output.print(&made, || format!("{}\n", made.key_id));
    ctx.output.note(
        record(&[
            (
                "private key",
                format!("{} (mode 0600, keep it secret)", made.private_key.display()),
            ),
            (
                "public key",
                format!(
                    "{} (register it: tallyhouse key add SUBMITTER {})",
                    made.public_key.display(),
                    made.public_key.display()
                ),
            ),
        ])
        .trim_end(),
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CliError> {
    let written = if force {
        replace(path, bytes, mode)
    } else {
        write_new(path, bytes, mode)
    };
    written.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            exists(path)
        } else {
            CliError::Input(format!("cannot write {}: {e}", path.display()))
        }
    })
}

fn exists(path: &Path) -> CliError {
    CliError::Input(format!(
        "{} already exists: refusing to overwrite a key (--force replaces it)",
        path.display()
    ))
}
