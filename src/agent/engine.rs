//! The agent's one loop step, shared by `up` (repeatedly) and `sync` (once): make sure we are
//! registered, fetch the desired peers, then observe the host ([`HostFacts`]), decide
//! ([`plan::plan`], pure), apply the plans and save what is applied.
//!
//! Side effects go through a [`Runner`], so tests drive the whole engine against a real
//! server with a recording runner, and `--dry-run` prints the same plans it would run.

use super::client::{ApiClient, ClientError, PeerList};
use super::config::{Applied, Assignment, ClientConfig};
use super::error::AgentError;
use super::host::{self, HostFacts};
use super::host_routes;
use super::known::KnownPeers;
use super::path::{Choice, PathSettings, PathTable};
use super::plan::{self, HostCheck, PlanInput, Step, SyncSummary};
use crate::keys::PublicKey;
use crate::os::runner::{execute, Runner};
use crate::os::{self, observe_windows, Plan, TargetOs};
use crate::proto::model::{HeartbeatRequest, PeerInfo, PeersDelta, RegisterRequest};
use crate::types::OsName;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How long `down` or a stopping `up` waits to tell the server it goes offline: short,
/// since stopping must not hang on an unreachable server.
const OFFLINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where plans go: run for real, or printed one command per line for `--dry-run`.
pub enum Sink<'a> {
    /// Execute through this runner.
    Run(&'a mut dyn Runner),
    /// Print to this writer (stdout for `--dry-run`).
    Print(&'a mut dyn Write),
}

impl Sink<'_> {
    /// Runs (or prints) one plan; an empty plan does nothing.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), AgentError> {
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

    /// Whether plans are only printed.
    pub fn is_dry_run(&self) -> bool {
        matches!(self, Sink::Print(_))
    }

    /// Checks the host before the next step runs, through the runner that runs the plans
    /// (a dry run checks nothing: it changes nothing either).
    fn check(&mut self, check: &HostCheck) -> Result<(), AgentError> {
        let Sink::Run(runner) = self else {
            return Ok(());
        };
        let runner: &mut dyn Runner = &mut **runner;
        match check {
            HostCheck::ServiceGone(name) => observe_windows::wait_service_gone(
                runner,
                name,
                observe_windows::SERVICE_GONE_TIMEOUT,
                observe_windows::SERVICE_POLL,
            ),
            HostCheck::ConfigDirProtected => observe_windows::check_config_dir(
                runner,
                &os::windows_config_dir_acl(),
                &os::windows_config_dir(),
            ),
        }
        .map_err(AgentError::Usage)
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
    /// Each peer's path (direct or relayed) and the relay's address; saved beside the
    /// config so `sync` from a timer and `status` see it.
    pub paths: PathTable,
    /// How paths are chosen (`--relay-after`, `--direct-probe-interval`).
    pub path_settings: PathSettings,
    /// What the last reconcile chose per peer, so the route check between syncs pins the
    /// same endpoints (a relayed peer's is the relay's) instead of fighting the sync.
    pub path_choices: HashMap<PublicKey, Choice>,
    /// Whether the config may be written. Dry runs still keep the key and assignment (so a
    /// later real run uses the address it printed) but never record anything as applied.
    pub persist: bool,
}

/// Where the last peer list is kept for `status` and offline `export`: beside the config.
pub fn peer_cache_path(config_path: &Path) -> PathBuf {
    config_path.with_extension("peers.json")
}

/// The last peer list this node saw (empty if none or unreadable: it is only a cache).
pub fn load_peer_cache(config_path: &Path) -> Vec<PeerInfo> {
    load_known_peers(config_path)
        .map(|k| k.peers)
        .unwrap_or_default()
}

/// The last peer list this node saw with its version, so `sync` can ask for only what
/// changed since (None if none or unreadable: the full list is always correct).
pub fn load_known_peers(config_path: &Path) -> Option<KnownPeers> {
    let bytes = std::fs::read(peer_cache_path(config_path)).ok()?;
    let cached = serde_json::from_slice::<crate::proto::model::PeersResponse>(&bytes).ok()?;
    Some(KnownPeers {
        peers: cached.peers,
        etag: None,
        version: cached.version,
    })
}

fn save_peer_cache(config_path: &Path, peers: &[PeerInfo], version: Option<u64>) {
    let body = crate::proto::model::PeersResponse {
        relay_port: None,
        peers: peers.to_vec(),
        version,
    };
    let bytes = serde_json::to_vec(&body).expect("peer lists serialize");
    let path = peer_cache_path(config_path);
    if let Err(e) = crate::fsutil::write_atomic(&path, &bytes, 0o600) {
        log::warn!("cannot cache the peer list: {e}");
    }
}

impl Engine {
    fn reader(&mut self) -> Option<&mut dyn Runner> {
        match &mut self.reader {
            Some(r) => Some(r.as_mut()),
            None => None,
        }
    }

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
            if host::ipv6_default_dev(self.reader()).is_some() {
                allowed_ips.push("::/0".parse().expect("literal"));
            }
        }
        RegisterRequest {
            public_key: self.config.private_key.public_key(),
            hostname: host::local_hostname(&self.config),
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
            dns_name: answer.dns_name,
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
                relay_port,
                version,
            } => {
                if self.persist {
                    save_peer_cache(&self.config_path, &peers, version);
                }
                self.learn_relay(relay_port, true);
                self.last_list = Some(KnownPeers {
                    peers: peers.clone(),
                    etag,
                    version,
                });
                Ok((peers, false))
            }
        }
    }

    /// Where the server relays WireGuard (its own host, the port it advertises). A full list
    /// without a port means no relay; a delta without one keeps what we know.
    fn learn_relay(&mut self, relay_port: Option<u16>, authoritative: bool) {
        if relay_port.is_none() && !authoritative {
            return;
        }
        let relay = relay_port.and_then(|port| {
            host::server_ip(self.client.server()).map(|ip| SocketAddr::new(ip, port))
        });
        if relay != self.paths.relay {
            match relay {
                Some(r) => log::info!("the server relays WireGuard at {r}"),
                None => log::info!("the server offers no relay: direct paths only"),
            }
            self.paths.relay = relay;
        }
    }

    /// With a relay and replicas (issue 11): learns each live replica's relay from
    /// `GET /replicas` (its host, the same port as ours), so every pair meets at the
    /// replica both ends pick alike ([`PathTable::relay_for`]). A failure keeps the last
    /// list: a pair must not split because one end missed one answer.
    fn refresh_relays(&mut self) {
        let Some(relay) = self.paths.relay else {
            self.paths.relays.clear();
            return;
        };
        let urls = match self.client.replicas() {
            Ok(urls) => urls,
            Err(e) => {
                log::warn!("cannot read the replica list: {e}; keeping the last one");
                return;
            }
        };
        let relays: std::collections::BTreeMap<String, SocketAddr> = urls
            .into_iter()
            .filter_map(|url| {
                let ip = host::server_ip(&url.parse().ok()?)?;
                Some((url, SocketAddr::new(ip, relay.port())))
            })
            .collect();
        if relays != self.paths.relays {
            log::info!(
                "relayed pairs meet at one of {} replica relay(s): {:?}",
                relays.len(),
                relays.values().collect::<Vec<_>>()
            );
            self.paths.relays = relays;
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
        self.learn_relay(answer.relay_port, answer.full);
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
        if let Some(assignment) = &self.config.assignment {
            offline_with(&self.client, &assignment.peer_id);
        }
    }

    /// One full step: register if needed, fetch peers, reconcile the interface.
    pub fn sync(&mut self, sink: &mut Sink<'_>) -> Result<SyncSummary, AgentError> {
        plan::check_interface_name(self.os, &self.config)?;
        if self.config.assignment.is_none() {
            self.register()?;
        }
        let (peers, unchanged) = self.fetch_peers_from(!sink.is_dry_run())?;
        self.refresh_relays();
        self.reconcile(&peers, unchanged, sink)
    }

    /// Makes the interface match `peers`: observes the host, plans (pure), applies the
    /// plans in order (saving what is applied after each step that changes it) and reports
    /// what changed.
    pub fn reconcile(
        &mut self,
        peers: &[PeerInfo],
        list_unchanged: bool,
        sink: &mut Sink<'_>,
    ) -> Result<SyncSummary, AgentError> {
        self.reconcile_as(peers, list_unchanged, None, sink, true)
    }

    /// Re-plans from the last peer list without asking the server: the paths' tick between
    /// syncs. Nothing to do before the first list.
    pub fn refresh_paths(&mut self, sink: &mut Sink<'_>) -> Result<(), AgentError> {
        let Some(known) = self.last_list.clone() else {
            return Ok(());
        };
        if self.config.assignment.is_none() {
            return Ok(());
        }
        self.reconcile_as(&known.peers, true, None, sink, false)
            .map(drop)
    }

    /// [`Engine::reconcile`] as `up` runs it: new peers whose key sorts above ours get their
    /// keepalive on the next pass, so two nodes meeting do not both initiate at once.
    /// `hold_silent`: keep deferring peers that have not sent anything yet.
    pub fn reconcile_live(
        &mut self,
        peers: &[PeerInfo],
        hold_silent: bool,
        sink: &mut Sink<'_>,
    ) -> Result<SyncSummary, AgentError> {
        self.reconcile_as(peers, false, Some(hold_silent), sink, true)
    }

    /// [`Engine::sync`] as `up` runs it (see [`Engine::reconcile_live`]).
    pub fn sync_live(
        &mut self,
        hold_silent: bool,
        sink: &mut Sink<'_>,
    ) -> Result<SyncSummary, AgentError> {
        plan::check_interface_name(self.os, &self.config)?;
        if self.config.assignment.is_none() {
            self.register()?;
        }
        let (peers, unchanged) = self.fetch_peers_from(!sink.is_dry_run())?;
        self.refresh_relays();
        self.reconcile_as(&peers, unchanged, Some(hold_silent), sink, true)
    }

    /// `live`: None for a plain pass, else `up`'s, holding silent peers or not.
    /// `save_paths` saves the path table even when only its counters moved (a `sync` run
    /// resumes from them), else only when a path changed (the daemon's once-a-second tick
    /// must not write the disk every second).
    fn reconcile_as(
        &mut self,
        peers: &[PeerInfo],
        list_unchanged: bool,
        live: Option<bool>,
        sink: &mut Sink<'_>,
        save_paths: bool,
    ) -> Result<SyncSummary, AgentError> {
        plan::check_interface_name(self.os, &self.config)?;
        let reader: Option<&mut dyn Runner> = match &mut self.reader {
            Some(r) => Some(r.as_mut()),
            None => None,
        };
        let interface = plan::interface_to_read(&self.config, self.os);
        let mut facts = HostFacts::observe(
            reader,
            self.os,
            &self.config,
            self.client.server(),
            &interface,
        );
        let me = self.config.private_key.public_key();
        let before = self.paths.clone();
        let paths = self.paths.step_all(
            std::time::SystemTime::now(),
            &me,
            peers,
            facts.dump.as_ref(),
            &self.path_settings,
        );
        let changed = if save_paths {
            self.paths != before
        } else {
            self.paths.material() != before.material()
        };
        if changed && self.persist && !sink.is_dry_run() {
            self.paths.save(&self.config_path);
        }
        self.path_choices = paths.clone();
        let summary = loop {
            let input = PlanInput {
                os: self.os,
                config: &self.config,
                peers,
                list_unchanged,
                dry_run: sink.is_dry_run(),
                paths: &paths,
                live: live.is_some(),
                hold_silent: live == Some(true),
            };
            let planned = plan::plan(&input, &facts);
            self.apply(&planned.steps, sink)?;
            if let Some(failure) = planned.failure {
                return Err(failure);
            }
            match &planned.awaiting_name {
                // macOS: wireguard-go named the new interface only now; plan the rest.
                Some(name) => {
                    facts.created_name = Some(host::created_name(name)?);
                    // The first pass's steps (the undo of an old tunnel) changed the table.
                    let reader: Option<&mut dyn Runner> = match &mut self.reader {
                        Some(r) => Some(r.as_mut()),
                        None => None,
                    };
                    let server = self.client.server();
                    facts.routes =
                        host::observe_routes(reader, self.os, &self.config, server).routes;
                }
                None => break planned.summary,
            }
        };
        for (what, keys) in [
            ("added", &summary.added),
            ("updated", &summary.updated),
            ("removed", &summary.removed),
        ] {
            if !keys.is_empty() {
                log::info!("{what} {} peer(s) on {}", keys.len(), summary.interface);
            }
        }
        Ok(summary)
    }

    /// The quick check `up` runs every few seconds on macOS and Windows while a full tunnel
    /// is in place: reads the routing table and re-pins or re-adds routes a network change
    /// or a reboot moved, without asking the server (the last peer list is used), as
    /// darwin.bash's route monitor re-pins on every routing-socket message.
    pub fn check_routes(&mut self, sink: &mut Sink<'_>) -> Result<(), AgentError> {
        if !self.watches_routes() {
            return Ok(());
        }
        let reader: Option<&mut dyn Runner> = match &mut self.reader {
            Some(r) => Some(r.as_mut()),
            None => None,
        };
        let facts = host::observe_routes(reader, self.os, &self.config, self.client.server());
        // Before the first list of this run (the server unreachable since `up` started), the
        // cached one keeps the peers pinned that the last run pinned.
        let peers = match &self.last_list {
            Some(known) => known.peers.clone(),
            None => load_peer_cache(&self.config_path),
        };
        let input = PlanInput {
            os: self.os,
            config: &self.config,
            peers: &peers,
            list_unchanged: true,
            dry_run: sink.is_dry_run(),
            paths: &self.path_choices,
            live: false,
            hold_silent: false,
        };
        let steps = plan::route_check(&input, &facts);
        self.apply(&steps, sink)
    }

    /// Whether `up` should run [`Engine::check_routes`] between syncs: on macOS and Windows
    /// while a full tunnel is recorded.
    pub fn watches_routes(&self) -> bool {
        host_routes::uses_host_routes(self.os)
            && self
                .config
                .applied
                .as_ref()
                .is_some_and(|a| a.full_tunnel.is_some())
    }

    fn apply(&mut self, steps: &[Step], sink: &mut Sink<'_>) -> Result<(), AgentError> {
        apply_steps(
            &mut self.config,
            &self.config_path,
            self.persist,
            steps,
            sink,
        )
    }

    /// Removes everything `up`/`sync` set up on this host: NAT, the full tunnel, routes and
    /// the interface. Returns whether there was anything to remove.
    pub fn teardown(&mut self, sink: &mut Sink<'_>) -> Result<bool, AgentError> {
        match undo_recorded(&mut self.config, &self.config_path, self.persist, sink)? {
            Some(os) => {
                self.os = os;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Runs (or prints) each step's plan, then records what it changed and saves the config
/// (never in a dry run, and only when `persist`).
fn apply_steps(
    config: &mut ClientConfig,
    path: &Path,
    persist: bool,
    steps: &[Step],
    sink: &mut Sink<'_>,
) -> Result<(), AgentError> {
    for step in steps {
        sink.apply(&step.plan)?;
        if let Some(check) = &step.check {
            sink.check(check)?;
        }
        if let Some(record) = &step.record {
            if !sink.is_dry_run() {
                config.applied = record.clone();
                if persist {
                    config.save(path)?;
                }
            }
        }
        if let Some(note) = &step.note {
            log::info!("{note}");
        }
    }
    Ok(())
}

/// Removes what `config` records as applied, as the recorded OS does it; returns that OS,
/// or `None` when nothing is recorded.
fn undo_recorded(
    config: &mut ClientConfig,
    path: &Path,
    persist: bool,
    sink: &mut Sink<'_>,
) -> Result<Option<TargetOs>, AgentError> {
    let Some(applied) = config.applied.clone() else {
        return Ok(None);
    };
    let os: TargetOs = applied
        .os
        .parse()
        .map_err(|e| AgentError::Usage(format!("recorded OS: {e}")))?;
    let steps = plan::undo(os, config)?;
    apply_steps(config, path, persist, &steps, sink)?;
    log::info!("removed interface {}", applied.interface);
    Ok(Some(os))
}

/// Tells the server this node stops on purpose, from its config alone (`down`), checking
/// the answer against the pinned server key.
fn tell_offline(config: &ClientConfig) {
    let (Some(server), Some(assignment)) = (&config.server, &config.assignment) else {
        return;
    };
    let client = ApiClient::new(server.clone(), OFFLINE_TIMEOUT).with_identity(
        config.private_key.clone(),
        Some(assignment.server_public_key),
    );
    offline_with(&client, &assignment.peer_id);
}

fn offline_with(client: &ApiClient, peer_id: &crate::types::PeerId) {
    match client.with_timeout(OFFLINE_TIMEOUT).offline(peer_id) {
        Ok(()) => log::info!("told the server {peer_id} is going offline"),
        Err(e) => log::warn!(
            "could not tell the server we are going offline ({e}); the others drop this node at the heartbeat timeout"
        ),
    }
}

/// `down`: tells the server this node goes offline (best effort; not in a dry run), then
/// removes what the config at `path` records as applied, optionally as `os` would (to show
/// another OS's teardown of this configuration's interface). Returns whether there was
/// anything to remove.
pub fn down(path: &Path, os: Option<TargetOs>, sink: &mut Sink<'_>) -> Result<bool, AgentError> {
    let Some(mut config) = ClientConfig::load(path)? else {
        log::info!("nothing to take down: no config at {}", path.display());
        return Ok(false);
    };
    if !sink.is_dry_run() {
        // Others drop us now rather than at the heartbeat timeout.
        tell_offline(&config);
    }
    if let Some(os) = os {
        let interface = config.interface.to_string();
        let applied = config.applied.get_or_insert_with(|| Applied {
            interface,
            ..Applied::default()
        });
        applied.os = os.as_str().to_owned();
    }
    let removed = undo_recorded(&mut config, path, true, sink)?.is_some();
    if !removed {
        log::info!("nothing to take down: this agent has nothing set up");
    }
    Ok(removed)
}
