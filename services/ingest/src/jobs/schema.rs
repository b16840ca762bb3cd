//! What `ingest migrate` does for the lifecycle tables of migration 0002
//! after the migrations: with Citus, distributes the rollup tables by
//! submitter next to `records` and makes `blob_expiries` a reference table;
//! then grants the service role what running the jobs needs (never UPDATE
//! or DELETE on the evidence, nor on seals) and the reader roles SELECT on
//! the rollups. Idempotent.

use anyhow::Context as _;
use sqlx::PgConnection;

/// The tables the rollups are made of, distributed with Citus.
const ROLLUP_TABLES: [&str; 3] = ["rollup_hourly", "rollup_daily", "rollup_dirty"];

/// With Citus: distributes the rollup tables by `submitter_id`, co-located
/// with `packages` and `records`, so that the job's recomputation and the
/// query service's reads of one submitter stay on the node holding its
/// records; makes `blob_expiries` a reference table. The run records,
/// seals and archives stay on the coordinator.
pub async fn distribute(conn: &mut PgConnection) -> anyhow::Result<()> {
    for table in ROLLUP_TABLES {
        let distributed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if distributed {
            continue;
        }
        sqlx::query(
            "SELECT create_distributed_table($1::regclass, 'submitter_id', colocate_with => 'packages')",
        )
        .bind(table)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("distributing {table}"))?;
        tracing::info!(table, "distributed by submitter_id");
    }
    // Read with `packages` in one statement (the cleanup job's anti-joins,
    // the query service's "expired" flag): Citus joins a distributed table
    // with a reference table, not with a table of the coordinator alone
    // ("direct joins between distributed and local tables are not
    // supported"). A few rows a day, copied to every node.
    let reference: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'blob_expiries'::regclass)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !reference {
        sqlx::query("SELECT create_reference_table('blob_expiries')")
            .execute(&mut *conn)
            .await
            .context("making blob_expiries a reference table")?;
        tracing::info!(table = "blob_expiries", "made a reference table");
    }
    Ok(())
}

/// The grants of the lifecycle tables. `service_role` runs the jobs when
/// they are started over RPC (`ingest serve` connects as it) and reads the
/// run records for its metrics; `readers` (the query service's role) read
/// the rollups. Role names were checked by the caller.
pub async fn grant(
    conn: &mut PgConnection,
    service_role: &str,
    readers: &[String],
) -> anyhow::Result<()> {
    let mut statements = vec![
        format!(
            "REVOKE ALL ON job_runs, partition_seals, seal_checks, partition_storage, \
             rollup_hourly, rollup_daily, rollup_dirty, partition_archives, blob_expiries \
             FROM {service_role}"
        ),
        // The cleanup job forgets finished runs and seal checks past the
        // history period.
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON job_runs TO {service_role}"),
        // Seals are written once (a trigger refuses UPDATE and DELETE).
        format!("GRANT SELECT, INSERT ON partition_seals TO {service_role}"),
        format!("GRANT SELECT, INSERT, DELETE ON seal_checks TO {service_role}"),
        // Archives are recorded once verified; only the two functions below
        // (as the owner) change their state. Blob expiries are insert-only.
        format!("GRANT SELECT, INSERT ON partition_archives, blob_expiries TO {service_role}"),
        format!(
            "GRANT EXECUTE ON FUNCTION tallyhouse_drop_archived_partition(text), \
             tallyhouse_begin_restore(text, bigint) TO {service_role}"
        ),
        format!("GRANT SELECT, INSERT, UPDATE ON partition_storage TO {service_role}"),
        format!(
            "GRANT SELECT, INSERT, DELETE ON rollup_hourly, rollup_daily, rollup_dirty TO {service_role}"
        ),
        format!("GRANT EXECUTE ON FUNCTION tallyhouse_convert_to_columnar(text) TO {service_role}"),
    ];
    for reader in readers.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        statements.push(format!(
            "REVOKE ALL ON job_runs, partition_seals, seal_checks, partition_storage, \
             rollup_hourly, rollup_daily, rollup_dirty, partition_archives, blob_expiries \
             FROM {reader}"
        ));
        // The query service tells an expired blob from a lost one.
        statements.push(format!(
            "GRANT SELECT ON rollup_hourly, rollup_daily, rollup_dirty, blob_expiries TO {reader}"
        ));
    }
    for stmt in statements {
        sqlx::query(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(&mut *conn)
            .await
            .with_context(|| stmt.clone())?;
    }
    Ok(())
}
