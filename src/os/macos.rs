//! macOS plans: `wireguard-go` on a kernel-named `utunN`, configured with `wg`, `ifconfig`
//! and `route`, following `wg-quick`'s darwin script.

use super::command::{Command, Plan};
use super::spec::{InterfaceSpec, PeerSpec, TargetOs};
use super::wg::{configure_wg, wireguard_go};
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net};
use std::path::PathBuf;

/// Where wireguard-go keeps its control sockets, and wg-quick its name files.
const RUN_DIR: &str = "/var/run/wireguard";

pub(super) fn name_file(name: &InterfaceName) -> PathBuf {
    PathBuf::from(format!("{RUN_DIR}/{name}.name"))
}

fn socket_file(real_name: &InterfaceName) -> String {
    format!("{RUN_DIR}/{real_name}.sock")
}

pub(super) fn create(name: &InterfaceName) -> Plan {
    // "utun" asks the kernel for the next free utunN; wireguard-go writes the name it got to
    // WG_TUN_NAME_FILE and daemonizes.
    Plan::of(vec![
        Command::new("mkdir").args(["-p", RUN_DIR]),
        wireguard_go("utun").env("WG_TUN_NAME_FILE", name_file(name).display().to_string()),
    ])
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "-inet",
        IpNet::V6(_) => "-inet6",
    }
}

/// `route -q -n VERB -inet NET -interface utunN`.
fn interface_route(verb: &str, net: &IpNet, real_name: &InterfaceName) -> Command {
    let net = net.trunc();
    Command::new("route").args([
        "-q",
        "-n",
        verb,
        family(&net),
        &net.to_string(),
        "-interface",
        real_name.as_str(),
    ])
}

/// Adds a route, or repoints it when it already exists (`route add` refuses duplicates).
fn ensure_interface_route(net: &IpNet, real_name: &InterfaceName) -> Command {
    interface_route("add", net, real_name).or_else(interface_route("change", net, real_name))
}

pub(super) fn configure(
    spec: &InterfaceSpec,
    real_name: &InterfaceName,
    peers: &[PeerSpec],
) -> Plan {
    let real = real_name.as_str();
    let mut commands = configure_wg(TargetOs::Macos, spec, real_name, peers);
    // utun is point-to-point: the address is given as its own destination, as wg-quick does.
    let address = spec.address.to_string();
    commands.push(Command::new("ifconfig").args([
        real,
        "inet",
        &format!("{address}/32"),
        &address,
        "alias",
    ]));
    // 0 here means no uplink was read (a plan printed for another machine): darwin.bash's
    // fallback of 1500 - 80.
    let mtu = match spec.mtu {
        0 => super::spec::mtu_below(None),
        mtu => mtu,
    };
    commands.push(Command::new("ifconfig").args([real, "mtu", &mtu.to_string()]));
    commands.push(Command::new("ifconfig").args([real, "up"]));
    commands.push(interface_route(
        "add",
        &IpNet::V4(spec.network.trunc()),
        real_name,
    ));
    if let Some((address, prefix)) = spec.ipv6 {
        commands.push(
            Command::new("ifconfig")
                .args([
                    real,
                    "inet6",
                    &format!("{address}"),
                    "prefixlen",
                    "128",
                    "alias",
                ])
                .tolerate_failure(),
        );
        commands
            .push(interface_route("add", &IpNet::V6(prefix.trunc()), real_name).tolerate_failure());
    }
    Plan::of(commands)
}

pub(super) fn routes(real_name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    let mut commands: Vec<Command> = add
        .iter()
        .map(|net| ensure_interface_route(net, real_name))
        .collect();
    commands.extend(
        remove
            .iter()
            .map(|net| interface_route("delete", net, real_name).tolerate_failure()),
    );
    Plan::of(commands)
}

pub(super) fn destroy(name: &InterfaceName, real_name: &InterfaceName, network: Ipv4Net) -> Plan {
    // wireguard-go exits (and the utun with its routes disappears) once its socket is gone;
    // the mesh route is deleted first so a quickly re-created utun cannot collide with it.
    Plan::of(vec![
        interface_route("delete", &IpNet::V4(network.trunc()), real_name).tolerate_failure(),
        Command::new("rm").args(["-f", &socket_file(real_name)]),
        Command::new("rm").args(["-f", &name_file(name).display().to_string()]),
    ])
}
