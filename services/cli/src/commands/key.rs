//! `tallyhouse key …`: submitters' public keys.

use crate::commands::{Context, input_error, now, parse_key_id, parse_submitter_id, parse_time};
use crate::error::CliError;
use crate::output::{record, table, time, time_or_dash};
use rpc_contracts::registry::{
    self, AddKeyRequest, GetKeyRequest, KeyInfo, ListKeysRequest, RevokeKeyRequest,
};
use rpc_contracts::{KeyId, SubmitterId};
use std::path::PathBuf;
use time::OffsetDateTime;

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Add a P-256 public key to a submitter and print its key id.
    Add {
        /// The key's owner.
        #[arg(value_parser = parse_submitter_id)]
        submitter: SubmitterId,
        /// SPKI PEM file of the public key (`openssl ec -in key.pem -pubout -out pub.pem`).
        public_key_pem_file: PathBuf,
        /// Start of validity, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        not_before: Option<OffsetDateTime>,
        /// End of validity, RFC 3339 (default: none).
        #[arg(long, value_parser = parse_time)]
        not_after: Option<OffsetDateTime>,
    },
    /// List a submitter's keys.
    List {
        /// Whose keys.
        #[arg(value_parser = parse_submitter_id)]
        submitter: SubmitterId,
    },
    /// Show one key, with its PEM.
    Show {
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        key_id: KeyId,
    },
    /// Revoke a submitter's key from a time on (default: now). Packages
    /// received before that time stay valid; an earlier revocation is kept.
    Revoke {
        /// The key's owner.
        #[arg(value_parser = parse_submitter_id)]
        submitter: SubmitterId,
        /// The key id.
        #[arg(value_parser = parse_key_id)]
        key_id: KeyId,
        /// Effective time, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        at: Option<OffsetDateTime>,
    },
}

/// Runs a key command.
pub async fn run(cmd: KeyCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Add {
            submitter,
            public_key_pem_file,
            not_before,
            not_after,
        } => {
            let pem = std::fs::read_to_string(&public_key_pem_file).map_err(|e| {
                input_error(format!(
                    "cannot read {}: {e}",
                    public_key_pem_file.display()
                ))
            })?;
            let key = ctx
                .rpc
                .call::<registry::AddKey>(&AddKeyRequest {
                    submitter_id: submitter,
                    public_key_pem: pem,
                    not_before,
                    not_after,
                })
                .await?;
            ctx.output.print(&key, || key.key_id.to_string());
        }
        KeyCommand::List { submitter } => {
            let list = ctx
                .rpc
                .call::<registry::ListKeys>(&ListKeysRequest {
                    submitter_id: submitter,
                })
                .await?;
            let now = now();
            ctx.output.print(&list, || {
                let rows: Vec<Vec<String>> = list
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.key_id.to_string(),
                            status(k, now).to_owned(),
                            time(k.not_before),
                            time_or_dash(k.not_after),
                            time_or_dash(k.revoked_at),
                            time(k.created_at),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "KEY_ID",
                        "STATUS",
                        "NOT_BEFORE",
                        "NOT_AFTER",
                        "REVOKED_AT",
                        "CREATED_AT",
                    ],
                    &rows,
                )
            });
        }
        KeyCommand::Show { key_id } => {
            let key = ctx
                .rpc
                .call::<registry::GetKey>(&GetKeyRequest { key_id })
                .await?;
            let now = now();
            ctx.output.print(&key, || show(&key, now));
        }
        KeyCommand::Revoke {
            submitter,
            key_id,
            at,
        } => {
            let key = ctx
                .rpc
                .call::<registry::RevokeKey>(&RevokeKeyRequest {
                    submitter_id: submitter,
                    key_id,
                    at,
                })
                .await?;
            let now = now();
            ctx.output.print(&key, || show(&key, now));
        }
    }
    Ok(())
}

/// A key's state at `now`: `revoked`, `pending` (not valid yet), `expired`
/// or `active`.
pub fn status(key: &KeyInfo, now: OffsetDateTime) -> &'static str {
    if key.revoked_at.is_some_and(|r| r <= now) {
        "revoked"
    } else if key.not_before > now {
        "pending"
    } else if key.not_after.is_some_and(|a| a <= now) {
        "expired"
    } else {
        "active"
    }
}

fn show(k: &KeyInfo, now: OffsetDateTime) -> String {
    let mut out = record(&[
        ("key_id", k.key_id.to_string()),
        ("submitter_id", k.submitter_id.to_string()),
        ("status", status(k, now).to_owned()),
        ("not_before", time(k.not_before)),
        ("not_after", time_or_dash(k.not_after)),
        ("revoked_at", time_or_dash(k.revoked_at)),
        ("created_at", time(k.created_at)),
    ]);
    out.push_str(&k.public_key_pem);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn status_follows_validity_and_revocation() {
        let mut key = KeyInfo {
            key_id: KeyId::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap(),
            submitter_id: SubmitterId::parse("acme").unwrap(),
            public_key_pem: String::new(),
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: Some(datetime!(2027-01-01 00:00 UTC)),
            revoked_at: None,
            created_at: datetime!(2026-01-01 00:00 UTC),
        };
        assert_eq!(status(&key, datetime!(2025-12-31 00:00 UTC)), "pending");
        assert_eq!(status(&key, datetime!(2026-06-01 00:00 UTC)), "active");
        assert_eq!(status(&key, datetime!(2027-01-01 00:00 UTC)), "expired");
        key.revoked_at = Some(datetime!(2026-07-01 00:00 UTC));
        assert_eq!(status(&key, datetime!(2026-06-01 00:00 UTC)), "active");
        assert_eq!(status(&key, datetime!(2026-07-01 00:00 UTC)), "revoked");
    }
}
