//! The exit codes `wgmesh` promises (README "Commands and exit codes"), the error every
//! subcommand returns carrying one, and how the agent's errors map onto them.

use crate::agent::error::AgentError;
use crate::agent::state::config::ConfigError;

/// Success.
pub const EXIT_OK: u8 = 0;
/// An unexpected internal error.
pub const EXIT_INTERNAL: u8 = 1;
/// Bad usage, configuration or input.
pub const EXIT_USAGE: u8 = 2;
/// The coordination server is unreachable or refused.
pub const EXIT_SERVER: u8 = 3;
/// A system command failed.
pub const EXIT_COMMAND: u8 = 4;
/// Local state could not be read or written.
pub const EXIT_STATE: u8 = 5;
/// A check found a problem (`netcheck`).
pub const EXIT_CHECK: u8 = 6;
/// Another agent already runs with this config (`up`, `sync`): not an error to retry.
pub const EXIT_RUNNING: u8 = 7;

/// A failure with its exit code; `main` prints the message once on stderr.
#[derive(Debug)]
pub struct CliError {
    /// One of the EXIT_* codes.
    pub code: u8,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl CliError {
    /// Builds a failure.
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for an agent error: bad input 2, the server 3, a command 4, local state 5.
pub(super) fn agent_failure(e: AgentError) -> CliError {
    let code = match &e {
        AgentError::Usage(_) => EXIT_USAGE,
        AgentError::Config(ConfigError::Invalid(..)) => EXIT_USAGE,
        AgentError::Config(ConfigError::Io(_)) => EXIT_STATE,
        AgentError::Server(_) | AgentError::Join(_) => EXIT_SERVER,
        AgentError::Command(_) => EXIT_COMMAND,
    };
    CliError::new(code, e.to_string())
}
