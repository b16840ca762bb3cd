//! The command tree. Each group of commands is a module with its own clap
//! `Subcommand` enum and a `run` function; adding a group (submitter-side
//! `keygen`, `sign`, `submit`, `receipt verify`, `package generate`, or
//! back-office ones) means a module here, a variant in [`Command`] and one
//! line in `main.rs`'s dispatch.

pub mod key;
pub mod submitter;

use crate::connection::{ConnectionArgs, Rpc};
use crate::error::CliError;
use crate::output::Output;
use rpc_contracts::{KeyId, SubmitterId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const AFTER_HELP: &str = "\
Connection: commands that talk to the platform publish RPC calls on the
brokers of --amqp-uri, with broker credentials read from Vault at
<prefix>/cli/amqp. The Vault token is --vault-token / VAULT_TOKEN, else the
contents of --vault-token-file, else .run/state/tokens/cli found in the
current directory or a parent: deployment/vault-provision.sh (run by
deployment/up.sh) writes that file for the local run, so from a checkout
with the platform running locally no flag is needed.

Output: tables for people by default; --json prints the RPC response as
JSON on stdout, and an RPC error as {\"error\": {code, message, retryable}}
on stderr. Exit status: 0 on success, 1 when the platform answered with an
error, 2 on a usage error, 3 on unusable input, 4 when Vault or the brokers
cannot be reached.";

/// Tallyhouse command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tallyhouse",
    version,
    about = "Tallyhouse command line: operate the platform over RPC",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Print results as JSON (the RPC response types) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// How to reach the platform.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// The command groups.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register and list submitters (operator).
    #[command(subcommand)]
    Submitter(submitter::SubmitterCommand),
    /// Add, list, show and revoke submitters' public keys (operator).
    #[command(subcommand)]
    Key(key::KeyCommand),
}

/// What a command runs with: how to print, and RPC made on first use.
pub struct Context {
    /// Human or JSON output.
    pub output: Output,
    /// Calls to the platform.
    pub rpc: Rpc,
}

impl Context {
    /// A context for `global`; nothing is connected yet.
    pub fn new(global: GlobalArgs) -> Self {
        Self {
            output: Output { json: global.json },
            rpc: Rpc::new(global.connection),
        }
    }

    /// Closes what was opened.
    pub async fn close(&self) {
        self.rpc.close().await;
    }
}

/// Clap parser of a submitter id.
pub fn parse_submitter_id(s: &str) -> Result<SubmitterId, String> {
    SubmitterId::parse(s)
}

/// Clap parser of a key id.
pub fn parse_key_id(s: &str) -> Result<KeyId, String> {
    KeyId::parse(s)
}

/// Clap parser of an RFC 3339 time (`2026-06-01T12:00:00Z`).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-06-01T12:00:00Z: {e}"))
}

/// The wall clock, for display decisions only (key status).
pub fn now() -> OffsetDateTime {
    platform::clock::now()
}

/// Maps a failure of the command's own input.
pub fn input_error(what: impl std::fmt::Display) -> CliError {
    CliError::Input(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser as _};

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_ids_are_checked() {
        let cli = Cli::try_parse_from([
            "tallyhouse",
            "key",
            "list",
            "acme",
            "--json",
            "--amqp-uri",
            "amqp://a:1/%2f,amqp://b:1/%2f",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.connection.amqp_uris.len(), 2);
        assert!(Cli::try_parse_from(["tallyhouse", "key", "list", "Not An Id"]).is_err());
        assert!(
            Cli::try_parse_from(["tallyhouse", "key", "revoke", "acme", "short"]).is_err(),
            "key ids are 43 base64url characters"
        );
        assert!(
            Cli::try_parse_from([
                "tallyhouse",
                "key",
                "revoke",
                "acme",
                "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                "--at",
                "yesterday"
            ])
            .is_err()
        );
    }
}
