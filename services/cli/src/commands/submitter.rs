//! `tallyhouse submitter …`: register and list submitters.

use crate::commands::{Context, parse_submitter_id};
use crate::error::CliError;
use crate::output::{record, table, time};
use rpc_contracts::SubmitterId;
use rpc_contracts::registry::{self, AddSubmitterRequest, ListSubmittersRequest, Submitter};

/// Submitter commands.
#[derive(Debug, clap::Subcommand)]
pub enum SubmitterCommand {
    /// Register a submitter (repeating the same registration is a no-op).
    Add {
        /// The submitter's id: 1 to 64 of a-z, 0-9, '-', '_', '.'.
        #[arg(value_parser = parse_submitter_id)]
        id: SubmitterId,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List every submitter.
    List,
}

/// Runs a submitter command.
pub async fn run(cmd: SubmitterCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        SubmitterCommand::Add { id, name } => {
            let submitter = ctx
                .rpc
                .call::<registry::AddSubmitter>(&AddSubmitterRequest {
                    submitter_id: id,
                    name,
                })
                .await?;
            ctx.output.print(&submitter, || show(&submitter));
        }
        SubmitterCommand::List => {
            let list = ctx
                .rpc
                .call::<registry::ListSubmitters>(&ListSubmittersRequest {})
                .await?;
            ctx.output.print(&list, || {
                let rows: Vec<Vec<String>> = list
                    .submitters
                    .iter()
                    .map(|s| {
                        vec![
                            s.submitter_id.to_string(),
                            s.name.clone().unwrap_or_else(|| "-".into()),
                            time(s.created_at),
                        ]
                    })
                    .collect();
                table(&["SUBMITTER", "NAME", "CREATED_AT"], &rows)
            });
        }
    }
    Ok(())
}

fn show(s: &Submitter) -> String {
    record(&[
        ("submitter_id", s.submitter_id.to_string()),
        ("name", s.name.clone().unwrap_or_else(|| "-".into())),
        ("created_at", time(s.created_at)),
    ])
}
