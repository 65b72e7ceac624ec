//! The agent's one loop step, shared by `up` (repeatedly) and `sync` (once): make sure we are
//! registered, fetch the desired peers, read the actual interface, and apply the difference.
//!
//! Side effects go through a [`Runner`], so tests drive the whole engine against a real
//! server with a recording runner, and `--dry-run` prints the same plans it would run.

use super::client::{ApiClient, ClientError, PeerList};
use super::config::{
    Applied, AppliedNat, AppliedTunnel, Assignment, ClientConfig, ConfigError, ExitFallback,
};
use crate::model::{HeartbeatRequest, PeerInfo, PeersDelta, RegisterRequest};
use crate::os::runner::{execute, ExecuteError, Runner};
use crate::os::{self, Command, InterfaceSpec, PeerSpec, Plan, TargetOs};
use crate::reconcile;
use crate::types::{Hostname, InterfaceName, OsName};
use crate::wgdump;
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Seconds between keepalives to every peer: under the 30 s or so that common NATs keep an
/// idle UDP mapping, as wg-quick users conventionally set (25).
pub const PERSISTENT_KEEPALIVE: u16 = 25;

/// How long `down` or a stopping `up` waits to tell the server it goes offline: short,
/// since stopping must not hang on an unreachable server.
const OFFLINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why an agent step failed; each kind maps to its own exit code.
#[derive(Debug)]
pub enum AgentError {
    /// Bad configuration or usage.
    Usage(String),
    /// The config file could not be read or written.
    Config(ConfigError),
    /// The coordination server was unreachable or refused.
    Server(ClientError),
    /// A system command failed.
    Command(ExecuteError),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Usage(m) => f.write_str(m),
            AgentError::Config(e) => e.fmt(f),
            AgentError::Server(e) => e.fmt(f),
            AgentError::Command(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError::Server(e)
    }
}

impl From<ConfigError> for AgentError {
    fn from(e: ConfigError) -> Self {
        AgentError::Config(e)
    }
}

impl From<ExecuteError> for AgentError {
    fn from(e: ExecuteError) -> Self {
        AgentError::Command(e)
    }
}

/// What one sync changed, printed by `sync --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncSummary {
    /// Our stable peer id.
    pub peer_id: String,
    /// Our mesh address.
    pub address: String,
    /// The interface's real name.
    pub interface: String,
    /// Whether the interface had to be created (first run, or after a reboot or `down`).
    pub created_interface: bool,
    /// Peers configured after the sync.
    pub peers: usize,
    /// Public keys of peers added.
    pub added: Vec<String>,
    /// Public keys of peers whose endpoint, allowed IPs or keepalive changed.
    pub updated: Vec<String>,
    /// Public keys of peers removed.
    pub removed: Vec<String>,
    /// Whether the server said the list had not changed (304).
    pub list_unchanged: bool,
}

/// Where plans go: run for real, or printed one command per line for `--dry-run`.
pub enum Sink<'a> {
    /// Execute through this runner.
    Run(&'a mut dyn Runner),
    /// Print to this writer (stdout for `--dry-run`).
    Print(&'a mut dyn Write),
}

impl Sink<'_> {
    fn apply(&mut self, plan: &Plan) -> Result<(), AgentError> {
        if plan.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Run(runner) => execute(plan, *runner).map_err(AgentError::from),
            Sink::Print(out) => {
                let _ = writeln!(out, "{}", plan.render().trim_end());
                Ok(())
            }
        }
    }

    fn is_dry_run(&self) -> bool {
        matches!(self, Sink::Print(_))
    }
}

/// The agent's state between steps.
pub struct Engine {
    /// The configuration (key, server, assignment, what is applied).
    pub config: ClientConfig,
    /// Where the configuration lives (not written in dry-run mode).
    pub config_path: PathBuf,
    /// Whose commands to produce.
    pub os: TargetOs,
    /// The server client.
    pub client: ApiClient,
    /// Reads actual state (`wg show dump`); None when planning for another OS.
    pub reader: Option<Box<dyn Runner>>,
    /// The last list the server sent, with its ETag and version.
    pub last_list: Option<KnownPeers>,
    /// Whether the config may be written. Dry runs still keep the key and assignment (so a
    /// later real run uses the address it printed) but never record anything as applied.
    pub persist: bool,
}

/// The peer list as this node last knew it: what deltas apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers {
    /// The peers, in address order.
    pub peers: Vec<PeerInfo>,
    /// The list's ETag, for a 304 from servers without versions.
    pub etag: Option<String>,
    /// The list's version, sent as `since` to get only what changed.
    pub version: Option<u64>,
}

impl KnownPeers {
    /// Applies an answer to `/peers?since=N`; returns whether the list changed. An answer
    /// older than the list (a long-poll overtaken by a sync) changes nothing; a full answer
    /// replaces the list, so nothing stale survives a missed delta.
    pub fn apply(&mut self, answer: PeersDelta) -> bool {
        if self.version.is_some_and(|v| answer.version < v) {
            return false;
        }
        self.version = Some(answer.version);
        self.etag = None;
        if answer.full {
            let changed = self.peers != answer.peers;
            self.peers = answer.peers;
            self.peers.sort_by_key(|p| p.virtual_ip);
            return changed;
        }
        if answer.changed.is_empty() && answer.removed.is_empty() {
            return false;
        }
        let drop: std::collections::HashSet<&crate::types::PeerId> = answer
            .removed
            .iter()
            .chain(answer.changed.iter().map(|p| &p.id))
            .collect();
        self.peers.retain(|p| !drop.contains(&p.id));
        self.peers.extend(answer.changed);
        self.peers.sort_by_key(|p| p.virtual_ip);
        true
    }
}

/// Where the last peer list is kept for `status` and offline `export`: beside the config.
pub fn peer_cache_path(config_path: &std::path::Path) -> PathBuf {
    config_path.with_extension("peers.json")
}

/// The last peer list this node saw (empty if none or unreadable: it is only a cache).
pub fn load_peer_cache(config_path: &std::path::Path) -> Vec<PeerInfo> {
    load_known_peers(config_path)
        .map(|k| k.peers)
        .unwrap_or_default()
}

/// The last peer list this node saw with its version, so `sync` can ask for only what
/// changed since (None if none or unreadable: the full list is always correct).
pub fn load_known_peers(config_path: &std::path::Path) -> Option<KnownPeers> {
    let bytes = std::fs::read(peer_cache_path(config_path)).ok()?;
    let cached = serde_json::from_slice::<crate::model::PeersResponse>(&bytes).ok()?;
    Some(KnownPeers {
        peers: cached.peers,
        etag: None,
        version: cached.version,
    })
}

fn save_peer_cache(config_path: &std::path::Path, peers: &[PeerInfo], version: Option<u64>) {
    let body = crate::model::PeersResponse {
        peers: peers.to_vec(),
        version,
    };
    let bytes = serde_json::to_vec(&body).expect("peer lists serialize");
    let path = peer_cache_path(config_path);
    if let Err(e) = crate::fsutil::write_atomic(&path, &bytes, 0o600) {
        log::warn!("cannot cache the peer list: {e}");
    }
}

/// The interface this config and assignment call for: the IPv4 mesh address, and the IPv6
/// one derived from it under the server's IPv6 mesh prefix.
pub fn interface_spec(config: &ClientConfig, assignment: &Assignment) -> InterfaceSpec {
    let prefix6 = crate::mesh6::prefix(&assignment.server_public_key);
    InterfaceSpec {
        name: config.interface.clone(),
        private_key: config.private_key.clone(),
        listen_port: config.listen_port,
        address: assignment.assigned_ip,
        network: assignment.network_cidr,
        ipv6: Some((
            crate::mesh6::address(prefix6, assignment.assigned_ip),
            prefix6,
        )),
        mtu: os::DEFAULT_MTU,
    }
}

/// Whether `peer` is the one a user named with `--use-exit-node` (its hostname, mesh
/// address or peer id): the one rule the agent, `export` and `netcheck` all go by.
pub fn is_named(peer: &PeerInfo, wanted: &str) -> bool {
    peer.hostname.as_str() == wanted
        || peer.virtual_ip.to_string() == wanted
        || peer.id.as_str() == wanted
}

/// Our hostname: the configured one, else the OS's, else "wgmesh-node".
pub fn local_hostname(config: &ClientConfig) -> Hostname {
    if let Some(h) = &config.hostname {
        return h.clone();
    }
    let candidates = [
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
        std::env::var("COMPUTERNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|h| h.trim().parse().ok())
        .unwrap_or_else(|| "wgmesh-node".parse().expect("literal"))
}

impl Engine {
    fn save(&self) -> Result<(), AgentError> {
        if self.persist {
            self.config.save(&self.config_path)?;
        }
        Ok(())
    }

    fn register_request(&mut self) -> RegisterRequest {
        let mut allowed_ips = Vec::new();
        if self.config.exit_node {
            allowed_ips.push("0.0.0.0/0".parse().expect("literal"));
            // IPv6 too, when this host can send IPv6 to the internet.
            if self.ipv6_default_interface().is_some() {
                allowed_ips.push("::/0".parse().expect("literal"));
            }
        }
        RegisterRequest {
            public_key: self.config.private_key.public_key(),
            hostname: local_hostname(&self.config),
            os: self
                .os
                .as_str()
                .parse::<OsName>()
                .expect("OS names are valid"),
            endpoint: self.config.endpoint,
            listen_port: Some(self.config.listen_port),
            request_ip: true,
            exit_node: self.config.exit_node,
            allowed_ips,
            token: None,
        }
    }

    /// Registers (idempotent) and stores the assignment.
    pub fn register(&mut self) -> Result<&Assignment, AgentError> {
        let request = self.register_request();
        let answer = self.client.register(&request)?;
        let assignment = Assignment {
            peer_id: answer.peer_id,
            assigned_ip: answer.assigned_ip,
            network_cidr: answer.network_cidr,
            server_public_key: answer.server_public_key,
        };
        if self.config.assignment.as_ref() != Some(&assignment) {
            log::info!(
                "registered as {} with address {} in {}",
                assignment.peer_id,
                assignment.assigned_ip,
                assignment.network_cidr
            );
            self.config.assignment = Some(assignment);
            self.save()?;
        }
        Ok(self.config.assignment.as_ref().expect("just set"))
    }

    /// Sends a heartbeat, registering again if the server forgot us.
    pub fn heartbeat(&mut self) -> Result<(), AgentError> {
        let Some(assignment) = &self.config.assignment else {
            self.register()?;
            return Ok(());
        };
        let request = HeartbeatRequest {
            peer_id: assignment.peer_id.clone(),
            endpoint: self.config.endpoint,
        };
        match self.client.heartbeat(&request) {
            Err(ClientError::UnknownPeer) => {
                log::warn!(
                    "the server no longer knows {}: registering again",
                    request.peer_id
                );
                self.register()?;
                Ok(())
            }
            other => other.map_err(AgentError::from),
        }
    }

    fn spec(&self, assignment: &Assignment) -> InterfaceSpec {
        interface_spec(&self.config, assignment)
    }

    /// The peers as WireGuard should know them: each peer's own prefixes, and a default
    /// route only for the exit node this host chose (exit nodes are opt-in).
    pub fn desired_peers(
        peers: &[PeerInfo],
        exit: Option<&crate::keys::PublicKey>,
    ) -> Vec<PeerSpec> {
        peers
            .iter()
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

    /// Prefixes beyond the mesh network that must be routed into the interface. Never a
    /// default route: an exit node's is the full tunnel's business (policy routing with a
    /// fwmark); a plain default route here would loop WireGuard's own packets into itself.
    fn extra_routes(
        desired: &[PeerSpec],
        mesh: ipnet::Ipv4Net,
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

    /// The current peer list: only what changed since the version we have when we have one
    /// (kept beside the config, so a one-shot `sync` benefits too), else the whole list, or
    /// the last one on a 304. Returns the list and whether it is unchanged.
    pub fn fetch_peers(&mut self) -> Result<(Vec<PeerInfo>, bool), AgentError> {
        self.fetch_peers_from(true)
    }

    /// [`Engine::fetch_peers`]; `use_cache: false` (dry runs) starts from the whole list
    /// instead of the cached version, so what is printed never depends on an earlier run.
    fn fetch_peers_from(&mut self, use_cache: bool) -> Result<(Vec<PeerInfo>, bool), AgentError> {
        let peer_id = match &self.config.assignment {
            Some(a) => a.peer_id.clone(),
            None => self.register()?.peer_id.clone(),
        };
        if self.last_list.is_none() && self.persist && use_cache {
            self.last_list = load_known_peers(&self.config_path);
        }
        if let Some(since) = self.last_list.as_ref().and_then(|k| k.version) {
            let answer = match self.client.peers_since(&peer_id, since, None) {
                Err(ClientError::UnknownPeer) => {
                    log::warn!("the server no longer knows {peer_id}: registering again");
                    self.register()?;
                    self.last_list = None;
                    return self.fetch_peers_from(false);
                }
                other => other?,
            };
            let unchanged = !self.apply_answer(answer);
            let peers = self.known_peers();
            return Ok((peers, unchanged));
        }
        let etag = self.last_list.as_ref().and_then(|k| k.etag.clone());
        let answer = match self.client.peers(&peer_id, etag.as_deref()) {
            Err(ClientError::UnknownPeer) => {
                log::warn!("the server no longer knows {peer_id}: registering again");
                let id = self.register()?.peer_id.clone();
                self.client.peers(&id, None)?
            }
            other => other?,
        };
        match answer {
            PeerList::NotModified => Ok((self.known_peers(), true)),
            PeerList::Changed {
                peers,
                etag,
                version,
            } => {
                if self.persist {
                    save_peer_cache(&self.config_path, &peers, version);
                }
                self.last_list = Some(KnownPeers {
                    peers: peers.clone(),
                    etag,
                    version,
                });
                Ok((peers, false))
            }
        }
    }

    /// The list as last known (empty before the first fetch).
    pub fn known_peers(&self) -> Vec<PeerInfo> {
        self.last_list
            .as_ref()
            .map(|k| k.peers.clone())
            .unwrap_or_default()
    }

    /// Where a long-poll should start from: our peer id and the version we have.
    pub fn poll_point(&self) -> Option<(crate::types::PeerId, u64)> {
        let id = self.config.assignment.as_ref()?.peer_id.clone();
        Some((id, self.last_list.as_ref()?.version?))
    }

    /// Applies an answer to `/peers?since=N` (from a sync or a long-poll) to the known list
    /// and caches it beside the config; returns whether the list changed.
    pub fn apply_answer(&mut self, answer: PeersDelta) -> bool {
        let known = self.last_list.get_or_insert_with(KnownPeers::default);
        let changed = known.apply(answer);
        if self.persist {
            let known = self.last_list.as_ref().expect("just set");
            save_peer_cache(&self.config_path, &known.peers, known.version);
        }
        changed
    }

    /// Tells the server we stop on purpose, so the others drop us now (best effort: a
    /// server that cannot be reached drops us at the heartbeat timeout instead).
    pub fn go_offline(&self) {
        let Some(assignment) = &self.config.assignment else {
            return;
        };
        match self
            .client
            .with_timeout(OFFLINE_TIMEOUT)
            .offline(&assignment.peer_id)
        {
            Ok(()) => log::info!("told the server {} is going offline", assignment.peer_id),
            Err(e) => log::warn!(
                "could not tell the server we are going offline ({e}); the others drop this node at the heartbeat timeout"
            ),
        }
    }

    /// Reads `wg show NAME dump`; None when the interface does not exist (or cannot be read).
    fn read_actual(&mut self, real_name: &InterfaceName) -> Option<wgdump::Dump> {
        let reader = self.reader.as_mut()?;
        let program = if self.os == TargetOs::Windows {
            "wg.exe"
        } else {
            "wg"
        };
        let cmd = Command::new(program).args(["show", real_name.as_str(), "dump"]);
        match reader.run(&cmd) {
            Ok(out) => match wgdump::parse(&out.stdout) {
                Ok(dump) => Some(dump),
                Err(e) => {
                    log::warn!("cannot parse `wg show {real_name} dump`: {e}");
                    None
                }
            },
            Err(e) => {
                log::debug!("interface {real_name} is not up: {e}");
                None
            }
        }
    }

    /// One full step: register if needed, fetch peers, reconcile the interface.
    pub fn sync(&mut self, sink: &mut Sink<'_>) -> Result<SyncSummary, AgentError> {
        if self.config.assignment.is_none() {
            self.register()?;
        }
        let (peers, unchanged) = self.fetch_peers_from(!sink.is_dry_run())?;
        self.reconcile(&peers, unchanged, sink)
    }

    /// Makes the interface match `peers`, creating it if needed, and sets up (or removes)
    /// exit-node NAT and the full tunnel through a chosen exit node.
    pub fn reconcile(
        &mut self,
        peers: &[PeerInfo],
        list_unchanged: bool,
        sink: &mut Sink<'_>,
    ) -> Result<SyncSummary, AgentError> {
        let assignment = self
            .config
            .assignment
            .clone()
            .ok_or_else(|| AgentError::Usage("not registered yet".into()))?;
        let spec = self.spec(&assignment);
        let exit = self.chosen_exit(peers)?;
        let desired = Self::desired_peers(peers, exit.map(|p| &p.public_key));
        let mut summary = SyncSummary {
            peer_id: assignment.peer_id.to_string(),
            address: assignment.assigned_ip.to_string(),
            list_unchanged,
            ..SyncSummary::default()
        };

        let applied = self
            .config
            .applied
            .clone()
            .filter(|a| a.os == self.os.as_str() && a.address == Some(assignment.assigned_ip));
        let real_name: InterfaceName = applied
            .as_ref()
            .and_then(|a| a.interface.parse().ok())
            .unwrap_or_else(|| spec.name.clone());
        let actual = self
            .read_actual(&real_name)
            .filter(|d| d.interface.public_key == Some(spec.private_key.public_key()))
            .filter(|d| d.interface.listen_port == spec.listen_port);

        let (real_name, actual_peers) = match actual {
            Some(dump) if applied.is_some() => (real_name, dump.peers),
            _ => {
                // Missing, stale (another key, port or address) or never applied: start clean.
                self.undo_applied(sink)?;
                sink.apply(&os::destroy(
                    self.os,
                    &spec.name,
                    &spec.name,
                    assignment.network_cidr,
                ))?;
                sink.apply(&os::create(self.os, &spec.name))?;
                let real = self.created_name(&spec.name, sink)?;
                sink.apply(&os::configure(self.os, &spec, &real, &[]))?;
                summary.created_interface = true;
                if !sink.is_dry_run() {
                    self.config.applied = Some(Applied {
                        os: self.os.as_str().to_owned(),
                        interface: real.to_string(),
                        address: Some(assignment.assigned_ip),
                        ..Applied::default()
                    });
                    self.save()?;
                }
                log::info!(
                    "created interface {real} with address {}",
                    assignment.assigned_ip
                );
                (real, Vec::new())
            }
        };
        summary.interface = real_name.to_string();

        // The tunnel goes before peers change when it is being removed (its `off` rewrites
        // the old exit peer, which must still exist), and after when it is being added.
        let want_tunnel = self.wanted_tunnel(exit, &desired, sink)?;
        let have_tunnel = self
            .config
            .applied
            .as_ref()
            .and_then(|a| a.full_tunnel.clone());
        let tunnel_changes = want_tunnel != have_tunnel;
        if tunnel_changes {
            if let Some(old) = &have_tunnel {
                sink.apply(&self.tunnel_off(&real_name, old, false))?;
                log::info!(
                    "stopped routing internet traffic through exit node {}",
                    old.exit_public_key
                );
            }
        }

        let changes = reconcile::diff(&desired, &actual_peers);
        let known: BTreeSet<_> = actual_peers.iter().map(|p| p.public_key).collect();
        for spec in &changes.upsert {
            let list = if known.contains(&spec.public_key) {
                &mut summary.updated
            } else {
                &mut summary.added
            };
            list.push(spec.public_key.to_base64());
        }
        summary.removed = changes.remove.iter().map(|k| k.to_base64()).collect();
        sink.apply(&os::apply_peers(self.os, &real_name, &changes))?;

        if tunnel_changes {
            if let Some(new) = &want_tunnel {
                let exit_peer = tunnel_peer(new, true);
                let plan = os::full_tunnel_on(
                    self.os,
                    &real_name,
                    &exit_peer,
                    &new.keep_outside,
                    new.gateway,
                );
                sink.apply(&plan)?;
                log::info!(
                    "routing internet traffic through exit node {}",
                    new.exit_public_key
                );
            }
            self.record(sink, |a| a.full_tunnel = want_tunnel.clone())?;
        }

        self.reconcile_nat(&real_name, assignment.network_cidr, sink)?;

        let want_routes = Self::extra_routes(
            &desired,
            assignment.network_cidr,
            crate::mesh6::prefix(&assignment.server_public_key),
        );
        let have_routes: BTreeSet<IpNet> = self
            .config
            .applied
            .as_ref()
            .map(|a| a.routes.iter().copied().collect())
            .unwrap_or_default();
        let add: Vec<IpNet> = want_routes.difference(&have_routes).copied().collect();
        let remove: Vec<IpNet> = have_routes.difference(&want_routes).copied().collect();
        if !add.is_empty() || !remove.is_empty() {
            sink.apply(&os::routes(self.os, &real_name, &add, &remove))?;
            self.record(sink, |a| a.routes = want_routes.into_iter().collect())?;
        }
        summary.peers = desired.len();
        for (what, keys) in [
            ("added", &summary.added),
            ("updated", &summary.updated),
            ("removed", &summary.removed),
        ] {
            if !keys.is_empty() {
                log::info!("{what} {} peer(s) on {real_name}", keys.len());
            }
        }
        Ok(summary)
    }

    /// Changes what is recorded as applied (never in a dry run) and saves it.
    fn record(
        &mut self,
        sink: &Sink<'_>,
        change: impl FnOnce(&mut Applied),
    ) -> Result<(), AgentError> {
        if sink.is_dry_run() {
            return Ok(());
        }
        if let Some(applied) = self.config.applied.as_mut() {
            change(applied);
            self.save()?;
        }
        Ok(())
    }

    /// The exit node this host asked for, if it is in the list. A peer that is listed but
    /// offers no exit is a configuration error; one that is missing is offline.
    fn chosen_exit<'p>(&self, peers: &'p [PeerInfo]) -> Result<Option<&'p PeerInfo>, AgentError> {
        let Some(wanted) = self.config.use_exit_node.as_deref() else {
            return Ok(None);
        };
        let found = peers.iter().find(|p| is_named(p, wanted));
        match found {
            Some(p) if !p.exit_node => Err(AgentError::Usage(format!(
                "peer {wanted} ({}) does not offer to be an exit node: start it with --exit-node",
                p.virtual_ip
            ))),
            Some(p) => Ok(Some(p)),
            None => {
                log::warn!(
                    "exit node {wanted} is offline or unknown; {}",
                    match self.config.exit_fallback {
                        ExitFallback::Block => "internet traffic stays blocked until it returns (--exit-fallback block)",
                        ExitFallback::Direct => "using the direct connection until it returns (--exit-fallback direct)",
                    }
                );
                Ok(None)
            }
        }
    }

    /// The full tunnel this host should have now.
    fn wanted_tunnel(
        &mut self,
        exit: Option<&PeerInfo>,
        desired: &[PeerSpec],
        sink: &Sink<'_>,
    ) -> Result<Option<AppliedTunnel>, AgentError> {
        let have = self
            .config
            .applied
            .as_ref()
            .and_then(|a| a.full_tunnel.clone());
        let Some(exit) = exit else {
            // Exit node chosen but gone: fail closed keeps the tunnel (and so blocks traffic).
            let keep = self.config.use_exit_node.is_some()
                && self.config.exit_fallback == ExitFallback::Block;
            return Ok(if keep { have } else { None });
        };
        let spec = desired
            .iter()
            .find(|p| p.public_key == exit.public_key)
            .expect("the exit node is among the desired peers");
        let mut keep_outside: Vec<IpAddr> = Vec::new();
        if let Some(server) = self.server_ip() {
            keep_outside.push(server);
        }
        if let Some(endpoint) = exit.endpoint {
            if !keep_outside.contains(&endpoint.0.ip()) {
                keep_outside.push(endpoint.0.ip());
            }
        }
        let gateway = match &have {
            // Keep the gateway found before the tunnel existed (now the default is the tunnel).
            Some(t) => t.gateway,
            None => self.default_gateway(sink),
        };
        Ok(Some(AppliedTunnel {
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
        }))
    }

    fn tunnel_off(&self, real_name: &InterfaceName, t: &AppliedTunnel, tolerant: bool) -> Plan {
        let mut plan = os::full_tunnel_off(
            self.os,
            real_name,
            &tunnel_peer(t, false),
            &t.keep_outside,
            t.gateway,
        );
        if tolerant {
            for cmd in &mut plan.commands {
                cmd.allow_failure = true;
            }
        }
        plan
    }

    /// The coordination server's address, when its URL names one directly.
    fn server_ip(&self) -> Option<IpAddr> {
        let authority = self.client.server().authority();
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse().ok().or_else(|| {
            use std::net::ToSocketAddrs;
            (host, 0)
                .to_socket_addrs()
                .ok()?
                .find(|a| a.is_ipv4())
                .map(|a| a.ip())
        })
    }

    /// Runs a read-only command through the reader, returning its stdout.
    fn read(&mut self, program: &str, args: &[&str]) -> Option<String> {
        let reader = self.reader.as_mut()?;
        reader
            .run(&Command::new(program).args(args.iter().copied()))
            .ok()
            .map(|o| o.stdout)
    }

    /// The IPv4 default gateway (macOS and Windows pin routes to it); 0.0.0.0 if unknown.
    fn default_gateway(&mut self, sink: &Sink<'_>) -> Ipv4Addr {
        let found = match self.os {
            TargetOs::Linux => self
                .read("ip", &["-4", "route", "show", "default"])
                .and_then(|out| word_after(&out, "via")),
            TargetOs::Macos => self
                .read("route", &["-n", "get", "default"])
                .and_then(|out| word_after(&out, "gateway:")),
            TargetOs::Windows => None,
        };
        found.and_then(|g| g.parse().ok()).unwrap_or_else(|| {
            if !sink.is_dry_run() && self.os != TargetOs::Linux {
                log::warn!("cannot find the default gateway: routes to the server and exit node are not pinned");
            }
            Ipv4Addr::UNSPECIFIED
        })
    }

    /// The interface of the IPv6 default route, if this host has one.
    fn ipv6_default_interface(&mut self) -> Option<String> {
        self.read("ip", &["-6", "route", "show", "default"])
            .and_then(|out| word_after(&out, "dev"))
    }

    /// Sets up, changes or removes NAT so this host serves as an exit node when asked to.
    fn reconcile_nat(
        &mut self,
        real_name: &InterfaceName,
        mesh: Ipv4Net,
        sink: &mut Sink<'_>,
    ) -> Result<(), AgentError> {
        let have = self.config.applied.as_ref().and_then(|a| a.nat.clone());
        let want = if self.config.exit_node {
            let out_iface = self
                .read("ip", &["-4", "route", "show", "default"])
                .and_then(|out| word_after(&out, "dev"))
                .or_else(|| have.as_ref().map(|n| n.out_iface.clone()))
                .ok_or_else(|| {
                    AgentError::Usage(
                        "an exit node needs a default route to send traffic out of; none found"
                            .into(),
                    )
                })?;
            let firewall = if self.read("nft", &["--version"]).is_some() {
                "nftables"
            } else {
                "iptables"
            };
            Some(AppliedNat {
                out_iface,
                firewall: firewall.to_owned(),
                out_iface6: self.ipv6_default_interface(),
            })
        } else {
            None
        };
        if want == have {
            return Ok(());
        }
        if let Some(old) = &have {
            sink.apply(&self.nat_plan(real_name, mesh, old, false)?)?;
        }
        if let Some(new) = &want {
            sink.apply(&self.nat_plan(real_name, mesh, new, true)?)?;
            log::info!(
                "serving as an exit node: NAT out of {} with {}",
                new.out_iface,
                new.firewall
            );
        }
        self.record(sink, |a| a.nat = want)
    }

    fn nat_plan(
        &self,
        real_name: &InterfaceName,
        mesh: Ipv4Net,
        nat: &AppliedNat,
        on: bool,
    ) -> Result<Plan, AgentError> {
        let out: InterfaceName = nat
            .out_iface
            .parse()
            .map_err(|e| AgentError::Usage(format!("default route interface: {e}")))?;
        let firewall = if nat.firewall == "nftables" {
            os::Firewall::Nftables
        } else {
            os::Firewall::Iptables
        };
        let unsupported = |e: os::Unsupported| AgentError::Usage(e.to_string());
        let mut plan = if on {
            os::exit_node_nat_on(self.os, real_name, &out, mesh, firewall)
        } else {
            os::exit_node_nat_off(self.os, real_name, &out, mesh, firewall)
        }
        .map_err(unsupported)?;
        // The IPv6 mesh too, when this exit node has IPv6 to offer.
        let mesh6 = self
            .config
            .assignment
            .as_ref()
            .map(|a| crate::mesh6::prefix(&a.server_public_key));
        if let (Some(out6), Some(mesh6)) = (nat.out_iface6.as_deref(), mesh6) {
            let out6: InterfaceName = out6
                .parse()
                .map_err(|e| AgentError::Usage(format!("IPv6 default route interface: {e}")))?;
            plan.extend(
                if on {
                    os::exit_node_nat6_on(self.os, real_name, &out6, mesh6, firewall)
                } else {
                    os::exit_node_nat6_off(self.os, real_name, firewall)
                }
                .map_err(unsupported)?,
            );
        }
        Ok(plan)
    }

    /// Removes NAT and the full tunnel recorded as applied (before rebuilding or tearing down
    /// the interface). Tolerant: pieces may already be gone with the interface.
    fn undo_applied(&mut self, sink: &mut Sink<'_>) -> Result<(), AgentError> {
        let Some(old) = self
            .config
            .applied
            .clone()
            .filter(|a| a.os == self.os.as_str())
        else {
            return Ok(());
        };
        let Ok(old_name) = old.interface.parse::<InterfaceName>() else {
            return Ok(());
        };
        let mesh = self.config.assignment.as_ref().map_or_else(
            || "10.100.0.0/16".parse().expect("literal"),
            |a| a.network_cidr,
        );
        if let Some(nat) = &old.nat {
            let mut plan = self.nat_plan(&old_name, mesh, nat, false)?;
            plan.commands
                .iter_mut()
                .for_each(|c| c.allow_failure = true);
            sink.apply(&plan)?;
        }
        if let Some(tunnel) = &old.full_tunnel {
            sink.apply(&self.tunnel_off(&old_name, tunnel, true))?;
        }
        if !old.routes.is_empty() {
            sink.apply(&os::routes(self.os, &old_name, &[], &old.routes))?;
        }
        sink.apply(&os::destroy(
            self.os,
            &self.config.interface,
            &old_name,
            mesh,
        ))?;
        if !sink.is_dry_run() {
            self.config.applied = None;
            self.save()?;
        }
        Ok(())
    }

    /// The kernel's name for a just-created interface (macOS: the utunN in the name file).
    fn created_name(
        &self,
        name: &InterfaceName,
        sink: &Sink<'_>,
    ) -> Result<InterfaceName, AgentError> {
        if self.os != TargetOs::Macos {
            return Ok(name.clone());
        }
        if sink.is_dry_run() {
            return Ok("utunN".parse().expect("literal"));
        }
        let file = os::macos_name_file(name);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            AgentError::Usage(format!(
                "wireguard-go did not write {}: {e}",
                file.display()
            ))
        })?;
        os::parse_name_file(&text)
            .map_err(|e| AgentError::Usage(format!("{}: {e}", file.display())))
    }

    /// Removes everything `up`/`sync` set up on this host: NAT, the full tunnel, routes and
    /// the interface. Returns whether there was anything to remove.
    pub fn teardown(&mut self, sink: &mut Sink<'_>) -> Result<bool, AgentError> {
        let Some(applied) = self.config.applied.clone() else {
            return Ok(false);
        };
        self.os = applied
            .os
            .parse()
            .map_err(|e| AgentError::Usage(format!("recorded OS: {e}")))?;
        self.undo_applied(sink)?;
        log::info!("removed interface {}", applied.interface);
        Ok(true)
    }
}

/// The exit peer as `full_tunnel_on/off` want it.
fn tunnel_peer(t: &AppliedTunnel, with_default: bool) -> PeerSpec {
    let mut allowed_ips = t.exit_allowed_ips.clone();
    if with_default {
        allowed_ips.push("0.0.0.0/0".parse().expect("literal"));
        if t.exit_ipv6 {
            allowed_ips.push("::/0".parse().expect("literal"));
        }
    }
    PeerSpec {
        public_key: t.exit_public_key,
        endpoint: t.exit_endpoint,
        allowed_ips,
        persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
    }
}

/// The word following `key` in command output (`via X`, `dev X`, `gateway: X`).
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(allowed: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: crate::keys::PrivateKey::generate().public_key(),
            endpoint: None,
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    #[test]
    fn extra_routes_skip_the_mesh_and_never_include_a_default_route() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let mesh6: ipnet::Ipv6Net = "fd12:3456:789a::/96".parse().unwrap();
        let desired = [
            peer(&["10.100.0.2/32", "fd12:3456:789a::a64:2/128", "192.0.2.0/24"]),
            peer(&["10.100.0.3/32", "0.0.0.0/0", "::/0"]),
        ];
        let routes: Vec<String> = Engine::extra_routes(&desired, mesh, mesh6)
            .iter()
            .map(|n| n.to_string())
            .collect();
        // A default route here would loop WireGuard's own packets into the tunnel.
        assert_eq!(routes, vec!["192.0.2.0/24"]);
    }

    #[test]
    fn only_the_chosen_exit_node_gets_a_default_route() {
        let info = |name: &str, exit: bool| PeerInfo {
            id: crate::types::PeerId::for_key(&crate::keys::PrivateKey::generate().public_key()),
            public_key: crate::keys::PrivateKey::generate().public_key(),
            virtual_ip: "10.100.0.9".parse().unwrap(),
            endpoint: None,
            hostname: name.parse().unwrap(),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![
                "10.100.0.9/32".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
            exit_node: exit,
            online: true,
            last_heartbeat: String::new(),
        };
        let (a, b) = (info("a", true), info("b", true));
        let peers = [a.clone(), b.clone()];
        let none = Engine::desired_peers(&peers, None);
        assert!(none
            .iter()
            .all(|p| p.allowed_ips.iter().all(|n| n.prefix_len() != 0)));
        let chosen = Engine::desired_peers(&peers, Some(&b.public_key));
        assert_eq!(chosen[0].allowed_ips.len(), 1);
        assert_eq!(chosen[1].allowed_ips.len(), 2);
    }

    fn listed(n: u8, endpoint: &str) -> PeerInfo {
        let key = crate::keys::PublicKey::from_bytes([n; 32]);
        PeerInfo {
            id: crate::types::PeerId::for_key(&key),
            public_key: key,
            virtual_ip: std::net::Ipv4Addr::new(10, 100, 0, n),
            endpoint: Some(endpoint.parse().unwrap()),
            hostname: format!("h{n}").parse().unwrap(),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![format!("10.100.0.{n}/32").parse().unwrap()],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
        }
    }

    fn answer(version: u64, full: bool, peers: Vec<PeerInfo>, removed: &[&PeerInfo]) -> PeersDelta {
        PeersDelta {
            version,
            full,
            peers: if full { peers.clone() } else { Vec::new() },
            changed: if full { Vec::new() } else { peers },
            removed: removed.iter().map(|p| p.id.clone()).collect(),
        }
    }

    #[test]
    fn deltas_update_add_and_drop_peers_and_keep_address_order() {
        let (a, b, c) = (
            listed(1, "198.18.0.1:1"),
            listed(2, "198.18.0.2:1"),
            listed(3, "198.18.0.3:1"),
        );
        let mut known = KnownPeers::default();
        assert!(known.apply(answer(10, true, vec![c.clone(), a.clone()], &[])));
        assert_eq!(known.peers, vec![a.clone(), c.clone()]);
        assert_eq!(known.version, Some(10));
        // b joins, a moves, c leaves; an unknown id in `removed` is ignored.
        let moved = listed(1, "198.18.0.9:1");
        let stranger = listed(9, "198.18.0.99:1");
        assert!(known.apply(answer(
            12,
            false,
            vec![b.clone(), moved.clone()],
            &[&c, &stranger]
        )));
        assert_eq!(known.peers, vec![moved.clone(), b.clone()]);
        assert_eq!(known.version, Some(12));
        // An empty delta only moves the version.
        assert!(!known.apply(answer(13, false, vec![], &[])));
        assert_eq!(known.version, Some(13));
        // An answer older than the list (an overtaken long-poll) changes nothing.
        assert!(!known.apply(answer(11, false, vec![c.clone()], &[&moved])));
        assert_eq!(known.peers, vec![moved.clone(), b.clone()]);
        assert_eq!(known.version, Some(13));
    }

    #[test]
    fn a_full_answer_leaves_no_stale_peer_behind() {
        let (a, b, c) = (
            listed(1, "198.18.0.1:1"),
            listed(2, "198.18.0.2:1"),
            listed(3, "198.18.0.3:1"),
        );
        let mut known = KnownPeers {
            peers: vec![a.clone(), b.clone()],
            etag: Some("\"x\"".into()),
            version: Some(5),
        };
        // Missed deltas (asleep, server restarted): the full list replaces everything.
        assert!(known.apply(answer(99, true, vec![c.clone()], &[])));
        assert_eq!(known.peers, vec![c]);
        assert_eq!(known.etag, None);
        assert!(!known.apply(answer(100, true, known.peers.clone(), &[])));
    }

    #[test]
    fn word_after_reads_route_output() {
        let out = "default via 198.18.0.254 dev eth0 proto static\n";
        assert_eq!(word_after(out, "via").as_deref(), Some("198.18.0.254"));
        assert_eq!(word_after(out, "dev").as_deref(), Some("eth0"));
        assert_eq!(word_after("", "dev"), None);
    }
}
