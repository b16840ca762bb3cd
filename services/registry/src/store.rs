//! The registry's tables (`migrations/`) and every query on them. Rows are
//! internal types, converted to the contract types here; the business rules
//! (idempotency, conflicts, defaults) live in `handlers.rs`.

use crate::error::RegistryError;
use rpc_contracts::registry::{KeyInfo, Submitter};
use rpc_contracts::{KeyId, SubmitterId};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use time::OffsetDateTime;

/// The registry's schema migrations, embedded at build time. Run at
/// start-up; sqlx holds an advisory lock while migrating, so instances
/// starting together do not race.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The name of the foreign key from `keys` to `submitters`.
pub const KEYS_SUBMITTER_FKEY: &str = "keys_submitter_fkey";

type Result<T> = std::result::Result<T, RegistryError>;

#[derive(sqlx::FromRow)]
struct SubmitterRow {
    submitter_id: String,
    name: Option<String>,
    created_at: OffsetDateTime,
}

impl TryFrom<SubmitterRow> for Submitter {
    type Error = RegistryError;
    fn try_from(row: SubmitterRow) -> Result<Self> {
        Ok(Submitter {
            submitter_id: SubmitterId::parse(row.submitter_id).map_err(RegistryError::Corrupt)?,
            name: row.name,
            created_at: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    submitter_id: String,
    public_key_pem: String,
    not_before: OffsetDateTime,
    not_after: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
}

impl TryFrom<KeyRow> for KeyInfo {
    type Error = RegistryError;
    fn try_from(row: KeyRow) -> Result<Self> {
        Ok(KeyInfo {
            key_id: KeyId::parse(row.key_id).map_err(RegistryError::Corrupt)?,
            submitter_id: SubmitterId::parse(row.submitter_id).map_err(RegistryError::Corrupt)?,
            public_key_pem: row.public_key_pem,
            not_before: row.not_before,
            not_after: row.not_after,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        })
    }
}

/// A key to insert.
#[derive(Debug)]
pub struct NewKey<'a> {
    /// Its id (thumbprint).
    pub key_id: &'a KeyId,
    /// Its owner.
    pub submitter_id: &'a SubmitterId,
    /// The normalised SPKI PEM.
    pub public_key_pem: &'a str,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: Option<OffsetDateTime>,
    /// Registration time.
    pub created_at: OffsetDateTime,
}

/// The columns of a key row, in [`KeyRow`]'s order (a macro, so queries
/// stay `&'static str` through `concat!`).
macro_rules! key_columns {
    () => {
        "key_id, submitter_id, public_key_pem, not_before, not_after, revoked_at, created_at"
    };
}

/// The registry's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Wraps a pool on a migrated database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts a submitter; `None` when the id is taken already.
    pub async fn insert_submitter(
        &self,
        submitter_id: &SubmitterId,
        name: Option<&str>,
        created_at: OffsetDateTime,
    ) -> Result<Option<Submitter>> {
        sqlx::query_as::<_, SubmitterRow>(
            "INSERT INTO submitters (submitter_id, name, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (submitter_id) DO NOTHING
             RETURNING submitter_id, name, created_at",
        )
        .bind(submitter_id.as_str())
        .bind(name)
        .bind(created_at)
        .fetch_optional(&self.pool)
        .await
        .map_err(RegistryError::db("registering a submitter"))?
        .map(Submitter::try_from)
        .transpose()
    }

    /// One submitter.
    pub async fn submitter(&self, submitter_id: &SubmitterId) -> Result<Option<Submitter>> {
        sqlx::query_as::<_, SubmitterRow>(
            "SELECT submitter_id, name, created_at FROM submitters WHERE submitter_id = $1",
        )
        .bind(submitter_id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(RegistryError::db("reading a submitter"))?
        .map(Submitter::try_from)
        .transpose()
    }

    /// Every submitter, by id.
    pub async fn submitters(&self) -> Result<Vec<Submitter>> {
        sqlx::query_as::<_, SubmitterRow>(
            "SELECT submitter_id, name, created_at FROM submitters ORDER BY submitter_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(RegistryError::db("listing submitters"))?
        .into_iter()
        .map(Submitter::try_from)
        .collect()
    }

    /// Inserts a key; `None` when its id is registered already (to anyone).
    /// A missing owner is [`RegistryError::UnknownSubmitter`].
    pub async fn insert_key(&self, key: NewKey<'_>) -> Result<Option<KeyInfo>> {
        let inserted = sqlx::query_as::<_, KeyRow>(concat!(
            "INSERT INTO keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, NULL, $6)
             ON CONFLICT (key_id) DO NOTHING
             RETURNING ",
            key_columns!()
        ))
        .bind(key.key_id.as_str())
        .bind(key.submitter_id.as_str())
        .bind(key.public_key_pem)
        .bind(key.not_before)
        .bind(key.not_after)
        .bind(key.created_at)
        .fetch_optional(&self.pool)
        .await;
        match inserted {
            Ok(row) => row.map(KeyInfo::try_from).transpose(),
            Err(e) if platform::db::is_foreign_key_violation(&e, Some(KEYS_SUBMITTER_FKEY)) => {
                Err(RegistryError::UnknownSubmitter(key.submitter_id.clone()))
            }
            Err(e) => Err(RegistryError::db("adding a key")(e)),
        }
    }

    /// One key, whoever owns it.
    pub async fn key(&self, key_id: &KeyId) -> Result<Option<KeyInfo>> {
        sqlx::query_as::<_, KeyRow>(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE key_id = $1"
        ))
        .bind(key_id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(RegistryError::db("reading a key"))?
        .map(KeyInfo::try_from)
        .transpose()
    }

    /// A submitter's keys, oldest first.
    pub async fn keys_of(&self, submitter_id: &SubmitterId) -> Result<Vec<KeyInfo>> {
        sqlx::query_as::<_, KeyRow>(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE submitter_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(submitter_id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(RegistryError::db("listing keys"))?
        .into_iter()
        .map(KeyInfo::try_from)
        .collect()
    }

    /// Revokes a submitter's key from `at`, keeping an earlier revocation
    /// time if there is one (atomically, in one statement). `None` when the
    /// submitter has no such key.
    pub async fn revoke_key(
        &self,
        submitter_id: &SubmitterId,
        key_id: &KeyId,
        at: OffsetDateTime,
    ) -> Result<Option<KeyInfo>> {
        // LEAST ignores NULL: an unrevoked key gets `at`.
        sqlx::query_as::<_, KeyRow>(concat!(
            "UPDATE keys SET revoked_at = LEAST(revoked_at, $3)
             WHERE key_id = $1 AND submitter_id = $2
             RETURNING ",
            key_columns!()
        ))
        .bind(key_id.as_str())
        .bind(submitter_id.as_str())
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(RegistryError::db("revoking a key"))?
        .map(KeyInfo::try_from)
        .transpose()
    }
}
