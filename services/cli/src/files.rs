//! Local files of the submitter-side commands: reading a signing key,
//! naming the files written beside a package (`FILE.sig`,
//! `FILE.receipt`), and writing files so that a reader never sees half of
//! one (a temporary file in the same folder, then a rename) and a private
//! key is never readable by anyone else, not even for a moment.

use crate::error::CliError;
use evidence::SigningKey;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Permissions of a private key file: read and write for its owner only.
pub const PRIVATE_MODE: u32 = 0o600;
/// Permissions of a public file (before the umask).
pub const PUBLIC_MODE: u32 = 0o644;

/// Reads an unencrypted P-256 private key PEM (PKCS#8 or SEC1, as
/// `tallyhouse keygen`, `openssl genpkey` or `openssl ecparam -genkey`
/// write it).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, CliError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read the key {}: {e}", path.display())))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| CliError::Input(format!("the key {} is unusable: {e}", path.display())))
}

/// `path` with `suffix` appended to its file name: `a/p.json` + `.sig` →
/// `a/p.json.sig`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` with `mode`, replacing the file if it exists:
/// a reader sees the old file or the new one, never a part.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let written = write_new(&temp, bytes, mode).and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Writes `bytes` to `path`, which must not exist yet (`AlreadyExists`
/// otherwise), created with `mode` less the umask (and never more than
/// `mode`, whatever the umask), and flushed to disk.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let current = file.metadata()?.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(current & mode))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_go_after_the_whole_file_name() {
        assert_eq!(
            with_suffix(Path::new("out/p.json"), ".receipt"),
            PathBuf::from("out/p.json.receipt")
        );
        assert_eq!(with_suffix(Path::new("p"), ".sig"), PathBuf::from("p.sig"));
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("tallyhouse-cli-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.pem");
        write_new(&path, b"one", PRIVATE_MODE).unwrap();
        assert_eq!(
            write_new(&path, b"two", PRIVATE_MODE).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        replace(&path, b"three", PRIVATE_MODE).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_MODE);
        // Nothing else is left in the folder.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
