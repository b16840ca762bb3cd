//! Calls served by the ingest service: signed packages in, receipts out.

use crate::{Bytes, ServiceQueue};
use serde::{Deserialize, Serialize};

/// The ingest queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("ingest.v1");

define_call!(
    QUEUE,
    /// Verifies a signed package, stores the evidence and its records, and
    /// answers a receipt. Idempotent: the same bytes again answer the original
    /// receipt; the same `(submitter_id, package_id)` with other bytes is
    /// `conflict`.
    SubmitPackage, "ingest.v1.submit_package", SubmitPackageRequest => SubmitPackageResponse
);
define_call!(
    QUEUE,
    /// The platform's receipt verification keys, as a JWKS.
    ReceiptKeys, "ingest.v1.receipt_keys", ReceiptKeysRequest => JwkSet
);

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
