//! Calls served by the ingest service: signed packages in, receipts out.

use crate::{Bytes, Call, ServiceQueue};
use serde::{Deserialize, Serialize};

/// The ingest queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("ingest.v1");

/// Verifies a signed package, stores the evidence and its records, and
/// answers a receipt. Idempotent: the same bytes again answer the original
/// receipt; the same `(submitter_id, package_id)` with other bytes is
/// `conflict`.
#[derive(Debug)]
pub enum SubmitPackage {}

impl Call for SubmitPackage {
    type Request = SubmitPackageRequest;
    type Response = SubmitPackageResponse;
    const SERVICE: ServiceQueue = QUEUE;
    const METHOD: &'static str = "ingest.v1.submit_package";
}

/// The platform's receipt verification keys, as a JWKS.
#[derive(Debug)]
pub enum ReceiptKeys {}

impl Call for ReceiptKeys {
    type Request = ReceiptKeysRequest;
    type Response = JwkSet;
    const SERVICE: ServiceQueue = QUEUE;
    const METHOD: &'static str = "ingest.v1.receipt_keys";
}

/// Request of [`SubmitPackage`]: exactly what the submitter sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitPackageRequest {
    /// The `Tallyhouse-Key-Id` header as received.
    pub key_id: String,
    /// The `Tallyhouse-Signature` header as received (base64 of DER).
    pub signature: String,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// Response of [`SubmitPackage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitPackageResponse {
    /// The receipt, a compact JWS (ES256).
    pub receipt: String,
    /// `true` when this call stored the package, `false` when it was
    /// already stored (same bytes).
    pub created: bool,
}

/// Request of [`ReceiptKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptKeysRequest {}

/// A JSON Web Key Set (RFC 7517).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The public keys, as JWK objects.
    pub keys: Vec<serde_json::Value>,
}
