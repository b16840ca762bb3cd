//! `bench <name>`: runs one benchmark of the Tallyhouse runtime, prints its
//! table and, as the last line of stdout, one JSON object of its figures.

mod auth;
mod cli;
mod compare;
mod cpu;
mod harness;
mod ingest;
mod janitor;
mod load;
mod local;
mod report;
mod rollup;
mod rpc;
mod series;
mod signing;

use clap::Parser as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let options = cli::Options::parse();
    if options.list {
        for b in harness::registry() {
            println!("{:<14} {}", b.name(), b.about());
        }
        return ExitCode::SUCCESS;
    }
    match harness::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
