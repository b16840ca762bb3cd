//! `tallyhouse package generate`: realistic demo packages (an operator's
//! bets, stakes, payouts, deposits and players) written as files ready for
//! `sign` or `submit`, made by `evidence::generate`.

use crate::commands::{Context, now, parse_submitter_id, parse_time};
use crate::error::CliError;
use crate::files::{PUBLIC_MODE, replace, write_new};
use crate::output::table;
use evidence::generate::{PackageSpec, generate_package};
use evidence::{MAX_RECORDS, parse_package};
use rpc_contracts::SubmitterId;
use serde::Serialize;
use std::path::PathBuf;
use time::{OffsetDateTime, UtcOffset};

/// Package commands.
#[derive(Debug, clap::Subcommand)]
pub enum PackageCommand {
    /// Write demo packages (format v1) as `<package_id>.json` files.
    ///
    /// Package i (from 0) of a run with --seed S is made from seed S+i: the
    /// same seed, submitter, audience, record count and --created-at make
    /// the same bytes. Without --seed the seed is random, so every run
    /// makes new package ids.
    Generate(GenerateArgs),
}

/// What to generate.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The submitter the packages claim to come from.
    #[arg(long, value_parser = parse_submitter_id)]
    pub submitter: SubmitterId,
    /// Records per package.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_RECORDS as i64))]
    pub records: u32,
    /// How many packages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Folder to write them into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// The deployment the packages are meant for.
    #[arg(long, default_value = "local")]
    pub audience: String,
    /// Seed of the first package (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The packages' `created_at`, RFC 3339 (default: now); record times
    /// cover the hour before it. The platform accepts packages created in
    /// the last 7 days and up to 5 minutes ahead.
    #[arg(long, value_parser = parse_time)]
    pub created_at: Option<OffsetDateTime>,
    /// Replace a file of the same name whose bytes differ (by default only
    /// identical bytes may be written again).
    #[arg(long)]
    pub force: bool,
}

/// One package written.
#[derive(Debug, Serialize)]
pub struct Written {
    /// The file.
    pub file: PathBuf,
    /// The `package_id` inside it.
    pub package_id: String,
    /// Its number of records.
    pub records: u32,
    /// Its size in bytes.
    pub bytes: usize,
    /// The seed it was made from.
    pub seed: u64,
}

/// The packages written.
#[derive(Debug, Serialize)]
pub struct Generated {
    /// One entry per package, in seed order.
    pub packages: Vec<Written>,
}

/// Runs a package command.
pub fn run(cmd: PackageCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        PackageCommand::Generate(args) => generate(args, ctx),
    }
}

fn generate(args: GenerateArgs, ctx: &Context) -> Result<(), CliError> {
    let created_at = args
        .created_at
        .unwrap_or_else(now)
        .to_offset(UtcOffset::UTC);
    let first_seed = args.seed.unwrap_or_else(rand::random);
    std::fs::create_dir_all(&args.out).map_err(|e| {
        CliError::Input(format!(
            "cannot create the folder {}: {e}",
            args.out.display()
        ))
    })?;
    let mut written = Vec::with_capacity(args.count as usize);
    for i in 0..args.count {
        let seed = first_seed.wrapping_add(u64::from(i));
        let spec = PackageSpec::new(
            args.submitter.clone(),
            args.audience.clone(),
            args.records as usize,
            created_at,
            seed,
        );
        let made = generate_package(&spec);
        // What the platform would refuse is not worth writing.
        parse_package(&made.bytes)
            .map_err(|e| CliError::Input(format!("the package would not be valid: {e}")))?;
        let file = args.out.join(format!("{}.json", made.package_id));
        write_package(&file, &made.bytes, args.force)?;
        written.push(Written {
            file,
            package_id: made.package_id.to_string(),
            records: args.records,
            bytes: made.bytes.len(),
            seed,
        });
    }
    let generated = Generated { packages: written };
    ctx.output.print(&generated, || {
        let rows: Vec<Vec<String>> = generated
            .packages
            .iter()
            .map(|w| {
                vec![
                    w.file.display().to_string(),
                    w.package_id.clone(),
                    w.records.to_string(),
                    w.bytes.to_string(),
                ]
            })
            .collect();
        table(&["FILE", "PACKAGE_ID", "RECORDS", "BYTES"], &rows)
    });
    Ok(())
}

/// Writes a package file; an existing file may only be written again with
/// the same bytes (its receipt stays true), unless `force`.
fn write_package(file: &std::path::Path, bytes: &[u8], force: bool) -> Result<(), CliError> {
    let cannot =
        |e: std::io::Error| CliError::Input(format!("cannot write {}: {e}", file.display()));
    match write_new(file, bytes, PUBLIC_MODE) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read(file).is_ok_and(|old| old == bytes) {
                Ok(())
            } else if force {
                replace(file, bytes, PUBLIC_MODE).map_err(cannot)
            } else {
                Err(CliError::Input(format!(
                    "{} already exists with other bytes: refusing to overwrite it (--force \
                     replaces it; a receipt for the old bytes would no longer match)",
                    file.display()
                )))
            }
        }
        Err(e) => Err(cannot(e)),
    }
}
