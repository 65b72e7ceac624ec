//! What the agent reports to the server for the operator's console (`POST /report`, see
//! `crate::proto::report`): the `status` view of every peer, reduced to its path, its
//! latest handshake and its traffic. Pure: built from the peers `status` collected.

use super::status::PeerStatus;
use crate::keys::PublicKey;
use crate::proto::report::{AgentReport, PeerPath, ReportedPath, MAX_REPORTED_PATHS};
use crate::types::PeerId;

/// The report of peer `peer_id` whose `status` lists `peers`.
pub fn from_status(peer_id: PeerId, peers: &[PeerStatus]) -> AgentReport {
    let paths: Vec<PeerPath> = peers
        .iter()
        .filter_map(|p| {
            Some(PeerPath {
                public_key: PublicKey::from_base64(&p.public_key).ok()?,
                path: match p.path {
                    "exit" => ReportedPath::Exit,
                    "relay" => ReportedPath::Relay,
                    "direct" => ReportedPath::Direct,
                    _ => ReportedPath::Unknown,
                },
                handshake_age_secs: p.latest_handshake_secs,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
        })
        .take(MAX_REPORTED_PATHS)
        .collect();
    AgentReport {
        peer_id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        exit_node: peers
            .iter()
            .find(|p| p.exit_node_in_use)
            .and_then(|p| PublicKey::from_base64(&p.public_key).ok()),
        paths,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::PeerStatus;

    fn peer(key: &PublicKey, path: Option<&'static str>, exit: bool) -> PeerStatus {
        PeerStatus {
            hostname: None,
            dns_name: None,
            virtual_ip: None,
            public_key: key.to_base64(),
            endpoint: None,
            path: path.unwrap_or("unknown"),
            path_detail: path.is_none().then_some("no handshake yet"),
            direct: path == Some("direct"),
            exit_node_in_use: exit,
            online: path.is_some(),
            latest_handshake_secs: path.map(|_| 3),
            rx_bytes: 10,
            tx_bytes: 20,
        }
    }

    #[test]
    fn every_peer_is_reported_with_its_path_and_the_exit_node_is_named() {
        let keys: Vec<PublicKey> = (0..4)
            .map(|_| crate::keys::PrivateKey::generate().public_key())
            .collect();
        let peers = vec![
            peer(&keys[0], Some("direct"), false),
            peer(&keys[1], Some("relay"), false),
            peer(&keys[2], Some("exit"), true),
            peer(&keys[3], None, false),
        ];
        let id = PeerId::for_key(&keys[0]);
        let r = from_status(id.clone(), &peers);
        assert_eq!(r.peer_id, id);
        let kinds: Vec<ReportedPath> = r.paths.iter().map(|p| p.path).collect();
        assert_eq!(
            kinds,
            [
                ReportedPath::Direct,
                ReportedPath::Relay,
                ReportedPath::Exit,
                ReportedPath::Unknown
            ]
        );
        assert_eq!(r.exit_node, Some(keys[2]));
        assert_eq!(r.paths[3].handshake_age_secs, None);
    }
}
