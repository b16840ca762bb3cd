//! The query service end to end: packages submitted through the gateway of a
//! whole platform, then read back over RPC — lists in stable pages, package
//! details and original bytes, and series aggregates checked against an
//! independent computation over the very records sent.

use evidence::generate::{PackageSpec, generate_package};
use evidence::{SigningKey, parse_package, sha256_hex};
use rpc_contracts::query::{
    Aggregate, GetPackage, GetPackageRequest, ListPackages, ListPackagesRequest, MAX_PACKAGE_PAGE,
    MAX_RAW_CHUNK, MAX_SERIES_PAGE, PackagePage, PackageSummary, ReadRaw, ReadRawRequest, Series,
    SeriesPage, SeriesPoint, SeriesRequest,
};
use rpc_contracts::{ErrorCode, KeyId, RpcError, SubmitterId};
use std::collections::BTreeMap;
use std::time::Duration;
use tests::stack::{Stack, StackOptions, try_execute};
use time::OffsetDateTime;
use uuid::Uuid;

/// A submitter of the stack, with its signing key.
struct Submitter {
    id: SubmitterId,
    key: SigningKey,
    key_id: KeyId,
}

/// What was sent for one package.
struct Sent {
    package_id: Uuid,
    body: Vec<u8>,
    signature: String,
    receipt: String,
}

async fn submitter(stack: &Stack, name: &str) -> Submitter {
    let (key, key_id) = stack.submitter_with_key(name).await;
    Submitter {
        id: SubmitterId::parse(name).unwrap(),
        key,
        key_id,
    }
}

fn random_seed() -> u64 {
    Uuid::new_v4().as_u128() as u64
}

/// A generated package of `records` records over `span` before `created_at`.
fn package(
    who: &Submitter,
    records: usize,
    created_at: OffsetDateTime,
    span: time::Duration,
) -> Vec<u8> {
    let mut spec = PackageSpec::new(who.id.clone(), "local", records, created_at, random_seed());
    spec.span = span;
    generate_package(&spec).bytes
}

/// Signs and POSTs `body` through the gateway; it must be accepted.
async fn submit(stack: &Stack, who: &Submitter, body: Vec<u8>) -> Sent {
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::STANDARD.encode(who.key.sign(&body));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/packages", stack.base_url))
        .header("content-type", "application/json")
        .header("tallyhouse-key-id", who.key_id.as_str())
        .header("tallyhouse-signature", &signature)
        .body(body.clone())
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let receipt = resp.json::<serde_json::Value>().await.unwrap()["receipt"]
        .as_str()
        .unwrap()
        .to_owned();
    Sent {
        package_id: parse_package(&body).unwrap().package_id,
        body,
        signature,
        receipt,
    }
}

async fn submit_new(stack: &Stack, who: &Submitter, records: usize) -> Sent {
    let body = package(
        who,
        records,
        platform::clock::now(),
        time::Duration::hours(1),
    );
    submit(stack, who, body).await
}

fn list(submitter: Option<&Submitter>, limit: u32, cursor: Option<String>) -> ListPackagesRequest {
    ListPackagesRequest {
        submitter_id: submitter.map(|s| s.id.clone()),
        from: None,
        to: None,
        limit,
        cursor,
    }
}

/// Every page of a list, from its first.
async fn all_pages(stack: &Stack, mut req: ListPackagesRequest) -> Vec<PackageSummary> {
    let mut out = Vec::new();
    loop {
        let page: PackagePage = stack.query_call::<ListPackages>(&req).await.unwrap();
        assert!(page.packages.len() <= req.limit as usize);
        out.extend(page.packages);
        match page.next_cursor {
            Some(c) => req.cursor = Some(c),
            None => return out,
        }
    }
}

fn ids(packages: &[PackageSummary]) -> Vec<Uuid> {
    packages.iter().map(|p| p.package_id).collect()
}

#[tokio::test]
async fn package_pages_are_newest_first_and_stable_while_packages_arrive() {
    let stack = Stack::start(StackOptions::default()).await;
    let acme = submitter(&stack, "acme").await;
    let rival = submitter(&stack, "rival").await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(submit_new(&stack, &acme, 12).await);
    }
    submit_new(&stack, &rival, 6).await;

    // Pages of 2 over acme's 5, with newer packages arriving between pages:
    // the pages hold exactly the 5 that existed, newest first, once each.
    let first = stack
        .query_call::<ListPackages>(&list(Some(&acme), 2, None))
        .await
        .unwrap();
    let mut paged = first.packages.clone();
    let mut cursor = first.next_cursor;
    let mut arrived = Vec::new();
    while let Some(c) = cursor {
        arrived.push(submit_new(&stack, &acme, 3).await);
        let page = stack
            .query_call::<ListPackages>(&list(Some(&acme), 2, Some(c)))
            .await
            .unwrap();
        assert!(page.packages.len() <= 2);
        paged.extend(page.packages);
        cursor = page.next_cursor;
    }
    let expected: Vec<Uuid> = sent.iter().rev().map(|s| s.package_id).collect();
    assert_eq!(ids(&paged), expected, "no duplicate, no skip, newest first");
    assert_eq!(arrived.len(), 2, "3 pages, 2 arrivals between them");

    // What a summary says is what was sent.
    for (summary, s) in paged.iter().zip(sent.iter().rev()) {
        let parsed = parse_package(&s.body).unwrap();
        assert_eq!(summary.submitter_id, acme.id);
        assert_eq!(summary.sha256, sha256_hex(&s.body));
        assert_eq!(summary.size, s.body.len() as u64);
        assert_eq!(summary.records, parsed.records.len() as u64);
        assert_eq!(summary.created_at, parsed.created_at);
    }

    // Without a filter: everyone's, ordered by (received_at, submitter, id)
    // descending, the same in pages of 3 as in one page.
    let everything = stack
        .query_call::<ListPackages>(&list(None, MAX_PACKAGE_PAGE, None))
        .await
        .unwrap();
    assert_eq!(everything.packages.len(), 5 + 2 + 1);
    assert_eq!(everything.next_cursor, None);
    let key = |p: &PackageSummary| (p.received_at, p.submitter_id.clone(), p.package_id);
    assert!(
        everything
            .packages
            .windows(2)
            .all(|w| key(&w[0]) > key(&w[1]))
    );
    assert_eq!(
        ids(&all_pages(&stack, list(None, 3, None)).await),
        ids(&everything.packages)
    );
    let rivals = all_pages(&stack, list(Some(&rival), 2, None)).await;
    assert_eq!(rivals.len(), 1);
    assert_eq!(rivals[0].submitter_id, rival.id);

    // from (inclusive) and to (exclusive) on received_at.
    let acme_all = all_pages(&stack, list(Some(&acme), MAX_PACKAGE_PAGE, None)).await;
    assert_eq!(acme_all.len(), 7);
    let windowed = all_pages(
        &stack,
        ListPackagesRequest {
            from: Some(acme_all[5].received_at),
            to: Some(acme_all[1].received_at),
            ..list(Some(&acme), 2, None)
        },
    )
    .await;
    assert_eq!(ids(&windowed), ids(&acme_all[2..=5]));

    let metrics = stack.scrape_metrics("query").await;
    assert!(
        metrics.contains("tallyhouse_query_rows_served_total{method=\"query.v1.list_packages\"}"),
        "{metrics}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_package_reads_back_as_sent_in_chunks_and_lost_evidence_is_internal() {
    let stack = Stack::start(StackOptions::default()).await;
    let acme = submitter(&stack, "acme").await;
    let sent = submit_new(&stack, &acme, 60).await;
    let total = sent.body.len() as u64;
    assert!(total > 5_000, "a package of several chunks ({total} bytes)");

    let detail = stack
        .query_call::<GetPackage>(&GetPackageRequest {
            submitter_id: acme.id.clone(),
            package_id: sent.package_id,
        })
        .await
        .unwrap();
    let parsed = parse_package(&sent.body).unwrap();
    assert_eq!(detail.summary.package_id, sent.package_id);
    assert_eq!(detail.summary.submitter_id, acme.id);
    assert_eq!(detail.summary.sha256, sha256_hex(&sent.body));
    assert_eq!(detail.summary.size, total);
    assert_eq!(detail.summary.records, 60);
    assert_eq!(detail.summary.created_at, parsed.created_at);
    assert_eq!(detail.audience, "local");
    assert_eq!(detail.key_id, acme.key_id);
    assert_eq!(
        detail.signature, sent.signature,
        "the signature header as sent"
    );
    assert_eq!(
        detail.receipt, sent.receipt,
        "the receipt the submitter got"
    );

    // 1000-byte chunks reassemble to exactly the bytes sent.
    let read = |offset: u64, max_len: u32| ReadRawRequest {
        submitter_id: acme.id.clone(),
        package_id: sent.package_id,
        offset,
        max_len,
    };
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < total {
        let chunk = stack
            .query_call::<ReadRaw>(&read(bytes.len() as u64, 1000))
            .await
            .unwrap();
        assert_eq!(chunk.total_size, total);
        let expected = (total - bytes.len() as u64).min(1000);
        assert_eq!(chunk.bytes.0.len() as u64, expected);
        bytes.extend(chunk.bytes.0);
    }
    assert_eq!(bytes, sent.body);
    let whole = stack
        .query_call::<ReadRaw>(&read(0, MAX_RAW_CHUNK))
        .await
        .unwrap();
    assert_eq!(whole.bytes.0, sent.body);
    let end = stack.query_call::<ReadRaw>(&read(total, 10)).await.unwrap();
    assert!(end.bytes.0.is_empty(), "at the end: an empty chunk");
    let metrics = stack.scrape_metrics("query").await;
    assert!(
        metrics.contains("tallyhouse_query_raw_served_bytes_total"),
        "{metrics}"
    );

    // Unknown packages: not_found, also for another submitter's id.
    let rival = submitter(&stack, "rival").await;
    for (submitter_id, package_id) in [
        (acme.id.clone(), Uuid::new_v4()),
        (rival.id.clone(), sent.package_id),
    ] {
        let get = stack
            .query_call::<GetPackage>(&GetPackageRequest {
                submitter_id: submitter_id.clone(),
                package_id,
            })
            .await
            .unwrap_err();
        assert_eq!(get.code, ErrorCode::NotFound, "{get}");
        let raw = stack
            .query_call::<ReadRaw>(&ReadRawRequest {
                submitter_id,
                package_id,
                offset: 0,
                max_len: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(raw.code, ErrorCode::NotFound, "{raw}");
    }

    // The row without its blob: evidence lost, an internal error.
    let blob_key = platform::s3::blob_key(&sha256_hex(&sent.body));
    stack
        .evidence
        .client()
        .delete_object()
        .bucket(&stack.bucket)
        .key(&blob_key)
        .send()
        .await
        .expect("delete the blob");
    let lost = stack
        .query_call::<ReadRaw>(&read(0, 1000))
        .await
        .unwrap_err();
    assert_eq!(lost.code, ErrorCode::Internal, "{lost}");
    assert!(!lost.retryable);
    stack.finish().await;
}

/// The series the test computes itself, from the records as parsed.
struct Expected<'a> {
    records: &'a [(SubmitterId, evidence::Record)],
}

impl Expected<'_> {
    fn points(&self, req: &SeriesRequest) -> Vec<SeriesPoint> {
        let width = i128::from(req.bucket_secs) * 1_000_000_000;
        let mut buckets: BTreeMap<i128, (f64, f64, f64, u64)> = BTreeMap::new();
        for (who, r) in self.records {
            let in_range = r.ts >= req.from && r.ts < req.to;
            let labelled = req.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v));
            if *who != req.submitter_id || r.series != req.series || !in_range || !labelled {
                continue;
            }
            let start = r.ts.unix_timestamp_nanos().div_euclid(width) * width;
            let b = buckets
                .entry(start)
                .or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
            b.0 += r.value;
            b.1 = b.1.min(r.value);
            b.2 = b.2.max(r.value);
            b.3 += 1;
        }
        buckets
            .into_iter()
            .map(|(start, (sum, min, max, count))| SeriesPoint {
                bucket: OffsetDateTime::from_unix_timestamp_nanos(start).unwrap(),
                value: match req.agg {
                    Aggregate::Sum => sum,
                    Aggregate::Avg => sum / count as f64,
                    Aggregate::Min => min,
                    Aggregate::Max => max,
                    Aggregate::Count => count as f64,
                },
                count,
            })
            .collect()
    }
}

fn assert_points_match(got: &[SeriesPoint], expected: &[SeriesPoint], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: number of buckets");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!((g.bucket, g.count), (e.bucket, e.count), "{what}");
        let tolerance = 1e-12 * g.value.abs().max(e.value.abs()).max(1.0);
        assert!(
            (g.value - e.value).abs() <= tolerance,
            "{what} at {}: got {}, expected {}",
            g.bucket,
            g.value,
            e.value
        );
    }
}

async fn series_pages(stack: &Stack, mut req: SeriesRequest) -> (Vec<SeriesPoint>, usize) {
    let mut points = Vec::new();
    let mut pages = 0;
    loop {
        let page: SeriesPage = stack.query_call::<Series>(&req).await.unwrap();
        pages += 1;
        assert!(page.points.len() <= req.limit as usize);
        points.extend(page.points);
        match page.next_cursor {
            Some(after) => req.after = Some(after),
            None => return (points, pages),
        }
    }
}

#[tokio::test]
async fn series_aggregates_equal_an_independent_computation_over_the_records_sent() {
    let stack = Stack::start(StackOptions::default()).await;
    let acme = submitter(&stack, "acme").await;
    let rival = submitter(&stack, "rival").await;
    let now = platform::clock::now();
    let mut records = Vec::new();
    // Three of acme's packages with overlapping spans, and one of rival's
    // in the same series and times (the submitter filter must drop it).
    for (who, created_at, span_h) in [
        (&acme, now, 3),
        (&acme, now - time::Duration::minutes(40), 2),
        (&acme, now - time::Duration::minutes(95), 1),
        (&rival, now, 3),
    ] {
        let body = package(who, 600, created_at, time::Duration::hours(span_h));
        let parsed = parse_package(&body).unwrap();
        records.extend(parsed.records.into_iter().map(|r| (who.id.clone(), r)));
        submit(&stack, who, body).await;
    }
    let expected = Expected { records: &records };
    let base = SeriesRequest {
        submitter_id: acme.id.clone(),
        series: "bets.stake".into(),
        // Not on a bucket boundary: the first bucket is partial.
        from: now - time::Duration::minutes(170) - time::Duration::milliseconds(1500),
        to: now + time::Duration::minutes(1),
        bucket_secs: 60,
        agg: Aggregate::Sum,
        labels: BTreeMap::new(),
        after: None,
        limit: MAX_SERIES_PAGE,
    };
    let eur = BTreeMap::from([("currency".to_owned(), "EUR".to_owned())]);
    let web_slots = BTreeMap::from([
        ("channel".to_owned(), "web".to_owned()),
        ("game".to_owned(), "slots".to_owned()),
    ]);
    let mut checked = 0;
    for bucket_secs in [60, 3600] {
        for labels in [BTreeMap::new(), eur.clone(), web_slots.clone()] {
            for agg in Aggregate::ALL {
                let req = SeriesRequest {
                    bucket_secs,
                    agg,
                    labels: labels.clone(),
                    ..base.clone()
                };
                let want = expected.points(&req);
                assert!(!want.is_empty());
                let page = stack.query_call::<Series>(&req).await.unwrap();
                assert_eq!(page.next_cursor, None, "one page holds them all");
                let what = format!("{} per {bucket_secs} s with {labels:?}", agg.as_str());
                assert_points_match(&page.points, &want, &what);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 30);

    // Pages of 7 one-minute buckets: the same points, in order, once each.
    let whole = expected.points(&base);
    let (paged, pages) = series_pages(
        &stack,
        SeriesRequest {
            limit: 7,
            ..base.clone()
        },
    )
    .await;
    assert!(pages > 10, "{pages} pages");
    assert_points_match(&paged, &whole, "pages of 7");
    // Another series and another submitter's view of the same times.
    let deposits = SeriesRequest {
        series: "deposits.amount".into(),
        agg: Aggregate::Count,
        bucket_secs: 600,
        ..base.clone()
    };
    assert_points_match(
        &series_pages(
            &stack,
            SeriesRequest {
                limit: 2,
                ..deposits.clone()
            },
        )
        .await
        .0,
        &expected.points(&deposits),
        "deposits in pages of 2",
    );
    let theirs = SeriesRequest {
        submitter_id: rival.id.clone(),
        ..base.clone()
    };
    assert_points_match(
        &stack.query_call::<Series>(&theirs).await.unwrap().points,
        &expected.points(&theirs),
        "rival's",
    );
    // Nothing matches: an empty page, no cursor.
    let none = stack
        .query_call::<Series>(&SeriesRequest {
            series: "no.such.series".into(),
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!((none.points.len(), none.next_cursor), (0, None));
    stack.finish().await;
}

#[tokio::test]
async fn every_bad_parameter_is_a_bad_request_naming_its_field() {
    let stack = Stack::start(StackOptions::default()).await;
    let acme = submitter(&stack, "acme").await;
    let sent = submit_new(&stack, &acme, 6).await;
    submit_new(&stack, &acme, 6).await;
    let now = platform::clock::now();
    let unfiltered_cursor = stack
        .query_call::<ListPackages>(&list(None, 1, None))
        .await
        .unwrap()
        .next_cursor
        .expect("a second page");

    let listing = |f: &dyn Fn(&mut ListPackagesRequest)| {
        let mut req = list(Some(&acme), 10, None);
        f(&mut req);
        req
    };
    let series = |f: &dyn Fn(&mut SeriesRequest)| {
        let mut req = SeriesRequest {
            submitter_id: acme.id.clone(),
            series: "bets.stake".into(),
            from: now - time::Duration::hours(2),
            to: now,
            bucket_secs: 60,
            agg: Aggregate::Avg,
            labels: BTreeMap::new(),
            after: None,
            limit: 100,
        };
        f(&mut req);
        req
    };
    let raw = |offset: u64, max_len: u32| ReadRawRequest {
        submitter_id: acme.id.clone(),
        package_id: sent.package_id,
        offset,
        max_len,
    };
    let size = sent.body.len() as u64;
    let mut cases: Vec<(&str, &str, RpcError)> = Vec::new();
    for (what, field, req) in [
        ("list limit 0", "limit", listing(&|r| r.limit = 0)),
        (
            "list limit too big",
            "limit",
            listing(&|r| r.limit = MAX_PACKAGE_PAGE + 1),
        ),
        (
            "garbage cursor",
            "cursor",
            listing(&|r| r.cursor = Some("garbage!".into())),
        ),
        (
            "cursor of other filters",
            "cursor",
            listing(&|r| r.cursor = Some(unfiltered_cursor.clone())),
        ),
        (
            "list from == to",
            "from",
            listing(&|r| {
                r.from = Some(now);
                r.to = Some(now);
            }),
        ),
    ] {
        cases.push((
            what,
            field,
            stack.query_call::<ListPackages>(&req).await.unwrap_err(),
        ));
    }
    for (what, field, req) in [
        ("max_len 0", "max_len", raw(0, 0)),
        ("max_len too big", "max_len", raw(0, MAX_RAW_CHUNK + 1)),
        ("offset past the end", "offset", raw(size + 1, 10)),
    ] {
        cases.push((
            what,
            field,
            stack.query_call::<ReadRaw>(&req).await.unwrap_err(),
        ));
    }
    for (what, field, req) in [
        ("series limit 0", "limit", series(&|r| r.limit = 0)),
        (
            "series limit too big",
            "limit",
            series(&|r| r.limit = MAX_SERIES_PAGE + 1),
        ),
        (
            "upper-case series",
            "series",
            series(&|r| r.series = "Bets.Stake".into()),
        ),
        (
            "empty series",
            "series",
            series(&|r| r.series = String::new()),
        ),
        (
            "trailing dot",
            "series",
            series(&|r| r.series = "bets.".into()),
        ),
        ("bucket 0", "bucket_secs", series(&|r| r.bucket_secs = 0)),
        (
            "bucket over 366 days",
            "bucket_secs",
            series(&|r| r.bucket_secs = 366 * 86_400 + 1),
        ),
        ("from == to", "from", series(&|r| r.from = r.to)),
        (
            "from after to",
            "from",
            series(&|r| r.from = r.to + time::Duration::SECOND),
        ),
        (
            "bad label key",
            "labels",
            series(&|r| r.labels = BTreeMap::from([("Game".into(), "slots".into())])),
        ),
        (
            "empty label value",
            "labels",
            series(&|r| r.labels = BTreeMap::from([("game".into(), String::new())])),
        ),
        (
            "after not on a bucket start",
            "after",
            series(&|r| r.after = Some(now.replace_nanosecond(500_000_000).unwrap())),
        ),
    ] {
        cases.push((
            what,
            field,
            stack.query_call::<Series>(&req).await.unwrap_err(),
        ));
    }
    for (what, field, err) in &cases {
        assert_eq!(err.code, ErrorCode::BadRequest, "{what}: {err}");
        assert!(
            err.message.starts_with(&format!("{field}: ")),
            "{what}: the message must name {field}: {err}"
        );
        assert!(!err.retryable, "{what}");
    }
    assert_eq!(cases.len(), 20);
    stack.finish().await;
}

#[tokio::test]
async fn the_query_role_reads_through_the_parents_and_can_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let acme = submitter(&stack, "acme").await;
    submit_new(&stack, &acme, 6).await;
    let reader = stack.reader_db_url();
    try_execute(&reader, "SELECT count(*) FROM packages")
        .await
        .expect("the reader reads packages");
    try_execute(&reader, "SELECT count(*) FROM records")
        .await
        .expect("the reader reads records, through the parent");
    let partition = stack
        .query("SELECT tablename AS t FROM pg_tables WHERE tablename LIKE 'records_p%' LIMIT 1")
        .await[0]["t"]
        .as_str()
        .unwrap()
        .to_owned();
    for (sql, table) in [
        (
            "INSERT INTO packages (submitter_id, package_id, sha256, size_bytes, record_count, key_id, signature, audience, created_at, received_at, blob_key, receipt) \
             VALUES ('acme', gen_random_uuid(), sha256('x'), 1, 0, 'k', '\\x00', 'local', now(), now(), 'b', 'r')".to_owned(),
            "packages",
        ),
        (
            "INSERT INTO records (submitter_id, ts, series, value, labels, package_id, ordinal) \
             VALUES ('acme', now(), 'bets.stake', 1, '{}', gen_random_uuid(), 0)".to_owned(),
            "records",
        ),
        ("UPDATE packages SET receipt = 'forged'".to_owned(), "packages"),
        ("UPDATE records SET value = 0".to_owned(), "records"),
        ("DELETE FROM packages".to_owned(), "packages"),
        ("DELETE FROM records".to_owned(), "records"),
        ("TRUNCATE records".to_owned(), "records"),
        (format!("SELECT count(*) FROM {partition}"), partition.as_str()),
        (format!("DELETE FROM {partition}"), partition.as_str()),
    ] {
        let err = try_execute(&reader, &sql)
            .await
            .expect_err(&format!("{sql} must be refused"));
        assert!(
            err.contains(&format!("permission denied for table {table}")),
            "{sql}: {err}"
        );
    }
    let err = try_execute(&reader, "CREATE TABLE public.x (a int)")
        .await
        .expect_err("no CREATE on the schema");
    assert!(err.contains("permission denied for schema public"), "{err}");
    assert_eq!(
        stack.query("SELECT count(*) AS n FROM packages").await[0]["n"],
        1,
        "nothing changed"
    );

    // The service refuses to start with a role that could write (the
    // superuser here), whatever its secret says.
    let prefix = format!("{}-w", stack.topology.namespace());
    let (host, port, _, _) = platform::testing::database_login(&stack.ingest_db_url);
    let db = stack.ingest_db_url.rsplit('/').next().unwrap().to_owned();
    let (s3_endpoint, s3_key, s3_secret) = tests::stack::s3_settings();
    for (kind, fields) in [
        ("amqp", vec![("username", "guest"), ("password", "guest")]),
        (
            "database",
            vec![("username", "postgres"), ("password", "unused")],
        ),
        (
            "s3",
            vec![
                ("access_key_id", s3_key.as_str()),
                ("secret_access_key", s3_secret.as_str()),
            ],
        ),
    ] {
        platform::testing::put_secret(&prefix, "query", kind, &fields).await;
    }
    let log = std::env::temp_dir().join(format!("{prefix}-query.log"));
    let mut cmd = tests::service_command(
        "query",
        &prefix,
        &[
            ("TALLYHOUSE_DATABASE_HOST", host),
            ("TALLYHOUSE_DATABASE_PORT", port.to_string()),
            ("TALLYHOUSE_DATABASE_NAME", db),
            ("TALLYHOUSE_S3_ENDPOINT", s3_endpoint),
        ],
    );
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut writer = tests::ChildProcess::spawn("query", &mut cmd).expect("spawn query");
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = writer.try_wait() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "query did not refuse to start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!status.success(), "query must refuse a role that may write");
    assert!(
        stderr.contains("role postgres may change packages or records"),
        "{stderr}"
    );
    stack.finish().await;
}
