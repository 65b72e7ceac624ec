//! The split-default full tunnel shared by every OS: which allowed IPs the exit peer gets,
//! which addresses stay outside, and the half-space routes that win over the default route
//! without replacing it.

use super::command::Command;
use super::spec::PeerSpec;
use super::wg::join_nets;
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

/// The `0.0.0.0/0` every full tunnel routes.
pub(super) fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

/// The exit peer's allowed IPs with (`on`) or without (`off`) the default route, in order and
/// without duplicates.
pub(super) fn exit_allowed_ips(peer: &PeerSpec, on: bool) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = Vec::new();
    for net in peer.allowed_ips.iter().map(|n| n.trunc()) {
        if net != default_v4() && !nets.contains(&net) {
            nets.push(net);
        }
    }
    if on {
        nets.push(default_v4());
    }
    nets
}

/// `wg set NAME peer KEY allowed-ips ...` for the exit peer, with `head` (fwmark) first.
pub(super) fn exit_peer_update(
    program: &str,
    real_name: &InterfaceName,
    head: Vec<String>,
    peer: &PeerSpec,
    on: bool,
) -> Command {
    Command::new(program)
        .arg("set")
        .arg(real_name.as_str())
        .args(head)
        .args([
            "peer".to_string(),
            peer.public_key.to_base64(),
            "allowed-ips".into(),
            join_nets(&exit_allowed_ips(peer, on)),
        ])
}

/// IPv4 addresses to pin outside a full tunnel: the exit peer's endpoint, then `keep_outside`,
/// without duplicates. There is no IPv6 gateway to pin IPv6 addresses to; their presence
/// keeps IPv6 out of the tunnel instead (see [`half_defaults_v6`]).
pub(super) fn pinned_v4(exit_peer: &PeerSpec, keep_outside: &[IpAddr]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let endpoint = exit_peer.endpoint.map(|e| e.0.ip());
    for addr in endpoint.iter().chain(keep_outside.iter()) {
        if let IpAddr::V4(v4) = addr {
            if !out.contains(v4) {
                out.push(*v4);
            }
        }
    }
    out
}

/// The two halves of the IPv4 space: more specific than any default route, so they win
/// without replacing it (and, on Windows, without the tunnel service's /0 kill-switch).
/// The two halves of the IPv6 address space (`::/1`, `8000::/1`), routed into the tunnel for
/// the same reason as [`half_defaults`] — but only when no address that must stay outside the
/// tunnel is IPv6: without an IPv6 gateway to pin it to, such an address would be captured
/// and WireGuard's own packets would loop. Returns nothing in that case (IPv6 then keeps its
/// usual route, as wg-quick on these systems would need an IPv6 pin too).
pub(super) fn half_defaults_v6(
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
) -> Vec<ipnet::Ipv6Net> {
    let endpoint = exit_peer.endpoint.map(|e| e.0.ip());
    if keep_outside
        .iter()
        .chain(endpoint.iter())
        .any(IpAddr::is_ipv6)
    {
        return Vec::new();
    }
    ["::/1", "8000::/1"]
        .iter()
        .map(|h| h.parse().expect("literal IPv6 halves"))
        .collect()
}

pub(super) fn half_defaults() -> [Ipv4Net; 2] {
    [
        Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 1).expect("/1 is a valid prefix"),
        Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1).expect("/1 is a valid prefix"),
    ]
}
