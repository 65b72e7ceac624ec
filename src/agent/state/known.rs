//! The peer list as the agent knows it between syncs, and how answers to
//! `/peers?since=N` (deltas, or the full list) change it. Pure, so missed deltas and
//! overtaken long-polls are tested on data.

use crate::proto::model::{PeerInfo, PeersDelta};

/// The peer list as this node last knew it: what deltas apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers {
    /// The peers, in address order.
    pub peers: Vec<PeerInfo>,
    /// The list's ETag, for a 304 from servers without versions.
    pub etag: Option<String>,
    /// The list's version, sent as `since` to get only what changed.
    pub version: Option<u64>,
}

impl KnownPeers {
    /// Applies an answer to `/peers?since=N`; returns whether the list changed. A delta
    /// older than the list (a long-poll overtaken by a sync) changes nothing; a full answer
    /// always replaces the list, so nothing stale survives a missed delta, whatever its
    /// version: after a fail-over to another replica (which numbers versions its own way)
    /// or a server whose clock went back, an older-looking full list is still the truth.
    pub fn apply(&mut self, answer: PeersDelta) -> bool {
        if !answer.full && self.version.is_some_and(|v| answer.version < v) {
            return false;
        }
        self.version = Some(answer.version);
        self.etag = None;
        if answer.full {
            let changed = self.peers != answer.peers;
            self.peers = answer.peers;
            self.peers.sort_by_key(|p| p.virtual_ip);
            return changed;
        }
        if answer.changed.is_empty() && answer.removed.is_empty() {
            return false;
        }
        let drop: std::collections::HashSet<&crate::types::PeerId> = answer
            .removed
            .iter()
            .chain(answer.changed.iter().map(|p| &p.id))
            .collect();
        self.peers.retain(|p| !drop.contains(&p.id));
        self.peers.extend(answer.changed);
        self.peers.sort_by_key(|p| p.virtual_ip);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(n: u8, endpoint: &str) -> PeerInfo {
        PeerInfo {
            endpoint: Some(endpoint.parse().unwrap()),
            ..PeerInfo::for_test(
                crate::keys::PublicKey::from_bytes([n; 32]),
                &format!("h{n}"),
                n,
            )
        }
    }

    fn answer(version: u64, full: bool, peers: Vec<PeerInfo>, removed: &[&PeerInfo]) -> PeersDelta {
        PeersDelta {
            version,
            full,
            peers: if full { peers.clone() } else { Vec::new() },
            changed: if full { Vec::new() } else { peers },
            removed: removed.iter().map(|p| p.id.clone()).collect(),
            relay_port: None,
        }
    }

    #[test]
    fn deltas_update_add_and_drop_peers_and_keep_address_order() {
        let (a, b, c) = (
            listed(1, "198.18.0.1:1"),
            listed(2, "198.18.0.2:1"),
            listed(3, "198.18.0.3:1"),
        );
        let mut known = KnownPeers::default();
        assert!(known.apply(answer(10, true, vec![c.clone(), a.clone()], &[])));
        assert_eq!(known.peers, vec![a.clone(), c.clone()]);
        assert_eq!(known.version, Some(10));
        // b joins, a moves, c leaves; an unknown id in `removed` is ignored.
        let moved = listed(1, "198.18.0.9:1");
        let stranger = listed(9, "198.18.0.99:1");
        assert!(known.apply(answer(
            12,
            false,
            vec![b.clone(), moved.clone()],
            &[&c, &stranger]
        )));
        assert_eq!(known.peers, vec![moved.clone(), b.clone()]);
        assert_eq!(known.version, Some(12));
        // An empty delta only moves the version.
        assert!(!known.apply(answer(13, false, vec![], &[])));
        assert_eq!(known.version, Some(13));
        // An answer older than the list (an overtaken long-poll) changes nothing.
        assert!(!known.apply(answer(11, false, vec![c.clone()], &[&moved])));
        assert_eq!(known.peers, vec![moved.clone(), b.clone()]);
        assert_eq!(known.version, Some(13));
    }

    #[test]
    fn a_full_answer_leaves_no_stale_peer_behind() {
        let (a, b, c) = (
            listed(1, "198.18.0.1:1"),
            listed(2, "198.18.0.2:1"),
            listed(3, "198.18.0.3:1"),
        );
        let mut known = KnownPeers {
            peers: vec![a.clone(), b.clone()],
            etag: Some("\"x\"".into()),
            version: Some(5),
        };
        // Missed deltas (asleep, server restarted): the full list replaces everything.
        assert!(known.apply(answer(99, true, vec![c.clone()], &[])));
        assert_eq!(known.peers, vec![c]);
        assert_eq!(known.etag, None);
        assert!(!known.apply(answer(100, true, known.peers.clone(), &[])));
        // Another replica numbers versions its own way: its full list is taken as it is,
        // and deltas count from its version from then on.
        let d = listed(4, "198.18.0.4:1");
        assert!(known.apply(answer(7, true, vec![d.clone()], &[])));
        assert_eq!(
            (known.peers.clone(), known.version),
            (vec![d.clone()], Some(7))
        );
        assert!(known.apply(answer(8, false, vec![], &[&d])));
        assert!(known.peers.is_empty());
    }
}
