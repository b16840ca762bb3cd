//! Realistic demo and benchmark packages: what a gambling operator's daily
//! report looks like (bets, stakes, payouts, deposits, active players, by
//! game, channel and currency), deterministic for a given seed so that a
//! benchmark or a test can make the same bytes twice.
//!
//! The output is package format v1 exactly as `docs/package-format.md`
//! describes it, serialised compactly; [`crate::parse_package`] accepts every
//! package made here (a test checks it).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rpc_contracts::SubmitterId;
use serde::Serialize;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::SCHEMA_V1;

/// What to generate.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// The submitter the package claims to come from.
    pub submitter_id: SubmitterId,
    /// The deployment it is meant for (`local` for the local run).
    pub audience: String,
    /// How many records (1 to [`crate::MAX_RECORDS`]).
    pub records: usize,
    /// `created_at`; record times run up to it.
    pub created_at: OffsetDateTime,
    /// The span the records' times cover, ending at `records_end`.
    pub span: Duration,
    /// When the records' span ends: `created_at` unless moved back with
    /// [`PackageSpec::records_ending`] (a back-fill: a package made now
    /// reporting an earlier day).
    pub records_end: OffsetDateTime,
    /// The seed: same spec and seed, same bytes (the package id included).
    pub seed: u64,
}

impl PackageSpec {
    /// A spec for `records` records over the hour before `created_at`.
    pub fn new(
        submitter_id: SubmitterId,
        audience: impl Into<String>,
        records: usize,
        created_at: OffsetDateTime,
        seed: u64,
    ) -> Self {
        Self {
            submitter_id,
            audience: audience.into(),
            records,
            created_at,
            span: Duration::hours(1),
            records_end: created_at,
            seed,
        }
    }

    /// The same spec with the records' span ending at `end` instead (no
    /// later than `created_at`).
    pub fn records_ending(mut self, end: OffsetDateTime) -> Self {
        self.records_end = end.min(self.created_at);
        self
    }
}

/// A generated package: its bytes and the id inside them.
#[derive(Debug, Clone)]
pub struct GeneratedPackage {
    /// The `package_id` written into the bytes.
    pub package_id: Uuid,
    /// The package, ready to sign and send.
    pub bytes: Vec<u8>,
}

#[derive(Serialize)]
struct PackageOut<'a> {
    schema: &'static str,
    package_id: Uuid,
    submitter_id: &'a str,
    audience: &'a str,
    created_at: String,
    records: Vec<RecordOut>,
}

#[derive(Serialize)]
struct RecordOut {
    series: &'static str,
    ts: String,
    value: f64,
    labels: BTreeMap<&'static str, &'static str>,
}

const GAMES: &[&str] = &["slots", "roulette", "blackjack", "poker", "sports", "bingo"];
const CHANNELS: &[&str] = &["web", "mobile", "retail"];
const CURRENCIES: &[&str] = &["EUR", "EUR", "EUR", "GBP", "SEK"];

/// Makes one package.
///
/// Records cycle through the series an operator reports; amounts carry two
/// decimals, counts are whole numbers, and the times are spread evenly over
/// [`PackageSpec::span`] with millisecond precision.
pub fn generate_package(spec: &PackageSpec) -> GeneratedPackage {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let package_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let count = spec.records.max(1);
    let start = spec.records_end - spec.span;
    let step_ms = (spec.span.whole_milliseconds() / count as i128).max(1);
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let ts = start + Duration::milliseconds((step_ms * (i as i128 + 1)) as i64);
        let ts = ts.min(spec.records_end);
        let game = GAMES[rng.random_range(0..GAMES.len())];
        let channel = CHANNELS[rng.random_range(0..CHANNELS.len())];
        let currency = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
        let (series, value, labels): (&'static str, f64, BTreeMap<_, _>) = match i % 6 {
            0 => (
                "bets.count",
                f64::from(rng.random_range(1..500u32)),
                BTreeMap::from([("game", game), ("channel", channel)]),
            ),
            1 => (
                "bets.stake",
                cents(rng.random_range(100..5_000_000u64)),
                BTreeMap::from([("game", game), ("channel", channel), ("currency", currency)]),
            ),
            2 => (
                "bets.payout",
                cents(rng.random_range(0..4_800_000u64)),
                BTreeMap::from([("game", game), ("channel", channel), ("currency", currency)]),
            ),
            3 => (
                "deposits.amount",
                cents(rng.random_range(1_000..2_000_000u64)),
                BTreeMap::from([("channel", channel), ("currency", currency)]),
            ),
            4 => (
                "withdrawals.amount",
                cents(rng.random_range(1_000..1_500_000u64)),
                BTreeMap::from([("channel", channel), ("currency", currency)]),
            ),
            _ => (
                "players.active",
                f64::from(rng.random_range(0..20_000u32)),
                BTreeMap::from([("channel", channel)]),
            ),
        };
        records.push(RecordOut {
            series,
            ts: rfc3339(ts),
            value,
            labels,
        });
    }
    let out = PackageOut {
        schema: SCHEMA_V1,
        package_id,
        submitter_id: spec.submitter_id.as_str(),
        audience: &spec.audience,
        created_at: rfc3339(spec.created_at),
        records,
    };
    let bytes = serde_json::to_vec(&out).expect("a generated package always serialises");
    GeneratedPackage { package_id, bytes }
}

fn cents(c: u64) -> f64 {
    c as f64 / 100.0
}

fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339).expect("a generated time always formats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_package;
    use time::macros::datetime;

    fn spec(records: usize, seed: u64) -> PackageSpec {
        PackageSpec::new(
            SubmitterId::parse("operator-1").unwrap(),
            "local",
            records,
            datetime!(2026-11-22 12:00:00 UTC),
            seed,
        )
    }

    #[test]
    fn generated_packages_parse_and_match_their_spec() {
        for records in [1, 6, 100, 10_000] {
            let made = generate_package(&spec(records, 7));
            let package = parse_package(&made.bytes).unwrap();
            assert_eq!(package.records.len(), records);
            assert_eq!(package.package_id, made.package_id);
            assert_eq!(package.package_id.get_version_num(), 4);
            assert_eq!(package.submitter_id.as_str(), "operator-1");
            assert_eq!(package.audience, "local");
            assert!(
                package.records.iter().all(|r| r.ts <= package.created_at
                    && r.ts > package.created_at - Duration::hours(1))
            );
        }
    }

    #[test]
    fn a_back_fill_reports_an_earlier_day_from_a_package_made_now() {
        let end = datetime!(2026-08-01 06:00:00 UTC);
        let made = generate_package(&spec(24, 3).records_ending(end));
        let package = parse_package(&made.bytes).unwrap();
        assert_eq!(package.created_at, datetime!(2026-11-22 12:00:00 UTC));
        assert!(
            package
                .records
                .iter()
                .all(|r| r.ts <= end && r.ts > end - Duration::hours(1))
        );
        // Never after the package was made.
        let later = spec(1, 3).records_ending(datetime!(2027-01-01 00:00:00 UTC));
        assert_eq!(later.records_end, later.created_at);
    }

    #[test]
    fn the_same_seed_makes_the_same_bytes_and_another_seed_does_not() {
        assert_eq!(
            generate_package(&spec(50, 1)).bytes,
            generate_package(&spec(50, 1)).bytes
        );
        let (a, b) = (
            generate_package(&spec(50, 1)),
            generate_package(&spec(50, 2)),
        );
        assert_ne!(a.bytes, b.bytes);
        assert_ne!(a.package_id, b.package_id);
    }
}
