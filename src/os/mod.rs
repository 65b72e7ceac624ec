//! Operating-system commands as data: what wgmesh would run to create, configure, update and
//! tear down a WireGuard interface on Linux, macOS and Windows.
//!
//! Every generator here is pure: it returns a [`Plan`] (files to write, then argv vectors to
//! run, with stdin where a secret must not touch a command line) and never spawns anything.
//! [`runner`] is the only place that executes plans, so every OS's plans are compiled and
//! golden-tested on every host, and tests swap in a recording runner.
//!
//! The command sequences follow wireguard-tools' `wg-quick` (Linux, macOS) and
//! wireguard-windows (`wireguard.exe /installtunnelservice`), so an operator who knows those
//! tools recognises every line of [`Plan::render`].

pub mod boot;
mod command;
pub mod dns;
mod linux;
mod macos;
mod mesh_routes;
pub mod observe_macos;
pub mod observe_windows;
pub mod pins;
pub mod route_table;
pub mod runner;
mod spec;
pub mod subnet_routes;
mod tunnel;
mod wg;
pub mod wgdump;
pub mod wgquick;
mod windows;

pub use command::{quote, Command, Payload, Plan, PlannedFile, Secret, PRIVATE_FILE_MODE};
pub use mesh_routes::routes;
pub use spec::{
    mtu_below, Firewall, InterfaceSpec, PeerChanges, PeerSpec, TargetOs, Unsupported, DEFAULT_MTU,
    FWMARK_TABLE, WIREGUARD_OVERHEAD,
};
pub use wg::wg_program;
use wg::{arg_budget, peer_groups, peers_conf, wg_set};

use crate::types::{InterfaceName, InvalidValue};
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Brings a new interface into existence (it must not exist yet; [`destroy`] tolerates a
/// missing one, so the agent runs it first to clear a stale interface).
///
/// On Windows the tunnel service creates its adapter in [`configure`]; this creates the
/// protected configuration folder, which the agent checks ([`windows_config_dir_acl`])
/// before [`configure`] writes the private key into it.
pub fn create(os: TargetOs, name: &InterfaceName) -> Plan {
    match os {
        TargetOs::Linux => linux::create(name),
        TargetOs::Macos => macos::create(name),
        TargetOs::Windows => windows::create(),
    }
}

/// Windows: the command printing the configuration folder's ACL as SDDL, for
/// [`observe_windows::check_config_dir_sddl`].
pub fn windows_config_dir_acl() -> Command {
    windows::config_dir_acl_command()
}

/// Windows: the folder tunnel configurations are written to (`%ProgramData%\wgmesh`).
pub fn windows_config_dir() -> String {
    windows::config_dir()
}

/// Gives a freshly created interface its key, port, address, MTU, mesh route and initial
/// peers. `real_name` is the kernel's name: `utunN` on macOS (read with [`macos_name_file`] /
/// [`parse_name_file`]), the spec's name elsewhere. On Windows this installs the tunnel
/// service, which refuses to install twice: later changes go through [`apply_peers`]; its
/// configuration file holds `peers` (without default routes), or only `kill_switch` (see
/// [`windows_config_file`]).
pub fn configure(
    os: TargetOs,
    spec: &InterfaceSpec,
    real_name: &InterfaceName,
    peers: &[PeerSpec],
    kill_switch: Option<&PeerSpec>,
) -> Plan {
    match os {
        TargetOs::Linux => linux::configure(spec, peers),
        TargetOs::Macos => macos::configure(spec, real_name, peers),
        TargetOs::Windows => windows::configure(spec, peers, kill_switch),
    }
}

/// Windows: the tunnel configuration file alone, rewritten when the kill-switch peer's
/// endpoint or allowed IPs change; the service reads it at its next start (a reboot), and
/// the firewall it started with (restricting or not) stays as it is until then.
pub fn windows_config_file(spec: &InterfaceSpec, kill_switch: Option<&PeerSpec>) -> Plan {
    Plan {
        files: vec![windows::config_file(spec, &[], kill_switch)],
        commands: Vec::new(),
    }
}

/// Applies a peer diff in a constant number of processes: one `wg set` when it fits the
/// command line; otherwise (a mass change, e.g. a server restart seen by a 1,000-peer node)
/// on Linux and macOS all upserts as one `wg addconf NAME /dev/stdin` and all removals as one
/// `wg set`, so at most two processes whatever the size. Windows keeps splitting `wg set`
/// under its 32 KiB command line. Empty when there is nothing to change.
pub fn apply_peers(os: TargetOs, real_name: &InterfaceName, changes: &PeerChanges) -> Plan {
    let program = wg_program(os);
    let commands = wg_set(
        program,
        real_name,
        Vec::new(),
        None,
        peer_groups(&changes.upsert, &changes.remove, false),
        arg_budget(os),
    );
    if commands.len() <= 1 || os == TargetOs::Windows {
        return Plan::of(commands);
    }
    // `wg` config files cannot say "no allowed IPs" (an empty `AllowedIPs =` is refused), so
    // such rare peers stay on the command line with the removals.
    let (by_file, by_argv): (Vec<PeerSpec>, Vec<PeerSpec>) = changes
        .upsert
        .iter()
        .cloned()
        .partition(|p| !p.allowed_ips.is_empty());
    let mut bulk = Vec::new();
    if !by_file.is_empty() {
        bulk.push(
            Command::new(program)
                .args(["addconf", real_name.as_str(), "/dev/stdin"])
                .stdin(Payload::Text(peers_conf(&by_file))),
        );
    }
    // Removals cost about 60 bytes each: even 10,000 fit Linux's 2 MiB and macOS's 1 MiB.
    bulk.extend(wg_set(
        program,
        real_name,
        Vec::new(),
        None,
        peer_groups(&by_argv, &changes.remove, false),
        usize::MAX,
    ));
    Plan::of(bulk)
}

/// Removes the interface and what the OS does not clean up by itself; safe to run when the
/// interface is already gone. `name` is the logical name (macOS keeps `NAME.name` beside the
/// socket), `network` the mesh route.
pub fn destroy(
    os: TargetOs,
    name: &InterfaceName,
    real_name: &InterfaceName,
    network: Ipv4Net,
) -> Plan {
    match os {
        TargetOs::Linux => linux::destroy(real_name),
        TargetOs::Macos => macos::destroy(name, real_name, network),
        TargetOs::Windows => windows::destroy(real_name),
    }
}

// The on/off pairs below (full tunnel, exit-node NAT) look alike to `duplicates` because each
// is a per-OS dispatch; their bodies live in linux.rs, macos.rs, windows.rs and tunnel.rs.

/// Sends all IPv4 traffic through `exit_peer`: adds `0.0.0.0/0` to its allowed IPs and routes
/// the default through the tunnel while keeping WireGuard's own packets on the physical
/// network, and each `keep_outside` address (the coordination server, the exit's endpoint)
/// too: on macOS and Windows pinned via `gateway`, the old default gateway; on Linux (where
/// the fwmark already covers WireGuard) by a rule sending TCP to it through the main table,
/// so the control plane survives a dead exit node while UDP probes still use the tunnel.
///
/// The agent must also list `0.0.0.0/0` in the exit peer's desired allowed IPs, or the next
/// reconcile takes it away again. Run [`full_tunnel_off`] before switching exit nodes; running
/// `on` twice would duplicate Linux's routing rules. IPv6 defaults go into the tunnel too
/// (carried when the exit peer's allowed IPs include `::/0`, dropped otherwise); on macOS and
/// Windows only while no IPv6 address has to stay outside (no IPv6 gateway exists to pin it to).
pub fn full_tunnel_on(
    os: TargetOs,
    real_name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    match os {
        TargetOs::Linux => linux::full_tunnel_on(real_name, exit_peer, keep_outside),
        os => pins::full_tunnel_on(os, real_name, exit_peer, keep_outside, gateway),
    }
}

/// Undoes [`full_tunnel_on`] (same arguments): removes exactly what it added, tolerating
/// pieces already gone, and restores the exit peer's allowed IPs without `0.0.0.0/0`.
pub fn full_tunnel_off(
    os: TargetOs,
    real_name: &InterfaceName,
    exit_peer: &PeerSpec,
    keep_outside: &[IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    match os {
        TargetOs::Linux => linux::full_tunnel_off(real_name, exit_peer, keep_outside),
        os => pins::full_tunnel_off(os, real_name, exit_peer, keep_outside, gateway),
    }
}

/// Makes this device an exit node: forwards and masquerades traffic from `mesh` arriving on
/// `real_name` out of `out_iface`, using rules in a table/chain of wgmesh's own so `off` can
/// remove them completely. Running it again replaces the rules rather than duplicating them.
pub fn exit_node_nat_on(
    os: TargetOs,
    real_name: &InterfaceName,
    out_iface: &InterfaceName,
    mesh: Ipv4Net,
    firewall: Firewall,
) -> Result<Plan, Unsupported> {
    exit_node_only_on_linux(os, || {
        linux::exit_node_nat_on(real_name, out_iface, mesh, firewall)
    })
}

/// Undoes [`exit_node_nat_on`]: deletes wgmesh's table or chains. IP forwarding is left on,
/// because other software on the host (containers, VMs) may rely on it.
pub fn exit_node_nat_off(
    os: TargetOs,
    real_name: &InterfaceName,
    out_iface: &InterfaceName,
    mesh: Ipv4Net,
    firewall: Firewall,
) -> Result<Plan, Unsupported> {
    exit_node_only_on_linux(os, || {
        linux::exit_node_nat_off(real_name, out_iface, mesh, firewall)
    })
}

/// IPv6 twin of [`exit_node_nat_on`]: forwards and masquerades traffic from the IPv6 mesh
/// prefix out of `out_iface` (the IPv6 default route's interface), in an `ip6` table (or
/// ip6tables chains) of wgmesh's own.
pub fn exit_node_nat6_on(
    os: TargetOs,
    real_name: &InterfaceName,
    out_iface: &InterfaceName,
    mesh6: ipnet::Ipv6Net,
    firewall: Firewall,
) -> Result<Plan, Unsupported> {
    exit_node_only_on_linux(os, || {
        linux::exit_node_nat6_on(real_name, out_iface, mesh6, firewall)
    })
}

/// Undoes [`exit_node_nat6_on`].
pub fn exit_node_nat6_off(
    os: TargetOs,
    real_name: &InterfaceName,
    firewall: Firewall,
) -> Result<Plan, Unsupported> {
    exit_node_only_on_linux(os, || linux::exit_node_nat6_off(real_name, firewall))
}

/// Exit nodes exist on Linux only for now: every other OS gets the same clear refusal.
fn exit_node_only_on_linux(os: TargetOs, plan: impl FnOnce() -> Plan) -> Result<Plan, Unsupported> {
    match os {
        TargetOs::Linux => Ok(plan()),
        _ => Err(Unsupported {
            os,
            what: "an exit node",
        }),
    }
}

/// Where macOS `wireguard-go` writes the real `utunN` name of interface `name`
/// (`WG_TUN_NAME_FILE`), as `wg-quick` does; the agent reads it after [`create`].
pub fn macos_name_file(name: &InterfaceName) -> PathBuf {
    macos::name_file(name)
}

/// Reads the interface name out of a `WG_TUN_NAME_FILE`, refusing anything that is not a
/// plain interface name (the file is root-owned, but its contents reach command lines).
pub fn parse_name_file(contents: &str) -> Result<InterfaceName, InvalidValue> {
    contents.trim().parse()
}

#[cfg(test)]
mod tests;
