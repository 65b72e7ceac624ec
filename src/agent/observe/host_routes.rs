//! The full tunnel's routes on macOS and Windows, kept right from what the OS shows: the
//! agent reads the routing table (`netstat -rn -f inet`, `route print -4`) each sync and on
//! its quick route check, and plans pins and halves from that ([`crate::os::pins`]), never
//! from what it saved. This is the thin I/O edge; the decisions are pure and tested there.

use crate::agent::state::config::{AppliedTunnel, Assignment};
use crate::os::pins::{self, Pinned, TunnelRoutes};
use crate::os::route_table::{RouteTable, Uplink};
use crate::os::runner::{CommandError, Runner};
use crate::os::{observe_macos, observe_windows, PeerSpec, Plan, TargetOs};
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

/// Whether `os` builds its full tunnel from host routes (and so needs this module).
pub fn uses_host_routes(os: TargetOs) -> bool {
    matches!(os, TargetOs::Macos | TargetOs::Windows)
}

/// Reads the IPv4 routing table through `reader`, and with `tunnel` (the interface recorded
/// as applied) the IPv6 prefixes routed into it; the error names the command that failed.
/// An unreadable IPv6 table (IPv6 off) leaves the IPv6 routes unchecked, as before.
pub fn observe(
    os: TargetOs,
    reader: &mut dyn Runner,
    tunnel: Option<&str>,
) -> Result<RouteTable, CommandError> {
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
    let out = reader.run(&command)?;
    let mut table = parse(&out.stdout);
    if let Some(tunnel) = tunnel {
        let (command, parse6): (_, fn(&str, &str) -> Vec<ipnet::Ipv6Net>) = match os {
            TargetOs::Windows => (
                observe_windows::route6_command(),
                observe_windows::parse_netsh_route6_tunnel,
            ),
            _ => (
                observe_macos::netstat6_command(),
                observe_macos::parse_netstat6_tunnel,
            ),
        };
        match reader.run(&command) {
            Ok(out) => table.tunnel_v6 = Some(parse6(&out.stdout, tunnel)),
            Err(e) => log::debug!("IPv6 routes not checked: {e}"),
        }
    }
    Ok(table)
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

/// Whether IPv6 may go into the tunnel: not while the exit node's endpoint or the
/// coordination server is IPv6, because there is no IPv6 uplink to pin them to: `::/1`
/// would loop WireGuard's packets to the exit node into the tunnel, and take the server with
/// a dead exit node (IPv6 then keeps its usual route; README says so). Other peers' IPv6
/// endpoints need no pin: their packets travel through the exit node, as every peer's would
/// without pins.
pub fn ipv6_allowed(server: Option<IpAddr>, t: &AppliedTunnel) -> bool {
    let exit = t.exit_endpoint.map(|e| e.0.ip());
    !server.into_iter().chain(exit).any(|a| a.is_ipv6())
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

/// Turns a macOS or Windows full tunnel off: the halves, exactly the pins last recorded
/// (configurations of earlier versions recorded none: their pins were the addresses kept
/// outside), then the exit peer without its default routes (`exit_peer`).
pub fn tunnel_off(
    os: TargetOs,
    real_name: &InterfaceName,
    t: &AppliedTunnel,
    exit_peer: &PeerSpec,
) -> Plan {
    let legacy = Pinned {
        uplink: Uplink::Unusable,
        pins: t
            .keep_outside
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect(),
    };
    // Removal needs neither the mesh nor the table's name for the tunnel.
    let routes = tunnel(
        os,
        real_name,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Net::default(),
        true,
    );
    let mut plan = routes.remove(Some(t.pinned.as_ref().unwrap_or(&legacy)));
    plan.extend(pins::exit_peer_plan(os, real_name, exit_peer, false));
    plan
}

/// The step that makes a full tunnel's halves and pins match the observed `table`: the
/// endpoints of `peers` (every desired peer, and the exit node even while it is offline and
/// the tunnel is kept to fail closed) and, with `pin_server`, the server stay outside.
/// Windows under its kill-switch firewall does not pin the server: the firewall blocks the
/// agent's own traffic outside the tunnel, so its requests must go through the exit node.
/// Returns the plan and what is pinned afterwards (to record).
pub fn tunnel_routes(
    os: TargetOs,
    real_name: &InterfaceName,
    assignment: &Assignment,
    t: &AppliedTunnel,
    peers: &[PeerSpec],
    (server, pin_server): (Option<IpAddr>, bool),
    table: &RouteTable,
) -> (Plan, Pinned) {
    let routes = tunnel(
        os,
        real_name,
        assignment.assigned_ip,
        assignment.network_cidr,
        ipv6_allowed(server, t),
    );
    let pinned_server = server.filter(|_| pin_server);
    routes.reconcile(table, &outside(pinned_server, peers), t.pinned.as_ref())
}

/// The table as it will be once `off` removed `old`'s halves and pins (the table is read
/// before the sync's steps run; switching exit nodes removes and re-adds them in one sync).
pub fn without_tunnel(
    os: TargetOs,
    real_name: &InterfaceName,
    assignment: &Assignment,
    old: &AppliedTunnel,
    table: &RouteTable,
) -> RouteTable {
    let iface = tunnel(
        os,
        real_name,
        assignment.assigned_ip,
        assignment.network_cidr,
        false,
    )
    .table_iface;
    let pins: Vec<Ipv4Addr> = old
        .pinned
        .as_ref()
        .map(|p| p.pins.clone())
        .unwrap_or_default();
    RouteTable {
        routes: table
            .routes
            .iter()
            .filter(|r| !(r.iface == iface && r.dest.prefix_len() == 1))
            .filter(|r| !(r.dest.prefix_len() == 32 && pins.contains(&r.dest.addr())))
            .cloned()
            .collect(),
        // `off` removes the IPv6 halves too.
        tunnel_v6: table
            .tunnel_v6
            .as_ref()
            .map(|v6| v6.iter().filter(|n| n.prefix_len() != 1).copied().collect()),
    }
}

/// Whether any recorded subnet route through the tunnel is missing from `table`: true after
/// a Windows reboot, which forgets `store=active` routes while the tunnel service comes back
/// by itself. IPv6 routes count when the IPv6 table was read.
pub fn routes_missing(
    os: TargetOs,
    real_name: &InterfaceName,
    assignment: &Assignment,
    table: &RouteTable,
    recorded: &[IpNet],
) -> bool {
    let iface = tunnel(
        os,
        real_name,
        assignment.assigned_ip,
        assignment.network_cidr,
        false,
    )
    .table_iface;
    recorded.iter().any(|net| match net {
        IpNet::V4(v4) => !table
            .routes
            .iter()
            .any(|r| r.dest == v4.trunc() && r.iface == iface),
        // Seen when the IPv6 table was read (`tunnel_v6`), like the IPv4 ones.
        IpNet::V6(v6) => table
            .tunnel_v6
            .as_ref()
            .is_some_and(|routes| !routes.contains(&v6.trunc())),
    })
}
