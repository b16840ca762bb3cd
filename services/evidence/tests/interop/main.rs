//! Interoperability with the `openssl` command line, run at test time: what
//! a submitter does with openssl verifies with the crate, and what the crate
//! signs verifies with openssl. Skipped, with a message, without `openssl`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evidence::{
    PublicKey, ReceiptClaims, ReceiptSigner, SigningKey, decode_signature_header, parse_package,
    sha256_hex, verify_receipt,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use time::macros::datetime;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "evidence-interop-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `None` (after saying so) when the `openssl` binary is not installed.
fn openssl_available() -> Option<()> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Some(()),
        _ => {
            eprintln!("skipping: the `openssl` command is not available");
            None
        }
    }
}

fn openssl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new("openssl")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run openssl")
}

fn openssl_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fresh_package() -> Vec<u8> {
    format!(
        r#"{{"schema":"tallyhouse.package.v1","package_id":"{}","submitter_id":"acme","audience":"local","created_at":"2025-03-01T12:00:05Z","records":[{{"series":"bets.stake","ts":"2025-03-01T11:59:58Z","value":12.5,"labels":{{"currency":"EUR"}}}}]}}"#,
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

fn openssl_verifies(public_pem: &Path, signature: &Path, body: &Path) -> bool {
    openssl(&[
        &"dgst",
        &"-sha256",
        &"-verify",
        &public_pem,
        &"-signature",
        &signature,
        &body,
    ])
    .status
    .success()
}

#[test]
fn openssl_signs_and_the_crate_verifies() {
    let Some(()) = openssl_available() else {
        return;
    };
    let dir = Scratch::new();
    let key = dir.path("key.pem");
    let public = dir.path("pub.pem");
    // Exactly the commands docs/package-format.md gives submitters.
    openssl_ok(&[
        &"ecparam",
        &"-name",
        &"prime256v1",
        &"-genkey",
        &"-out",
        &key,
    ]);
    openssl_ok(&[&"ec", &"-in", &key, &"-pubout", &"-out", &public]);
    let body = fresh_package();
    let body_path = dir.write("package.json", &body);
    for round in 0..8 {
        // openssl's nonces are random: several rounds cover low and high S.
        let sig = dir.path(&format!("sig{round}.der"));
        openssl_ok(&[
            &"dgst", &"-sha256", &"-sign", &key, &"-out", &sig, &body_path,
        ]);
        let header = STANDARD.encode(dir.read(&format!("sig{round}.der")));
        let der = decode_signature_header(&header).unwrap();
        let public_key =
            PublicKey::from_spki_pem(&String::from_utf8(dir.read("pub.pem")).unwrap()).unwrap();
        public_key.verify(&body, &der).unwrap();
        let mut tampered = body.clone();
        tampered[10] ^= 0x20;
        assert!(public_key.verify(&tampered, &der).is_err());
    }
    let signing =
        SigningKey::from_pkcs8_pem(&String::from_utf8(dir.read("key.pem")).unwrap()).unwrap();
    let public_key =
        PublicKey::from_spki_pem(&String::from_utf8(dir.read("pub.pem")).unwrap()).unwrap();
    assert_eq!(signing.public_key(), public_key);
    assert!(parse_package(&body).is_ok());
}

#[test]
fn the_crate_signs_and_openssl_verifies() {
    let Some(()) = openssl_available() else {
        return;
    };
    let dir = Scratch::new();
    let key = SigningKey::generate();
    let key_path = dir.write("key.pem", key.to_pkcs8_pem());
    let public = dir.write("pub.pem", key.public_key().to_spki_pem());
    let body = fresh_package();
    let body_path = dir.write("package.json", &body);
    let sig = dir.write("sig.der", key.sign(&body));
    assert!(openssl_verifies(&public, &sig, &body_path));
    let mut tampered = body.clone();
    tampered[10] ^= 0x20;
    let tampered_path = dir.write("tampered.json", &tampered);
    assert!(!openssl_verifies(&public, &sig, &tampered_path));
    // openssl reads our PKCS#8 and derives the same SPKI PEM, byte for byte.
    let derived = openssl_ok(&[&"pkey", &"-in", &key_path, &"-pubout"]).stdout;
    assert_eq!(
        String::from_utf8(derived).unwrap(),
        key.public_key().to_spki_pem()
    );
}

#[test]
fn the_committed_vector_verifies_with_openssl_too() {
    let Some(()) = openssl_available() else {
        return;
    };
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let dir = Scratch::new();
    let b64 = std::fs::read_to_string(testdata.join("package.json.sig.b64")).unwrap();
    let sig = dir.write("sig.der", decode_signature_header(&b64).unwrap());
    assert!(openssl_verifies(
        &testdata.join("submitter-test-key.pub.pem"),
        &sig,
        &testdata.join("package.json"),
    ));
    let body = std::fs::read(testdata.join("package.json")).unwrap();
    let digest = openssl_ok(&[&"dgst", &"-sha256", &"-r", &testdata.join("package.json")]).stdout;
    assert!(
        String::from_utf8(digest)
            .unwrap()
            .starts_with(&sha256_hex(&body))
    );
}

#[test]
fn receipts_verify_with_openssl() {
    let Some(()) = openssl_available() else {
        return;
    };
    let dir = Scratch::new();
    let signer = ReceiptSigner::generate();
    let claims = ReceiptClaims {
        package_id: uuid::Uuid::new_v4(),
        submitter_id: rpc_contracts::SubmitterId::parse("acme").unwrap(),
        sha256: sha256_hex(b"{}"),
        size: 2,
        records: 1,
        received_at: datetime!(2025-03-01 12:00:06 UTC),
    };
    let token = signer.sign(&claims).unwrap();
    assert_eq!(verify_receipt(&token, &[signer.jwk()]).unwrap(), claims);

    // A JWS ES256 signature is r‖s; openssl wants DER.
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
    let input = dir.write("input", signing_input);
    let sig = dir.write("sig.der", der.as_bytes());
    let public = dir.write("pub.pem", signer.public_key().to_spki_pem());
    assert!(openssl_verifies(&public, &sig, &input));
}
