//! Why an agent step failed, by kind, so the CLI can map each kind to its exit code.

use super::client::ClientError;
use super::state::config::ConfigError;
use crate::os::runner::ExecuteError;
use std::fmt;

/// Why an agent step failed; each kind maps to its own exit code.
#[derive(Debug)]
pub enum AgentError {
    /// Bad configuration or usage.
    Usage(String),
    /// The config file could not be read or written.
    Config(ConfigError),
    /// The coordination server was unreachable or refused.
    Server(ClientError),
    /// The first registration failed in a way retrying cannot fix (no or a bad join token,
    /// a refused hostname, a server address that cannot work): `up` stops instead of
    /// retrying forever.
    Join(ClientError),
    /// A system command failed.
    Command(ExecuteError),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Usage(m) => f.write_str(m),
            AgentError::Config(e) => e.fmt(f),
            AgentError::Server(e) => e.fmt(f),
            AgentError::Join(e) => write!(f, "cannot join the mesh: {e}"),
            AgentError::Command(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError::Server(e)
    }
}

impl From<ConfigError> for AgentError {
    fn from(e: ConfigError) -> Self {
        AgentError::Config(e)
    }
}

impl From<ExecuteError> for AgentError {
    fn from(e: ExecuteError) -> Self {
        AgentError::Command(e)
    }
}
