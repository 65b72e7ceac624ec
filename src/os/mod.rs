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

mod linux;
mod macos;
pub mod runner;
mod windows;

use crate::keys::{PrivateKey, PublicKey};
use crate::reconcile::PeerChanges;
use crate::types::{Endpoint, InterfaceName, InvalidValue};
use ipnet::{IpNet, Ipv4Net};
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// Default tunnel MTU: a 1500-byte Ethernet MTU minus WireGuard's worst-case overhead of 80
/// bytes (40 IPv6 header + 8 UDP + 16 WireGuard data header + 16 Poly1305 tag), the same value
/// `wg-quick` and the WireGuard apps pick, so tunnelled packets never fragment on the path.
pub const DEFAULT_MTU: u16 = 1420;

/// Firewall mark and routing table number used for full-tunnel routing on Linux: WireGuard's
/// own encrypted packets carry this mark and so bypass the tunnel's default route. 51820 is the
/// value `wg-quick` uses (WireGuard's default port), which keeps `ip rule` output familiar.
pub const FWMARK_TABLE: u32 = 51820;

/// Permission bits of every file a plan writes: files carry private keys (owner only).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// The operating system a plan is generated for; independent of the host, so every OS's plans
/// can be built and tested anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetOs {
    /// Kernel WireGuard driven by `ip` and `wg`, falling back to `wireguard-go`.
    Linux,
    /// `wireguard-go` on a `utun` device, driven by `ifconfig`, `route` and `wg`.
    Macos,
    /// The WireGuard for Windows tunnel service (`wireguard.exe`, `wg.exe`, `netsh`).
    Windows,
}

impl TargetOs {
    /// The OS this binary was compiled for, or `None` on a host wgmesh has no commands for
    /// (the generators still work there, e.g. to print a plan for another machine).
    pub fn current() -> Option<TargetOs> {
        if cfg!(target_os = "linux") {
            Some(TargetOs::Linux)
        } else if cfg!(target_os = "macos") {
            Some(TargetOs::Macos)
        } else if cfg!(target_os = "windows") {
            Some(TargetOs::Windows)
        } else {
            None
        }
    }

    /// The lowercase name used on command lines and in errors (`linux`, `macos`, `windows`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetOs::Linux => "linux",
            TargetOs::Macos => "macos",
            TargetOs::Windows => "windows",
        }
    }
}

impl fmt::Display for TargetOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetOs {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "linux" => Ok(TargetOs::Linux),
            "macos" => Ok(TargetOs::Macos),
            "windows" => Ok(TargetOs::Windows),
            _ => Err(InvalidValue(format!(
                "{} is not a supported OS: use linux, macos or windows",
                crate::types::describe(s)
            ))),
        }
    }
}

/// Bytes that must never appear in a log, a rendered plan or a `Debug` dump (a private key on
/// its way to `wg`'s stdin or into a 0600 config file). The buffer is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    what: &'static str,
    bytes: Vec<u8>,
}

impl Secret {
    /// Wraps secret bytes; `what` names them in rendered plans ("private key") instead of the
    /// value.
    pub fn new(what: &'static str, bytes: Vec<u8>) -> Secret {
        Secret { what, bytes }
    }

    /// A private key as `wg` reads it from a file or stdin: base64 and a newline.
    pub fn private_key(key: &PrivateKey) -> Secret {
        Secret::new("private key", format!("{}\n", key.to_base64()).into_bytes())
    }

    /// What the secret is, for rendered plans and logs.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The secret bytes, for the runner to hand to a child process or a file, and nothing
    /// else.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.what)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for byte in self.bytes.iter_mut() {
            // SAFETY: `byte` is a valid, aligned, exclusive reference into our own buffer; the
            // volatile write only stops the compiler from eliding the wipe of a dying buffer.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// Data a command reads on stdin or a planned file holds: either a secret (never shown) or
/// public text (an nftables ruleset), which [`Plan::render`] shows as a here-document so the
/// rendered plan stays complete and runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Bytes that are redacted everywhere except in the child process or the file.
    Secret(Secret),
    /// Text that is safe to show.
    Text(String),
}

impl Payload {
    /// The bytes to deliver.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Secret(s) => s.expose(),
            Payload::Text(t) => t.as_bytes(),
        }
    }
}

/// One process to run: argv, extra environment, optional stdin, and what to do on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The program, looked up in `PATH` (`ip`, `wg`, `wireguard.exe`, ...).
    pub program: String,
    /// Arguments, passed as separate argv entries (never through a shell).
    pub args: Vec<String>,
    /// Variables added to the inherited environment (macOS `WG_TUN_NAME_FILE`).
    pub env: Vec<(String, String)>,
    /// What the process reads on stdin: private keys travel here, never on argv, because argv
    /// is readable by every local user through `ps` and `/proc`.
    pub stdin: Option<Payload>,
    /// A known-harmless failure (deleting something already gone) is logged, not fatal.
    pub allow_failure: bool,
    /// Run this instead if the command fails (Linux: no kernel WireGuard, so `wireguard-go`).
    pub fallback: Option<Box<Command>>,
}

impl Command {
    /// A command with no arguments, environment or stdin that must succeed.
    pub fn new(program: impl Into<String>) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            allow_failure: false,
            fallback: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable for this process only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Feeds `payload` to the process's stdin.
    pub fn stdin(mut self, payload: Payload) -> Command {
        self.stdin = Some(payload);
        self
    }

    /// Marks a failure of this command (and of its fallbacks) as harmless.
    pub fn tolerate_failure(mut self) -> Command {
        self.allow_failure = true;
        self
    }

    /// Adds `fallback` at the end of this command's fallback chain.
    pub fn or_else(mut self, fallback: Command) -> Command {
        let mut slot = &mut self.fallback;
        while let Some(next) = slot {
            slot = &mut next.fallback;
        }
        *slot = Some(Box::new(fallback));
        self
    }

    /// The argv of this command alone (no fallback), quoted for a POSIX shell, with `VAR=value`
    /// prefixes: what the runner echoes as `[#] ...` before running it.
    pub fn render_argv(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        for (name, value) in &self.env {
            words.push(format!("{}={}", name, quote(value)));
        }
        let program = quote(&self.program);
        // A leading word containing '=' would be read as one more assignment: force quotes.
        if program.contains('=') && !program.starts_with('\'') {
            words.push(format!("'{program}'"));
        } else {
            words.push(program.into_owned());
        }
        words.extend(self.args.iter().map(|a| quote(a).into_owned()));
        words.join(" ")
    }

    /// The whole command as one shell line (plus any here-documents on the following lines):
    /// fallbacks as `a || b`, tolerated failure as `|| true`, a secret stdin as
    /// `< /dev/stdin` with a comment naming what is withheld.
    pub fn render(&self) -> String {
        let mut line = String::new();
        let mut notes: Vec<String> = Vec::new();
        let mut heredocs: Vec<String> = Vec::new();
        let mut tolerated = false;
        let mut current = Some(self);
        while let Some(cmd) = current {
            if !line.is_empty() {
                line.push_str(" || ");
            }
            line.push_str(&cmd.render_argv());
            match &cmd.stdin {
                Some(Payload::Secret(secret)) => {
                    line.push_str(" < /dev/stdin");
                    notes.push(format!("{} on stdin, not shown", secret.what()));
                }
                Some(Payload::Text(text)) => {
                    let delimiter = heredoc_delimiter(text);
                    line.push_str(&format!(" <<'{delimiter}'"));
                    let mut doc = text.clone();
                    if !doc.ends_with('\n') {
                        doc.push('\n');
                    }
                    doc.push_str(&delimiter);
                    heredocs.push(doc);
                }
                None => {}
            }
            tolerated |= cmd.allow_failure;
            current = cmd.fallback.as_deref();
        }
        if tolerated {
            line.push_str(" || true");
        }
        if !notes.is_empty() {
            line.push_str("  # ");
            line.push_str(&notes.join("; "));
        }
        for doc in heredocs {
            line.push('\n');
            line.push_str(&doc);
        }
        line
    }
}

/// Picks a here-document delimiter that does not occur as a line of `text`.
fn heredoc_delimiter(text: &str) -> String {
    let mut delimiter = String::from("EOF");
    while text.lines().any(|l| l == delimiter) {
        delimiter.push('_');
    }
    delimiter
}

/// Quotes one word so a POSIX shell reads it back unchanged: words made only of characters
/// that are never special stay bare (so plans read like hand-typed commands); anything else is
/// single-quoted, with embedded `'` written as `'\''`.
pub fn quote(word: &str) -> Cow<'_, str> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b);
    if !word.is_empty() && word.bytes().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// A file a plan needs on disk before its commands run (the Windows tunnel configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Where to write it; the runner writes a temporary file beside it and renames it over.
    pub path: PathBuf,
    /// What to write; usually a secret, since these files carry private keys.
    pub contents: Payload,
    /// Unix permission bits; always [`PRIVATE_FILE_MODE`] for files made by the generators.
    pub mode: u32,
}

impl PlannedFile {
    /// A file readable by its owner only.
    pub fn private(path: impl Into<PathBuf>, contents: Payload) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            contents,
            mode: PRIVATE_FILE_MODE,
        }
    }

    /// The comment line [`Plan::render`] shows for this file.
    pub fn render(&self) -> String {
        format!("# write {} (mode {:04o})", self.path.display(), self.mode)
    }
}

/// Everything one step needs: files to write first, then commands to run in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Written (atomically) before any command runs.
    pub files: Vec<PlannedFile>,
    /// Run in order; the first failure that is neither tolerated nor rescued stops the plan.
    pub commands: Vec<Command>,
}

impl Plan {
    /// A plan of commands only.
    pub fn of(commands: Vec<Command>) -> Plan {
        Plan {
            files: Vec::new(),
            commands,
        }
    }

    /// True when running the plan would do nothing (so the agent can skip it and log nothing).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.commands.is_empty()
    }

    /// Appends another plan's files and commands after this one's.
    pub fn extend(&mut self, other: Plan) {
        self.files.extend(other.files);
        self.commands.extend(other.commands);
    }

    /// The plan as a shell script body: one `# write PATH (mode 0600)` line per file, then one
    /// line per command, quoted so a POSIX shell reads each argv back unchanged. Secrets are
    /// never shown. Used for golden tests, `--dry-run` and logs.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for file in &self.files {
            out.push_str(&file.render());
            out.push('\n');
        }
        for cmd in &self.commands {
            out.push_str(&cmd.render());
            out.push('\n');
        }
        out
    }
}

/// The local interface as the agent wants it: identity, port, mesh address and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The logical name (`wg0`); on macOS the kernel picks the real `utunN` name.
    pub name: InterfaceName,
    /// This device's WireGuard identity.
    pub private_key: PrivateKey,
    /// UDP port WireGuard listens on.
    pub listen_port: u16,
    /// This device's mesh address (a /32 on the interface).
    pub address: Ipv4Addr,
    /// The whole mesh network, routed into the interface.
    pub network: Ipv4Net,
    /// This device's IPv6 mesh address (a /128) and the IPv6 mesh prefix, when the mesh
    /// carries IPv6 (see [`crate::mesh6`]). Hosts with IPv6 turned off tolerate their absence.
    pub ipv6: Option<(std::net::Ipv6Addr, ipnet::Ipv6Net)>,
    /// Tunnel MTU, normally [`DEFAULT_MTU`].
    pub mtu: u16,
}

/// One peer as the agent wants WireGuard to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Where to dial it; `None` leaves whatever WireGuard learned from the peer's packets.
    pub endpoint: Option<Endpoint>,
    /// What WireGuard routes to this peer and accepts from it.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives (holds NAT mappings open); `None` means off.
    pub persistent_keepalive: Option<u16>,
}

/// Which packet filter programs an exit node's NAT: nftables where available, iptables for
/// older distributions (and hosts whose firewall is managed through iptables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// A table of wgmesh's own, loaded atomically with `nft -f`.
    Nftables,
    /// Chains of wgmesh's own, jumped to from the built-in chains.
    Iptables,
}

/// A feature that has no command sequence on the requested OS yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The OS that was asked.
    pub os: TargetOs,
    /// What was asked of it.
    pub what: &'static str,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not supported as {} yet: run the exit node on Linux",
            self.os, self.what
        )
    }
}

impl std::error::Error for Unsupported {}

/// Brings a new interface into existence (it must not exist yet; [`destroy`] tolerates a
/// missing one, so the agent runs it first to clear a stale interface).
///
/// Windows needs nothing here: the tunnel service creates its adapter in [`configure`].
pub fn create(os: TargetOs, name: &InterfaceName) -> Plan {
    match os {
        TargetOs::Linux => linux::create(name),
        TargetOs::Macos => macos::create(name),
        TargetOs::Windows => Plan::default(),
    }
}

/// Gives a freshly created interface its key, port, address, MTU, mesh route and initial
/// peers. `real_name` is the kernel's name: `utunN` on macOS (read with [`macos_name_file`] /
/// [`parse_name_file`]), the spec's name elsewhere. On Windows this installs the tunnel
/// service, which refuses to install twice: later changes go through [`apply_peers`].
pub fn configure(
    os: TargetOs,
    spec: &InterfaceSpec,
    real_name: &InterfaceName,
    peers: &[PeerSpec],
) -> Plan {
    match os {
        TargetOs::Linux => linux::configure(spec, peers),
        TargetOs::Macos => macos::configure(spec, real_name, peers),
        TargetOs::Windows => windows::configure(spec, peers),
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

/// `[Peer]` sections for `wg addconf`: each replaces the peer's allowed IPs and keepalive,
/// and its endpoint when one is known (as `peer_args` does on the command line).
fn peers_conf(peers: &[PeerSpec]) -> String {
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

/// Adds and removes routes for extra prefixes routed into the mesh (peers' subnet routes);
/// additions are idempotent and come before removals, and removing a route that is already
/// gone is tolerated.
pub fn routes(os: TargetOs, real_name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    match os {
        TargetOs::Linux => linux::routes(real_name, add, remove),
        TargetOs::Macos => macos::routes(real_name, add, remove),
        TargetOs::Windows => windows::routes(real_name, add, remove),
    }
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
        TargetOs::Macos => macos::full_tunnel_on(real_name, exit_peer, keep_outside, gateway),
        TargetOs::Windows => windows::full_tunnel_on(real_name, exit_peer, keep_outside, gateway),
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
        TargetOs::Macos => macos::full_tunnel_off(real_name, exit_peer, keep_outside, gateway),
        TargetOs::Windows => windows::full_tunnel_off(real_name, exit_peer, keep_outside, gateway),
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

/// `wireguard-go NAME`, daemonizing with its output on /dev/null. `LOG_LEVEL=silent` is set
/// because any other inherited `LOG_LEVEL` makes the daemon keep the runner's stdout and
/// stderr pipes open, so the runner would wait for it until its timeout and report a failure.
fn wireguard_go(name: &str) -> Command {
    Command::new("wireguard-go")
        .env("LOG_LEVEL", "silent")
        .arg(name)
}

/// The `wg` binary's name on `os`.
fn wg_program(os: TargetOs) -> &'static str {
    match os {
        TargetOs::Windows => "wg.exe",
        _ => "wg",
    }
}

/// How many bytes of arguments one `wg set` may carry on `os` before peers spill into another
/// process. Windows: `CreateProcess` caps a command line at 32,767 UTF-16 units, minus room for
/// the program path. Elsewhere: well under macOS's 1 MiB `ARG_MAX` (which includes the
/// environment) and Linux's 2 MiB; about 700 peers per process.
fn arg_budget(os: TargetOs) -> usize {
    match os {
        TargetOs::Windows => 30_000,
        _ => 100_000,
    }
}

/// Builds `wg set NAME <head> peer ... peer ...`, splitting peers over several processes only
/// when one would exceed `budget` bytes of arguments. `head` (private key, port, fwmark) and
/// `stdin` go on the first process; `groups` are the per-peer argument groups of
/// [`peer_groups`].
fn wg_set(
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
fn peer_groups(upsert: &[PeerSpec], remove: &[PublicKey], fresh: bool) -> Vec<Vec<String>> {
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
fn peer_args(peer: &PeerSpec, fresh: bool) -> Vec<String> {
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

fn join_nets(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The `0.0.0.0/0` every full tunnel routes.
fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

/// The exit peer's allowed IPs with (`on`) or without (`off`) the default route, in order and
/// without duplicates.
fn exit_allowed_ips(peer: &PeerSpec, on: bool) -> Vec<IpNet> {
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
fn exit_peer_update(
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
fn pinned_v4(exit_peer: &PeerSpec, keep_outside: &[IpAddr]) -> Vec<Ipv4Addr> {
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
fn half_defaults_v6(exit_peer: &PeerSpec, keep_outside: &[IpAddr]) -> Vec<ipnet::Ipv6Net> {
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

fn half_defaults() -> [Ipv4Net; 2] {
    [
        Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 1).expect("/1 is a valid prefix"),
        Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1).expect("/1 is a valid prefix"),
    ]
}

#[cfg(test)]
mod tests;
