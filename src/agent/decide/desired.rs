//! What the mesh and this node's configuration want, before looking at the host: the
//! interface, the peers as WireGuard should know them, extra routes, the chosen exit node and
//! the full tunnel through it. Pure functions, shared by the sync plan, `export` and
//! `netcheck`.

use crate::agent::error::AgentError;
use crate::agent::state::config::{AppliedTunnel, Assignment, ClientConfig, ExitFallback};
use crate::keys::PublicKey;
use crate::os::{InterfaceSpec, PeerSpec, TargetOs};
use crate::proto::model::PeerInfo;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// Seconds between keepalives to every peer: under the 30 s or so that common NATs keep an
/// idle UDP mapping, as wg-quick users conventionally set (25).
pub const PERSISTENT_KEEPALIVE: u16 = 25;

/// The interface this config and assignment call for: the IPv4 mesh address, and the IPv6
/// one derived from it under the server's IPv6 mesh prefix.
pub fn interface_spec(config: &ClientConfig, assignment: &Assignment) -> InterfaceSpec {
    let prefix6 = crate::proto::mesh6::prefix(&assignment.server_public_key);
    InterfaceSpec {
        name: config.interface.clone(),
        private_key: config.private_key.clone(),
        listen_port: config.listen_port,
        address: assignment.assigned_ip,
        network: assignment.network_cidr,
        ipv6: Some((
            crate::proto::mesh6::address(prefix6, assignment.assigned_ip),
            prefix6,
        )),
        // 0: the OS's automatic MTU (see `ClientConfig::mtu`).
        mtu: config.mtu.unwrap_or(0),
    }
}

/// Whether `peer` is the one a user named with `--use-exit-node` (its hostname, mesh
/// address or peer id): the one rule the agent, `export` and `netcheck` all go by.
pub fn is_named(peer: &PeerInfo, wanted: &str) -> bool {
    peer.hostname.as_str() == wanted
        || peer.virtual_ip.to_string() == wanted
        || peer.id.as_str() == wanted
}

/// The peers as WireGuard should know them: each peer's own prefixes, and a default route
/// only for the exit node this host chose (exit nodes are opt-in). A device behind a
/// gateway (`via`) is no peer of its own: its addresses join its gateway's (see
/// [`crate::agent::gateway`]), and go nowhere while the gateway is not listed.
pub fn desired_peers(peers: &[PeerInfo], exit: Option<&PublicKey>) -> Vec<PeerSpec> {
    let mut specs = own_peers(peers, exit);
    for device in peers.iter().filter(|p| p.via.is_some()) {
        let gateway = peers
            .iter()
            .find(|g| g.via.is_none() && Some(&g.id) == device.via.as_ref());
        if let Some(spec) =
            gateway.and_then(|g| specs.iter_mut().find(|s| s.public_key == g.public_key))
        {
            spec.allowed_ips.extend(device.allowed_ips.iter().copied());
        }
    }
    specs
}

fn own_peers(peers: &[PeerInfo], exit: Option<&PublicKey>) -> Vec<PeerSpec> {
    peers
        .iter()
        .filter(|p| p.via.is_none())
        .map(|p| PeerSpec {
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p
                .allowed_ips
                .iter()
                .filter(|net| net.prefix_len() != 0 || exit == Some(&p.public_key))
                .copied()
                .collect(),
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
        })
        .collect()
}

/// Prefixes beyond the mesh network that must be routed into the interface. Never a default
/// route: an exit node's is the full tunnel's business (policy routing with a fwmark); a
/// plain default route here would loop WireGuard's own packets into itself.
pub(in crate::agent) fn extra_routes(
    desired: &[PeerSpec],
    mesh: Ipv4Net,
    mesh6: ipnet::Ipv6Net,
) -> BTreeSet<IpNet> {
    desired
        .iter()
        .flat_map(|p| p.allowed_ips.iter())
        .filter(|net| net.prefix_len() != 0)
        .filter(|net| match net {
            IpNet::V4(v4) => !mesh.contains(v4),
            IpNet::V6(v6) => !mesh6.contains(v6),
        })
        .map(IpNet::trunc)
        .collect()
}

/// The exit node this host asked for, if it is in the list. A peer that is listed but offers
/// no exit is a configuration error; one that is missing is offline.
pub(in crate::agent) fn chosen_exit<'p>(
    config: &ClientConfig,
    peers: &'p [PeerInfo],
) -> Result<Option<&'p PeerInfo>, AgentError> {
    let Some(wanted) = config.use_exit_node.as_deref() else {
        return Ok(None);
    };
    match peers.iter().find(|p| is_named(p, wanted)) {
        Some(p) if !p.exit_node => Err(AgentError::Usage(format!(
            "peer {wanted} ({}) does not offer to be an exit node: start it with --exit-node",
            p.virtual_ip
        ))),
        Some(p) => Ok(Some(p)),
        None => {
            log::warn!(
                "exit node {wanted} is offline or unknown; {}",
                match config.exit_fallback {
                    ExitFallback::Block =>
                        "internet traffic stays blocked until it returns (--exit-fallback block)",
                    ExitFallback::Direct =>
                        "using the direct connection until it returns (--exit-fallback direct)",
                }
            );
            Ok(None)
        }
    }
}

/// The full tunnel this host should have now, given the one it has.
pub(in crate::agent) fn wanted_tunnel(
    config: &ClientConfig,
    os: TargetOs,
    exit: Option<&PeerInfo>,
    desired: &[PeerSpec],
    have: Option<&AppliedTunnel>,
    (server_ip, gateway): (Option<IpAddr>, Option<Ipv4Addr>),
) -> Option<AppliedTunnel> {
    let Some(exit) = exit else {
        // Exit node chosen but gone: fail closed keeps the tunnel (and so blocks traffic).
        let keep = config.use_exit_node.is_some() && config.exit_fallback == ExitFallback::Block;
        return if keep { have.cloned() } else { None };
    };
    let spec = desired
        .iter()
        .find(|p| p.public_key == exit.public_key)
        .expect("the exit node is among the desired peers");
    let mut keep_outside: Vec<IpAddr> = Vec::new();
    if let Some(server) = server_ip {
        keep_outside.push(server);
    }
    if let Some(endpoint) = exit.endpoint {
        if !keep_outside.contains(&endpoint.0.ip()) {
            keep_outside.push(endpoint.0.ip());
        }
    }
    // Recorded for Linux only (and kept, so configurations of earlier versions compare
    // equal); macOS and Windows pin through the uplink observed each sync (`host_routes`).
    let gateway = match have {
        Some(t) => t.gateway,
        None if os == TargetOs::Linux => gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        None => Ipv4Addr::UNSPECIFIED,
    };
    Some(AppliedTunnel {
        exit_public_key: exit.public_key,
        exit_endpoint: exit.endpoint,
        exit_allowed_ips: spec
            .allowed_ips
            .iter()
            .filter(|n| n.prefix_len() != 0)
            .copied()
            .collect(),
        keep_outside,
        gateway,
        exit_ipv6: spec
            .allowed_ips
            .iter()
            .any(|n| matches!(n, IpNet::V6(v6) if v6.prefix_len() == 0)),
        pinned: have.and_then(|t| t.pinned.clone()),
    })
}

#[cfg(test)]
mod device_tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn info(name: &str, last: u8, via: Option<&PeerInfo>) -> PeerInfo {
        let mut peer = PeerInfo {
            dns_name: Some(name.parse().unwrap()),
            via: via.map(|g| g.id.clone()),
            ..PeerInfo::for_test(PrivateKey::generate().public_key(), name, last)
        };
        peer.allowed_ips
            .push(format!("fd00::a64:{last}/128").parse().unwrap());
        peer
    }

    #[test]
    fn a_device_is_routed_to_its_gateway_and_is_no_peer_of_its_own() {
        let gw = info("gw", 2, None);
        let web = info("web", 3, None);
        let phone = info("phone", 9, Some(&gw));
        let specs = desired_peers(&[gw.clone(), web.clone(), phone.clone()], None);
        assert_eq!(specs.len(), 2, "{specs:?}");
        assert!(specs.iter().all(|s| s.public_key != phone.public_key));
        let to_gw = specs
            .iter()
            .find(|s| s.public_key == gw.public_key)
            .unwrap();
        let mut want = gw.allowed_ips.clone();
        want.extend(phone.allowed_ips.iter().copied());
        assert_eq!(to_gw.allowed_ips, want);
        let to_web = specs
            .iter()
            .find(|s| s.public_key == web.public_key)
            .unwrap();
        assert_eq!(to_web.allowed_ips, web.allowed_ips);
        // The gateway not listed (offline, or hidden by the policy): no route at all.
        let alone = desired_peers(&[web.clone(), phone], None);
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].allowed_ips, web.allowed_ips);
    }
}
