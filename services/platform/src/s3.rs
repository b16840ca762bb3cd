//! The evidence store: raw package bytes in S3-compatible storage (MinIO in
//! production, s3s-fs locally), content-addressed by SHA-256. Provider
//! neutral: path-style addressing, static credentials from Vault, SigV4.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use rpc_contracts::{ErrorCode, RpcError};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use std::time::Duration;

/// Where the evidence bucket is.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 endpoint URL (MinIO, s3s-fs, AWS).
    #[arg(
        long,
        env = "TALLYHOUSE_S3_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    pub s3_endpoint: String,
    /// Region name used for signing.
    #[arg(long, env = "TALLYHOUSE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Bucket holding the package blobs.
    #[arg(
        long,
        env = "TALLYHOUSE_S3_BUCKET",
        default_value = "tallyhouse-evidence"
    )]
    pub s3_bucket: String,
    /// Timeout of one S3 operation, in milliseconds.
    #[arg(long, env = "TALLYHOUSE_S3_TIMEOUT_MS", default_value_t = 30_000)]
    pub s3_timeout_ms: u64,
}

/// S3 credentials, the `s3` secret of a service in Vault.
#[derive(Deserialize)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
}

/// The content-addressed blob store.
#[derive(Clone)]
pub struct EvidenceStore {
    client: Client,
    bucket: String,
}

impl std::fmt::Debug for EvidenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// The object key of a blob: `sha256/<first two hex digits>/<64 hex digits>`.
pub fn blob_key(sha256_hex: &str) -> String {
    format!("sha256/{}/{sha256_hex}", &sha256_hex[..2])
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        format!("evidence storage: {what} failed: {e}"),
    )
}

impl EvidenceStore {
    /// A store for `args.s3_bucket` with `creds`.
    pub fn new(args: &S3Args, creds: &S3Credentials) -> Self {
        let credentials = Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "vault",
        );
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .operation_timeout(Duration::from_millis(args.s3_timeout_ms))
            .connect_timeout(Duration::from_secs(3))
            .build();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&args.s3_endpoint)
            .region(Region::new(args.s3_region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .timeout_config(timeouts)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: args.s3_bucket.clone(),
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket if it does not exist.
    pub async fn ensure_bucket(&self) -> Result<(), RpcError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(
                "create bucket",
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    /// Stores `bytes` under their SHA-256 (hex) and returns the object key.
    /// Writing the same bytes again is harmless: the key is their hash. The
    /// server checks the SHA-256 it is sent against the bytes it receives.
    pub async fn put_blob(&self, sha256: &[u8; 32], bytes: Vec<u8>) -> Result<String, RpcError> {
        use base64::Engine as _;
        let hex = hex::encode(sha256);
        let key = blob_key(&hex);
        let len = bytes.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .content_length(len)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| unavailable("put", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(key)
    }

    /// Reads a whole blob (tests and small reads; streaming readers use [`EvidenceStore::client`]).
    pub async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, RpcError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| unavailable("get body", e))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(unavailable(
                "get",
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    /// Reads at most `len` bytes of a blob from `offset` with one ranged GET
    /// (`Range: bytes=offset-(offset+len-1)`), or `None` when the object does
    /// not exist. Fewer bytes come back when the blob ends first, none when
    /// `offset` is at or past its end. A server that ignores the range and
    /// sends the whole object is cut down to the range here.
    pub async fn get_blob_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let last = offset.saturating_add(len - 1);
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
        {
            Ok(out) => {
                let ranged = out.content_range().is_some();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| unavailable("get body", e))?
                    .into_bytes();
                let bytes = if ranged {
                    bytes.to_vec()
                } else {
                    // The whole object came back.
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    let end = usize::try_from(len)
                        .map_or(bytes.len(), |l| start.saturating_add(l))
                        .min(bytes.len());
                    bytes[start..end].to_vec()
                };
                Ok(Some(bytes))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            // 416: the range starts at or past the end of the object.
            Err(e) if e.code() == Some("InvalidRange") => Ok(Some(Vec::new())),
            Err(e) => Err(unavailable(
                "ranged get",
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    /// Lists every object key under `prefix` (tests, cleanup).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, RpcError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| unavailable("list", aws_sdk_s3::error::DisplayErrorContext(e)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// The underlying client, for streaming reads.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
