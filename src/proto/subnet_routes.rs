//! Subnet routes on the wire: the admin API's JSON under `/admin/routes` (shared by the
//! server and `wgmesh routes`), and the one rule every node uses to pick the primary router
//! of a prefix that several nodes advertise, so the server's listing and every agent agree.

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
}
