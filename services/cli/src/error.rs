//! What can go wrong in a command, and how each failure is reported: an RPC
//! error keeps its wire code and message; the rest are local problems.

use rpc_contracts::RpcError;
use std::process::ExitCode;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The platform answered with an error (or the call failed in transit).
    #[error("{}: {}{}", .0.code, .0.message, if .0.retryable { " (retryable)" } else { "" })]
    Rpc(RpcError),
    /// The command's input is unusable (a file that cannot be read, say).
    #[error("{0}")]
    Input(String),
    /// Vault or the brokers could not be reached or refused us.
    #[error("{0}")]
    Connect(String),
}

impl From<RpcError> for CliError {
    fn from(e: RpcError) -> Self {
        Self::Rpc(e)
    }
}

impl CliError {
    /// The process exit code: 1 for an error answered by the platform, 3
    /// for a local input problem, 4 when the platform could not be reached
    /// (clap uses 2 for usage errors).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Rpc(_) => ExitCode::from(1),
            Self::Input(_) => ExitCode::from(3),
            Self::Connect(_) => ExitCode::from(4),
        }
    }
}
