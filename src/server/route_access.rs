//! Who may use which subnet route, applied to `/peers` entries: each caller's list carries
//! only the parts of approved routes the policy grants it (so it does not even install the
//! others), and a subnet router's list says for each entry what that peer may reach
//! (`reach`), which it turns into its forward filter (other callers are not told). Pure: the policy decides
//! ([`crate::server::policy::Policy::grants`]), this module shapes entries, and one
//! [`Viewer`] per list build remembers the answer per [`Party`], so thousands of peers in a
//! handful of parties cost a handful of policy evaluations.

use crate::proto::model::PeerInfo;
use crate::proto::subnet_routes::Grants;
use crate::server::policy::{Membership, Party, Policy};
use ipnet::IpNet;
use std::collections::HashMap;

/// A peer entry as a caller granted `caller` sees it: every approved route (`approved`, as
/// the registry holds them) replaced by the parts the caller may reach, or dropped when it
/// may reach none; and, for a caller that serves routes, the peer's own grants (`own`) in
/// `reach`.
pub fn shape(
    mut info: PeerInfo,
    approved: &[IpNet],
    caller: &Grants,
    own: Option<&Grants>,
) -> PeerInfo {
    if !approved.is_empty() && *caller != Grants::All {
        let mut shown = Vec::with_capacity(info.allowed_ips.len());
        for net in &info.allowed_ips {
            if approved.contains(net) {
                for part in caller.within(net) {
                    if !shown.contains(&part) {
                        shown.push(part);
                    }
                }
            } else {
                shown.push(*net);
            }
        }
        info.allowed_ips = shown;
    }
    info.reach = own.and_then(Grants::to_wire);
    info
}

/// One caller's view under one policy: whom it sees and how it sees them, each party
/// evaluated once.
#[derive(Debug)]
pub struct Viewer<'p> {
    policy: &'p Policy,
    mine: Membership,
    grants: Grants,
    serves: bool,
    parties: HashMap<Party, (Membership, Grants)>,
}

impl<'p> Viewer<'p> {
    /// The view of a caller of party `caller`.
    pub fn new(policy: &'p Policy, caller: &Party) -> Viewer<'p> {
        let mine = policy.membership_of(caller);
        let grants = policy.grants(&mine);
        Viewer {
            policy,
            mine,
            grants,
            serves: caller.serves,
            parties: HashMap::new(),
        }
    }

    /// Evaluates `party` once; later calls find it.
    fn learn(&mut self, party: &Party) {
        if !self.parties.contains_key(party) {
            let m = self.policy.membership_of(party);
            let g = self.policy.grants(&m);
            self.parties.insert(party.clone(), (m, g));
        }
    }

    /// Whether the caller sees a peer of `party` (symmetric, as the policy's visibility).
    pub fn sees(&mut self, party: &Party) -> bool {
        self.learn(party);
        self.parties[party].0.sees(&self.mine)
    }

    /// What a peer of `party` may reach of the approved subnet routes.
    pub fn grants_of(&mut self, party: &Party) -> Grants {
        self.learn(party);
        self.parties[party].1.clone()
    }

    /// The caller's entry of a peer of `party` (see [`shape`]).
    pub fn shape(&mut self, party: &Party, info: PeerInfo) -> PeerInfo {
        self.learn(party);
        let own = self.serves.then(|| &self.parties[party].1);
        shape(info, &party.routes, &self.grants, own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::types::Tag;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn router_entry() -> PeerInfo {
        PeerInfo {
            allowed_ips: nets(&["10.100.0.2/32", "192.168.10.0/24", "fd00:10::/64"]),
            ..PeerInfo::for_test(PrivateKey::generate().public_key(), "gw", 2)
        }
    }

    #[test]
    fn each_caller_gets_only_the_parts_of_routes_it_is_granted() {
        let policy = Policy::from_json(
            r#"{"allow": [
                {"from": ["tag:a"], "to": ["192.168.10.0/24"]},
                {"from": ["tag:b"], "to": ["192.168.10.10/32"]},
                {"from": ["tag:c"], "to": ["tag:router"]},
                {"from": ["tag:router"], "to": ["fd00:10::/48"]}
            ]}"#,
        )
        .unwrap();
        let router = Party::new(
            &tags(&["tag:router"]),
            &nets(&["192.168.10.0/24", "fd00:10::/64"]),
        );
        let seen = |caller: &[&str]| {
            let mut v = Viewer::new(&policy, &Party::tagged(&tags(caller)));
            v.sees(&router).then(|| v.shape(&router, router_entry()))
        };
        let a = seen(&["tag:a"]).expect("a sees the router its grant touches");
        assert_eq!(a.allowed_ips, nets(&["10.100.0.2/32", "192.168.10.0/24"]));
        let b = seen(&["tag:b"]).expect("b sees it too");
        assert_eq!(b.allowed_ips, nets(&["10.100.0.2/32", "192.168.10.10/32"]));
        let c = seen(&["tag:c"]).expect("c sees it by tag");
        assert_eq!(c.allowed_ips, nets(&["10.100.0.2/32"]));
        assert!(seen(&["tag:web"]).is_none());
        // The router's own grants travel in its entry, to callers that serve routes only.
        assert_eq!(a.reach, None);
        let serving_a = Party::tagged(&tags(&["tag:a"])).serving(true);
        let mut v = Viewer::new(&policy, &serving_a);
        let told = v.shape(&router, router_entry());
        assert_eq!(told.reach, Some(nets(&["fd00:10::/48"])));
        // Without a policy, everything stays as it was.
        let all = Policy::allow_all();
        let mut v = Viewer::new(&all, &Party::default());
        assert!(v.sees(&router));
        let (entry, before) = (v.shape(&router, router_entry()), router_entry());
        assert_eq!((entry.allowed_ips, entry.reach), (before.allowed_ips, None));
    }

    #[test]
    fn a_peer_entry_carries_what_that_peer_may_reach() {
        let policy = Policy::from_json(
            r#"{"allow": [{"from": ["tag:b"], "to": ["192.168.10.10", "tag:router"]}]}"#,
        )
        .unwrap();
        let router = Party::tagged(&tags(&["tag:router"])).serving(true);
        let mut v = Viewer::new(&policy, &router);
        let b = Party::tagged(&tags(&["tag:b"]));
        assert!(v.sees(&b));
        assert_eq!(v.grants_of(&b), Grants::Only(nets(&["192.168.10.10/32"])));
        let mut entry = router_entry();
        entry.allowed_ips = nets(&["10.100.0.5/32"]);
        assert_eq!(
            v.shape(&b, entry.clone()).reach,
            Some(nets(&["192.168.10.10/32"]))
        );
        // Only a router is told: another peer seeing b gets no `reach`.
        let mut other = Viewer::new(&policy, &Party::tagged(&tags(&["tag:router"])));
        assert_eq!(other.shape(&b, entry).reach, None);
    }
}
