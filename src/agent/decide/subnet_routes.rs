//! Subnet routes, decided on data: which of the approved routes in the server's list this
//! node uses and through which router, what it sets up when it is a router itself, and the
//! routes it copies into a routing daemon's table. Pure functions; the plan turns them into
//! commands (`crate::agent::plan`), `status` shows them.
//!
//! The server lists a router's approved routes among its `allowed_ips` (anything outside the
//! mesh networks that is not a default route). A node uses them only with `--accept-routes`
//! (off by default: a laptop on a LAN with the same prefix must not be cut off), never a
//! prefix it advertises itself, and each prefix through one router only (WireGuard routes a
//! prefix to one peer): the primary by [`crate::proto::subnet_routes::primary`]. The list
//! holds only online peers, so when the primary stops, the next list names the next one.

use super::super::state::config::ClientConfig;
use super::super::state::subnet_routes::{AppliedSubnetRouter, AppliedTableRoutes};
use crate::os::subnet_routes::Access;
use crate::proto::model::PeerInfo;
use crate::proto::subnet_routes::{primary, Grants};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The mesh's own networks (the IPv4 one and the IPv6 prefix under the server key).
#[derive(Debug, Clone, Copy)]
pub struct MeshNets {
    /// The IPv4 mesh network.
    pub v4: Ipv4Net,
    /// The IPv6 mesh prefix.
    pub v6: Ipv6Net,
}

impl MeshNets {
    /// Whether `net` is a subnet route: outside the mesh, and not a default route.
    pub fn is_subnet_route(&self, net: &IpNet) -> bool {
        net.prefix_len() != 0
            && match net {
                IpNet::V4(v4) => !self.v4.contains(v4),
                IpNet::V6(v6) => !self.v6.contains(v6),
            }
    }

    fn both(&self) -> Vec<IpNet> {
        vec![IpNet::V4(self.v4.trunc()), IpNet::V6(self.v6.trunc())]
    }
}

/// One subnet route this node uses, and the routers that offer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcceptedRoute {
    /// The prefix.
    pub prefix: IpNet,
    /// The router in use (hostname).
    pub router: String,
    /// Its mesh address.
    pub router_ip: Ipv4Addr,
    /// The other online routers of the prefix, which take over in this order.
    pub standby: Vec<String>,
}

/// The peer list as this node uses it: every peer's subnet routes removed except those this
/// node accepts, and what it accepts. Without `accept`, no subnet route stays.
pub fn select(
    peers: &[PeerInfo],
    accept: bool,
    own: &[IpNet],
    mesh: MeshNets,
) -> (Vec<PeerInfo>, Vec<AcceptedRoute>) {
    let mut routers: BTreeMap<IpNet, Vec<&PeerInfo>> = BTreeMap::new();
    if accept {
        for p in peers {
            for net in p.allowed_ips.iter().filter(|n| mesh.is_subnet_route(n)) {
                if !own.iter().any(|o| o.trunc() == net.trunc()) {
                    routers.entry(net.trunc()).or_default().push(p);
                }
            }
        }
    }
    let mut accepted = Vec::new();
    for (prefix, list) in &mut routers {
        let chosen = primary(list.iter().map(|p| p.virtual_ip)).expect("at least one router");
        list.sort_by_key(|p| (p.virtual_ip != chosen, p.virtual_ip));
        accepted.push(AcceptedRoute {
            prefix: *prefix,
            router: list[0].hostname.to_string(),
            router_ip: chosen,
            standby: list[1..].iter().map(|p| p.hostname.to_string()).collect(),
        });
    }
    let used = |p: &PeerInfo, net: &IpNet| {
        accepted
            .iter()
            .any(|a| a.prefix == net.trunc() && a.router_ip == p.virtual_ip)
    };
    let peers = peers
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let keep: Vec<IpNet> = p
                .allowed_ips
                .iter()
                .filter(|n| !mesh.is_subnet_route(n) || used(&p, n))
                .copied()
                .collect();
            p.allowed_ips = keep;
            p
        })
        .collect();
    (peers, accepted)
}

/// What this node must set up as a subnet router (forwarding, the filter letting each peer
/// it sees into the parts of its networks the policy grants that peer, NAT unless
/// `--snat-subnet-routes off`), or None when it routes nothing.
pub fn router_state(
    config: &ClientConfig,
    peers: &[PeerInfo],
    mesh: MeshNets,
) -> Option<AppliedSubnetRouter> {
    let prefixes = config.subnet_routes.advertised();
    if prefixes.is_empty() {
        return None;
    }
    Some(AppliedSubnetRouter {
        access: access(&prefixes, peers, mesh),
        prefixes,
        mesh: mesh.both(),
        snat: config.subnet_routes.snat,
    })
}

/// Who may reach what of this router's `prefixes`: each listed peer's mesh addresses, to the
/// parts of the prefixes its `reach` covers (all of them when the server grants it every
/// route), grouped by what they reach. Peers granted nothing here are left out, so the
/// filter drops them.
pub fn access(prefixes: &[IpNet], peers: &[PeerInfo], mesh: MeshNets) -> Vec<Access> {
    let mut by_reach: BTreeMap<Vec<IpNet>, Vec<IpNet>> = BTreeMap::new();
    for p in peers {
        let grants = Grants::from_wire(p.reach.as_deref());
        let mut reach: Vec<IpNet> = prefixes.iter().flat_map(|n| grants.within(n)).collect();
        reach.sort();
        reach.dedup();
        if reach.is_empty() {
            continue;
        }
        by_reach.entry(reach).or_default().extend(
            p.allowed_ips
                .iter()
                .filter(|n| !mesh.is_subnet_route(n) && n.prefix_len() != 0),
        );
    }
    by_reach
        .into_iter()
        .map(|(prefixes, mut sources)| {
            sources.sort();
            sources.dedup();
            Access { sources, prefixes }
        })
        .filter(|a| !a.sources.is_empty())
        .collect()
}

/// The routes `--routes-to-table` copies into the routing daemon's table: the mesh networks
/// and every accepted route, so the daemon can announce how to reach the mesh.
pub fn table_routes(
    config: &ClientConfig,
    accepted: &[AcceptedRoute],
    mesh: MeshNets,
) -> Option<AppliedTableRoutes> {
    let table = config.subnet_routes.to_table?;
    let mut routes = mesh.both();
    routes.extend(accepted.iter().map(|a| a.prefix));
    Some(AppliedTableRoutes { table, routes })
}

/// The prefixes of a routing daemon's table that may be advertised: those inside the
/// allow-list, default routes never.
pub fn allowed_from_table(found: &[IpNet], allow: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = found
        .iter()
        .map(IpNet::trunc)
        .filter(|n| n.prefix_len() != 0 && allow.iter().any(|a| a.contains(n)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What `status` says about subnet routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubnetRouteStatus {
    /// What this node advertises (approval is the server's: `wgmesh routes list`).
    pub advertised: Vec<IpNet>,
    /// Whether this node uses the routes others advertise (`--accept-routes`).
    pub accept_routes: bool,
    /// The routes it uses, each with the router in use.
    pub accepted: Vec<AcceptedRoute>,
}

/// The subnet-route status of `config` with the last peer list `peers`.
pub fn status(config: &ClientConfig, peers: &[PeerInfo]) -> SubnetRouteStatus {
    let own = config.subnet_routes.advertised();
    let accepted = match &config.assignment {
        Some(a) => {
            let mesh = MeshNets {
                v4: a.network_cidr,
                v6: crate::proto::mesh6::prefix(&a.server_public_key),
            };
            select(peers, config.accept_routes, &own, mesh).1
        }
        None => Vec::new(),
    };
    SubnetRouteStatus {
        advertised: own,
        accept_routes: config.accept_routes,
        accepted,
    }
}

/// The human lines of [`SubnetRouteStatus`] (none when subnet routes are not in use).
pub fn describe(s: &SubnetRouteStatus) -> String {
    let mut out = String::new();
    if !s.advertised.is_empty() {
        let list: Vec<String> = s.advertised.iter().map(IpNet::to_string).collect();
        out.push_str(&format!("advertising routes: {}\n", list.join(", ")));
    }
    for a in &s.accepted {
        out.push_str(&format!(
            "route {} via {} ({}){}\n",
            a.prefix,
            a.router,
            a.router_ip,
            match a.standby.is_empty() {
                true => String::new(),
                false => format!(", standby {}", a.standby.join(", ")),
            }
        ));
    }
    if s.accept_routes && s.accepted.is_empty() {
        out.push_str("accepting subnet routes: none approved and online\n");
    }
    out
}

#[cfg(test)]
mod tests;
