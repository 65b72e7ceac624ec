//! The last peer list kept beside the config, so `status` and an offline `export` have one
//! and `sync` can ask the server for only what changed since. Only a cache: unreadable means
//! none, and a failed write is logged, never fatal.

use crate::agent::state::known::KnownPeers;
use crate::proto::model::PeerInfo;
use std::path::{Path, PathBuf};

/// Where the last peer list is kept for `status` and offline `export`: beside the config.
pub fn peer_cache_path(config_path: &Path) -> PathBuf {
    config_path.with_extension("peers.json")
}

/// The last peer list this node saw (empty if none or unreadable: it is only a cache).
pub fn load_peer_cache(config_path: &Path) -> Vec<PeerInfo> {
    load_known_peers(config_path)
        .map(|k| k.peers)
        .unwrap_or_default()
}

/// The last peer list this node saw with its version, so `sync` can ask for only what
/// changed since (None if none or unreadable: the full list is always correct).
pub fn load_known_peers(config_path: &Path) -> Option<KnownPeers> {
    let bytes = std::fs::read(peer_cache_path(config_path)).ok()?;
    let cached = serde_json::from_slice::<crate::proto::model::PeersResponse>(&bytes).ok()?;
    Some(KnownPeers {
        peers: cached.peers,
        etag: None,
        version: cached.version,
    })
}

pub(in crate::agent) fn save_peer_cache(
    config_path: &Path,
    peers: &[PeerInfo],
    version: Option<u64>,
) {
    let body = crate::proto::model::PeersResponse {
        relay_port: None,
        peers: peers.to_vec(),
        version,
    };
    let bytes = serde_json::to_vec(&body).expect("peer lists serialize");
    let path = peer_cache_path(config_path);
    if let Err(e) = crate::fsutil::write_atomic(&path, &bytes, 0o600) {
        log::warn!("cannot cache the peer list: {e}");
    }
}
