//! The cargo-fuzz corpus as regression tests: every committed seed and every
//! kept crash input (`fuzz/regressions/<target>/`, one file per crash the
//! fuzzer found, named after what it broke) runs through its target's check.

use crate::fuzz_checks::{self, TARGETS};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_kept_crash_passes_its_fuzz_check() {
    let mut ran = 0;
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        for path in files("seeds", target)
            .into_iter()
            .chain(files("regressions", target))
        {
            let bytes = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                failed.push(path.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(
        ran >= TARGETS.len(),
        "no seeds found under {:?}",
        fuzz_dir()
    );
    assert!(failed.is_empty(), "fuzz checks failed for {failed:?}");
}

#[test]
fn the_committed_seeds_are_exactly_what_the_generator_makes() {
    let seeds = fuzz_checks::seeds();
    for seed in &seeds {
        let path = fuzz_dir().join("seeds").join(seed.target).join(seed.name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == seed.bytes,
            "{} is missing or stale: run `cargo run --example make_seeds` in fuzz/",
            path.display()
        );
    }
    for (target, _) in TARGETS {
        for path in files("seeds", target) {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                seeds.iter().any(|s| s.target == target && s.name == name),
                "{} is not made by fuzz_checks::seeds()",
                path.display()
            );
        }
    }
}

/// The seeds that should be accepted are, so the fuzzer starts from inputs
/// that reach the deep code paths (a refused seed explores only refusals).
#[test]
fn the_valid_seeds_are_accepted() {
    let seeds = fuzz_checks::seeds();
    let bytes = |target: &str, name: &str| {
        seeds
            .iter()
            .find(|s| s.target == target && s.name == name)
            .unwrap_or_else(|| panic!("no seed {target}/{name}"))
            .bytes
            .clone()
    };
    for name in [
        "generated-6-records.json",
        "testdata.json",
        "handmade-edges.json",
    ] {
        evidence::parse_package(&bytes("package", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let key =
        evidence::SigningKey::from_pkcs8_pem(include_str!("../../testdata/submitter-test-key.pem"))
            .unwrap()
            .public_key();
    for name in ["openssl-testdata.bin", "low-s.bin", "other-s.bin"] {
        let framed = bytes("signature", name);
        let (der, body) = framed[1..].split_at(usize::from(framed[0]));
        key.verify(body, der)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["spki.pem", "jwk.json"] {
        let text = String::from_utf8(bytes("key", name)).unwrap();
        let parsed = if name.ends_with(".pem") {
            evidence::PublicKey::from_spki_pem(&text)
        } else {
            evidence::PublicKey::from_jwk(&serde_json::from_str(&text).unwrap())
        };
        assert_eq!(parsed.unwrap(), key, "{name}");
    }
    let jwks: serde_json::Value =
        serde_json::from_str(include_str!("../../testdata/receipt-jwks.json")).unwrap();
    let receipt = String::from_utf8(bytes("jwt", "receipt.jwt")).unwrap();
    evidence::verify_receipt(&receipt, jwks["keys"].as_array().unwrap()).unwrap();
}
