//! Why a call to the coordination server failed, by what the agent does about it: keep the
//! mesh and retry (unreachable), register again (unknown peer), or give up (refused,
//! protocol, unauthentic). Its own file so the transport and TLS code below the client can
//! name it without importing the client.

use std::fmt;

/// Why a call to the server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No answer: connection refused, timeout, TLS trouble.
    Unreachable(String),
    /// The server address cannot work as given: its host name does not resolve, or it does
    /// not speak the protocol of its scheme (https:// to a plain-HTTP server). Retrying the
    /// same address will not help until someone fixes it (or DNS recovers).
    Misaddressed(String),
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
            ClientError::Unreachable(m) | ClientError::Misaddressed(m) => {
                write!(f, "coordination server unreachable: {m}")
            }
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

impl ClientError {
    /// Whether asking again the same way cannot succeed before a person changes something:
    /// a refusal for the request itself (400 bad input, 401/403 no or bad join token or
    /// key, 404, 409), or a server address that cannot work. Timeouts, refused connections,
    /// 408, 429 and 5xx may pass on their own.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Misaddressed(_) => true,
            ClientError::Refused { status, .. } => {
                (400..500).contains(status) && !matches!(status, 408 | 429)
            }
            _ => false,
        }
    }
}
