//! The time-series schema: migrations (plain PostgreSQL), distribution when
//! the citus extension has been created in the database, grants for the
//! service role, and the check `serve` makes that the schema is current.

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

impl Mode {
    /// Citus when the `citus` extension has been created in this database
    /// (by an operator, as a superuser); plain PostgreSQL otherwise, even
    /// when the server has Citus installed: loading it into a database is a
    /// deliberate act (it needs `shared_preload_libraries` and a node
    /// topology), so `migrate` never creates the extension itself.
    async fn detect(conn: &mut sqlx::PgConnection) -> anyhow::Result<Self> {
        let created: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
        )
        .fetch_one(&mut *conn)
        .await
        .context("looking for the citus extension")?;
        Ok(if created { Self::Citus } else { Self::Plain })
    }
}

/// Runs `ingest migrate`.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(args.admin_database_url.expose_secret())
        .await
        .context("connecting as the database owner")?;
    let mode = Mode::detect(&mut conn).await?;
    if mode == Mode::Plain {
        let installed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')",
        )
        .fetch_one(&mut conn)
        .await?;
        anyhow::ensure!(
            !args.require_citus,
            "--require-citus: the citus extension is not created in this database{}",
            if installed {
                " (the server has it: run CREATE EXTENSION citus as a superuser)"
            } else {
                " (the server does not have Citus installed)"
            }
        );
        if installed {
            tracing::info!(
                "the server has Citus installed but this database has not created the extension: \
                 staying plain (CREATE EXTENSION citus, then run migrate again, to distribute)"
            );
        }
    } else {
        // Triggers on distributed tables (the immutability triggers, and any
        // a later migration adds) are refused without this setting; ours
        // only raise, so they are safe on shards.
        sqlx::query("SET citus.enable_unsafe_triggers = on")
            .execute(&mut conn)
            .await?;
    }
    MIGRATOR
        .run(&mut conn)
        .await
        .context("running migrations")?;
    if mode == Mode::Citus {
        distribute(&mut conn).await?;
        crate::jobs::schema::distribute(&mut conn).await?;
    }
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
    // Append-only for the service: read and insert, nothing else. With
    // Citus, grants on a distributed table are propagated to its shards.
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
    grant_readers(&mut conn, &args.reader_roles, role).await?;
    crate::jobs::schema::grant(&mut conn, role, &args.reader_roles).await?;
    // The same function as the partitions-ahead job's.
    let created = crate::jobs::partitions::ensure_ahead(
        &mut conn,
        platform::clock::now(),
        args.partitions_ahead_days,
    )
    .await
    .context("creating partitions ahead")?
    .created;
    // The columnar access method comes from the citus_columnar extension,
    // which an operator creates (it is not created with citus itself).
    let columnar: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar')")
            .fetch_one(&mut conn)
            .await?;
    tracing::info!(
        mode = ?mode,
        partitions_created = created,
        columnar,
        "time-series schema ready"
    );
    match mode {
        Mode::Plain => tracing::info!(
            "Citus is not in use: tables stay on this node and partitions stay heap (no columnar)"
        ),
        Mode::Citus if !columnar => tracing::info!(
            "the columnar access method is missing: CREATE EXTENSION citus_columnar to convert old partitions"
        ),
        Mode::Citus => {}
    }
    Ok(())
}

/// Distributes both tables by submitter, co-located, and lets the partition
/// function create triggers on distributed partitions. Idempotent: a table
/// already distributed is left alone, and the result is checked either way.
async fn distribute(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    for (table, colocate_with) in [("packages", "default"), ("records", "packages")] {
        let distributed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if distributed {
            continue;
        }
        // The table names are constants of this function.
        let had_rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {table})"
        )))
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "SELECT create_distributed_table($1::regclass, 'submitter_id', colocate_with => $2)",
        )
        .bind(table)
        .bind(colocate_with)
        .execute(&mut *conn)
        .await
        .with_context(|| {
            format!(
                "distributing {table} (shards need a node: add workers, or let the coordinator \
                 hold them with citus_set_node_property(host, port, 'shouldhaveshards', true))"
            )
        })?;
        tracing::info!(table, "distributed by submitter_id");
        if had_rows {
            // Citus copied the rows into the shards; its clean-up of the
            // local copy is a TRUNCATE, which the immutability trigger refuses.
            tracing::warn!(
                table,
                "the table had rows: they were copied into its shards, and the hidden local copy \
                 stays on disk until an operator removes it (see docs/storage.md)"
            );
        }
    }
    let placement: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT logicalrelid::regclass::text, column_to_column_name(logicalrelid, partkey), colocationid
         FROM pg_dist_partition
         WHERE logicalrelid IN ('packages'::regclass, 'records'::regclass) AND partmethod = 'h'
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .context("reading the distribution of packages and records")?;
    let by_submitter = placement
        .iter()
        .all(|(_, column, _)| column == "submitter_id");
    let colocated = placement.windows(2).all(|w| w[0].2 == w[1].2);
    anyhow::ensure!(
        placement.len() == 2 && by_submitter && colocated,
        "packages and records must be hash-distributed by submitter_id and co-located; found {placement:?}"
    );
    // The service role creates partitions through this SECURITY DEFINER
    // function; creating their TRUNCATE trigger needs the setting too.
    sqlx::query(
        "ALTER FUNCTION tallyhouse_ensure_partitions(timestamptz, timestamptz) \
         SET citus.enable_unsafe_triggers = on",
    )
    .execute(&mut *conn)
    .await
    .context("letting the partition function create triggers")?;
    Ok(())
}

/// Grants each reader role (the query service's) read access and nothing
/// else: CONNECT on the database, USAGE on the schema, SELECT on `packages`
/// and `records`. Partitions need no grant: PostgreSQL checks privileges on
/// the table a query names, so rows are read through the parent, and a
/// reader cannot read a partition directly. A reader may be neither the
/// service role, nor a superuser, nor the database's owner. Idempotent.
async fn grant_readers(
    conn: &mut sqlx::PgConnection,
    readers: &[String],
    service_role: &str,
) -> anyhow::Result<()> {
    let readers: Vec<&str> = readers
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .collect();
    if readers.is_empty() {
        return Ok(());
    }
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let db = db.replace('"', "\"\"");
    for reader in &readers {
        anyhow::ensure!(
            reader
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "invalid reader role name {reader:?}"
        );
        anyhow::ensure!(
            *reader != service_role,
            "the reader role {reader} is the service role, which must keep INSERT"
        );
        let found: Option<(bool, bool)> = sqlx::query_as(
            "SELECT r.rolsuper, pg_get_userbyid(d.datdba) = r.rolname
             FROM pg_roles r, pg_database d
             WHERE r.rolname = $1 AND d.datname = current_database()",
        )
        .bind(reader)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((superuser, owner)) = found else {
            anyhow::bail!("the reader role {reader} does not exist; provision it first");
        };
        anyhow::ensure!(
            !superuser && !owner,
            "the reader role {reader} is a superuser or owns the database: it could change the evidence"
        );
        for stmt in [
            format!("GRANT CONNECT ON DATABASE \"{db}\" TO {reader}"),
            format!("REVOKE CREATE ON SCHEMA public FROM {reader}"),
            format!("GRANT USAGE ON SCHEMA public TO {reader}"),
            format!("REVOKE ALL ON packages, records FROM {reader}"),
            format!("GRANT SELECT ON packages, records TO {reader}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
                .execute(&mut *conn)
                .await
                .with_context(|| stmt.clone())?;
        }
    }
    tracing::info!(readers = ?readers, "reader roles may SELECT packages and records");
    Ok(())
}

/// The newest migration this build knows.
pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
