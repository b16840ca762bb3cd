//! Properties of the evidence formats (proptest):
//! - any byte change to a signed package (a flip, an insertion, a deletion,
//!   in the body or in the signature) is refused by verification;
//! - a package written out as format v1 JSON parses back to itself;
//! - a receipt signed for some claims verifies back to exactly them.

use evidence::generate::{PackageSpec, generate_package};
use evidence::{Package, PublicKey, ReceiptClaims, ReceiptSigner, Record, SigningKey};
use proptest::prelude::*;
use rpc_contracts::SubmitterId;
use serde_json::{Value, json};
use std::sync::LazyLock;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

static SUBMITTER: LazyLock<(SigningKey, PublicKey)> = LazyLock::new(|| {
    let key =
        SigningKey::from_pkcs8_pem(include_str!("../../testdata/submitter-test-key.pem")).unwrap();
    let public = key.public_key();
    (key, public)
});

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Change {
    /// XOR the byte at (index mod len) with a non-zero mask.
    Flip(usize, u8),
    /// Insert a byte before (index mod (len + 1)).
    Insert(usize, u8),
    /// Delete the byte at (index mod len).
    Delete(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Change::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Change::Insert(i, b)),
        any::<usize>().prop_map(Change::Delete),
    ]
}

fn apply(bytes: &[u8], change: &Change) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match *change {
        Change::Flip(i, mask) => out[i % bytes.len()] ^= mask,
        Change::Insert(i, b) => out.insert(i % (bytes.len() + 1), b),
        Change::Delete(i) => {
            out.remove(i % bytes.len());
        }
    }
    out
}

/// A signed package: a generated body (1 to 20 records) and its signature.
fn signed_package() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (1..=20usize, any::<u64>(), 0..4_000_000_000i64).prop_map(|(records, seed, secs)| {
        let spec = PackageSpec::new(
            SubmitterId::parse("acme-betting").unwrap(),
            "local",
            records,
            OffsetDateTime::from_unix_timestamp(secs).unwrap(),
            seed,
        );
        let body = generate_package(&spec).bytes;
        let signature = SUBMITTER.0.sign(&body);
        (body, signature)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_byte_change_to_a_signed_package_is_refused(
        (body, signature) in signed_package(),
        changes in prop::collection::vec(change(), 1..=3),
        in_signature in any::<bool>(),
    ) {
        let public = &SUBMITTER.1;
        prop_assert!(public.verify_and_hash(&body, &signature).is_ok());
        let (mut new_body, mut new_signature) = (body.clone(), signature.clone());
        for change in &changes {
            if in_signature && !new_signature.is_empty() {
                new_signature = apply(&new_signature, change);
            } else if !new_body.is_empty() {
                new_body = apply(&new_body, change);
            }
        }
        // Changes can cancel out (a flip twice, an insert then its delete).
        prop_assume!(new_body != body || new_signature != signature);
        prop_assert!(public.verify(&new_body, &new_signature).is_err());
        prop_assert!(public.verify_and_hash(&new_body, &new_signature).is_err());
    }
}

/// A time RFC 3339 can write: years 1 to 9998, whole-minute offsets, any
/// nanosecond.
fn rfc3339_time() -> impl Strategy<Value = OffsetDateTime> {
    (
        -62_135_596_800i64..253_370_764_800,
        0..1_000_000_000u32,
        -(23 * 60 + 59)..=(23 * 60 + 59i32),
    )
        .prop_map(|(secs, nanos, offset_minutes)| {
            OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap()
                .to_offset(UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap())
        })
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn record() -> impl Strategy<Value = Record> {
    (
        "[a-z][a-z0-9_]{0,15}(\\.[a-z0-9_]{1,15}){0,4}",
        rfc3339_time(),
        finite_f64(),
        prop::collection::btree_map(
            "[a-z][a-z0-9_]{0,63}",
            "[^\\p{Cc}]{1,40}",
            0..=evidence::MAX_LABELS,
        ),
    )
        .prop_map(|(series, ts, value, labels)| Record {
            series,
            ts,
            value,
            labels,
        })
}

fn package() -> impl Strategy<Value = Package> {
    (
        1..=u128::MAX,
        "[a-z0-9][a-z0-9._-]{0,63}",
        "[!-~]{1,128}",
        rfc3339_time(),
        prop::collection::vec(record(), 1..8),
    )
        .prop_map(|(id, submitter, audience, created_at, records)| Package {
            package_id: Uuid::from_u128(id),
            submitter_id: SubmitterId::parse(submitter).unwrap(),
            audience,
            created_at,
            records,
        })
}

/// `package` written as format v1 JSON (`docs/package-format.md`); labels
/// left out when there are none, every other time.
fn to_json(package: &Package, with_empty_labels: bool) -> Value {
    let time = |t: &OffsetDateTime| t.format(&Rfc3339).unwrap();
    let records: Vec<Value> = package
        .records
        .iter()
        .map(|r| {
            let mut record = json!({"series": r.series, "ts": time(&r.ts), "value": r.value});
            if !r.labels.is_empty() || with_empty_labels {
                record["labels"] = json!(r.labels);
            }
            record
        })
        .collect();
    json!({
        "schema": evidence::SCHEMA_V1,
        "package_id": package.package_id.to_string(),
        "submitter_id": package.submitter_id.as_str(),
        "audience": package.audience,
        "created_at": time(&package.created_at),
        "records": records,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_package_parses_back_from_its_json(package in package(), empty_labels in any::<bool>()) {
        let value = to_json(&package, empty_labels);
        let compact = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(evidence::parse_package(&compact), Ok(package.clone()));
        // Whitespace is free.
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        prop_assert_eq!(evidence::parse_package(&pretty), Ok(package));
    }
}

static RECEIPTS: LazyLock<(ReceiptSigner, Vec<Value>)> = LazyLock::new(|| {
    let signer =
        ReceiptSigner::from_pkcs8_pem(include_str!("../../testdata/receipt-test-key.pem")).unwrap();
    let jwks = vec![signer.jwk()];
    (signer, jwks)
});

fn receipt_claims() -> impl Strategy<Value = ReceiptClaims> {
    (
        any::<u128>(),
        "[a-z0-9][a-z0-9._-]{0,63}",
        prop::array::uniform32(any::<u8>()),
        any::<u64>(),
        any::<u64>(),
        0..253_370_764_800i64,
        0..1_000_000u32,
    )
        .prop_map(
            |(id, submitter, digest, size, records, secs, micros)| ReceiptClaims {
                package_id: Uuid::from_u128(id),
                submitter_id: SubmitterId::parse(submitter).unwrap(),
                sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
                size,
                records,
                received_at: OffsetDateTime::from_unix_timestamp(secs)
                    .unwrap()
                    .replace_microsecond(micros)
                    .unwrap(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_receipt_verifies_back_to_its_claims(claims in receipt_claims()) {
        let (signer, jwks) = &*RECEIPTS;
        let token = signer.sign(&claims).unwrap();
        prop_assert_eq!(evidence::verify_receipt(&token, jwks), Ok(claims));
    }
}
