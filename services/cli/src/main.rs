//! The `tallyhouse` command line: parse, dispatch to the command group,
//! print the outcome. Everything else lives in `commands/` (one module per
//! group), `connection.rs` (reaching the platform over RPC), `output.rs`
//! (tables and `--json`) and `error.rs`.

mod commands;
mod connection;
mod error;
mod output;

use clap::Parser as _;
use commands::{Cli, Command, Context};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context::new(cli.global);
    let outcome = match cli.command {
        Command::Submitter(cmd) => commands::submitter::run(cmd, &ctx).await,
        Command::Key(cmd) => commands::key::run(cmd, &ctx).await,
    };
    ctx.close().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ctx.output.error(&e);
            e.exit_code()
        }
    }
}
