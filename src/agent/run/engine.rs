//! The agent's one loop step, shared by `up` (repeatedly) and `sync` (once): make sure we are
//! registered, fetch the desired peers, then observe the host ([`HostFacts`]), decide
//! ([`plan::plan`], pure), apply the plans and save what is applied.
//!
//! Side effects go through a [`Runner`], so tests drive the whole engine against a real
//! server with a recording runner, and `--dry-run` prints the same plans it would run.

use crate::agent::client::{ApiClient, ClientError, PeerList};
use crate::agent::decide::path::{Choice, PathSettings, PathTable};
use crate::agent::error::AgentError;
use crate::agent::observe::host::{self, HostFacts};
use crate::agent::observe::host_routes;
use crate::agent::plan::{self, PlanInput, Step, SyncSummary};
use crate::agent::state::config::{Assignment, ClientConfig};
use crate::agent::state::known::KnownPeers;
use crate::keys::PublicKey;
use crate::os::runner::Runner;
use crate::os::TargetOs;
use crate::proto::model::{HeartbeatRequest, PeerInfo, PeersDelta, RegisterRequest};
use crate::types::OsName;
use std::collections::HashMap;

use crate::agent::apply::sink::apply_steps;
pub use crate::agent::apply::sink::Sink;
pub use crate::agent::apply::teardown::down;
use crate::agent::apply::teardown::{offline_with, undo_recorded};
use crate::agent::state::peer_cache::save_peer_cache;
pub use crate::agent::state::peer_cache::{load_known_peers, load_peer_cache, peer_cache_path};
use std::path::PathBuf;

/// Logs what a pass changed on the interface, at `level`.
fn log_summary(summary: &SyncSummary, level: log::Level) {
    for (what, keys) in [
        ("added", &summary.added),
        ("updated", &summary.updated),
        ("removed", &summary.removed),
    ] {
        if !keys.is_empty() {
            log::log!(
                level,
                "{what} {} peer(s) on {}",
                keys.len(),
                summary.interface
            );
        }
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
    /// Asks the replica relays in use whether they still answer ([`crate::agent::decide::relay_health`]).
    pub relay_probe: crate::agent::observe::relay_probe::RelayProbe,
    /// Sends a probe's datagram through the tunnel ([`crate::agent::apply::path_probe::poke`]);
    /// None sends nothing (tests, and hosts the commands are only planned for).
    pub poke: Option<crate::agent::apply::path_probe::Poke>,
    /// Whether the config may be written. Dry runs still keep the key and assignment (so a
    /// later real run uses the address it printed) but never record anything as applied.
    pub persist: bool,
    /// With `up --gateway`: the subnet routes the server grants this node's devices (set by
    /// [`crate::agent::gateway::Gateway::refresh`]), put into their routers' AllowedIPs.
    pub device_routes: Vec<crate::proto::devices::DeviceRoute>,
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
        allowed_ips.extend(self.config.subnet_routes.advertised());
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
            login: None,
            gateway_port: self.config.gateway.as_ref().map(|g| g.port),
        }
    }

    /// Registers (idempotent) and stores the assignment. Never called for a dry run, which
    /// changes nothing anywhere (no registration, no token use).
    pub fn register(&mut self) -> Result<&Assignment, AgentError> {
        self.read_routes_table();
        let request = self.register_request();
        let first = self.config.assignment.is_none();
        let answer = self.client.register(&request).map_err(|e| {
            // Before the first registration nothing works; a refusal retrying cannot fix
            // ends `up` (and `sync`) with the reason rather than looping on it.
            if first && e.is_permanent() {
                AgentError::Join(e)
            } else {
                AgentError::Server(e)
            }
        })?;
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

    /// Sends a heartbeat, registering again if the server forgot us, or if the routing
    /// daemon's table (`--routes-from-table`) moved since the last registration.
    pub fn heartbeat(&mut self) -> Result<(), AgentError> {
        if self.read_routes_table() {
            self.register()?;
            return Ok(());
        }
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
        self.fetch_peers_from(true, true)
    }

    /// Registers again after the server said it does not know us, unless this is a dry run
    /// (`may_register` false), which registers nothing and says so.
    fn register_again(&mut self, may_register: bool) -> Result<&Assignment, AgentError> {
        if !may_register {
            return Err(AgentError::Usage(
                "the server does not know this node (any more): a real run registers it \
                 again; a dry run registers nothing"
                    .into(),
            ));
        }
        self.register()
    }

    /// [`Engine::fetch_peers`]; `use_cache: false` (dry runs) starts from the whole list
    /// instead of the cached version, so what is printed never depends on an earlier run.
    fn fetch_peers_from(
        &mut self,
        use_cache: bool,
        may_register: bool,
    ) -> Result<(Vec<PeerInfo>, bool), AgentError> {
        let peer_id = match &self.config.assignment {
            Some(a) => a.peer_id.clone(),
            None => self.register_again(may_register)?.peer_id.clone(),
        };
        if self.last_list.is_none() && self.persist && use_cache {
            self.last_list = load_known_peers(&self.config_path);
        }
        if let Some(since) = self.last_list.as_ref().and_then(|k| k.version) {
            let answer = match self.client.peers_since(&peer_id, since, None) {
                Err(ClientError::UnknownPeer) => {
                    log::warn!("the server no longer knows {peer_id}: registering again");
                    self.register_again(may_register)?;
                    self.last_list = None;
                    return self.fetch_peers_from(false, may_register);
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
                let id = self.register_again(may_register)?.peer_id.clone();
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
        if answer.full && self.last_list.as_ref().is_some_and(|k| k.version.is_some()) {
            // Asked for changes since our version and given the whole list: the server
            // does not know our version, as after a restart (its versions start again).
            self.server_back();
        }
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

    /// One full step: register if needed, fetch peers, reconcile the interface. A dry run
    /// of a node that is not registered yet only checks that the server answers (and has
    /// the pinned key) and says what a real run would do first.
    pub fn sync(&mut self, sink: &mut Sink<'_>) -> Result<SyncSummary, AgentError> {
        plan::check_interface_name(self.os, &self.config)?;
        if self.config.assignment.is_none() && sink.is_dry_run() {
            return self.dry_run_unregistered(sink);
        }
        if self.config.assignment.is_none() {
            self.register()?;
        }
        let (peers, unchanged) = self.fetch_peers_from(!sink.is_dry_run(), !sink.is_dry_run())?;
        self.refresh_relays();
        self.watch_relays(crate::agent::observe::relay_probe::ROUND_WAIT);
        self.reconcile(&peers, unchanged, sink)
    }

    /// [`Engine::sync`]'s dry run before any registration: `GET /key` (read-only) to see
    /// the server answers and holds the pinned key, then a note of what a real run does.
    fn dry_run_unregistered(&mut self, sink: &mut Sink<'_>) -> Result<SyncSummary, AgentError> {
        let key = self.client.fetch_key()?;
        if let Some(pinned) = self.client.pinned_server_key().filter(|p| *p != key) {
            return Err(AgentError::Server(ClientError::Unauthentic(format!(
                "the server's key is {key}, not the pinned {pinned}"
            ))));
        }
        let hostname = host::local_hostname(&self.config);
        let token = if self.client.has_token() {
            "with the join token given"
        } else {
            "without a join token (the server must run with --open)"
        };
        sink.note(&format!(
            "not registered with {} yet: a real run first registers {hostname} {token}, then \
             creates {} with the address the server assigns and adds the peers it may see; \
             this dry run registered nothing and wrote nothing",
            self.client.server(),
            self.config.interface
        ));
        Ok(SyncSummary::default())
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
        self.watch_relays(std::time::Duration::ZERO);
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
        let (peers, unchanged) = self.fetch_peers_from(!sink.is_dry_run(), !sink.is_dry_run())?;
        self.refresh_relays();
        self.watch_relays(std::time::Duration::ZERO);
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
        // Devices behind a gateway (`via`) are no WireGuard peers of ours: no path to choose.
        let tunnels: Vec<PeerInfo> = peers.iter().filter(|p| p.via.is_none()).cloned().collect();
        let settings = PathSettings {
            // A one-shot `sync` has no next tick to end a probe: it never starts one.
            may_probe: self.path_settings.may_probe && (live.is_some() || !save_paths),
            ..self.path_settings
        };
        let paths = self.paths.step_all(
            std::time::SystemTime::now(),
            &me,
            &tunnels,
            facts.dump.as_ref(),
            &settings,
        );
        let probes = self.paths.probes_begun(&before);
        let checks = self.paths.checks_begun(&before);
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
                device_routes: &self.device_routes,
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
        if !sink.is_dry_run() {
            self.begin_probes(peers, &probes, &checks);
        }
        // The path tick's own changes (probes come and go) are logged by the path table.
        let quiet = live.is_none() && !save_paths;
        log_summary(
            &summary,
            if quiet {
                log::Level::Debug
            } else {
                log::Level::Info
            },
        );
        Ok(summary)
    }

    /// Starts the probes that began this pass, now that their endpoints are the direct
    /// addresses: reads the byte counters again (packets that came through the relay
    /// before the endpoint changed prove nothing), then sends each peer its datagram. The
    /// direct paths' checks (`checks`) send the same datagram over the path they check.
    fn begin_probes(&mut self, peers: &[PeerInfo], keys: &[String], checks: &[String]) {
        let Some(poke) = self.poke.filter(|_| !keys.is_empty() || !checks.is_empty()) else {
            return;
        };
        if !keys.is_empty() {
            let name = plan::interface_to_read(&self.config, self.os);
            let os = self.os;
            if let Some(dump) = self.reader().and_then(|r| host::wg_dump(r, os, &name)) {
                self.paths.probe_baseline(keys, &dump);
            }
        }
        for peer in peers {
            let key = peer.public_key.to_base64();
            if keys.contains(&key) || checks.contains(&key) {
                poke(peer.virtual_ip);
            }
        }
    }

    /// Whether a probe or a check of some direct path runs: `up` then re-evaluates paths
    /// every [`PROBE_TICK`](crate::agent::decide::path::PROBE_TICK), so a probe takes the
    /// relay away only for its short window and a failed check hands over to the relay on
    /// time.
    pub fn needs_fast_path_ticks(&self) -> bool {
        self.paths.needs_fast_ticks()
    }

    /// The server answers again after being unreachable: its relay forgot every session,
    /// so relayed sessions restart at the next path tick instead of waiting minutes for
    /// WireGuard's own timers (an idle end only sends keepalives, too little for the relay
    /// to pass it the other end's handshake).
    pub fn server_back(&mut self) {
        if self
            .paths
            .peers
            .values()
            .any(|p| p.mode == crate::agent::decide::path::Mode::Relay)
        {
            log::info!("the server is back: restarting relayed sessions");
        }
        self.paths.server_restarted();
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
            device_routes: &self.device_routes,
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

impl Engine {
    /// Reads `--routes-from-table`'s table and keeps its allowed prefixes as what this node
    /// advertises from it; true when they changed (saved, so `down` and `status` agree). An
    /// unreadable table keeps the last prefixes seen (a routing daemon restarting must not
    /// withdraw the routes for a moment).
    fn read_routes_table(&mut self) -> bool {
        let Some(table) = self.config.subnet_routes.from_table else {
            return false;
        };
        let Some(reader) = self.reader() else {
            return false;
        };
        let mut found = Vec::new();
        for cmd in crate::os::subnet_routes::read_table(table) {
            match reader.run(&cmd) {
                Ok(out) => found.extend(crate::os::subnet_routes::parse_table(&out.stdout)),
                // A table nothing was ever put into does not exist yet: it is empty.
                Err(e) if e.to_string().contains("does not exist") => {}
                Err(e) => {
                    log::warn!("cannot read routing table {table}: {e}");
                    return false;
                }
            }
        }
        let allowed = crate::agent::decide::subnet_routes::allowed_from_table(
            &found,
            &self.config.subnet_routes.from_table_allow,
        );
        if allowed == self.config.subnet_routes.from_table_seen {
            return false;
        }
        log::info!(
            "routing table {table} now has {} allowed prefix(es) to advertise: {:?}",
            allowed.len(),
            allowed
        );
        self.config.subnet_routes.from_table_seen = allowed;
        if let Err(e) = self.save() {
            log::warn!("cannot save the table's prefixes: {e}");
        }
        true
    }
}
