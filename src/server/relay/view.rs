//! The online members as the relay sees them: keys with precomputed MAC1 keys, the IPs each
//! is known at, and the policy compiled into a group-by-group visibility matrix.

use crate::keys::PublicKey;
use crate::proto::wg_wire::Mac1Key;
use crate::server::policy::{Party, Policy};
use crate::types::Tag;
use std::collections::HashMap;
use std::net::IpAddr;

/// One online member as the relay knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// The IPs it is known at (where its authenticated requests come from, its published
    /// endpoint's): the only sources accepted as this member.
    pub ips: Vec<IpAddr>,
    /// Its tags, which decide whom it may reach under the policy.
    pub tags: Vec<Tag>,
    /// Its approved subnet routes (peers granted a part of one may reach it too).
    pub routes: Vec<ipnet::IpNet>,
}

#[derive(Debug)]
pub(super) struct ViewMember {
    pub(super) key: PublicKey,
    mac1: Mac1Key,
    pub(super) ips: Vec<IpAddr>,
    group: usize,
}

/// The online members and who may see whom: an immutable snapshot the server rebuilds when
/// its peer list or policy changes, swapped in whole.
#[derive(Debug, Default)]
pub struct MemberView {
    pub(super) members: Vec<ViewMember>,
    by_key: HashMap<PublicKey, usize>,
    ips: HashMap<IpAddr, ()>,
    groups: usize,
    /// `groups` x `groups`, row-major.
    sees: Vec<bool>,
}

impl MemberView {
    /// Compiles the members' tag sets against `policy` once, so each decision is a lookup.
    pub fn new(members: Vec<Member>, policy: &Policy) -> MemberView {
        let mut group_of: HashMap<Party, usize> = HashMap::new();
        let mut group_tags: Vec<Party> = Vec::new();
        let mut view = MemberView::default();
        for m in members {
            let tags = Party::new(&m.tags, &m.routes);
            let group = *group_of.entry(tags.clone()).or_insert_with(|| {
                group_tags.push(tags);
                group_tags.len() - 1
            });
            let mut ips: Vec<IpAddr> = m.ips.iter().map(|ip| ip.to_canonical()).collect();
            ips.dedup();
            for ip in &ips {
                view.ips.insert(*ip, ());
            }
            view.by_key.insert(m.public_key, view.members.len());
            view.members.push(ViewMember {
                mac1: Mac1Key::new(&m.public_key),
                key: m.public_key,
                ips,
                group,
            });
        }
        let memberships: Vec<_> = group_tags.iter().map(|t| policy.membership_of(t)).collect();
        view.groups = memberships.len();
        view.sees = memberships
            .iter()
            .flat_map(|a| memberships.iter().map(move |b| a.sees(b)))
            .collect();
        view
    }

    /// How many members it holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it holds no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member a handshake message is addressed to (by MAC1): a scan of every member's
    /// precomputed key, which is why handshakes are rate limited per source.
    pub(super) fn recipient(&self, datagram: &[u8]) -> Option<usize> {
        self.members.iter().position(|m| m.mac1.addresses(datagram))
    }

    /// Whether a handshake message is addressed to `member`: one MAC1 check, for guesses
    /// tried before the full scan.
    pub(super) fn addressed_to(&self, member: usize, datagram: &[u8]) -> bool {
        self.members[member].mac1.addresses(datagram)
    }

    /// The recipient, trying `guesses` (likely keys) first, then every member.
    pub(super) fn recipient_of(
        &self,
        datagram: &[u8],
        guesses: impl IntoIterator<Item = PublicKey>,
    ) -> Option<usize> {
        guesses
            .into_iter()
            .filter_map(|k| self.index_of(&k))
            .find(|&i| self.addressed_to(i, datagram))
            .or_else(|| self.recipient(datagram))
    }

    pub(super) fn at_member_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains_key(&ip)
    }

    pub(super) fn sees(&self, a: usize, b: usize) -> bool {
        let (ga, gb) = (self.members[a].group, self.members[b].group);
        self.sees[ga * self.groups + gb]
    }

    pub(super) fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }
}
