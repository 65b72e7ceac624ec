//! A gateway's devices on subnet routes (`up --gateway`): the parts of approved routes the
//! server grants its devices (`GET /devices`) go into the AllowedIPs of each part's router
//! on the mesh interface, so WireGuard carries the devices' packets there. They become no
//! route of the node's own main table (unless `--accept-routes` uses them anyway): the
//! gateway routes only the devices' traffic to them ([`crate::agent::gateway`]'s table).

use crate::os::PeerSpec;
use crate::proto::devices::DeviceRoute;
use crate::proto::model::PeerInfo;
use ipnet::IpNet;
use std::collections::BTreeSet;

/// Adds each device route to its router's peer in `specs` (routers found by id in the
/// server's list `peers`; a router not listed, or this node itself, gets nothing), and
/// returns the prefixes that only the devices' routes put there (no peer had them already),
/// which the node must not route for itself.
pub fn add_device_routes(
    specs: &mut [PeerSpec],
    peers: &[PeerInfo],
    routes: &[DeviceRoute],
) -> BTreeSet<IpNet> {
    let mut added = BTreeSet::new();
    for route in routes {
        let prefix = route.prefix.trunc();
        if specs.iter().any(|s| s.allowed_ips.contains(&prefix)) {
            continue;
        }
        let Some(router) = peers
            .iter()
            .find(|p| p.via.is_none() && p.id == route.router)
        else {
            continue;
        };
        if let Some(spec) = specs.iter_mut().find(|s| s.public_key == router.public_key) {
            spec.allowed_ips.push(prefix);
            added.insert(prefix);
        }
    }
    added
}

/// The device routes the gateway sends into the mesh interface from its own table: those
/// served by another node (a route of this node itself leaves by its LAN, as the main table
/// says), each prefix once.
pub fn forwarded(routes: &[DeviceRoute], me: &crate::types::PeerId) -> BTreeSet<IpNet> {
    routes
        .iter()
        .filter(|r| &r.router != me)
        .map(|r| r.prefix.trunc())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;
    use crate::types::PeerId;

    fn peer(n: u8, via: Option<PeerId>) -> PeerInfo {
        PeerInfo {
            via,
            ..PeerInfo::for_test(PublicKey::from_bytes([n; 32]), &format!("h{n}"), n)
        }
    }

    fn spec(p: &PeerInfo) -> PeerSpec {
        PeerSpec {
            public_key: p.public_key,
            endpoint: None,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: Some(25),
        }
    }

    fn route(prefix: &str, router: &PeerInfo) -> DeviceRoute {
        DeviceRoute {
            prefix: prefix.parse().unwrap(),
            router: router.id.clone(),
        }
    }

    #[test]
    fn device_routes_join_their_routers_allowed_ips_and_no_main_route() {
        let (r1, r2, me) = (peer(2, None), peer(3, None), peer(1, None));
        let mut specs = vec![spec(&r1), spec(&r2)];
        // r2 already carries a route this node accepted itself.
        specs[1].allowed_ips.push("198.18.6.0/24".parse().unwrap());
        let routes = [
            route("198.18.5.10/32", &r1),
            route("198.18.6.0/24", &r2),
            route("198.18.7.0/24", &me),
            route("198.18.8.0/24", &peer(9, None)),
        ];
        let peers = [r1.clone(), r2.clone()];
        let added = add_device_routes(&mut specs, &peers, &routes);
        let nets = |l: &[&str]| -> Vec<IpNet> { l.iter().map(|n| n.parse().unwrap()).collect() };
        assert_eq!(
            specs[0].allowed_ips,
            nets(&["10.100.0.2/32", "198.18.5.10/32"])
        );
        assert_eq!(
            specs[1].allowed_ips,
            nets(&["10.100.0.3/32", "198.18.6.0/24"])
        );
        assert_eq!(
            added.into_iter().collect::<Vec<_>>(),
            nets(&["198.18.5.10/32"])
        );
        // This node's own routes leave by its LAN; the others go through its table.
        let table: Vec<IpNet> = forwarded(&routes, &me.id).into_iter().collect();
        assert_eq!(
            table,
            nets(&["198.18.5.10/32", "198.18.6.0/24", "198.18.8.0/24"])
        );
    }
}
