//! The `tallyhouse` command line: parse, dispatch to the command group,
//! print the outcome. Everything else lives in `commands/` (one module per
//! group), `connection.rs` (reaching the platform over RPC), `gateway.rs`
//! (its public HTTP API), `retry.rs` (backoff), `files.rs` (keys, receipts
//! and signatures on disk), `progress.rs`, `output.rs` (tables and
//! `--json`) and `error.rs`.

mod commands;
mod connection;
mod error;
mod files;
mod gateway;
mod output;
mod progress;
mod retry;

use clap::Parser as _;
use commands::{Cli, Command, Context};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context::new(cli.global);
    let outcome = match cli.command {
        Command::Keygen(args) => commands::keygen::run(args, &ctx),
        Command::Sign(args) => commands::sign::run(args, &ctx),
        Command::Submit(args) => commands::submit::run(args, &ctx).await,
        Command::Receipt(cmd) => commands::receipt::run(cmd, &ctx).await,
        Command::Package(cmd) => commands::package::run(cmd, &ctx),
        Command::Submitter(cmd) => commands::submitter::run(cmd, &ctx).await,
        Command::Key(cmd) => commands::key::run(cmd, &ctx).await,
        Command::User(cmd) => commands::user::run(cmd, &ctx).await,
        Command::Lockout(cmd) => commands::user::run_lockout(cmd, &ctx).await,
        Command::Login(args) => commands::backoffice::login(args, &ctx).await,
        Command::Logout(args) => commands::backoffice::logout(args, &ctx).await,
        Command::Packages(cmd) => commands::backoffice::packages(cmd, &ctx).await,
        Command::Series(args) => commands::backoffice::series(args, &ctx).await,
        Command::Job(cmd) => commands::job::run(cmd, &ctx).await,
        Command::Archive(cmd) => commands::archive::run(cmd, &ctx).await,
        Command::Canary(args) => commands::canary::run(args, &ctx).await,
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
