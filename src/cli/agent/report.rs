//! `sync --json`: the sync summary with each added, updated or removed peer named (hostname,
//! mesh name, mesh address, key) rather than given as a bare key, so `jq '.added[].hostname'`
//! prints what a person recognises.

use crate::agent::plan::SyncSummary;
use crate::proto::model::PeerInfo;
use serde::Serialize;

/// One peer a sync changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRef {
    /// Its hostname, when a peer list named it.
    pub hostname: Option<String>,
    /// Its name in the `.mesh` zone, when known.
    pub dns_name: Option<String>,
    /// Its mesh address, when known.
    pub address: Option<String>,
    /// Its public key (base64).
    pub public_key: String,
}

/// What `sync --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Our stable peer id.
    pub peer_id: String,
    /// Our mesh address.
    pub address: String,
    /// The interface's real name.
    pub interface: String,
    /// Whether the interface had to be created.
    pub created_interface: bool,
    /// Peers configured after the sync.
    pub peers: usize,
    /// Peers added.
    pub added: Vec<PeerRef>,
    /// Peers whose endpoint, allowed IPs or keepalive changed.
    pub updated: Vec<PeerRef>,
    /// Peers removed (named from the list before the sync).
    pub removed: Vec<PeerRef>,
    /// Whether the server said the list had not changed.
    pub list_unchanged: bool,
}

/// Names the keys of `summary` from the lists after (`now`) and before (`before`) the sync.
pub fn report(summary: SyncSummary, before: &[PeerInfo], now: &[PeerInfo]) -> SyncReport {
    let name = |key: String| {
        let info = now
            .iter()
            .chain(before)
            .find(|p| p.public_key.to_base64() == key);
        PeerRef {
            hostname: info.map(|p| p.hostname.to_string()),
            dns_name: info.and_then(|p| p.dns_name.as_ref().map(|n| n.to_string())),
            address: info.map(|p| p.virtual_ip.to_string()),
            public_key: key,
        }
    };
    SyncReport {
        peer_id: summary.peer_id,
        address: summary.address,
        interface: summary.interface,
        created_interface: summary.created_interface,
        peers: summary.peers,
        added: summary.added.into_iter().map(name).collect(),
        updated: summary.updated.into_iter().map(name).collect(),
        removed: summary.removed.into_iter().map(name).collect(),
        list_unchanged: summary.list_unchanged,
    }
}
