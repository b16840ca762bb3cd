//! Submitter keys as the registry knows them, looked up over RPC and kept a
//! short time (a revocation takes effect within the cache's TTL).

use evidence::PublicKey;
use platform::rpc::{RequestContext, RpcClient};
use rpc_contracts::registry::{self, GetKeyRequest, KeyInfo};
use rpc_contracts::{ErrorCode, KeyId, RpcError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Bound on cached keys; past it the cache starts over.
const MAX_CACHED: usize = 10_000;

/// A registered key, parsed once.
pub struct KnownKey {
    pub info: KeyInfo,
    pub key: PublicKey,
}

/// The registry's keys, cached.
pub struct KeyDirectory {
    rpc: RpcClient,
    ttl: Duration,
    cache: Mutex<HashMap<KeyId, (Instant, Arc<KnownKey>)>>,
}

impl KeyDirectory {
    pub fn new(rpc: RpcClient, ttl: Duration) -> Self {
        Self {
            rpc,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The key `id`: `unknown_key` if the registry does not know it,
    /// `unavailable` if the registry cannot be asked.
    pub async fn get(&self, id: &KeyId, ctx: &RequestContext) -> Result<Arc<KnownKey>, RpcError> {
        if let Some((at, key)) = self.cache.lock().expect("key cache").get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(key.clone());
        }
        let info = self
            .rpc
            .call_with::<registry::GetKey>(
                &GetKeyRequest { key_id: id.clone() },
                ctx.call_options(),
            )
            .await
            .map_err(|e| match e.code {
                ErrorCode::NotFound => {
                    RpcError::new(ErrorCode::UnknownKey, format!("key {id} is not registered"))
                }
                _ if e.retryable || e.code == ErrorCode::NoRoute => RpcError::new(
                    ErrorCode::Unavailable,
                    format!("the key registry is unavailable: {}", e.code),
                ),
                _ => {
                    tracing::error!(code = %e.code, error = %e.message, "key lookup failed");
                    RpcError::new(ErrorCode::Internal, "key lookup failed")
                }
            })?;
        let key = PublicKey::from_spki_pem(&info.public_key_pem).map_err(|e| {
            tracing::error!(key_id = %id, error = %e, "the registry holds an unparsable key");
            RpcError::new(ErrorCode::Internal, "stored key cannot be parsed")
        })?;
        let known = Arc::new(KnownKey { info, key });
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(id.clone(), (Instant::now(), known.clone()));
        Ok(known)
    }
}
