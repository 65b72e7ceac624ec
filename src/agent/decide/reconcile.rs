//! The agent's pure core: compare the peers the coordination server wants with the peers
//! WireGuard actually has, and produce the smallest change that makes them match.
//!
//! Pure so it can be tested exhaustively and so that running it twice on the same state
//! yields no change the second time (the agent loop relies on that to stay quiet).

use crate::keys::PublicKey;
use crate::os::wgdump::DumpPeer;
use crate::os::{PeerChanges, PeerSpec};
use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Allowed IPs as WireGuard stores them: a set (order is meaningless), host bits cleared
/// (`wg` shows `10.0.0.5/24` back as `10.0.0.0/24`).
fn ip_set(nets: &[IpNet]) -> BTreeSet<IpNet> {
    nets.iter().map(IpNet::trunc).collect()
}

/// Whether WireGuard's view of a peer differs from what is desired.
fn differs(desired: &PeerSpec, actual: &DumpPeer) -> bool {
    if ip_set(&desired.allowed_ips) != ip_set(&actual.allowed_ips) {
        return true;
    }
    // No desired endpoint means "not known to the server": keep whatever WireGuard learned
    // from the peer's own packets (roaming) rather than clobbering it.
    if let Some(endpoint) = desired.endpoint {
        if actual.endpoint != Some(endpoint.0) {
            return true;
        }
    }
    let keepalive = desired.persistent_keepalive.filter(|&n| n > 0);
    keepalive != actual.persistent_keepalive
}

/// Computes the changes that turn `actual` (from `wg show NAME dump`) into `desired`.
///
/// Peers not desired are removed; desired peers that are missing or differ are upserted.
/// If `desired` lists a key twice, the first entry wins. The caller must leave the
/// interface's own public key out of `desired`: WireGuard silently ignores a peer with its own
/// key, so the diff would ask to add it again on every pass.
pub fn diff(desired: &[PeerSpec], actual: &[DumpPeer]) -> PeerChanges {
    let actual_by_key: HashMap<PublicKey, &DumpPeer> =
        actual.iter().map(|p| (p.public_key, p)).collect();
    let mut seen: HashSet<PublicKey> = HashSet::with_capacity(desired.len());
    let mut changes = PeerChanges::default();
    for peer in desired {
        if !seen.insert(peer.public_key) {
            continue;
        }
        match actual_by_key.get(&peer.public_key) {
            Some(current) if !differs(peer, current) => {}
            _ => changes.upsert.push(peer.clone()),
        }
    }
    let mut removed: HashSet<PublicKey> = HashSet::new();
    for peer in actual {
        if !seen.contains(&peer.public_key) && removed.insert(peer.public_key) {
            changes.remove.push(peer.public_key);
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Endpoint;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn want(n: u8, ips: &[&str], endpoint: Option<&str>, keepalive: Option<u16>) -> PeerSpec {
        PeerSpec {
            public_key: key(n),
            endpoint: endpoint.map(|e| e.parse::<Endpoint>().unwrap()),
            allowed_ips: nets(ips),
            persistent_keepalive: keepalive,
        }
    }

    fn have(n: u8, ips: &[&str], endpoint: Option<&str>, keepalive: Option<u16>) -> DumpPeer {
        DumpPeer {
            public_key: key(n),
            has_preshared_key: false,
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            allowed_ips: nets(ips),
            latest_handshake: None,
            transfer_rx: 0,
            transfer_tx: 0,
            persistent_keepalive: keepalive,
        }
    }

    const A: &str = "198.18.0.1:51820";
    const B: &str = "198.18.0.2:51820";

    #[test]
    fn identical_state_needs_no_change() {
        let desired = [want(1, &["10.100.0.2/32"], Some(A), Some(25))];
        let actual = [have(1, &["10.100.0.2/32"], Some(A), Some(25))];
        let changes = diff(&desired, &actual);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(diff(&[], &[]).is_empty());
    }

    #[test]
    fn missing_peer_is_added() {
        let desired = [want(1, &["10.100.0.2/32"], Some(A), None)];
        let changes = diff(&desired, &[]);
        assert_eq!(changes.upsert, desired.to_vec());
        assert!(changes.remove.is_empty());
    }

    #[test]
    fn undesired_peer_is_removed() {
        let actual = [
            have(1, &["10.100.0.2/32"], Some(A), None),
            have(2, &[], None, None),
        ];
        let desired = [want(2, &[], None, None)];
        let changes = diff(&desired, &actual);
        assert!(changes.upsert.is_empty());
        assert_eq!(changes.remove, vec![key(1)]);
    }

    #[test]
    fn changed_allowed_ips_are_updated() {
        let desired = [want(1, &["10.100.0.2/32", "192.168.5.0/24"], None, None)];
        let actual = [have(1, &["10.100.0.2/32"], None, None)];
        assert_eq!(diff(&desired, &actual).upsert, desired.to_vec());
    }

    #[test]
    fn allowed_ips_compare_as_sets_with_host_bits_cleared() {
        let desired = [want(
            1,
            &["192.168.5.7/24", "10.100.0.2/32", "10.100.0.2/32"],
            None,
            None,
        )];
        let actual = [have(1, &["10.100.0.2/32", "192.168.5.0/24"], None, None)];
        assert!(diff(&desired, &actual).is_empty());
    }

    #[test]
    fn changed_endpoint_is_updated() {
        let desired = [want(1, &["10.100.0.2/32"], Some(B), None)];
        let actual = [have(1, &["10.100.0.2/32"], Some(A), None)];
        assert_eq!(diff(&desired, &actual).upsert.len(), 1);
        let unknown = [have(1, &["10.100.0.2/32"], None, None)];
        assert_eq!(diff(&desired, &unknown).upsert.len(), 1);
    }

    #[test]
    fn unknown_desired_endpoint_keeps_the_roamed_one() {
        let desired = [want(1, &["10.100.0.2/32"], None, None)];
        let actual = [have(1, &["10.100.0.2/32"], Some(A), None)];
        assert!(diff(&desired, &actual).is_empty());
    }

    #[test]
    fn changed_keepalive_is_updated_both_ways() {
        let on = [want(1, &[], None, Some(25))];
        let off = [have(1, &[], None, None)];
        assert_eq!(diff(&on, &off).upsert.len(), 1);
        let desired_off = [want(1, &[], None, None)];
        let actual_on = [have(1, &[], None, Some(25))];
        assert_eq!(diff(&desired_off, &actual_on).upsert.len(), 1);
        let zero = [want(1, &[], None, Some(0))];
        assert!(diff(&zero, &off).is_empty(), "0 means off");
        let other = [want(1, &[], None, Some(15))];
        assert_eq!(diff(&other, &actual_on).upsert.len(), 1);
    }

    #[test]
    fn peer_order_does_not_matter() {
        let desired = [
            want(1, &["10.100.0.2/32"], Some(A), None),
            want(2, &["10.100.0.3/32"], Some(B), None),
        ];
        let actual = [
            have(2, &["10.100.0.3/32"], Some(B), None),
            have(1, &["10.100.0.2/32"], Some(A), None),
        ];
        assert!(diff(&desired, &actual).is_empty());
    }

    #[test]
    fn mixed_changes_keep_desired_order_and_first_duplicate_wins() {
        let desired = [
            want(3, &["10.100.0.4/32"], None, None),
            want(1, &["10.100.0.9/32"], None, None),
            want(3, &["10.100.0.99/32"], None, None),
        ];
        let actual = [
            have(1, &["10.100.0.2/32"], None, None),
            have(2, &["10.100.0.3/32"], None, None),
        ];
        let changes = diff(&desired, &actual);
        assert_eq!(changes.upsert, vec![desired[0].clone(), desired[1].clone()]);
        assert_eq!(changes.remove, vec![key(2)]);
        // Applying the changes yields a state that diffs to nothing.
        let after: Vec<DumpPeer> = changes
            .upsert
            .iter()
            .map(|p| DumpPeer {
                public_key: p.public_key,
                has_preshared_key: false,
                endpoint: p.endpoint.map(|e| e.0),
                allowed_ips: p.allowed_ips.clone(),
                latest_handshake: None,
                transfer_rx: 0,
                transfer_tx: 0,
                persistent_keepalive: p.persistent_keepalive,
            })
            .collect();
        assert!(diff(&desired, &after).is_empty());
    }
}
