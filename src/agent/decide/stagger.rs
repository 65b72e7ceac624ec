//! Staggering the first handshake between two nodes that add each other at once: of the
//! two, only the one with the smaller key initiates at once; the other defers its keepalive
//! and re-adds peers whose crossing initiations stuck. Split out of the sync planner
//! ([`crate::agent::plan`]), which calls these on the observed `wg show dump`.

use std::collections::BTreeSet;

/// Peers this node deferred (keepalive off, key above ours) that have sent us something but
/// still have no handshake a pass later: their first initiation crossed one of ours (traffic
/// here starts one too), and WireGuard would wait 5 s before trying again. Removing and
/// re-adding such a peer starts it afresh, so its keepalive initiates at once, while the
/// other side, having just tried, waits: the two cannot cross again.
pub fn stuck_deferred(
    actual: &[crate::os::wgdump::DumpPeer],
    mine: &crate::keys::PublicKey,
) -> Vec<crate::keys::PublicKey> {
    deferred_without_handshake(actual, mine)
        .filter(|p| p.transfer_rx > 0)
        .map(|p| p.public_key)
        .collect()
}

/// Deferred peers (keepalive off, key above ours) with no handshake yet.
fn deferred_without_handshake<'a>(
    actual: &'a [crate::os::wgdump::DumpPeer],
    mine: &'a crate::keys::PublicKey,
) -> impl Iterator<Item = &'a crate::os::wgdump::DumpPeer> {
    actual
        .iter()
        .filter(|p| p.persistent_keepalive.is_none() && p.latest_handshake.is_none())
        .filter(move |p| p.public_key.as_bytes() > mine.as_bytes())
}

/// Deferred peers that have not sent anything yet: the other side has not added us (it is
/// slower), so initiating now could cross its first initiation; keep waiting.
pub fn silent_deferred(
    actual: &[crate::os::wgdump::DumpPeer],
    mine: &crate::keys::PublicKey,
) -> BTreeSet<crate::keys::PublicKey> {
    deferred_without_handshake(actual, mine)
        .filter(|p| p.transfer_rx == 0)
        .map(|p| p.public_key)
        .collect()
}

/// When two nodes add each other at the same moment, both may send a handshake initiation at
/// once (a new peer's keepalive starts one); each answers the other's and drops its own
/// pending one, so both responses are refused and WireGuard retries only after 5 s. To
/// break the tie, of two nodes that meet, only the one with the smaller public key initiates
/// at once: the other adds the new peer with its keepalive off, and the next pass (a second
/// later, `up` schedules it) turns it on, or, if no handshake happened by then, re-adds the
/// peer (see [`stuck_deferred`]). Returns whether any keepalive was deferred.
pub fn defer_crossing_handshakes(
    changes: &mut crate::os::PeerChanges,
    known: &BTreeSet<crate::keys::PublicKey>,
    mine: &crate::keys::PublicKey,
) -> bool {
    let mut deferred = false;
    for spec in &mut changes.upsert {
        if !known.contains(&spec.public_key) && spec.public_key.as_bytes() > mine.as_bytes() {
            spec.persistent_keepalive = None;
            deferred = true;
        }
    }
    deferred
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::decide::desired::PERSISTENT_KEEPALIVE;

    #[test]
    fn only_the_smaller_key_initiates_at_once_when_two_nodes_meet() {
        let key = |b: u8| crate::keys::PublicKey::from_bytes([b; 32]);
        let spec = |b: u8| crate::os::PeerSpec {
            public_key: key(b),
            endpoint: Some("198.18.0.9:51820".parse().unwrap()),
            allowed_ips: vec![],
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
        };
        let mut changes = crate::os::PeerChanges {
            upsert: vec![spec(1), spec(9), spec(7)],
            remove: vec![],
        };
        // 7 is already configured (an update), 1 sorts below us, 9 above.
        let known: BTreeSet<_> = [key(7)].into_iter().collect();
        assert!(defer_crossing_handshakes(&mut changes, &known, &key(5)));
        let keepalives: Vec<_> = changes
            .upsert
            .iter()
            .map(|p| p.persistent_keepalive)
            .collect();
        assert_eq!(
            keepalives,
            [Some(PERSISTENT_KEEPALIVE), None, Some(PERSISTENT_KEEPALIVE)]
        );
        // The next pass sees 9 configured and turns its keepalive on.
        let mut next = crate::os::PeerChanges {
            upsert: vec![spec(9)],
            remove: vec![],
        };
        let known: BTreeSet<_> = [key(9)].into_iter().collect();
        assert!(!defer_crossing_handshakes(&mut next, &known, &key(5)));
        assert_eq!(
            next.upsert[0].persistent_keepalive,
            Some(PERSISTENT_KEEPALIVE)
        );
    }
}
