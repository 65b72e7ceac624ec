//! `wg` and `wireguard-go` argv: which binary, how many peers fit one `wg set`, and the
//! per-peer argument groups, shared by every OS's plans.

use super::command::{Command, Payload, Secret};
use super::spec::{InterfaceSpec, PeerSpec, TargetOs};
use crate::keys::PublicKey;
use crate::types::InterfaceName;
use ipnet::IpNet;

/// `wireguard-go NAME`, daemonizing with its output on /dev/null. `LOG_LEVEL=silent` is set
/// because any other inherited `LOG_LEVEL` makes the daemon keep the runner's stdout and
/// stderr pipes open, so the runner would wait for it until its timeout and report a failure.
pub(super) fn wireguard_go(name: &str) -> Command {
    Command::new("wireguard-go")
        .env("LOG_LEVEL", "silent")
        .arg(name)
}

/// The `wg` binary's name on `os`.
pub fn wg_program(os: TargetOs) -> &'static str {
    match os {
        TargetOs::Windows => "wg.exe",
        _ => "wg",
    }
}

/// How many bytes of arguments one `wg set` may carry on `os` before peers spill into another
/// process. Windows: `CreateProcess` caps a command line at 32,767 UTF-16 units, minus room for
/// the program path. Elsewhere: well under macOS's 1 MiB `ARG_MAX` (which includes the
/// environment) and Linux's 2 MiB; about 700 peers per process.
pub(super) fn arg_budget(os: TargetOs) -> usize {
    match os {
        TargetOs::Windows => 30_000,
        _ => 100_000,
    }
}

/// Builds `wg set NAME <head> peer ... peer ...`, splitting peers over several processes only
/// when one would exceed `budget` bytes of arguments. `head` (private key, port, fwmark) and
/// `stdin` go on the first process; `groups` are the per-peer argument groups of
/// [`peer_groups`].
pub(super) fn wg_set(
    program: &str,
    real_name: &InterfaceName,
    head: Vec<String>,
    stdin: Option<Payload>,
    groups: Vec<Vec<String>>,
    budget: usize,
) -> Vec<Command> {
    if head.is_empty() && groups.is_empty() {
        return Vec::new();
    }
    let start = |head: Vec<String>| {
        Command::new(program)
            .arg("set")
            .arg(real_name.as_str())
            .args(head)
    };
    let size = |words: &[String]| words.iter().map(|w| w.len() + 1).sum::<usize>();
    let mut commands = Vec::new();
    let mut current = start(head);
    if let Some(payload) = stdin {
        current = current.stdin(payload);
    }
    let mut used = size(&current.args);
    let mut only_head = true; // `current` has no peer yet, so it cannot be split off
    for group in groups {
        let len = size(&group);
        if !only_head && used + len > budget {
            commands.push(std::mem::replace(&mut current, start(Vec::new())));
            used = size(&current.args);
        }
        used += len;
        current = current.args(group);
        only_head = false;
    }
    commands.push(current);
    commands
}

/// The `wg set` argument groups for a peer diff: upserts before removals (add before delete).
/// On a new interface (`fresh`) every peer is new, so settings that are already WireGuard's
/// defaults (no allowed IPs, keepalive off) are left out.
pub(super) fn peer_groups(
    upsert: &[PeerSpec],
    remove: &[PublicKey],
    fresh: bool,
) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = upsert.iter().map(|p| peer_args(p, fresh)).collect();
    groups.extend(
        remove
            .iter()
            .map(|k| vec!["peer".into(), k.to_base64(), "remove".into()]),
    );
    groups
}

/// `peer KEY [endpoint E] allowed-ips A,B persistent-keepalive N|off` for one upsert. On an
/// existing interface both are always given, so that clearing allowed IPs (`''`) or turning
/// the keepalive off is an update like any other; allowed IPs replace the peer's whole set.
pub(super) fn peer_args(peer: &PeerSpec, fresh: bool) -> Vec<String> {
    let mut args = vec!["peer".to_string(), peer.public_key.to_base64()];
    if let Some(endpoint) = peer.endpoint {
        args.push("endpoint".into());
        args.push(endpoint.to_string());
    }
    if !(fresh && peer.allowed_ips.is_empty()) {
        args.push("allowed-ips".into());
        args.push(join_nets(&peer.allowed_ips));
    }
    match peer.persistent_keepalive {
        Some(n) if n > 0 => args.extend(["persistent-keepalive".into(), n.to_string()]),
        _ if !fresh => args.extend(["persistent-keepalive".into(), "off".into()]),
        _ => {}
    }
    args
}

pub(super) fn join_nets(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `wg set NAME private-key /dev/stdin listen-port PORT peer ...` with the key on stdin: how
/// a freshly created interface gets its identity and first peers (Linux and macOS; Windows
/// writes a configuration file instead).
pub(super) fn configure_wg(
    os: TargetOs,
    spec: &InterfaceSpec,
    real_name: &InterfaceName,
    peers: &[PeerSpec],
) -> Vec<Command> {
    let head = vec![
        "private-key".to_string(),
        "/dev/stdin".into(),
        "listen-port".into(),
        spec.listen_port.to_string(),
    ];
    let stdin = Payload::Secret(Secret::private_key(&spec.private_key));
    wg_set(
        wg_program(os),
        real_name,
        head,
        Some(stdin),
        peer_groups(peers, &[], true),
        arg_budget(os),
    )
}

/// `[Peer]` sections for `wg addconf`: each replaces the peer's allowed IPs and keepalive,
/// and its endpoint when one is known (as `peer_args` does on the command line).
pub(super) fn peers_conf(peers: &[PeerSpec]) -> String {
    let mut text = String::with_capacity(peers.len() * 160);
    for peer in peers {
        text.push_str("[Peer]\nPublicKey = ");
        text.push_str(&peer.public_key.to_base64());
        text.push('\n');
        if let Some(endpoint) = peer.endpoint {
            text.push_str(&format!("Endpoint = {endpoint}\n"));
        }
        text.push_str(&format!("AllowedIPs = {}\n", join_nets(&peer.allowed_ips)));
        match peer.persistent_keepalive {
            Some(n) if n > 0 => text.push_str(&format!("PersistentKeepalive = {n}\n")),
            _ => text.push_str("PersistentKeepalive = off\n"),
        }
    }
    text
}
