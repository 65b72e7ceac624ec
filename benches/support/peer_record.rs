//! The registry record every bench loads its server with: peer `i` at mesh address
//! 10.100.0.0 + i, endpoint 198.18.x.y:51820 (a test underlay), named `host-i`. One builder,
//! so the benches measure the same list and a new record field is added once.

use std::net::Ipv4Addr;
use std::time::SystemTime;
use wgmesh::keys::PrivateKey;
use wgmesh::server::store::PeerRecord;
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
    }
}
