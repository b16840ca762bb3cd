//! The ingest service's flags.

use crate::jobs::JobOptions;
use platform::config::CommonArgs;
use platform::db::DatabaseArgs;
use platform::s3::S3Args;
use secrecy::SecretString;

/// Flags of `ingest serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The time-series database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The evidence bucket.
    #[command(flatten)]
    pub s3: S3Args,
    /// This deployment's name: packages must be signed for it.
    #[arg(long, env = "TALLYHOUSE_AUDIENCE", default_value = "local")]
    pub audience: String,
    /// How far in the past a package's `created_at` may be, in seconds.
    #[arg(long, env = "TALLYHOUSE_CREATED_AT_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub created_at_max_age_secs: u64,
    /// How far in the future a package's `created_at` may be (clock skew), in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_CREATED_AT_MAX_SKEW_SECS",
        default_value_t = 300
    )]
    pub created_at_max_skew_secs: u64,
    /// Oldest record time accepted, in days before the receive time.
    #[arg(long, env = "TALLYHOUSE_RECORD_MAX_AGE_DAYS", default_value_t = 400)]
    pub record_max_age_days: u32,
    /// How long a key looked up in the registry is trusted, in milliseconds.
    #[arg(long, env = "TALLYHOUSE_KEY_CACHE_TTL_MS", default_value_t = 2_000)]
    pub key_cache_ttl_ms: u64,
    /// Signature verifications at once (default: the number of cores).
    #[arg(long, env = "TALLYHOUSE_VERIFY_CONCURRENCY")]
    pub verify_concurrency: Option<usize>,
    /// Bodies up to this size (bytes) are verified and parsed on the task
    /// that received them (well under a millisecond of work, while the bytes
    /// are still in that core's cache); larger ones on a blocking thread.
    #[arg(
        long,
        env = "TALLYHOUSE_INLINE_VERIFY_MAX_BYTES",
        default_value_t = 64 * 1024
    )]
    pub inline_verify_max_bytes: usize,
    /// The bucket archived partitions go to (the same endpoint and
    /// credentials as the evidence bucket).
    #[arg(
        long,
        env = "TALLYHOUSE_ARCHIVE_BUCKET",
        default_value = "tallyhouse-archive"
    )]
    pub archive_bucket: String,
    /// How often the receipt signing keys are read again from Vault, in
    /// seconds: a rotated key reaches every instance within this time
    /// (keep it well below the rotation's activation delay).
    #[arg(long, env = "TALLYHOUSE_SIGNING_KEY_RELOAD_SECS", default_value_t = 30)]
    pub signing_key_reload_secs: u64,
    /// The lifecycle jobs, when run over RPC (`tallyhouse job run`).
    #[command(flatten)]
    pub jobs: JobOptions,
}

/// Flags of `ingest migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Connection URL of the database owner (a deploy-time credential).
    #[arg(long, env = "TALLYHOUSE_ADMIN_DATABASE_URL", hide_env_values = true)]
    pub admin_database_url: SecretString,
    /// The role the service connects as; it gets SELECT and INSERT only.
    #[arg(
        long,
        env = "TALLYHOUSE_SERVICE_ROLE",
        default_value = "tallyhouse_ingest"
    )]
    pub service_role: String,
    /// Deployment name, a log label.
    #[arg(long, env = "TALLYHOUSE_ENVIRONMENT", default_value = "local")]
    pub environment: String,
    /// Days of partitions to create ahead of today.
    #[arg(long, env = "TALLYHOUSE_PARTITIONS_AHEAD_DAYS", default_value_t = 14)]
    pub partitions_ahead_days: u32,
    /// Fail unless the citus extension has been created in the database
    /// (without it, a database without Citus is migrated as plain PostgreSQL).
    #[arg(long, env = "TALLYHOUSE_REQUIRE_CITUS")]
    pub require_citus: bool,
    /// Read-only roles (the query service's): CONNECT, USAGE on the schema
    /// and SELECT on packages and records, nothing else. Repeat the flag or
    /// separate names with commas.
    #[arg(
        long = "reader-role",
        env = "TALLYHOUSE_READER_ROLE",
        value_delimiter = ','
    )]
    pub reader_roles: Vec<String>,
}
