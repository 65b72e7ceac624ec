//! Linux plans: kernel WireGuard through `ip` and `wg`, as `wg-quick` does it, with
//! `wireguard-go` as the fallback when the kernel has no WireGuard module.

use super::command::{Command, Payload, Plan};
use super::spec::{Firewall, InterfaceSpec, PeerSpec, TargetOs, FWMARK_TABLE};
use super::tunnel::exit_peer_update;
use super::wg::{configure_wg, wg_program, wireguard_go};
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

pub(super) fn create(name: &InterfaceName) -> Plan {
    Plan::of(vec![Command::new("ip")
        .args(["link", "add", "dev", name.as_str(), "type", "wireguard"])
        .or_else(wireguard_go(name.as_str()))])
}

pub(super) fn configure(spec: &InterfaceSpec, peers: &[PeerSpec]) -> Plan {
    let name = spec.name.as_str();
    let mut commands = configure_wg(TargetOs::Linux, spec, &spec.name, peers);
    commands.push(Command::new("ip").args([
        "-4",
        "address",
        "add",
        &format!("{}/32", spec.address),
        "dev",
        name,
    ]));
    commands.push(Command::new("ip").args([
        "link",
        "set",
        "mtu",
        &super::spec::mtu_or_default(spec).to_string(),
        "up",
        "dev",
        name,
    ]));
    commands.push(Command::new("ip").args([
        "-4",
        "route",
        "add",
        &spec.network.trunc().to_string(),
        "dev",
        name,
    ]));
    if let Some((address, prefix)) = spec.ipv6 {
        // nodad: the address is ours by construction, and duplicate detection would leave it
        // "tentative" (unusable) for a second or two.
        commands.push(
            Command::new("ip")
                .args([
                    "-6",
                    "address",
                    "add",
                    &format!("{address}/128"),
                    "dev",
                    name,
                    "nodad",
                ])
                .tolerate_failure(),
        );
        commands.push(
            Command::new("ip")
                .args([
                    "-6",
                    "route",
                    "add",
                    &prefix.trunc().to_string(),
                    "dev",
                    name,
                ])
                .tolerate_failure(),
        );
    }
    Plan::of(commands)
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

pub(super) fn routes(name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    let mut commands = Vec::new();
    for net in add {
        let net = net.trunc();
        commands.push(Command::new("ip").args([
            family(&net),
            "route",
            "replace",
            &net.to_string(),
            "dev",
            name.as_str(),
        ]));
    }
    for net in remove {
        let net = net.trunc();
        commands.push(
            Command::new("ip")
                .args([
                    family(&net),
                    "route",
                    "del",
                    &net.to_string(),
                    "dev",
                    name.as_str(),
                ])
                .tolerate_failure(),
        );
    }
    Plan::of(commands)
}

pub(super) fn destroy(name: &InterfaceName) -> Plan {
    // Deleting the link also removes its addresses and routes, and makes a wireguard-go
    // fallback process exit.
    Plan::of(vec![Command::new("ip")
        .args(["link", "delete", "dev", name.as_str()])
        .tolerate_failure()])
}

fn table() -> String {
    FWMARK_TABLE.to_string()
}

/// `ip -4 rule` arguments of the two full-tunnel rules, as `wg-quick` adds them: everything
/// not marked by WireGuard looks up the tunnel's table, and the main table still wins for
/// anything more specific than a default route (the LAN, the link to the gateway).
fn tunnel_rules() -> [Vec<String>; 2] {
    [
        vec![
            "not".into(),
            "fwmark".into(),
            table(),
            "table".into(),
            table(),
        ],
        vec![
            "table".into(),
            "main".into(),
            "suppress_prefixlength".into(),
            "0".into(),
        ],
    ]
}

/// Policy rules that keep TCP to `addr` (the coordination server) in the main table, so the
/// control plane never depends on the exit node it may need to tell us is gone. Only TCP: a
/// STUN probe (UDP) to the same server still goes through the tunnel, which is how `netcheck`
/// sees the address the internet sees behind the exit node.
fn control_plane_rule(addr: &IpAddr) -> Option<Vec<String>> {
    match addr {
        IpAddr::V4(v4) => Some(vec![
            "to".into(),
            format!("{v4}/32"),
            "ipproto".into(),
            "tcp".into(),
            "table".into(),
            "main".into(),
        ]),
        IpAddr::V6(_) => None,
    }
}

pub(super) fn full_tunnel_on(
    name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
) -> Plan {
    let mut commands = vec![exit_peer_update(
        wg_program(TargetOs::Linux),
        name,
        vec!["fwmark".into(), table()],
        exit_peer,
        true,
    )];
    for rule in tunnel_rules() {
        commands.push(Command::new("ip").args(["-4", "rule", "add"]).args(rule));
    }
    // Added last, so the kernel gives them a smaller preference: they are matched first.
    for rule in keep_outside.iter().filter_map(control_plane_rule) {
        commands.push(Command::new("ip").args(["-4", "rule", "add"]).args(rule));
    }
    // IPv6 defaults go into the tunnel too: to the exit node when it offers ::/0 (its peer's
    // allowed IPs then include it), dropped otherwise, so IPv6 never bypasses the exit node.
    // Local IPv6 routes (prefix > 0) still apply. Tolerated where IPv6 is off.
    for rule in tunnel_rules() {
        commands.push(
            Command::new("ip")
                .args(["-6", "rule", "add"])
                .args(rule)
                .tolerate_failure(),
        );
    }
    commands.push(
        Command::new("ip")
            .args([
                "-6",
                "route",
                "add",
                "::/0",
                "dev",
                name.as_str(),
                "table",
                &table(),
            ])
            .tolerate_failure(),
    );
    commands.push(Command::new("ip").args([
        "-4",
        "route",
        "add",
        "0.0.0.0/0",
        "dev",
        name.as_str(),
        "table",
        &table(),
    ]));
    // Reverse-path filtering would drop replies to marked packets without this.
    commands.push(Command::new("sysctl").args(["-q", "net.ipv4.conf.all.src_valid_mark=1"]));
    Plan::of(commands)
}

pub(super) fn full_tunnel_off(
    name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
) -> Plan {
    // Rules first, so traffic returns to the main table before the tunnel's route goes. The
    // sysctl stays: wg-quick leaves it too, and it is harmless without the mark.
    let mut commands: Vec<Command> = tunnel_rules()
        .into_iter()
        .map(|rule| {
            Command::new("ip")
                .args(["-6", "rule", "del"])
                .args(rule)
                .tolerate_failure()
        })
        .collect();
    commands.push(
        Command::new("ip")
            .args([
                "-6",
                "route",
                "del",
                "::/0",
                "dev",
                name.as_str(),
                "table",
                &table(),
            ])
            .tolerate_failure(),
    );
    commands.extend(
        tunnel_rules()
            .into_iter()
            .chain(keep_outside.iter().filter_map(control_plane_rule))
            .map(|rule| {
                Command::new("ip")
                    .args(["-4", "rule", "del"])
                    .args(rule)
                    .tolerate_failure()
            }),
    );
    commands.push(
        Command::new("ip")
            .args([
                "-4",
                "route",
                "del",
                "0.0.0.0/0",
                "dev",
                name.as_str(),
                "table",
                &table(),
            ])
            .tolerate_failure(),
    );
    commands.push(exit_peer_update(
        wg_program(TargetOs::Linux),
        name,
        vec!["fwmark".into(), "off".into()],
        exit_peer,
        false,
    ));
    Plan::of(commands)
}

/// The name of wgmesh's nftables table for an interface. nft identifiers allow letters,
/// digits, `_`, `.` and `-`; the `+` and `=` an interface name may hold become `_`.
fn nft_table(name: &InterfaceName) -> String {
    let safe: String = name
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("wgmesh-{safe}")
}

/// The name of wgmesh's iptables chains (28 characters at most: 7 + 15 fit).
fn iptables_chain(name: &InterfaceName) -> String {
    format!("WGMESH-{name}")
}

/// The address family of an exit node's NAT: IPv4 for the mesh network, IPv6 for the
/// IPv6 mesh prefix. The two rule sets are alike but live in separate tables and tools.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// nftables family and address keyword.
    fn nft(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("ip", "ip"),
            Family::V6 => ("ip6", "ip6"),
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn forwarding(self) -> &'static str {
        match self {
            Family::V4 => "net.ipv4.ip_forward=1",
            Family::V6 => "net.ipv6.conf.all.forwarding=1",
        }
    }
}

fn iptables_for(family: Family, table: &str) -> Command {
    // -w: wait for the xtables lock instead of failing when another tool holds it.
    Command::new(family.iptables()).args(["-w", "-t", table])
}

pub(super) fn exit_node_nat_on(
    name: &InterfaceName,
    out: &InterfaceName,
    mesh: Ipv4Net,
    firewall: Firewall,
) -> Plan {
    nat_on(Family::V4, name, out, mesh.trunc().to_string(), firewall)
}

pub(super) fn exit_node_nat6_on(
    name: &InterfaceName,
    out: &InterfaceName,
    mesh: Ipv6Net,
    firewall: Firewall,
) -> Plan {
    nat_on(Family::V6, name, out, mesh.trunc().to_string(), firewall)
}

pub(super) fn exit_node_nat_off(
    name: &InterfaceName,
    _out: &InterfaceName,
    _mesh: Ipv4Net,
    firewall: Firewall,
) -> Plan {
    nat_off(Family::V4, name, firewall)
}

pub(super) fn exit_node_nat6_off(name: &InterfaceName, firewall: Firewall) -> Plan {
    nat_off(Family::V6, name, firewall)
}

fn nat_on(
    family: Family,
    name: &InterfaceName,
    out: &InterfaceName,
    mesh: String,
    firewall: Firewall,
) -> Plan {
    let forward = Command::new("sysctl").args(["-q", family.forwarding()]);
    let (nft_family, addr) = family.nft();
    match firewall {
        Firewall::Nftables => {
            let table = nft_table(name);
            // Declaring then deleting the table first makes the load a replacement in one
            // atomic transaction, whether or not the table existed.
            let ruleset = format!(
                "table {nft_family} {table}\n\
                 delete table {nft_family} {table}\n\
                 table {nft_family} {table} {{\n\
                 \tchain postrouting {{\n\
                 \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\t{addr} saddr {mesh} oifname \"{out}\" masquerade\n\
                 \t}}\n\
                 \tchain forward {{\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\tiifname \"{name}\" oifname \"{out}\" {addr} saddr {mesh} accept\n\
                 \t\tiifname \"{out}\" oifname \"{name}\" ct state established,related accept\n\
                 \t\tiifname \"{out}\" oifname \"{name}\" drop\n\
                 \t}}\n\
                 }}\n"
            );
            Plan::of(vec![
                forward,
                Command::new("nft")
                    .args(["-f", "/dev/stdin"])
                    .stdin(Payload::Text(ruleset)),
            ])
        }
        Firewall::Iptables => {
            let chain = iptables_chain(name);
            let (name, out) = (name.as_str(), out.as_str());
            let ipt = |table: &str| iptables_for(family, table);
            let create_or_flush = |table: &str| {
                ipt(table)
                    .args(["-N", &chain])
                    .or_else(ipt(table).args(["-F", &chain]))
            };
            let jump_once = |table: &str, builtin: &str, how: &str| {
                ipt(table)
                    .args(["-C", builtin, "-j", &chain])
                    .or_else(ipt(table).args([how, builtin, "-j", &chain]))
            };
            Plan::of(vec![
                forward,
                create_or_flush("nat"),
                ipt("nat").args(["-A", &chain, "-s", &mesh, "-o", out, "-j", "MASQUERADE"]),
                jump_once("nat", "POSTROUTING", "-A"),
                create_or_flush("filter"),
                ipt("filter").args([
                    "-A", &chain, "-i", name, "-o", out, "-s", &mesh, "-j", "ACCEPT",
                ]),
                ipt("filter").args([
                    "-A",
                    &chain,
                    "-i",
                    out,
                    "-o",
                    name,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ]),
                ipt("filter").args(["-A", &chain, "-i", out, "-o", name, "-j", "DROP"]),
                // Inserted first, so a DROP policy or rule later in FORWARD (Docker's) does
                // not stop mesh traffic.
                jump_once("filter", "FORWARD", "-I"),
            ])
        }
    }
}

fn nat_off(family: Family, name: &InterfaceName, firewall: Firewall) -> Plan {
    match firewall {
        Firewall::Nftables => Plan::of(vec![Command::new("nft")
            .args(["delete", "table", family.nft().0, &nft_table(name)])
            .tolerate_failure()]),
        Firewall::Iptables => {
            let chain = iptables_chain(name);
            let mut commands = Vec::new();
            for (table, builtin) in [("filter", "FORWARD"), ("nat", "POSTROUTING")] {
                for args in [
                    vec!["-D", builtin, "-j", &chain],
                    vec!["-F", &chain],
                    vec!["-X", &chain],
                ] {
                    commands.push(iptables_for(family, table).args(args).tolerate_failure());
                }
            }
            Plan::of(commands)
        }
    }
}
