//! `POST /report`: what an agent tells the server about its own view of the mesh, for the
//! operator's console: its version, the exit node it uses, and per peer the path WireGuard
//! takes (direct, relay or exit), the latest handshake's age and the bytes each way.
//!
//! A separate endpoint rather than a heartbeat field: heartbeats refuse unknown fields, so
//! an agent reporting to an older server would lose its heartbeats; here it loses only the
//! report (404), and stops sending it. Reports are kept in memory only and bounded in size.

use crate::keys::PublicKey;
use crate::types::PeerId;
use serde::{Deserialize, Serialize};

/// Most peers one report may list: a report never grows beyond what a console shows.
pub const MAX_REPORTED_PATHS: usize = 4096;

/// How one peer is reached, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedPath {
    /// Straight to the peer's endpoint.
    Direct,
    /// Through a relay.
    Relay,
    /// The peer is this node's exit node (all internet traffic goes there).
    Exit,
    /// No handshake recently: nothing proves a path.
    Unknown,
}

impl ReportedPath {
    /// The word the console and `status` show.
    pub fn label(self) -> &'static str {
        match self {
            ReportedPath::Direct => "direct",
            ReportedPath::Relay => "relay",
            ReportedPath::Exit => "exit",
            ReportedPath::Unknown => "unknown",
        }
    }
}

/// One peer as the reporting agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPath {
    /// The other peer's key.
    pub public_key: PublicKey,
    /// How traffic to it goes now.
    pub path: ReportedPath,
    /// Seconds since the latest handshake, if there was one.
    #[serde(default)]
    pub handshake_age_secs: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The body of `POST /report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// Who reports (must be the signing key's peer).
    pub peer_id: PeerId,
    /// The agent's version (`wgmesh --version`).
    pub version: String,
    /// The exit node it sends internet traffic to, if any.
    #[serde(default)]
    pub exit_node: Option<PublicKey>,
    /// Every peer it has, with its path.
    #[serde(default)]
    pub paths: Vec<PeerPath>,
}
