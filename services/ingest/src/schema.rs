//! The time-series schema: migrations (plain PostgreSQL), distribution when
//! the Citus extension exists, grants for the service role, and the check
//! `serve` makes that the schema is current.

use crate::args::MigrateArgs;
use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::Connection as _;
use sqlx::migrate::Migrator;

/// The embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// What the database offers for the time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native partitioning only: heap partitions on one node.
    Plain,
    /// Citus: tables distributed by submitter; columnar available for old partitions.
    Citus,
}

/// Runs `ingest migrate`.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(args.admin_database_url.expose_secret())
        .await
        .context("connecting as the database owner")?;
    MIGRATOR
        .run(&mut conn)
        .await
        .context("running migrations")?;
    let citus_available: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')",
    )
    .fetch_one(&mut conn)
    .await?;
    let mode = if citus_available {
        distribute(&mut conn).await?;
        Mode::Citus
    } else {
        Mode::Plain
    };
    let role = &args.service_role;
    anyhow::ensure!(
        role.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "invalid service role name {role:?}"
    );
    let role_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut conn)
            .await?;
    anyhow::ensure!(
        role_exists,
        "the service role {role} does not exist; provision it first"
    );
    // The owner of a schema may drop any table in it: the service role must
    // own neither the database nor the schema.
    let database_owned_by_role: bool = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba) = $1 FROM pg_database WHERE datname = current_database()",
    )
    .bind(role)
    .fetch_one(&mut conn)
    .await?;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    let db = db.replace('"', "\"\"");
    let mut statements = Vec::new();
    if database_owned_by_role {
        statements.push(format!("ALTER DATABASE \"{db}\" OWNER TO CURRENT_USER"));
    }
    // It keeps the right to connect, whoever owns the database.
    statements.push(format!("GRANT CONNECT ON DATABASE \"{db}\" TO {role}"));
    for stmt in statements {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut conn)
            .await?;
    }
    // Append-only for the service: read and insert, nothing else.
    for stmt in [
        "ALTER SCHEMA public OWNER TO CURRENT_USER".to_owned(),
        format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("REVOKE ALL ON packages, records FROM {role}"),
        format!("GRANT SELECT, INSERT ON packages, records TO {role}"),
        // `serve` checks the schema version at start-up.
        format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
        format!(
            "GRANT EXECUTE ON FUNCTION tallyhouse_ensure_partitions(timestamptz, timestamptz) TO {role}"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut conn)
            .await
            .with_context(|| stmt.clone())?;
    }
    let created: i32 = sqlx::query_scalar(
        "SELECT tallyhouse_ensure_partitions(now() - interval '2 days', now() + make_interval(days => $1))",
    )
    .bind(args.partitions_ahead_days as i32)
    .fetch_one(&mut conn)
    .await?;
    tracing::info!(
        mode = ?mode,
        partitions_created = created,
        columnar = mode == Mode::Citus,
        "time-series schema ready"
    );
    if mode == Mode::Plain {
        tracing::info!(
            "Citus is not installed: tables stay on this node and partitions stay heap (no columnar)"
        );
    }
    Ok(())
}

/// Distributes both tables by submitter, co-located, when Citus is present.
/// Idempotent: a table already distributed is left alone.
async fn distribute(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
        .execute(&mut *conn)
        .await?;
    // Row triggers (immutability) on distributed tables need this setting.
    sqlx::query("SET citus.enable_unsafe_triggers = on")
        .execute(&mut *conn)
        .await?;
    for (table, colocate) in [("packages", "default"), ("records", "packages")] {
        let distributed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if !distributed {
            sqlx::query("SELECT create_distributed_table($1, 'submitter_id', colocate_with => $2)")
                .bind(table)
                .bind(colocate)
                .execute(&mut *conn)
                .await
                .with_context(|| format!("distributing {table}"))?;
        }
    }
    Ok(())
}

/// The newest migration this build knows.
pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
