//! Why a call to the coordination server failed, by what the agent does about it: keep the
//! mesh and retry (unreachable), register again (unknown peer), or give up (refused,
//! protocol, unauthentic). Its own file so the transport and TLS code below the client can
//! name it without importing the client.

use std::fmt;

/// Why a call to the server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No answer: DNS, connection refused, timeout.
    Unreachable(String),
    /// The server does not know this peer (never registered, or deregistered).
    UnknownPeer,
    /// The server answered with an error status.
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The answer could not be understood.
    Protocol(String),
    /// The answer is not signed by the pinned server key: a man in the middle, or a server
    /// whose key changed. Nothing in it was believed.
    Unauthentic(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "coordination server unreachable: {m}"),
            ClientError::UnknownPeer => {
                f.write_str("the coordination server does not know this peer")
            }
            ClientError::Refused { status, message } => {
                write!(
                    f,
                    "coordination server refused the request ({status}): {message}"
                )
            }
            ClientError::Protocol(m) => {
                write!(f, "unexpected answer from the coordination server: {m}")
            }
            ClientError::Unauthentic(m) => write!(
                f,
                "refusing an unauthenticated answer from the coordination server: {m}"
            ),
        }
    }
}

impl std::error::Error for ClientError {}
