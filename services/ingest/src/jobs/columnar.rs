//! The `columnar` job: with Citus and the `citus_columnar` extension,
//! converts the daily partitions whose day ended more than
//! `--columnar-after-days` ago to columnar storage, one partition per
//! transaction, and records each one's size before and after (the
//! compression ratio is a metric). On plain PostgreSQL, or without
//! `citus_columnar`, it says so in the log and leaves the partitions heap.
//!
//! Columnar conversion fails when the table carries what the columnar
//! access method cannot have: foreign keys (refused outright), and, in
//! older Citus releases, indexes inherited from the parent (Citus #4514,
//! #4787, #5351). The schema keeps indexes on the partitions and has no
//! foreign keys; the job checks both before converting anything.

use crate::jobs::partitions;
use crate::jobs::{JobConfig, Report};
use serde_json::json;
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};

/// Whether columnar storage is available, and if not, why.
pub async fn availability(conn: &mut PgConnection) -> anyhow::Result<Result<(), String>> {
    let (citus, columnar): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus'),
                EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(match (citus, columnar) {
        (true, true) => Ok(()),
        (false, _) => Err("Citus is not in use in this database (plain PostgreSQL)".into()),
        (true, false) => {
            Err("the columnar access method is missing (CREATE EXTENSION citus_columnar)".into())
        }
    })
}

/// Converts one partition (its own transaction) and answers its size before
/// and after. Citus refuses its size functions in a transaction that
/// modified shards, so the size after is measured once the conversion
/// committed (migration 0003's function answers `bytes_after` NULL; 0002's
/// measured it inside and failed on Citus).
async fn convert(conn: &mut PgConnection, partition: &str) -> Result<(i64, i64), String> {
    let (before, after): (i64, Option<i64>) =
        sqlx::query_as("SELECT bytes_before, bytes_after FROM tallyhouse_convert_to_columnar($1)")
            .bind(partition)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
    let after = match after {
        Some(after) => after,
        None => sqlx::query_scalar("SELECT citus_total_relation_size($1::regclass)")
            .bind(partition)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| format!("converted, but its size after could not be measured: {e}"))?,
    };
    Ok((before, after))
}

/// The `columnar` job.
pub async fn run(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    run_id: i64,
) -> anyhow::Result<Report> {
    if let Err(reason) = availability(conn).await? {
        tracing::info!(
            reason = %reason,
            "columnar storage is not available: partitions stay heap, nothing converted"
        );
        return Ok(Report::new(
            0,
            json!({ "available": false, "reason": reason }),
        ));
    }
    // What columnar tables cannot carry, on the parent or any partition.
    let foreign_keys: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint
         WHERE contype = 'f'
           AND (conrelid = 'records'::regclass OR confrelid = 'records'::regclass
                OR conrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'records'::regclass)
                OR confrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'records'::regclass))",
    )
    .fetch_all(&mut *conn)
    .await?;
    anyhow::ensure!(
        foreign_keys.is_empty(),
        "records carries foreign keys, which columnar tables cannot have: {}; nothing converted",
        foreign_keys.join(", ")
    );
    let parent_indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'records'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !parent_indexes.is_empty() {
        tracing::warn!(
            indexes = ?parent_indexes,
            "the records parent carries indexes: conversion has failed with inherited indexes in \
             older Citus releases (#4514, #4787, #5351); the schema keeps indexes on the partitions"
        );
    }
    let cutoff = now - Duration::days(i64::from(config.columnar_after_days));
    let candidates: Vec<partitions::Partition> = partitions::list(conn)
        .await?
        .into_iter()
        .filter(|p| p.to() <= cutoff && p.access_method == "heap")
        .collect();
    let mut converted = Vec::new();
    let mut failures = Vec::new();
    for p in &candidates {
        let result = convert(conn, &p.name).await;
        match result {
            Ok((before, after)) => {
                sqlx::query(
                    "INSERT INTO partition_storage (partition_name, access_method, bytes_before, bytes_after, converted_at, run_id)
                     VALUES ($1, 'columnar', $2, $3, clock_timestamp(), $4)
                     ON CONFLICT (partition_name) DO UPDATE
                     SET access_method = 'columnar', bytes_before = EXCLUDED.bytes_before,
                         bytes_after = EXCLUDED.bytes_after, converted_at = EXCLUDED.converted_at,
                         run_id = EXCLUDED.run_id",
                )
                .bind(&p.name)
                .bind(before)
                .bind(after)
                .bind(run_id)
                .execute(&mut *conn)
                .await?;
                let ratio = before as f64 / after.max(1) as f64;
                tracing::info!(partition = %p.name, bytes_before = before, bytes_after = after, ratio, "partition converted to columnar");
                converted.push(json!({
                    "partition": p.name,
                    "bytes_before": before,
                    "bytes_after": after,
                    "ratio": (ratio * 100.0).round() / 100.0,
                }));
            }
            Err(e) => {
                // A failed conversion rolled back (the partition stays
                // heap); the error says when only the measurement failed.
                tracing::error!(partition = %p.name, error = %e, "converting the partition to columnar failed");
                failures.push(json!({ "partition": p.name, "error": e }));
            }
        }
    }
    let mut report = Report::new(
        converted.len() as i64,
        json!({
            "available": true,
            "cutoff_days": config.columnar_after_days,
            "converted": converted,
            "failed": failures,
        }),
    );
    if !failures.is_empty() {
        report.failed = Some(format!(
            "{} of {} partitions could not be converted",
            failures.len(),
            candidates.len()
        ));
    }
    Ok(report)
}
