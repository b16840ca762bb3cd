//! The command tree. Each group of commands is a module with its own clap
//! `Subcommand` enum (or `Args` struct) and a `run` function; adding one
//! means a module here, a variant in [`Command`] and one line in
//! `main.rs`'s dispatch. Operator commands (`submitter`, `key`) speak RPC;
//! submitter-side ones (`keygen`, `sign`, `submit`, `receipt`, `package`)
//! work on local files and the gateway's public HTTP API.
pub mod archive;
pub mod backoffice;
pub mod canary;
pub mod job;
pub mod key;
pub mod keygen;
pub mod package;
pub mod receipt;
pub mod sign;
pub mod submit;
pub mod submitter;
pub mod user;

use crate::connection::{ConnectionArgs, Rpc};
use crate::error::CliError;
use crate::output::Output;
use rpc_contracts::{KeyId, SubmitterId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const AFTER_HELP: &str = "\
Submitting: keygen makes a key pair; an operator registers the public key
(key add); package generate writes demo packages; submit signs and posts
them to the gateway (--gateway / TALLYHOUSE_GATEWAY_URL, default
http://127.0.0.1:8080) and saves each receipt as FILE.receipt; receipt
verify checks a receipt against the platform's keys and the package.

Connection (operator commands): submitter and key publish RPC calls on the
brokers of --amqp-uri, with broker credentials read from Vault at
<prefix>/cli/amqp. The Vault token is --vault-token / VAULT_TOKEN, else the
contents of --vault-token-file, else .run/state/tokens/cli found in the
current directory or a parent: deployment/vault-provision.sh (run by
deployment/up.sh) writes that file for the local run, so from a checkout
with the platform running locally no flag is needed.

Output: tables for people by default; --json prints JSON on stdout (the RPC
response types; one object per package and a summary for submit), and an
RPC error as {\"error\": {code, message, retryable}} on stderr. Exit
status: 0 on success, 1 when the platform answered with an error or
refused a package, 2 on a usage error, 3 on unusable input, 4 when Vault,
the brokers or the gateway cannot be reached (or stay unavailable through
every retry), 5 when a receipt or signature does not verify or does not
match its package. See docs/cli.md.";

/// Tallyhouse command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tallyhouse",
    version,
    about = "Tallyhouse command line: submit signed packages, verify receipts, operate the platform",
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
    /// Print results as JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// How to reach the platform.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// The command groups.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a new P-256 signing key pair (submitter).
    Keygen(keygen::KeygenArgs),
    /// Sign files: FILE.sig is what `openssl dgst -sha256 -sign KEY FILE |
    /// base64 -w0` gives (submitter).
    Sign(sign::SignArgs),
    /// Sign and submit packages to the gateway, saving each receipt as
    /// FILE.receipt (submitter).
    Submit(submit::SubmitArgs),
    /// Verify receipts (submitter, anyone holding a receipt).
    #[command(subcommand)]
    Receipt(receipt::ReceiptCommand),
    /// Generate demo packages (submitter, tests, demos).
    #[command(subcommand)]
    Package(package::PackageCommand),
    /// Register and list submitters (operator).
    #[command(subcommand)]
    Submitter(submitter::SubmitterCommand),
    /// Add, list, show and revoke submitters' public keys (operator).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Add, list, disable and enable back-office users, set their roles
    /// and passwords (operator).
    #[command(subcommand)]
    User(user::UserCommand),
    /// List and clear login throttling of accounts and addresses (operator).
    #[command(subcommand)]
    Lockout(user::LockoutCommand),
    /// Log in to the back office; the token is kept in the user's
    /// configuration directory (0600) for the commands below (back office).
    Login(backoffice::LoginArgs),
    /// Revoke and forget the back-office token (back office).
    Logout(backoffice::LogoutArgs),
    /// List packages, show one, download its original bytes (back office).
    #[command(subcommand)]
    Packages(backoffice::PackagesCommand),
    /// Time-bucketed aggregates of a series, as a table or CSV (back office).
    Series(backoffice::SeriesArgs),
    /// Run a data lifecycle job now and follow its runs (operator).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Restore an archived partition (operator).
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// End-to-end canary: submit, verify and read back a package through
    /// the public gateway every interval, with metrics (operations).
    Canary(canary::CanaryArgs),
}

/// What a command runs with: how to print, and RPC made on first use.
pub struct Context {
    /// Human or JSON output.
    pub output: Output,
    /// Calls to the platform.
    pub rpc: Rpc,
    /// How to reach the platform (Vault address, mount and prefix, for
    /// commands that read secrets of their own: `canary`).
    pub connection: ConnectionArgs,
}

impl Context {
    /// A context for `global`; nothing is connected yet.
    pub fn new(global: GlobalArgs) -> Self {
        Self {
            output: Output { json: global.json },
            connection: global.connection.clone(),
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

/// The wall clock: key status for display, and the default `created_at`
/// of generated packages.
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
