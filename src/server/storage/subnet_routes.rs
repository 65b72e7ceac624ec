//! Subnet routes: which advertised prefixes are approved, the one rule every store applies
//! inside its write (like [`super::admission`]), so the JSON store and every replica decide
//! the same way on the same state.
//!
//! A peer advertises prefixes (`allowed_ips` at registration); none reaches another peer
//! until approved, by an operator (`wgmesh routes approve`) or by the policy file's `routes`
//! rules (which tags may advertise which prefixes) when the route is first advertised, and
//! when a policy reload (or a server start) brings rules that cover routes already
//! advertised ([`reload_approvals`]). An approval is refused, with the reason, for a default route (exit
//! nodes are for that), a prefix overlapping the mesh, and a prefix overlapping another
//! node's approved route of a different length (two nodes with the *same* prefix is
//! failover, see [`crate::proto::subnet_routes::primary`]). Rejecting takes the approval
//! away; it stays away while the peer keeps advertising the route, until a reload of a
//! changed policy whose rules cover it. An approval is a decision: a reload whose rules no
//! longer cover a route leaves it approved (reject it to take it away).

use crate::server::policy::Policy;
use crate::server::registry::{Prepared, Registry};
use crate::server::store::PeerRecord;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why an operator's decision could not be made: the HTTP status (404 for a route the peer
/// does not advertise, 409 for one that may not be approved) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 404 or 409.
    pub status: u16,
    /// What was wrong, naming the router and the prefix.
    pub why: String,
}

/// What an operator decided about one advertised route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Other nodes may route the prefix through this peer.
    Approve,
    /// They may not (any more).
    Reject,
}

/// The mesh's own networks, which no subnet route may overlap.
#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    /// The IPv4 mesh network.
    pub v4: Ipv4Net,
    /// The IPv6 mesh prefix, when the server has one.
    pub v6: Option<Ipv6Net>,
}

impl Mesh {
    /// Its networks, IPv4 first.
    pub fn nets(&self) -> Vec<IpNet> {
        std::iter::once(IpNet::V4(self.v4))
            .chain(self.v6.map(IpNet::V6))
            .collect()
    }

    /// The mesh of a registry.
    pub fn of(registry: &Registry) -> Mesh {
        Mesh {
            v4: registry.network(),
            v6: registry.mesh6(),
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why `prefix` of `owner` may not be approved, or None when it may. `others` are every
/// registered peer (the owner among them is skipped).
pub fn refusal<'a>(
    owner: &PeerRecord,
    prefix: &IpNet,
    mesh: Mesh,
    others: impl Iterator<Item = &'a PeerRecord>,
) -> Option<String> {
    if prefix.prefix_len() == 0 {
        return Some(format!(
            "{prefix} is a default route: to route internet traffic through {}, run it with \
             --exit-node and choose it with --use-exit-node",
            owner.hostname
        ));
    }
    for net in mesh.nets() {
        if overlaps(prefix, &net) {
            return Some(format!(
                "{prefix} overlaps the mesh network {net}, whose addresses the server assigns"
            ));
        }
    }
    for other in others.filter(|o| o.public_key != owner.public_key) {
        if let Some(theirs) = other
            .approved_routes
            .iter()
            .find(|r| overlaps(r, prefix) && r.prefix_len() != prefix.prefix_len())
        {
            return Some(format!(
                "{prefix} overlaps {theirs}, approved for {} ({}); routes of different \
                 lengths that overlap would split traffic between routers (advertise the same \
                 prefix on both for failover, or reject {theirs} there first)",
                other.hostname, other.virtual_ip
            ));
        }
    }
    None
}

/// The owner's record after an operator's verdict on `prefix`: approving needs the route
/// advertised and no [`refusal`]; rejecting needs it advertised. 404 when the peer does not
/// advertise it, 409 when it may not be approved.
pub fn decide(
    registry: &Registry,
    owner: &PeerRecord,
    prefix: IpNet,
    verdict: Verdict,
) -> Result<PeerRecord, Refused> {
    let prefix = prefix.trunc();
    if !owner.allowed_ips.contains(&prefix) || prefix.prefix_len() == 0 {
        let advertised = advertised(owner);
        return Err(Refused {
            status: 404,
            why: format!(
                "{} ({}) does not advertise {prefix}; it advertises {}",
                owner.hostname,
                owner.virtual_ip,
                match advertised.is_empty() {
                    true => "no routes (start it with --advertise-routes)".to_owned(),
                    false => advertised
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            ),
        });
    }
    let mut record = owner.clone();
    match verdict {
        Verdict::Approve => {
            if let Some(why) = refusal(owner, &prefix, Mesh::of(registry), registry.iter()) {
                return Err(Refused {
                    status: 409,
                    why: format!("cannot approve {prefix} for {}: {why}", owner.hostname),
                });
            }
            if !record.approved_routes.contains(&prefix) {
                record.approved_routes.push(prefix);
            }
        }
        Verdict::Reject => record.approved_routes.retain(|r| *r != prefix),
    }
    Ok(record)
}

/// The subnet routes a peer advertises (its `allowed_ips` without default routes).
pub fn advertised(record: &PeerRecord) -> Vec<IpNet> {
    record
        .allowed_ips
        .iter()
        .filter(|n| n.prefix_len() != 0)
        .copied()
        .collect()
}

/// The routes the policy approves for `record` among those it newly advertises (not in
/// `before`, the advertised routes of its previous registration), each checked against
/// [`refusal`] in turn.
pub fn policy_approved(
    policy: &Policy,
    registry: &Registry,
    record: &PeerRecord,
    before: &[IpNet],
) -> Vec<IpNet> {
    approve_covered(policy, Mesh::of(registry), record, before, || {
        registry.iter()
    })
}

/// [`policy_approved`] against the records `others` yields (every peer, as they stand in
/// this write).
fn approve_covered<'a, I: Iterator<Item = &'a PeerRecord>>(
    policy: &Policy,
    mesh: Mesh,
    record: &PeerRecord,
    before: &[IpNet],
    others: impl Fn() -> I,
) -> Vec<IpNet> {
    let mut approved = record.approved_routes.clone();
    for prefix in advertised(record) {
        if before.contains(&prefix) || approved.contains(&prefix) {
            continue;
        }
        if !policy
            .route_rules()
            .iter()
            .any(|rule| rule.approves(&record.tags, &prefix))
        {
            continue;
        }
        match refusal(record, &prefix, mesh, others()) {
            None => {
                log::info!(
                    "subnet route {prefix} of {} approved by the policy",
                    record.hostname
                );
                approved.push(prefix);
            }
            Some(why) => log::warn!(
                "subnet route {prefix} of {} matches a policy route rule but is not approved: {why}",
                record.hostname
            ),
        }
    }
    approved
}

/// The records a newly loaded policy changes: every advertised route its `routes` rules
/// cover that is not approved yet (and may be, by [`refusal`]) becomes approved. Routers
/// are taken in mesh-address order, each seeing the approvals given before it, so two
/// overlapping routes of different lengths are never both approved. Routes the new rules
/// no longer cover are left as they are.
pub fn reload_approvals(policy: &Policy, registry: &Registry) -> Vec<PeerRecord> {
    if policy.route_rules().is_empty() {
        return Vec::new();
    }
    let mut all: Vec<PeerRecord> = registry.iter().cloned().collect();
    all.sort_by_key(|r| r.virtual_ip);
    let mesh = Mesh::of(registry);
    let mut changed = Vec::new();
    for i in 0..all.len() {
        if advertised(&all[i]).is_empty() {
            continue;
        }
        let approved = approve_covered(policy, mesh, &all[i], &[], || all.iter());
        if approved != all[i].approved_routes {
            all[i].approved_routes = approved;
            changed.push(all[i].clone());
        }
    }
    changed
}

/// A prepared registration with the policy's approvals applied: new routes the policy
/// covers are approved in the same write. An unchanged registration advertises nothing new,
/// so it stays unchanged. Cheap for peers that advertise nothing.
pub fn settle(prepared: Prepared, policy: &Policy, registry: &Registry) -> Prepared {
    let Prepared::Write {
        mut record,
        fresh_address,
    } = prepared
    else {
        return prepared;
    };
    if !advertised(&record).is_empty() && !policy.route_rules().is_empty() {
        let before = registry
            .by_id(&record.id)
            .map(advertised)
            .unwrap_or_default();
        record.approved_routes = policy_approved(policy, registry, &record, &before);
    }
    Prepared::Write {
        record,
        fresh_address,
    }
}

#[cfg(test)]
mod tests;
