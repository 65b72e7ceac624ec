//! The registry record every bench loads its server with: peer `i` at mesh address
//! 10.100.0.0 + i, endpoint 198.18.x.y:51820 (a test underlay), named `host-i`. One builder,
//! so the benches measure the same list and a new record field is added once.

// Each bench uses what it needs of this file.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::SystemTime;
use wgmesh::keys::PrivateKey;
use wgmesh::server::store::{PeerRecord, Snapshot, FORMAT_VERSION};
use wgmesh::types::PeerId;

/// Peer `i` of a bench registry, with the key `private`.
pub fn peer_record(i: u32, private: &PrivateKey) -> PeerRecord {
    let key = private.public_key();
    let now = SystemTime::now();
    PeerRecord {
        id: PeerId::for_key(&key),
        public_key: key,
        virtual_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i),
        endpoint: Some(
            format!("198.18.{}.{}:51820", (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
        ),
        observed_ip: None,
        listen_port: Some(51820),
        hostname: format!("host-{i}").parse().unwrap(),
        os: "linux".parse().unwrap(),
        allowed_ips: vec![],
        exit_node: false,
        registered_at: now,
        last_heartbeat: now,
        online: true,
        tags: Vec::new(),
        dns_name: Some(format!("host-{i}").parse().unwrap()),
        approved_routes: Vec::new(),
        owner: None,
        via: None,
        gateway_port: None,
    }
}

/// `n` fresh keys, written as a JSON-store snapshot at `path` that registers them as peers
/// 1 to `n` ([`peer_record`]): the registry a bench's server starts from.
pub fn write_registry(path: &Path, n: u32) -> Vec<PrivateKey> {
    let keys: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate()).collect();
    let snapshot = Snapshot {
        version: FORMAT_VERSION,
        network_cidr: "10.100.0.0/16".parse().unwrap(),
        peers: keys
            .iter()
            .enumerate()
            .map(|(i, k)| peer_record(i as u32 + 1, k))
            .collect(),
    };
    std::fs::write(path, serde_json::to_vec(&snapshot).unwrap()).unwrap();
    keys
}
