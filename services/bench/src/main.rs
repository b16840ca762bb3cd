//! `bench <name>`: runs one benchmark of the Tallyhouse runtime, prints its
//! table and, as the last line of stdout, one JSON object of its figures.

mod cli;
mod cpu;
mod harness;
mod ingest;
mod janitor;
mod load;
mod report;
mod rpc;

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
