//! Windows plans: the WireGuard for Windows tunnel service (`wireguard.exe`) owns the adapter,
//! addresses and initial routes; `wg.exe` updates peers live; `netsh` and `route` add the
//! routes the service does not (it only routes the AllowedIPs it saw at install time).

use super::{
    exit_peer_update, half_defaults, half_defaults_v6, pinned_v4, Command, InterfaceSpec, Payload,
    PeerSpec, Plan, PlannedFile, Secret,
};
use crate::types::InterfaceName;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Where wgmesh keeps tunnel configurations; the file name (minus `.conf`) becomes the tunnel
/// name, `WireGuardTunnel$NAME`.
const CONFIG_DIR: &str = r"C:\ProgramData\wgmesh";

fn config_path(name: &InterfaceName) -> PathBuf {
    PathBuf::from(format!(r"{CONFIG_DIR}\{name}.conf"))
}

pub(super) fn configure(spec: &InterfaceSpec, peers: &[PeerSpec]) -> Plan {
    let path = config_path(&spec.name);
    let config = crate::os::wgquick::render_tunnel_service(spec, peers);
    Plan {
        files: vec![PlannedFile::private(
            path.clone(),
            Payload::Secret(Secret::new("tunnel configuration", config.into_bytes())),
        )],
        commands: vec![
            // Mode 0600 means nothing on Windows, and C:\ProgramData lets Users read what is
            // created there: drop the inherited ACL and leave only SYSTEM (S-1-5-18) and
            // Administrators (S-1-5-32-544) on the file holding the private key.
            Command::new("icacls").args([
                path.display().to_string(),
                "/inheritance:r".into(),
                "/grant:r".into(),
                "*S-1-5-18:F".into(),
                "*S-1-5-32-544:F".into(),
            ]),
            Command::new("wireguard.exe")
                .arg("/installtunnelservice")
                .arg(path.display().to_string()),
        ],
    }
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

/// `netsh interface ipvN VERB route prefix=NET interface=NAME store=active`: an on-link route
/// through the tunnel adapter, gone at reboot like the tunnel's own routes.
fn netsh_route(verb: &str, net: &IpNet, real_name: &InterfaceName) -> Command {
    let net = net.trunc();
    Command::new("netsh").args([
        "interface".to_string(),
        family(&net).into(),
        verb.into(),
        "route".into(),
        format!("prefix={net}"),
        format!("interface={real_name}"),
        "store=active".into(),
    ])
}

/// Adds the route or, when it already exists (`add` refuses duplicates), updates it.
fn ensure_netsh_route(net: &IpNet, real_name: &InterfaceName) -> Command {
    netsh_route("add", net, real_name).or_else(netsh_route("set", net, real_name))
}

pub(super) fn routes(real_name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    let mut commands: Vec<Command> = add
        .iter()
        .map(|net| ensure_netsh_route(net, real_name))
        .collect();
    commands.extend(
        remove
            .iter()
            .map(|net| netsh_route("delete", net, real_name).tolerate_failure()),
    );
    Plan::of(commands)
}

pub(super) fn destroy(real_name: &InterfaceName) -> Plan {
    // Removing the service removes the adapter and every route through it.
    Plan::of(vec![Command::new("wireguard.exe")
        .args(["/uninstalltunnelservice", real_name.as_str()])
        .tolerate_failure()])
}

/// `route VERB ADDR MASK 255.255.255.255 GW`: a host route via the physical gateway; Windows
/// picks the interface that reaches the gateway.
fn pinned_route(verb: &str, addr: Ipv4Addr, gateway: Ipv4Addr) -> Command {
    Command::new("route").args([
        verb,
        &addr.to_string(),
        "MASK",
        "255.255.255.255",
        &gateway.to_string(),
    ])
}

pub(super) fn full_tunnel_on(
    real_name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    let mut commands = vec![exit_peer_update(
        "wg.exe",
        real_name,
        vec![],
        exit_peer,
        true,
    )];
    for addr in pinned_v4(exit_peer, keep_outside) {
        commands.push(
            pinned_route("ADD", addr, gateway).or_else(pinned_route("CHANGE", addr, gateway)),
        );
    }
    for half in half_defaults() {
        commands.push(ensure_netsh_route(&IpNet::V4(half), real_name));
    }
    // IPv6 into the tunnel too: carried when the exit offers ::/0, dropped otherwise.
    for half in half_defaults_v6(exit_peer, keep_outside) {
        commands.push(ensure_netsh_route(&IpNet::V6(half), real_name).tolerate_failure());
    }
    Plan::of(commands)
}

pub(super) fn full_tunnel_off(
    real_name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    let mut commands: Vec<Command> = half_defaults()
        .iter()
        .map(|half| netsh_route("delete", &IpNet::V4(*half), real_name).tolerate_failure())
        .collect();
    for half in half_defaults_v6(exit_peer, keep_outside) {
        commands.push(netsh_route("delete", &IpNet::V6(half), real_name).tolerate_failure());
    }
    for addr in pinned_v4(exit_peer, keep_outside) {
        commands.push(pinned_route("DELETE", addr, gateway).tolerate_failure());
    }
    commands.push(exit_peer_update(
        "wg.exe",
        real_name,
        vec![],
        exit_peer,
        false,
    ));
    Plan::of(commands)
}
