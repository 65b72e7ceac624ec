//! The agent's one loop step, shared by `up` (repeatedly) and `sync` (once): make sure we are
//! registered, fetch the desired peers, read the actual interface, and apply the difference.
//!
//! Side effects go through a [`Runner`], so tests drive the whole engine against a real
//! server with a recording runner, and `--dry-run` prints the same plans it would run.

use super::client::{ApiClient, ClientError, PeerList};
use super::config::{Applied, Assignment, ClientConfig, ConfigError};
use crate::model::{HeartbeatRequest, PeerInfo, RegisterRequest};
use crate::os::runner::{execute, ExecuteError, Runner};
use crate::os::{self, Command, InterfaceSpec, PeerSpec, Plan, TargetOs};
use crate::reconcile;
use crate::types::{Hostname, InterfaceName, OsName};
use crate::wgdump;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// Seconds between keepalives to every peer: under the 30 s or so that common NATs keep an
/// idle UDP mapping, as wg-quick users conventionally set (25).
pub const PERSISTENT_KEEPALIVE: u16 = 25;

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
    /// The last list the server sent, and its ETag.
    pub last_list: Option<(Vec<PeerInfo>, Option<String>)>,
    /// Whether the config may be written. Dry runs still keep the key and assignment (so a
    /// later real run uses the address it printed) but never record anything as applied.
    pub persist: bool,
}

/// Where the last peer list is kept for `status` and offline `export`: beside the config.
pub fn peer_cache_path(config_path: &std::path::Path) -> PathBuf {
    config_path.with_extension("peers.json")
}

/// The last peer list this node saw (empty if none or unreadable: it is only a cache).
pub fn load_peer_cache(config_path: &std::path::Path) -> Vec<PeerInfo> {
    std::fs::read(peer_cache_path(config_path))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::model::PeersResponse>(&bytes).ok())
        .map(|r| r.peers)
        .unwrap_or_default()
}

fn save_peer_cache(config_path: &std::path::Path, peers: &[PeerInfo]) {
    let body = crate::model::PeersResponse {
        peers: peers.to_vec(),
    };
    let bytes = serde_json::to_vec(&body).expect("peer lists serialize");
    let path = peer_cache_path(config_path);
    if let Err(e) = crate::fsutil::write_atomic(&path, &bytes, 0o600) {
        log::warn!("cannot cache the peer list: {e}");
    }
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

    fn register_request(&self) -> RegisterRequest {
        let mut allowed_ips = Vec::new();
        if self.config.exit_node {
            allowed_ips.push("0.0.0.0/0".parse().expect("literal"));
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
        let answer = self.client.register(&self.register_request())?;
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
        InterfaceSpec {
            name: self.config.interface.clone(),
            private_key: self.config.private_key.clone(),
            listen_port: self.config.listen_port,
            address: assignment.assigned_ip,
            network: assignment.network_cidr,
            mtu: os::DEFAULT_MTU,
        }
    }

    /// The peers as WireGuard should know them: each peer's own prefixes, never a default
    /// route (exit nodes are opt-in).
    pub fn desired_peers(peers: &[PeerInfo]) -> Vec<PeerSpec> {
        peers
            .iter()
            .map(|p| PeerSpec {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .filter(|net| net.prefix_len() != 0)
                    .copied()
                    .collect(),
                persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
            })
            .collect()
    }

    /// Prefixes beyond the mesh network that must be routed into the interface.
    fn extra_routes(desired: &[PeerSpec], mesh: ipnet::Ipv4Net) -> BTreeSet<IpNet> {
        desired
            .iter()
            .flat_map(|p| p.allowed_ips.iter())
            .filter(|net| match net {
                IpNet::V4(v4) => !mesh.contains(v4),
                IpNet::V6(_) => true,
            })
            .map(IpNet::trunc)
            .collect()
    }

    /// The current peer list: a fresh one from the server, or the last one on a 304.
    pub fn fetch_peers(&mut self) -> Result<(Vec<PeerInfo>, bool), AgentError> {
        let peer_id = match &self.config.assignment {
            Some(a) => a.peer_id.clone(),
            None => self.register()?.peer_id.clone(),
        };
        let etag = self.last_list.as_ref().and_then(|(_, e)| e.clone());
        let answer = match self.client.peers(&peer_id, etag.as_deref()) {
            Err(ClientError::UnknownPeer) => {
                log::warn!("the server no longer knows {peer_id}: registering again");
                let id = self.register()?.peer_id.clone();
                self.client.peers(&id, None)?
            }
            other => other?,
        };
        match answer {
            PeerList::NotModified => {
                let peers = self
                    .last_list
                    .as_ref()
                    .map(|(p, _)| p.clone())
                    .unwrap_or_default();
                Ok((peers, true))
            }
            PeerList::Changed { peers, etag } => {
                if self.persist {
                    save_peer_cache(&self.config_path, &peers);
                }
                self.last_list = Some((peers.clone(), etag));
                Ok((peers, false))
            }
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
        let (peers, unchanged) = self.fetch_peers()?;
        self.reconcile(&peers, unchanged, sink)
    }

    /// Makes the interface match `peers`, creating it if needed.
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
        let desired = Self::desired_peers(peers);
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
                let stale = self.config.applied.clone();
                if let Some(old) = stale.as_ref().filter(|a| a.os == self.os.as_str()) {
                    if let Ok(old_name) = old.interface.parse::<InterfaceName>() {
                        let network = assignment.network_cidr;
                        sink.apply(&os::destroy(self.os, &spec.name, &old_name, network))?;
                    }
                }
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
                        routes: Vec::new(),
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

        let want_routes = Self::extra_routes(&desired, assignment.network_cidr);
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
            if let Some(applied) = self.config.applied.as_mut().filter(|_| !sink.is_dry_run()) {
                applied.routes = want_routes.into_iter().collect();
                self.save()?;
            }
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

    /// Removes everything `up`/`sync` set up on this host.
    pub fn teardown(&mut self, sink: &mut Sink<'_>) -> Result<bool, AgentError> {
        let Some(applied) = self.config.applied.clone() else {
            return Ok(false);
        };
        let real: InterfaceName = applied
            .interface
            .parse()
            .map_err(|e| AgentError::Usage(format!("recorded interface name: {e}")))?;
        let os: TargetOs = applied
            .os
            .parse()
            .map_err(|e| AgentError::Usage(format!("recorded OS: {e}")))?;
        let network = self.config.assignment.as_ref().map_or_else(
            || "10.100.0.0/16".parse().expect("literal"),
            |a| a.network_cidr,
        );
        if !applied.routes.is_empty() {
            sink.apply(&os::routes(os, &real, &[], &applied.routes))?;
        }
        sink.apply(&os::destroy(os, &self.config.interface, &real, network))?;
        if !sink.is_dry_run() {
            self.config.applied = None;
            self.save()?;
        }
        log::info!("removed interface {real}");
        Ok(true)
    }
}
