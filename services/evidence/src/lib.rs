//! The evidence formats: signed package format v1, submitter keys and
//! signatures, RFC 7638 key ids, and the platform's receipts (ES256 JWS).
//!
//! No I/O: every function takes bytes or text and returns values. The format
//! itself is specified in `docs/package-format.md`; the test vectors live in
//! `services/evidence/testdata/`.
//!
//! - [`package`]: [`parse_package`] turns the exact body bytes into a
//!   [`Package`], or a [`PackageError`] naming the offending JSON pointer.
//! - [`keys`]: [`PublicKey`] (SPKI PEM in, RFC 7638 [`PublicKey::key_id`],
//!   [`PublicKey::verify`] over exact bytes), [`SigningKey`] for submitters'
//!   tools, [`decode_signature_header`], [`sha256_hex`].
//! - [`receipt`]: [`ReceiptSigner`] and [`verify_receipt`].
//! - [`rotation`]: the platform's signing keys over time: their Vault secret,
//!   one rotation step, the set a service signs with and publishes.
//! - [`generate`]: realistic, seeded demo and benchmark packages.

pub mod generate;
pub mod keys;
pub mod package;
pub mod receipt;
pub mod rotation;

pub use keys::{
    KeyError, PublicKey, SignatureError, SigningKey, decode_signature_header, sha256, sha256_hex,
};
pub use package::{
    MAX_AUDIENCE_CHARS, MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS, MAX_PACKAGE_BYTES,
    MAX_RECORDS, MAX_SERIES_CHARS, Package, PackageError, Record, SCHEMA_V1, is_valid_label_key,
    is_valid_series, parse_package,
};
pub use receipt::{
    RECEIPT_ISSUER, RECEIPT_TYPE, ReceiptClaims, ReceiptError, ReceiptSigner, verify_receipt,
};
