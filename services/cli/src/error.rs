//! What can go wrong in a command, and how each failure is reported: an RPC
//! error keeps its wire code and message; a gateway refusal keeps its
//! problem `code`; the rest are local problems, unreachable servers, or
//! evidence that does not verify.

use rpc_contracts::RpcError;
use std::process::ExitCode;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The platform answered with an error (or the call failed in transit).
    #[error("{}: {}{}", .0.code, .0.message, if .0.retryable { " (retryable)" } else { "" })]
    Rpc(RpcError),
    /// The gateway refused a request (an HTTP problem answer), or a batch
    /// had packages refused.
    #[error("{0}")]
    Rejected(String),
    /// The command's input is unusable (a file that cannot be read, say).
    #[error("{0}")]
    Input(String),
    /// Vault, the brokers or the gateway could not be reached or refused
    /// us, or stayed unavailable through every retry.
    #[error("{0}")]
    Connect(String),
    /// A signature or receipt does not verify, or a receipt does not match
    /// the package it is checked against.
    #[error("{0}")]
    Verification(String),
}

impl From<RpcError> for CliError {
    fn from(e: RpcError) -> Self {
        Self::Rpc(e)
    }
}

impl CliError {
    /// The process exit code: 1 for an error answered by the platform, 3
    /// for a local input problem, 4 when the platform could not be reached,
    /// 5 when evidence does not verify (clap uses 2 for usage errors).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Rpc(_) | Self::Rejected(_) => ExitCode::from(1),
            Self::Input(_) => ExitCode::from(3),
            Self::Connect(_) => ExitCode::from(4),
            Self::Verification(_) => ExitCode::from(5),
        }
    }
}
