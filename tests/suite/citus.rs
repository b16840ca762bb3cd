//! The Citus mode of the time series, end to end: `ingest migrate` against a
//! database with the citus extension, packages stored through the running
//! stack, immutability on distributed tables and shards, and an old
//! partition converted to columnar.
//!
//! These tests need a PostgreSQL server that preloads Citus, named by
//! `TALLYHOUSE_TEST_CITUS_DATABASE_URL` (a superuser URL). Each test's
//! database on it is made a single-node Citus database (the server itself is
//! the coordinator and holds the shards). Without the variable (CI) each test
//! prints "skipped: no Citus" and passes.

use evidence::SigningKey;
use rpc_contracts::KeyId;
use serde_json::{Value, json};
use std::process::Command;
use tests::stack::{Stack, StackOptions};
use time::OffsetDateTime;

/// The Citus server of the test command, or `None` (after saying so).
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
fn citus_server(test: &str) -> Option<String> {
    match std::env::var("TALLYHOUSE_TEST_CITUS_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: skipped: no Citus (TALLYHOUSE_TEST_CITUS_DATABASE_URL is unset)");
            None
        }
    }
}

/// A platform whose ingest database is a Citus database on `server`.
async fn citus_stack(server: String) -> Stack {
    let stack = Stack::start(StackOptions {
        ingest_database_server: Some(server),
        ..Default::default()
    })
    .await;
    assert!(
        stack.citus(),
        "the server of TALLYHOUSE_TEST_CITUS_DATABASE_URL does not preload citus (shared_preload_libraries)"
    );
    stack
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A package of `submitter` with one record at each of `times`.
fn package(submitter: &str, times: &[OffsetDateTime]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schema": "tallyhouse.package.v1",
        "package_id": uuid::Uuid::new_v4(),
        "submitter_id": submitter,
        "audience": "local",
        "created_at": rfc3339(platform::clock::now()),
        "records": times.iter().enumerate().map(|(i, t)| json!({
            "series": "bets.stake",
            "ts": rfc3339(*t),
            "value": 10.5 + i as f64,
            "labels": {"game": "poker"}
        })).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// `n` record times counting back from now, a second apart.
fn recent(n: usize) -> Vec<OffsetDateTime> {
    let now = platform::clock::now();
    (0..n)
        .map(|i| now - time::Duration::seconds(i as i64))
        .collect()
}

/// Posts `body` signed with `key`; returns the status and the JSON body.
async fn submit(stack: &Stack, key: &SigningKey, key_id: &KeyId, body: &[u8]) -> (u16, Value) {
    use base64::Engine as _;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", key_id.as_str())
        .header(
            "tallyhouse-signature",
            base64::engine::general_purpose::STANDARD.encode(key.sign(body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.query(sql).await[0]["n"].as_i64().unwrap()
}

async fn text(stack: &Stack, sql: &str) -> String {
    stack.query(sql).await[0]["v"]
        .as_str()
        .unwrap_or_else(|| panic!("no text from {sql}"))
        .to_owned()
}

/// Runs `setup` then `sql` on one connection to the ingest database, as the
/// superuser that owns the tables, or as `role` (`SET ROLE`, so its own
/// privileges apply); returns the database's error, if any.
async fn try_as(
    stack: &Stack,
    role: Option<&str>,
    setup: &[&str],
    sql: &str,
) -> Result<(), String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&stack.ingest_db_url)
        .await
        .expect("connect to the Citus database");
    if let Some(role) = role {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
            .execute(&mut conn)
            .await
            .expect("SET ROLE");
    }
    for s in setup {
        sqlx::query(sqlx::AssertSqlSafe((*s).to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let outcome = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = conn.close().await;
    outcome
}

/// Runs `ingest migrate` again on the stack's database; whether it succeeded.
fn migrate_again(stack: &Stack) -> bool {
    Command::new(tests::workspace_bin("ingest"))
        .arg("migrate")
        .env_clear()
        .env("TALLYHOUSE_ADMIN_DATABASE_URL", &stack.ingest_db_url)
        .env("TALLYHOUSE_SERVICE_ROLE", stack.service_role())
        .env("TALLYHOUSE_REQUIRE_CITUS", "true")
        .status()
        .expect("run ingest migrate")
        .success()
}

/// The partition holding `submitter`'s records (they all fall on one day),
/// by its name (`tableoid` would name a shard: Citus runs the scan there).
async fn partition_of(stack: &Stack, submitter: &str) -> String {
    let rows = stack
        .query(&format!(
            "SELECT DISTINCT 'records_p' || to_char(ts AT TIME ZONE 'UTC', 'YYYYMMDD') AS v \
             FROM records WHERE submitter_id = '{submitter}'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "{submitter}'s records span one partition");
    rows[0]["v"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn migrate_distributes_both_tables_by_submitter_co_located_and_packages_land_in_shards() {
    let Some(server) = citus_server(
        "migrate_distributes_both_tables_by_submitter_co_located_and_packages_land_in_shards",
    ) else {
        return;
    };
    let stack = citus_stack(server).await;

    // Both tables hash-distributed by submitter_id, in one co-location group.
    let tables = stack
        .query(
            "SELECT logicalrelid::regclass::text AS t, partmethod AS m, colocationid AS c, \
                    column_to_column_name(logicalrelid, partkey) AS col \
             FROM pg_dist_partition WHERE logicalrelid IN ('packages'::regclass, 'records'::regclass) \
             ORDER BY 1",
        )
        .await;
    assert_eq!(tables.len(), 2, "{tables:?}");
    for t in &tables {
        assert_eq!(t["m"], "h", "{t}");
        assert_eq!(t["col"], "submitter_id", "{t}");
    }
    assert_eq!(tables[0]["c"], tables[1]["c"], "co-located: {tables:?}");
    let colocation = tables[0]["c"].as_i64().unwrap();
    // Every partition (made by migrate) is distributed in the same group.
    let partitions = count(
        &stack,
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .await;
    assert!(partitions >= 15, "{partitions} partitions");
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) AS n FROM pg_inherits i \
                 JOIN pg_dist_partition p ON p.logicalrelid = i.inhrelid \
                 WHERE i.inhparent = 'records'::regclass AND p.colocationid = {colocation}"
            ),
        )
        .await,
        partitions
    );
    assert_eq!(
        text(
            &stack,
            "SELECT citus_table_type AS v FROM citus_tables WHERE table_name = 'packages'::regclass"
        )
        .await,
        "distributed"
    );

    // Packages stored through the gateway, the RPC and ingest's binary COPY.
    let (acme, acme_key) = stack.submitter_with_key("acme").await;
    let (globex, globex_key) = stack.submitter_with_key("globex").await;
    let acme_body = package("acme", &recent(5));
    let (status, first) = submit(&stack, &acme, &acme_key, &acme_body).await;
    assert_eq!(status, 201, "{first}");
    // Globex's records are ten days old, before the partitions migrate made:
    // ingest creates that day's partition through the SECURITY DEFINER
    // function, and Citus distributes it on creation.
    let ten_days_ago: Vec<_> = recent(3)
        .into_iter()
        .map(|t| t - time::Duration::days(10))
        .collect();
    let (status, body) = submit(
        &stack,
        &globex,
        &globex_key,
        &package("globex", &ten_days_ago),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created = partition_of(&stack, "globex").await;
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) AS n FROM pg_dist_partition WHERE logicalrelid = '{created}'::regclass \
                 AND colocationid = {colocation}"
            )
        )
        .await,
        1,
        "{created} is distributed with the others"
    );
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = '{created}'::regclass \
                 AND tgname IN ('records_immutable', '{created}_no_truncate')"
            )
        )
        .await,
        2,
        "{created} has its triggers"
    );
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 2);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 8);

    // The idempotency lookup and ON CONFLICT work on the distributed table.
    let (status, again) = submit(&stack, &acme, &acme_key, &acme_body).await;
    assert_eq!(status, 200);
    assert_eq!(again["receipt"], first["receipt"]);
    let mut other: Value = serde_json::from_slice(&acme_body).unwrap();
    other["records"][0]["value"] = json!(999.0);
    let (status, _) = submit(
        &stack,
        &acme,
        &acme_key,
        &serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 2);

    // Each submitter's package row and records sit in shards of the same
    // hash range on the same node, and the rows are really in those shards.
    for (submitter, records) in [("acme", 5), ("globex", 3)] {
        let partition = partition_of(&stack, submitter).await;
        let placement = &stack
            .query(&format!(
                "SELECT ps.shardid AS package_shard, rs.shardid AS record_shard, \
                        ps.shardminvalue = rs.shardminvalue AS same_range, \
                        pp.groupid = rp.groupid AS same_node \
                 FROM pg_dist_shard ps JOIN pg_dist_placement pp ON pp.shardid = ps.shardid, \
                      pg_dist_shard rs JOIN pg_dist_placement rp ON rp.shardid = rs.shardid \
                 WHERE ps.shardid = get_shard_id_for_distribution_column('packages', '{submitter}') \
                   AND rs.shardid = get_shard_id_for_distribution_column('{partition}', '{submitter}')"
            ))
            .await[0];
        assert_eq!(placement["same_range"], json!(true), "{placement}");
        assert_eq!(placement["same_node"], json!(true), "{placement}");
        let package_shard = placement["package_shard"].as_i64().unwrap();
        let record_shard = placement["record_shard"].as_i64().unwrap();
        assert_eq!(
            count(
                &stack,
                &format!(
                    "SELECT count(*) AS n FROM packages_{package_shard} WHERE submitter_id = '{submitter}'"
                )
            )
            .await,
            1,
            "{submitter}'s package row in shard {package_shard}"
        );
        assert_eq!(
            count(
                &stack,
                &format!(
                    "SELECT count(*) AS n FROM {partition}_{record_shard} WHERE submitter_id = '{submitter}'"
                )
            )
            .await,
            records,
            "{submitter}'s records in shard {partition}_{record_shard}"
        );
    }

    // Running migrate again (Citus required) changes nothing.
    assert!(migrate_again(&stack), "ingest migrate run twice");
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) AS n FROM pg_dist_partition WHERE colocationid = {colocation} \
                 AND logicalrelid IN ('packages'::regclass, 'records'::regclass)"
            )
        )
        .await,
        2
    );
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 8);
    stack.finish().await;
}

#[tokio::test]
async fn on_citus_rows_are_immutable_for_the_service_role_and_the_owner_down_to_the_shards() {
    let Some(server) = citus_server(
        "on_citus_rows_are_immutable_for_the_service_role_and_the_owner_down_to_the_shards",
    ) else {
        return;
    };
    let stack = citus_stack(server).await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let (status, body) = submit(&stack, &key, &key_id, &package("acme", &recent(2))).await;
    assert_eq!(status, 201, "{body}");
    let partition = partition_of(&stack, "acme").await;
    let role = stack.service_role().to_owned();
    let statements = [
        "UPDATE packages SET size_bytes = 1".to_owned(),
        "DELETE FROM packages".to_owned(),
        "TRUNCATE packages".to_owned(),
        "UPDATE records SET value = 0".to_owned(),
        "DELETE FROM records".to_owned(),
        "TRUNCATE records".to_owned(),
        format!("DELETE FROM {partition}"),
        format!("TRUNCATE {partition}"),
    ];
    for statement in &statements {
        // The service role holds neither the privilege nor the table.
        let err = try_as(&stack, Some(&role), &[], statement)
            .await
            .expect_err(statement);
        assert!(
            err.contains("permission denied"),
            "{statement} as the service role: {err}"
        );
        // The owner (a superuser here) is refused by the triggers, which
        // Citus runs on the shards (row triggers) or on the coordinator
        // before propagating (TRUNCATE).
        let err = try_as(&stack, None, &[], statement)
            .await
            .expect_err(statement);
        assert!(
            err.contains("immutable evidence"),
            "{statement} as the owner: {err}"
        );
    }
    // Even a superuser who unlocks direct changes to shards meets the row
    // trigger on the shard itself.
    let shard = count(
        &stack,
        "SELECT get_shard_id_for_distribution_column('packages', 'acme') AS n",
    )
    .await;
    let err = try_as(
        &stack,
        None,
        &["SET citus.enable_manual_changes_to_shards = on"],
        &format!("DELETE FROM packages_{shard}"),
    )
    .await
    .expect_err("DELETE on a shard");
    assert!(err.contains("immutable evidence"), "{err}");
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM packages").await, 1);
    assert_eq!(count(&stack, "SELECT count(*) AS n FROM records").await, 2);
    stack.finish().await;
}

#[tokio::test]
async fn an_old_partition_converted_to_columnar_keeps_its_rows_refuses_changes_and_takes_late_records()
 {
    let Some(server) = citus_server(
        "an_old_partition_converted_to_columnar_keeps_its_rows_refuses_changes_and_takes_late_records",
    ) else {
        return;
    };
    let stack = citus_stack(server).await;
    // The columnar access method comes from its own extension.
    tests::stack::execute(
        &stack.ingest_db_url,
        "CREATE EXTENSION IF NOT EXISTS citus_columnar",
    )
    .await;
    let (key, key_id) = stack.submitter_with_key("acme").await;
    let now = platform::clock::now();
    let today = now.date();
    let yesterday_noon = OffsetDateTime::new_utc(
        today.previous_day().unwrap(),
        time::Time::from_hms(12, 0, 0).unwrap(),
    );
    let times: Vec<_> = (0..4)
        .map(|i| yesterday_noon + time::Duration::seconds(i))
        .collect();
    let (status, body) = submit(&stack, &key, &key_id, &package("acme", &times)).await;
    assert_eq!(status, 201, "{body}");
    let partition = partition_of(&stack, "acme").await;

    // What the lifecycle job will run: every partition older than today.
    let midnight = rfc3339(OffsetDateTime::new_utc(today, time::Time::MIDNIGHT));
    try_as(
        &stack,
        None,
        // Recreating the partitions' triggers on a distributed table needs it.
        &["SET citus.enable_unsafe_triggers = on"],
        &format!(
            "CALL alter_old_partitions_set_access_method('records', '{midnight}', 'columnar')"
        ),
    )
    .await
    .expect("convert old partitions to columnar");
    let access_method = |table: String| {
        let stack = &stack;
        async move {
            text(
                stack,
                &format!(
                    "SELECT a.amname::text AS v FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
                     WHERE c.oid = '{table}'::regclass"
                ),
            )
            .await
        }
    };
    assert_eq!(access_method(partition.clone()).await, "columnar");
    assert_eq!(
        text(
            &stack,
            &format!("SELECT access_method AS v FROM citus_tables WHERE table_name = '{partition}'::regclass")
        )
        .await,
        "columnar"
    );
    let todays = format!(
        "records_p{:04}{:02}{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    assert_eq!(
        access_method(todays).await,
        "heap",
        "today's partition stays heap"
    );
    // The rows, the partition's own index and its triggers survived.
    let in_partition = format!("SELECT count(*) AS n FROM {partition}");
    assert_eq!(count(&stack, &in_partition).await, 4);
    assert_eq!(
        count(
            &stack,
            &format!("SELECT count(*) AS n FROM pg_indexes WHERE tablename = '{partition}'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = '{partition}'::regclass \
                 AND tgname IN ('records_immutable', '{partition}_no_truncate')"
            )
        )
        .await,
        2
    );

    // Nobody changes it: columnar refuses UPDATE and DELETE itself, the
    // trigger refuses TRUNCATE, and the service role holds no privilege.
    let day = format!(
        "ts >= '{}' AND ts < '{midnight}'",
        rfc3339(yesterday_noon - time::Duration::hours(12))
    );
    for statement in [
        format!("UPDATE records SET value = 0 WHERE {day}"),
        format!("DELETE FROM records WHERE {day}"),
        format!("DELETE FROM {partition}"),
    ] {
        try_as(&stack, None, &[], &statement)
            .await
            .expect_err(&statement);
        let err = try_as(&stack, Some(stack.service_role()), &[], &statement)
            .await
            .expect_err(&statement);
        assert!(err.contains("permission denied"), "{statement}: {err}");
    }
    let err = try_as(&stack, None, &[], &format!("TRUNCATE {partition}"))
        .await
        .expect_err("TRUNCATE");
    assert!(err.contains("immutable evidence"), "{err}");
    assert_eq!(count(&stack, &in_partition).await, 4);

    // A late package with records of that day is still stored (INSERT and
    // COPY into columnar work).
    let late: Vec<_> = (0..2)
        .map(|i| yesterday_noon + time::Duration::hours(1) + time::Duration::seconds(i))
        .collect();
    let (status, body) = submit(&stack, &key, &key_id, &package("acme", &late)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(count(&stack, &in_partition).await, 6);
    assert_eq!(access_method(partition).await, "columnar");
    stack.finish().await;
}

#[tokio::test]
async fn on_citus_concurrent_packages_on_never_seen_days_are_all_stored_once() {
    let Some(server) = citus_server("on_citus_concurrent_packages_on_never_seen_days") else {
        return;
    };
    let stack = citus_stack(server).await;
    crate::ingest::burst_on_never_seen_days(&stack).await;
    stack.finish().await;
}
