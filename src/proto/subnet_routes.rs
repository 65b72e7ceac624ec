//! Subnet routes on the wire: the admin API's JSON under `/admin/routes` (shared by the
//! server and `wgmesh routes`), and the one rule every node uses to pick the primary router
//! of a prefix that several nodes advertise, so the server's listing and every agent agree;
//! and what a peer may reach of them ([`Grants`]), which the server uses to shape each list
//! and a subnet router to filter what it forwards.

use crate::types::PeerId;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Picks the router in use for one prefix among the online nodes approved to route it: the
/// one with the lowest mesh address. Every node sees the same online routers (a router that
/// stops leaves every list at once, or at the heartbeat timeout), so all pick the same one,
/// and the next one takes over as soon as the primary leaves the list.
pub fn primary(candidates: impl IntoIterator<Item = Ipv4Addr>) -> Option<Ipv4Addr> {
    candidates.into_iter().min()
}

/// The part of approved route `route` that grant `grant` covers: the route itself when the
/// grant contains it, the grant when the route contains it, else nothing (prefixes either
/// nest or are disjoint). Different address families never intersect.
pub fn intersection(grant: &IpNet, route: &IpNet) -> Option<IpNet> {
    let (grant, route) = (grant.trunc(), route.trunc());
    if grant.contains(&route) {
        Some(route)
    } else if route.contains(&grant) {
        Some(grant)
    } else {
        None
    }
}

/// Which subnet-route addresses a peer may reach, as the policy grants them: every approved
/// route (`"*"` in a rule's `to`), or the parts of approved routes that some prefixes cover.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grants {
    /// Everything any approved route leads to.
    All,
    /// Only addresses inside these prefixes (none: no subnet route at all).
    Only(Vec<IpNet>),
}

impl Grants {
    /// The parts of `route` these grants cover (the whole route, some narrower prefixes
    /// inside it, or nothing), sorted and without duplicates.
    pub fn within(&self, route: &IpNet) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = match self {
            Grants::All => vec![route.trunc()],
            Grants::Only(grants) => grants
                .iter()
                .filter_map(|g| intersection(g, route))
                .collect(),
        };
        out.sort();
        out.dedup();
        // A grant inside another grant adds nothing.
        let wide = out.clone();
        out.retain(|n| !wide.iter().any(|w| w != n && w.contains(n)));
        out
    }

    /// The wire form, a peer's `reach` in `/peers`: absent for [`Grants::All`] (as servers
    /// before per-prefix access meant it), else the list.
    pub fn to_wire(&self) -> Option<Vec<IpNet>> {
        match self {
            Grants::All => None,
            Grants::Only(list) => Some(list.clone()),
        }
    }

    /// Reads the wire form back (see [`Grants::to_wire`]).
    pub fn from_wire(reach: Option<&[IpNet]>) -> Grants {
        match reach {
            None => Grants::All,
            Some(list) => Grants::Only(list.to_vec()),
        }
    }
}

/// `POST /admin/routes/approve` and `/admin/routes/reject`: one advertised route of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDecisionRequest {
    /// The router: its peer id, hostname or mesh address.
    pub peer: String,
    /// The advertised prefix, as the router advertises it.
    pub prefix: IpNet,
}

/// One advertised route as `wgmesh routes list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// Whether it is approved (only approved routes reach other nodes).
    pub approved: bool,
    /// The router's hostname.
    pub hostname: String,
    /// Whether the router is online.
    pub online: bool,
    /// The router's peer id.
    pub peer_id: PeerId,
    /// The advertised prefix.
    pub prefix: IpNet,
    /// Whether this router is the one in use for the prefix (approved, online, and first by
    /// [`primary`]).
    pub primary: bool,
    /// The router's mesh address.
    pub virtual_ip: Ipv4Addr,
}

/// Answer to `GET /admin/routes` and to approve/reject (the routes after the change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesResponse {
    /// Every advertised route of every registered peer, by prefix then router address.
    pub routes: Vec<RouteView>,
    /// Always true on this type.
    pub success: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_mesh_address_is_primary_and_none_without_routers() {
        let ips: Vec<Ipv4Addr> = vec!["10.100.0.9".parse().unwrap(), "10.100.0.3".parse().unwrap()];
        assert_eq!(primary(ips), Some("10.100.0.3".parse().unwrap()));
        assert_eq!(primary(Vec::new()), None);
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_grant_covers_the_route_inside_it_or_the_part_of_the_route_it_names() {
        let route: IpNet = "192.168.10.0/24".parse().unwrap();
        let wide = Grants::Only(nets(&["192.168.0.0/16"]));
        assert_eq!(wide.within(&route), nets(&["192.168.10.0/24"]));
        let host = Grants::Only(nets(&["192.168.10.10/32", "fd00:10::/64"]));
        assert_eq!(host.within(&route), nets(&["192.168.10.10/32"]));
        let elsewhere = Grants::Only(nets(&["192.168.11.0/24", "10.0.0.0/8"]));
        assert!(elsewhere.within(&route).is_empty());
        assert!(Grants::Only(Vec::new()).within(&route).is_empty());
        assert_eq!(Grants::All.within(&route), vec![route]);
        // Nested grants give the widest part once.
        let nested = Grants::Only(nets(&[
            "192.168.10.0/25",
            "192.168.10.10/32",
            "192.168.10.0/25",
        ]));
        assert_eq!(nested.within(&route), nets(&["192.168.10.0/25"]));
        let v6: IpNet = "fd00:10::/64".parse().unwrap();
        assert_eq!(host.within(&v6), vec![v6]);
    }

    #[test]
    fn grants_travel_as_an_optional_list() {
        assert_eq!(Grants::All.to_wire(), None);
        let some = Grants::Only(nets(&["192.168.10.10/32"]));
        assert_eq!(Grants::from_wire(some.to_wire().as_deref()), some);
        assert_eq!(Grants::from_wire(None), Grants::All);
        assert_eq!(Grants::from_wire(Some(&[])), Grants::Only(Vec::new()));
    }
}
