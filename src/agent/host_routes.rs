//! The full tunnel's routes on macOS and Windows, kept right from what the OS shows: the
//! agent reads the routing table (`netstat -rn -f inet`, `route print -4`) each sync and on
//! its quick route check, and plans pins and halves from that ([`crate::os::pins`]), never
//! from what it saved. This is the thin I/O edge; the decisions are pure and tested there.

use crate::os::pins::TunnelRoutes;
use crate::os::route_table::RouteTable;
use crate::os::runner::Runner;
use crate::os::{observe_macos, observe_windows, PeerSpec, TargetOs};
use crate::types::InterfaceName;
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};

/// Whether `os` builds its full tunnel from host routes (and so needs this module).
pub fn uses_host_routes(os: TargetOs) -> bool {
    matches!(os, TargetOs::Macos | TargetOs::Windows)
}

/// Reads the IPv4 routing table through `reader`; the error names the command that failed.
pub fn observe(os: TargetOs, reader: &mut dyn Runner) -> Result<RouteTable, String> {
    let (command, parse): (_, fn(&str) -> RouteTable) = match os {
        TargetOs::Windows => (
            observe_windows::route_print_command(),
            observe_windows::parse_route_print,
        ),
        _ => (
            observe_macos::netstat_command(),
            observe_macos::parse_netstat,
        ),
    };
    let out = reader
        .run(&command)
        .map_err(|e| format!("cannot read the routing table: {e}"))?;
    Ok(parse(&out.stdout))
}

/// The addresses a full tunnel must keep outside: the coordination server and every peer's
/// endpoint (WireGuard's own packets), IPv4 only, in order, without duplicates.
pub fn outside(server: Option<IpAddr>, peers: &[PeerSpec]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let endpoints = peers.iter().filter_map(|p| p.endpoint.map(|e| e.0.ip()));
    for addr in server.into_iter().chain(endpoints) {
        if let IpAddr::V4(v4) = addr {
            if !out.contains(&v4) {
                out.push(v4);
            }
        }
    }
    out
}

/// Whether IPv6 may go into the tunnel: only while nothing that must stay outside is IPv6,
/// because there is no IPv6 uplink to pin it to and `::/1` would capture WireGuard's own
/// packets to such a peer (IPv6 then keeps its usual route; README says so).
pub fn ipv6_allowed(server: Option<IpAddr>, peers: &[PeerSpec]) -> bool {
    let endpoints = peers.iter().filter_map(|p| p.endpoint.map(|e| e.0.ip()));
    !server.into_iter().chain(endpoints).any(|a| a.is_ipv6())
}

/// The tunnel as the routing table shows it: `utunN` by name on macOS, the tunnel's own
/// address on Windows (whose `route print` names interfaces by address).
pub fn tunnel<'a>(
    os: TargetOs,
    real_name: &'a InterfaceName,
    address: Ipv4Addr,
    mesh: Ipv4Net,
    ipv6: bool,
) -> TunnelRoutes<'a> {
    TunnelRoutes {
        os,
        real_name,
        table_iface: match os {
            TargetOs::Windows => address.to_string(),
            _ => real_name.to_string(),
        },
        mesh,
        ipv6,
    }
}
