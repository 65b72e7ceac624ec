//! The agent's decision, as a pure function: from the configuration, the server's peer list
//! and the [`HostFacts`] read beforehand, the ordered plans that make the host match, and
//! what is recorded as applied after each of them. Nothing here reads the host or runs a
//! command, so every branch (rebuild, exit node, full tunnel, routes) is tested on data.
//!
//! The shape follows tailscale's `Router.Set(cfg)` and wg-quick's `cmd_up`: read the host
//! once, then one straight sequence: the interface (reused, or rebuilt from scratch), the
//! full tunnel's removal, the peer diff, the full tunnel's addition, exit-node NAT, routes.

use super::config::{Applied, AppliedNat, AppliedTunnel, Assignment, ClientConfig};
use super::desired::{
    chosen_exit, desired_peers, extra_routes, interface_spec, wanted_tunnel, PERSISTENT_KEEPALIVE,
};
use super::error::AgentError;
use super::host::HostFacts;
use super::host_routes;
use crate::agent::reconcile;
use crate::os::route_table::RouteTable;
use crate::os::{self, InterfaceSpec, PeerSpec, Plan, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use std::collections::BTreeSet;

/// What the decision depends on besides the host.
pub struct PlanInput<'a> {
    /// Whose commands to produce.
    pub os: TargetOs,
    /// The configuration, including what is recorded as applied.
    pub config: &'a ClientConfig,
    /// The server's peer list.
    pub peers: &'a [PeerInfo],
    /// Whether the server said the list had not changed (reported in the summary).
    pub list_unchanged: bool,
    /// A dry run records nothing, so later decisions still see the old record, and takes
    /// macOS's interface name to be `utunN`.
    pub dry_run: bool,
    /// The path chosen for each peer ([`super::path`]): its endpoint and keepalive.
    pub paths: &'a std::collections::HashMap<crate::keys::PublicKey, super::path::Choice>,
    /// `up` applying live changes: new peers whose key sorts above ours get their keepalive
    /// a moment later (see [`defer_crossing_handshakes`]).
    pub live: bool,
    /// With `live`: keep deferring peers that have not sent anything yet (`up` does for a
    /// few seconds, then turns every keepalive on, so NAT mappings still open both ways).
    pub hold_silent: bool,
}

/// Peers this node deferred (keepalive off, key above ours) that have sent us something but
/// still have no handshake a pass later: their first initiation crossed one of ours (traffic
/// here starts one too), and WireGuard would wait 5 s before trying again. Removing and
/// re-adding such a peer starts it afresh, so its keepalive initiates at once, while the
/// other side, having just tried, waits: the two cannot cross again.
pub fn stuck_deferred(
    actual: &[crate::os::wgdump::DumpPeer],
    mine: &crate::keys::PublicKey,
) -> Vec<crate::keys::PublicKey> {
    deferred_without_handshake(actual, mine)
        .filter(|p| p.transfer_rx > 0)
        .map(|p| p.public_key)
        .collect()
}

/// Deferred peers (keepalive off, key above ours) with no handshake yet.
fn deferred_without_handshake<'a>(
    actual: &'a [crate::os::wgdump::DumpPeer],
    mine: &'a crate::keys::PublicKey,
) -> impl Iterator<Item = &'a crate::os::wgdump::DumpPeer> {
    actual
        .iter()
        .filter(|p| p.persistent_keepalive.is_none() && p.latest_handshake.is_none())
        .filter(move |p| p.public_key.as_bytes() > mine.as_bytes())
}

/// Deferred peers that have not sent anything yet: the other side has not added us (it is
/// slower), so initiating now could cross its first initiation; keep waiting.
pub fn silent_deferred(
    actual: &[crate::os::wgdump::DumpPeer],
    mine: &crate::keys::PublicKey,
) -> BTreeSet<crate::keys::PublicKey> {
    deferred_without_handshake(actual, mine)
        .filter(|p| p.transfer_rx == 0)
        .map(|p| p.public_key)
        .collect()
}

/// When two nodes add each other at the same moment, both may send a handshake initiation at
/// once (a new peer's keepalive starts one); each answers the other's and drops its own
/// pending one, so both responses are refused and WireGuard retries only after 5 s. To
/// break the tie, of two nodes that meet, only the one with the smaller public key initiates
/// at once: the other adds the new peer with its keepalive off, and the next pass (a second
/// later, `up` schedules it) turns it on, or, if no handshake happened by then, re-adds the
/// peer (see [`stuck_deferred`]). Returns whether any keepalive was deferred.
pub fn defer_crossing_handshakes(
    changes: &mut crate::os::PeerChanges,
    known: &BTreeSet<crate::keys::PublicKey>,
    mine: &crate::keys::PublicKey,
) -> bool {
    let mut deferred = false;
    for spec in &mut changes.upsert {
        if !known.contains(&spec.public_key) && spec.public_key.as_bytes() > mine.as_bytes() {
            spec.persistent_keepalive = None;
            deferred = true;
        }
    }
    deferred
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
    /// Whether new peers were added with their keepalive deferred (`up` only): another pass
    /// a moment later turns it on (see `plan::defer_crossing_handshakes`).
    #[serde(skip)]
    pub keepalive_deferred: bool,
}

/// One plan, and what is recorded as applied once it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The commands (possibly none: a step may only record).
    pub plan: Plan,
    /// `Some(record)` when this step changes what is recorded as applied; saved right after
    /// the plan ran, so a failure later in the sequence never forgets what is set up.
    pub record: Option<Option<Applied>>,
    /// Logged (info) once the plan ran.
    pub note: Option<String>,
    /// A check of the host to pass once the plan ran, before anything later runs.
    pub check: Option<HostCheck>,
}

/// What must be true of the host before the next step may run; the engine checks it
/// (never in a dry run) and stops the sync with the check's error otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// Windows: the tunnel service of this name is deleted (waited for, bounded), since
    /// `/installtunnelservice` fails while the old one is still stopping.
    ServiceGone(InterfaceName),
    /// Windows: the configuration folder is protected (owner Administrators or SYSTEM, only
    /// they have access, nothing inherited), checked before the private key is written.
    ConfigDirProtected,
}

impl Step {
    fn run(plan: Plan) -> Step {
        Step {
            plan,
            record: None,
            note: None,
            check: None,
        }
    }

    /// A step that only checks the host.
    fn check(check: HostCheck) -> Step {
        Step {
            check: Some(check),
            ..Step::run(Plan::default())
        }
    }

    fn note(mut self, note: String) -> Step {
        self.note = Some(note);
        self
    }
}

/// The decision for one sync.
#[derive(Debug)]
pub struct SyncPlan {
    /// What to run and record, in order.
    pub steps: Vec<Step>,
    /// What is recorded as applied once every step ran.
    pub applied: Option<Applied>,
    /// What the sync changes, for `sync --json`.
    pub summary: SyncSummary,
    /// macOS only: the steps end with creating interface NAME, whose real `utunN` name
    /// wireguard-go writes to its name file. Run the steps, read the name into
    /// [`HostFacts::created_name`], and plan again.
    pub awaiting_name: Option<InterfaceName>,
    /// A refusal met after `steps`: run them (they were decided before it), then fail with
    /// this, as a straight sequence stopping at its first error would.
    pub failure: Option<AgentError>,
}

/// The interface whose `wg show dump` is worth reading: the one recorded as applied for this
/// OS and address, else the configured name.
pub fn interface_to_read(config: &ClientConfig, os: TargetOs) -> InterfaceName {
    recorded(config, os)
        .and_then(|a| a.interface.parse().ok())
        .unwrap_or_else(|| config.interface.clone())
}

/// The applied record, if it was made for this OS and our current address (otherwise the
/// interface must be rebuilt).
fn recorded(config: &ClientConfig, os: TargetOs) -> Option<&Applied> {
    let address = config.assignment.as_ref().map(|a| a.assigned_ip);
    config
        .applied
        .as_ref()
        .filter(|a| a.os == os.as_str() && a.address.is_some() && a.address == address)
}

/// Decides one sync. Never fails by itself: a refusal is returned in
/// [`SyncPlan::failure`] after the steps decided before it.
pub fn plan(input: &PlanInput<'_>, facts: &HostFacts) -> SyncPlan {
    let mut b = Builder {
        os: input.os,
        dry_run: input.dry_run,
        steps: Vec::new(),
        rec: input.config.applied.clone(),
        summary: SyncSummary::default(),
        awaiting_name: None,
    };
    let failure = b.build(input, facts).err();
    SyncPlan {
        steps: b.steps,
        applied: b.rec,
        summary: b.summary,
        awaiting_name: b.awaiting_name,
        failure,
    }
}

/// Removes what `config` records as applied for `os`: NAT, the full tunnel and routes
/// (tolerating pieces already gone with the interface), then the interface itself; the last
/// step records nothing applied. Empty when nothing is recorded for `os`.
pub fn undo(os: TargetOs, config: &ClientConfig) -> Result<Vec<Step>, AgentError> {
    let Some(old) = config.applied.as_ref().filter(|a| a.os == os.as_str()) else {
        return Ok(Vec::new());
    };
    let Ok(old_name) = old.interface.parse::<InterfaceName>() else {
        return Ok(Vec::new());
    };
    let mesh = config.assignment.as_ref().map_or_else(
        || "10.100.0.0/16".parse().expect("literal"),
        |a| a.network_cidr,
    );
    let mut steps = Vec::new();
    if let Some(nat) = &old.nat {
        let mut plan = nat_plan(os, config, &old_name, mesh, nat, false)?;
        plan.commands
            .iter_mut()
            .for_each(|c| c.allow_failure = true);
        steps.push(Step::run(plan));
    }
    if let Some(tunnel) = &old.full_tunnel {
        steps.push(Step::run(tunnel_off(os, &old_name, tunnel, true)));
    }
    if let Some(dns) = &old.dns {
        // Reads the hosts file when the names are kept there: only our block goes.
        steps.push(Step::run(super::dns::undo_plan(dns)?));
    }
    if !old.routes.is_empty() {
        steps.push(Step::run(os::routes(os, &old_name, &[], &old.routes)));
    }
    steps.push(Step {
        record: Some(None),
        ..Step::run(os::destroy(os, &config.interface, &old_name, mesh))
    });
    Ok(steps)
}

/// Refuses an interface name the target OS will not take (Windows: reserved device names
/// such as `con` or `nul.x`, a leading or trailing `.`) before anything is read or run,
/// rather than at `/installtunnelservice`.
pub fn check_interface_name(os: TargetOs, config: &ClientConfig) -> Result<(), AgentError> {
    if os == TargetOs::Windows {
        os::observe_windows::check_tunnel_name(&config.interface).map_err(AgentError::Usage)?;
    }
    Ok(())
}

/// The quick route check between syncs (macOS and Windows, full tunnel in place): the one
/// step that re-pins or re-adds routes a network change or reboot moved, planned from the
/// observed table in `facts` and the last peer list. Empty when there is nothing to check.
pub fn route_check(input: &PlanInput<'_>, facts: &HostFacts) -> Vec<Step> {
    let config = input.config;
    let (Some(applied), Some(assignment), Some(table)) = (
        recorded(config, input.os),
        config.assignment.as_ref(),
        facts.routes.as_ref(),
    ) else {
        return Vec::new();
    };
    let (Some(tunnel), Ok(real_name)) = (
        applied.full_tunnel.as_ref(),
        applied.interface.parse::<InterfaceName>(),
    ) else {
        return Vec::new();
    };
    let exit = input
        .peers
        .iter()
        .find(|p| p.public_key == tunnel.exit_public_key)
        .map(|p| p.public_key);
    let published = desired_peers(input.peers, exit.as_ref());
    let desired = pinned_peers(&published, &with_paths(&published, input.paths));
    let mut b = Builder {
        os: input.os,
        dry_run: input.dry_run,
        steps: Vec::new(),
        rec: config.applied.clone(),
        summary: SyncSummary::default(),
        awaiting_name: None,
    };
    b.tunnel_routes(&real_name, assignment, tunnel, &desired, facts, table);
    b.steps
}

/// `published` with each peer's chosen path ([`super::path`]) applied: its endpoint (the
/// relay's, the published one, or None to keep one WireGuard roamed to) and keepalive.
fn with_paths(
    published: &[PeerSpec],
    paths: &std::collections::HashMap<crate::keys::PublicKey, super::path::Choice>,
) -> Vec<PeerSpec> {
    let mut desired = published.to_vec();
    for peer in &mut desired {
        if let Some(choice) = paths.get(&peer.public_key) {
            peer.endpoint = choice.endpoint.map(crate::types::Endpoint);
            peer.persistent_keepalive = Some(choice.keepalive);
        }
    }
    desired
}

/// The peers whose endpoints a full tunnel keeps outside (pins): every peer at its published
/// endpoint, as without a relay (a probe, or a path WireGuard roamed to, sends there), and
/// also at its chosen endpoint where that differs (the relay), so the sync and the route
/// check between syncs pin the same set.
fn pinned_peers(published: &[PeerSpec], desired: &[PeerSpec]) -> Vec<PeerSpec> {
    let mut out = published.to_vec();
    out.extend(
        desired
            .iter()
            .filter(|d| {
                d.endpoint.is_some()
                    && !published
                        .iter()
                        .any(|p| p.public_key == d.public_key && p.endpoint == d.endpoint)
            })
            .cloned(),
    );
    out
}

struct Builder {
    os: TargetOs,
    dry_run: bool,
    steps: Vec<Step>,
    /// What is recorded as applied at this point of the sequence (never changed in a dry run).
    rec: Option<Applied>,
    summary: SyncSummary,
    awaiting_name: Option<InterfaceName>,
}

impl Builder {
    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Records `new` as applied (never in a dry run), saved once the steps so far ran.
    fn set_record(&mut self, new: Option<Applied>) {
        if !self.dry_run {
            self.rec = new.clone();
            self.push(Step {
                record: Some(new),
                ..Step::run(Plan::default())
            });
        }
    }

    /// Changes the existing record (if any; never in a dry run).
    fn record(&mut self, change: impl FnOnce(&mut Applied)) {
        if let Some(mut rec) = self.rec.clone().filter(|_| !self.dry_run) {
            change(&mut rec);
            self.set_record(Some(rec));
        }
    }

    fn build(&mut self, input: &PlanInput<'_>, facts: &HostFacts) -> Result<(), AgentError> {
        let config = input.config;
        let os = self.os;
        check_interface_name(os, config)?;
        let assignment = config
            .assignment
            .clone()
            .ok_or_else(|| AgentError::Usage("not registered yet".into()))?;
        let spec = interface_spec(config, &assignment);
        let exit = chosen_exit(config, input.peers)?;
        let published = desired_peers(input.peers, exit.map(|p| &p.public_key));
        let desired = with_paths(&published, input.paths);
        self.summary = SyncSummary {
            peer_id: assignment.peer_id.to_string(),
            address: assignment.assigned_ip.to_string(),
            list_unchanged: input.list_unchanged,
            ..SyncSummary::default()
        };

        let reusable = facts
            .dump
            .as_ref()
            .filter(|d| d.interface.public_key == Some(spec.private_key.public_key()))
            .filter(|d| d.interface.listen_port == spec.listen_port)
            .filter(|_| recorded(config, os).is_some());
        // A full tunnel that the undo of a rebuild removes (its routes still show in the
        // table, which was read before any step ran).
        let mut gone_tunnel: Option<AppliedTunnel> = None;
        let (real_name, actual_peers) = match (&facts.created_name, reusable) {
            (Some(real), _) => {
                // Second pass on macOS: the interface was just created under this name.
                self.configure(&spec, &assignment, real);
                (real.clone(), Vec::new())
            }
            (None, Some(dump)) => (interface_to_read(config, os), dump.peers.clone()),
            (None, None) => {
                // Missing, stale (another key, port or address) or never applied: start clean.
                gone_tunnel = self
                    .rec
                    .as_ref()
                    .filter(|a| a.os == os.as_str())
                    .and_then(|a| a.full_tunnel.clone());
                for mut step in undo(os, config)? {
                    if step.record.is_some() {
                        if self.dry_run {
                            step.record = None;
                        } else {
                            self.rec = None;
                        }
                    }
                    self.push(step);
                }
                self.push(Step::run(os::destroy(
                    os,
                    &spec.name,
                    &spec.name,
                    assignment.network_cidr,
                )));
                if os == TargetOs::Windows {
                    self.push(Step::check(HostCheck::ServiceGone(spec.name.clone())));
                }
                self.push(Step::run(os::create(os, &spec.name)));
                if os == TargetOs::Windows {
                    // `create` made the folder protected, or left an existing one as it is.
                    self.push(Step::check(HostCheck::ConfigDirProtected));
                }
                let real = match os {
                    TargetOs::Macos if self.dry_run => "utunN".parse().expect("literal"),
                    TargetOs::Macos => {
                        self.awaiting_name = Some(spec.name.clone());
                        return Ok(());
                    }
                    _ => spec.name.clone(),
                };
                self.configure(&spec, &assignment, &real);
                (real, Vec::new())
            }
        };
        self.summary.interface = real_name.to_string();

        // The tunnel goes before peers change when it is being removed (its `off` rewrites
        // the old exit peer, which must still exist), and after when it is being added.
        let have_tunnel = self.rec.as_ref().and_then(|a| a.full_tunnel.clone());
        let want_tunnel = wanted_tunnel(
            config,
            os,
            exit,
            &desired,
            have_tunnel.as_ref(),
            (facts.server_ip, facts.gateway),
        );
        let tunnel_changes = want_tunnel != have_tunnel;
        if tunnel_changes {
            if let Some(old) = &have_tunnel {
                self.push(
                    Step::run(tunnel_off(os, &real_name, old, false)).note(format!(
                        "stopped routing internet traffic through exit node {}",
                        old.exit_public_key
                    )),
                );
            }
        }

        let mut changes = reconcile::diff(&desired, &actual_peers);
        let known: BTreeSet<_> = actual_peers.iter().map(|p| p.public_key).collect();
        if input.live {
            let mine = spec.private_key.public_key();
            let stuck: Vec<_> = stuck_deferred(&actual_peers, &mine)
                .into_iter()
                .filter(|k| changes.upsert.iter().any(|p| p.public_key == *k))
                .collect();
            if !stuck.is_empty() {
                let reset = crate::os::PeerChanges {
                    upsert: Vec::new(),
                    remove: stuck,
                };
                self.push(Step::run(os::apply_peers(os, &real_name, &reset)));
            }
            let mut deferred = defer_crossing_handshakes(&mut changes, &known, &mine);
            if input.hold_silent {
                let silent = silent_deferred(&actual_peers, &mine);
                for spec in &mut changes.upsert {
                    if silent.contains(&spec.public_key) {
                        spec.persistent_keepalive = None;
                        deferred = true;
                    }
                }
            }
            self.summary.keepalive_deferred = deferred;
        }
        for spec in &changes.upsert {
            let list = if known.contains(&spec.public_key) {
                &mut self.summary.updated
            } else {
                &mut self.summary.added
            };
            list.push(spec.public_key.to_base64());
        }
        self.summary.removed = changes.remove.iter().map(|k| k.to_base64()).collect();
        self.push(Step::run(os::apply_peers(os, &real_name, &changes)));

        let mut want_tunnel = want_tunnel;
        if tunnel_changes {
            if let Some(new) = want_tunnel.as_mut() {
                let plan = if host_routes::uses_host_routes(os) {
                    // Only the WireGuard half here: the routes follow, planned from the
                    // observed routing table like on every sync.
                    new.pinned = None;
                    os::pins::exit_peer_plan(os, &real_name, &tunnel_peer(new, true), true)
                } else {
                    os::full_tunnel_on(
                        os,
                        &real_name,
                        &tunnel_peer(new, true),
                        &new.keep_outside,
                        new.gateway,
                    )
                };
                self.push(Step::run(plan).note(format!(
                    "routing internet traffic through exit node {}",
                    new.exit_public_key
                )));
            }
            self.record(|a| a.full_tunnel = want_tunnel.clone());
        }
        if let (Some(tunnel), Some(table)) = (&want_tunnel, &facts.routes) {
            // The table was read before the steps: without what they remove first.
            let removed = match (&have_tunnel, &gone_tunnel) {
                (Some(old), _) if tunnel_changes => Some(old),
                (_, gone) => gone.as_ref(),
            };
            let table = match removed {
                Some(old) => host_routes::without_tunnel(os, &real_name, &assignment, old, table),
                None => table.clone(),
            };
            let pinned = pinned_peers(&published, &desired);
            self.tunnel_routes(&real_name, &assignment, tunnel, &pinned, facts, &table);
        } else if let Some(tunnel) = want_tunnel.as_ref().filter(|_| tunnel_changes) {
            if host_routes::uses_host_routes(os) {
                // No routing table to read (planning for another OS): the halves, and no
                // pins, which depend on that machine's table and are planned there.
                let routes = host_routes::tunnel(
                    os,
                    &real_name,
                    assignment.assigned_ip,
                    assignment.network_cidr,
                    host_routes::ipv6_allowed(facts.server_ip, tunnel),
                );
                let (plan, _) = routes.reconcile(&RouteTable::default(), &[], None);
                self.push(Step::run(plan));
            }
        }

        self.nat(config, &real_name, assignment.network_cidr, facts)?;

        let want_routes = extra_routes(
            &desired,
            assignment.network_cidr,
            crate::proto::mesh6::prefix(&assignment.server_public_key),
        );
        let mut have_routes: BTreeSet<IpNet> = self
            .rec
            .as_ref()
            .map(|a| a.routes.iter().copied().collect())
            .unwrap_or_default();
        if let Some(table) = &facts.routes {
            let recorded: Vec<IpNet> = have_routes.iter().copied().collect();
            if host_routes::routes_missing(os, &real_name, &assignment, table, &recorded) {
                // A Windows reboot forgets them while the service comes back: re-add all
                // (adding is idempotent).
                have_routes.clear();
            }
        }
        let add: Vec<IpNet> = want_routes.difference(&have_routes).copied().collect();
        let remove: Vec<IpNet> = have_routes.difference(&want_routes).copied().collect();
        if !add.is_empty() || !remove.is_empty() {
            self.push(Step::run(os::routes(os, &real_name, &add, &remove)));
            self.record(|a| a.routes = want_routes.into_iter().collect());
        }
        self.summary.peers = desired.len();
        Ok(())
    }

    /// macOS and Windows: the step that makes the tunnel's halves and pins match the
    /// observed table, recording what is pinned when it changed.
    fn tunnel_routes(
        &mut self,
        real_name: &InterfaceName,
        assignment: &Assignment,
        tunnel: &AppliedTunnel,
        desired: &[PeerSpec],
        facts: &HostFacts,
        table: &RouteTable,
    ) {
        let mut peers = desired.to_vec();
        if !peers.iter().any(|p| p.public_key == tunnel.exit_public_key) {
            peers.push(tunnel_peer(tunnel, false));
        }
        let (plan, pinned) = host_routes::tunnel_routes(
            self.os,
            real_name,
            assignment,
            tunnel,
            &peers,
            facts.server_ip,
            table,
        );
        let note = (!plan.is_empty()).then(|| {
            format!(
                "full tunnel routes: {} pin(s) via {:?}",
                pinned.pins.len(),
                pinned.uplink
            )
        });
        self.push(Step {
            note,
            ..Step::run(plan)
        });
        if tunnel.pinned.as_ref() != Some(&pinned) {
            self.record(|a| {
                if let Some(t) = a.full_tunnel.as_mut() {
                    t.pinned = Some(pinned);
                }
            });
        }
    }

    /// Configures a just-created interface and records it as the fresh applied state.
    fn configure(&mut self, spec: &InterfaceSpec, assignment: &Assignment, real: &InterfaceName) {
        self.push(
            Step::run(os::configure(self.os, spec, real, &[])).note(format!(
                "created interface {real} with address {}",
                assignment.assigned_ip
            )),
        );
        self.summary.created_interface = true;
        self.set_record(Some(Applied {
            os: self.os.as_str().to_owned(),
            interface: real.to_string(),
            address: Some(assignment.assigned_ip),
            ..Applied::default()
        }));
    }

    /// Sets up, changes or removes NAT so this host serves as an exit node when asked to.
    fn nat(
        &mut self,
        config: &ClientConfig,
        real_name: &InterfaceName,
        mesh: Ipv4Net,
        facts: &HostFacts,
    ) -> Result<(), AgentError> {
        let have = self.rec.as_ref().and_then(|a| a.nat.clone());
        let want = if config.exit_node {
            let out_iface = facts
                .default_dev
                .clone()
                .or_else(|| have.as_ref().map(|n| n.out_iface.clone()))
                .ok_or_else(|| {
                    AgentError::Usage(
                        "an exit node needs a default route to send traffic out of; none found"
                            .into(),
                    )
                })?;
            let firewall = if facts.nft { "nftables" } else { "iptables" };
            Some(AppliedNat {
                out_iface,
                firewall: firewall.to_owned(),
                out_iface6: facts.ipv6_default_dev.clone(),
            })
        } else {
            None
        };
        if want == have {
            return Ok(());
        }
        if let Some(old) = &have {
            let plan = nat_plan(self.os, config, real_name, mesh, old, false)?;
            self.push(Step::run(plan));
        }
        if let Some(new) = &want {
            let plan = nat_plan(self.os, config, real_name, mesh, new, true)?;
            self.push(Step::run(plan).note(format!(
                "serving as an exit node: NAT out of {} with {}",
                new.out_iface, new.firewall
            )));
        }
        self.record(|a| a.nat = want);
        Ok(())
    }
}

fn tunnel_off(os: TargetOs, real_name: &InterfaceName, t: &AppliedTunnel, tolerant: bool) -> Plan {
    let mut plan = if host_routes::uses_host_routes(os) {
        host_routes::tunnel_off(os, real_name, t, &tunnel_peer(t, false))
    } else {
        os::full_tunnel_off(
            os,
            real_name,
            &tunnel_peer(t, false),
            &t.keep_outside,
            t.gateway,
        )
    };
    if tolerant {
        for cmd in &mut plan.commands {
            cmd.allow_failure = true;
        }
    }
    plan
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

fn nat_plan(
    os: TargetOs,
    config: &ClientConfig,
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
        os::exit_node_nat_on(os, real_name, &out, mesh, firewall)
    } else {
        os::exit_node_nat_off(os, real_name, &out, mesh, firewall)
    }
    .map_err(unsupported)?;
    // The IPv6 mesh too, when this exit node has IPv6 to offer.
    let mesh6 = config
        .assignment
        .as_ref()
        .map(|a| crate::proto::mesh6::prefix(&a.server_public_key));
    if let (Some(out6), Some(mesh6)) = (nat.out_iface6.as_deref(), mesh6) {
        let out6: InterfaceName = out6
            .parse()
            .map_err(|e| AgentError::Usage(format!("IPv6 default route interface: {e}")))?;
        plan.extend(
            if on {
                os::exit_node_nat6_on(os, real_name, &out6, mesh6, firewall)
            } else {
                os::exit_node_nat6_off(os, real_name, firewall)
            }
            .map_err(unsupported)?,
        );
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn only_the_smaller_key_initiates_at_once_when_two_nodes_meet() {
        let key = |b: u8| crate::keys::PublicKey::from_bytes([b; 32]);
        let spec = |b: u8| crate::os::PeerSpec {
            public_key: key(b),
            endpoint: Some("198.18.0.9:51820".parse().unwrap()),
            allowed_ips: vec![],
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
        };
        let mut changes = crate::os::PeerChanges {
            upsert: vec![spec(1), spec(9), spec(7)],
            remove: vec![],
        };
        // 7 is already configured (an update), 1 sorts below us, 9 above.
        let known: BTreeSet<_> = [key(7)].into_iter().collect();
        assert!(defer_crossing_handshakes(&mut changes, &known, &key(5)));
        let keepalives: Vec<_> = changes
            .upsert
            .iter()
            .map(|p| p.persistent_keepalive)
            .collect();
        assert_eq!(
            keepalives,
            [Some(PERSISTENT_KEEPALIVE), None, Some(PERSISTENT_KEEPALIVE)]
        );
        // The next pass sees 9 configured and turns its keepalive on.
        let mut next = crate::os::PeerChanges {
            upsert: vec![spec(9)],
            remove: vec![],
        };
        let known: BTreeSet<_> = [key(9)].into_iter().collect();
        assert!(!defer_crossing_handshakes(&mut next, &known, &key(5)));
        assert_eq!(
            next.upsert[0].persistent_keepalive,
            Some(PERSISTENT_KEEPALIVE)
        );
    }
    use crate::os::wgdump::{Dump, DumpInterface};
    use crate::types::PeerId;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer_spec(allowed: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: PrivateKey::generate().public_key(),
            endpoint: None,
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    fn info(name: &str, last: u8, exit: bool) -> PeerInfo {
        let key = PrivateKey::generate().public_key();
        let mut allowed_ips = vec![format!("10.100.0.{last}/32").parse().unwrap()];
        if exit {
            allowed_ips.push("0.0.0.0/0".parse().unwrap());
        }
        PeerInfo {
            id: PeerId::for_key(&key),
            public_key: key,
            virtual_ip: format!("10.100.0.{last}").parse().unwrap(),
            endpoint: Some(format!("198.18.0.{last}:51820").parse().unwrap()),
            hostname: name.parse().unwrap(),
            dns_name: None,
            os: "linux".parse().unwrap(),
            allowed_ips,
            exit_node: exit,
            online: true,
            last_heartbeat: String::new(),
        }
    }

    fn config() -> ClientConfig {
        let mut config = ClientConfig::generate("wg0".parse().unwrap());
        config.assignment = Some(Assignment {
            peer_id: PeerId::for_key(&config.private_key.public_key()),
            assigned_ip: "10.100.0.2".parse().unwrap(),
            network_cidr: "10.100.0.0/16".parse().unwrap(),
            server_public_key: PrivateKey::generate().public_key(),
            dns_name: None,
        });
        config
    }

    /// The interface as `wg show dump` shows it after this config's interface came up.
    fn up(config: &ClientConfig) -> HostFacts {
        HostFacts {
            dump: Some(Dump {
                interface: DumpInterface {
                    private_key: Some(config.private_key.clone()),
                    public_key: Some(config.private_key.public_key()),
                    listen_port: config.listen_port,
                    fwmark: None,
                },
                peers: Vec::new(),
            }),
            ..HostFacts::default()
        }
    }

    fn applied(config: &ClientConfig) -> Applied {
        Applied {
            os: "linux".into(),
            interface: "wg0".into(),
            address: Some(config.assignment.as_ref().unwrap().assigned_ip),
            ..Applied::default()
        }
    }

    fn decide(
        os: TargetOs,
        config: &ClientConfig,
        peers: &[PeerInfo],
        facts: &HostFacts,
    ) -> SyncPlan {
        let input = PlanInput {
            os,
            config,
            peers,
            list_unchanged: false,
            dry_run: false,
            paths: &Default::default(),
            live: false,
            hold_silent: false,
        };
        plan(&input, facts)
    }

    /// Every command of every step, one rendered line each (tolerated failures included).
    fn lines(p: &SyncPlan) -> Vec<String> {
        p.steps
            .iter()
            .flat_map(|s| s.plan.commands.iter().map(|c| c.render()))
            .collect()
    }

    #[test]
    fn a_missing_interface_is_created_configured_and_recorded() {
        let config = config();
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &HostFacts::default());
        assert!(p.failure.is_none() && p.awaiting_name.is_none());
        let rendered = lines(&p);
        assert!(
            rendered[0].starts_with("ip link delete dev wg0"),
            "{rendered:#?}"
        );
        assert!(rendered[1].starts_with("ip link add dev wg0 type wireguard"));
        assert!(rendered
            .iter()
            .any(|l| l == "ip -4 address add 10.100.0.2/32 dev wg0"));
        let last = rendered.last().unwrap();
        assert!(last.starts_with(&format!("wg set wg0 peer {}", peers[0].public_key)));
        assert!(p.summary.created_interface);
        assert_eq!(p.summary.added, vec![peers[0].public_key.to_base64()]);
        assert_eq!(p.applied, Some(applied(&config)));
        // The fresh record is saved right after the interface is configured, before peers.
        let saved = p.steps.iter().position(|s| s.record.is_some()).unwrap();
        let peers_step = p.steps.iter().rposition(|s| !s.plan.is_empty()).unwrap();
        assert!(saved < peers_step);
    }

    #[test]
    fn a_matching_interface_gets_only_the_peer_diff() {
        let mut config = config();
        config.applied = Some(applied(&config));
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &up(&config));
        let rendered = lines(&p);
        assert_eq!(rendered.len(), 1, "{rendered:#?}");
        assert!(rendered[0].starts_with("wg set wg0 peer"));
        assert!(!p.summary.created_interface);
        assert_eq!(p.applied, config.applied);
        assert!(p.steps.iter().all(|s| s.record.is_none()));
    }

    #[test]
    fn an_interface_with_another_key_is_rebuilt_after_undoing_what_was_recorded() {
        let mut config = config();
        let mut old = applied(&config);
        old.routes = vec!["192.0.2.0/24".parse().unwrap()];
        config.applied = Some(old);
        let mut facts = up(&config);
        facts.dump.as_mut().unwrap().interface.public_key =
            Some(PrivateKey::generate().public_key());
        let p = decide(TargetOs::Linux, &config, &[], &facts);
        let rendered = lines(&p);
        assert!(
            rendered[0].starts_with("ip -4 route del 192.0.2.0/24 dev wg0"),
            "{rendered:#?}"
        );
        assert!(rendered
            .iter()
            .any(|l| l.starts_with("ip link add dev wg0")));
        // Forgotten first (the old interface is gone), then the fresh one recorded.
        let records: Vec<_> = p.steps.iter().filter_map(|s| s.record.clone()).collect();
        assert_eq!(records, vec![None, Some(applied(&config))]);
        assert!(p.applied.unwrap().routes.is_empty());
    }

    #[test]
    fn a_chosen_exit_node_gets_the_full_tunnel_after_the_peers_and_it_is_recorded() {
        let mut config = config();
        config.applied = Some(Applied {
            os: "macos".into(),
            ..applied(&config)
        });
        config.use_exit_node = Some("exit".into());
        let exit = info("exit", 7, true);
        // macOS pins through the default route's gateway as the routing table shows it.
        let table = crate::os::observe_macos::parse_netstat(
            "default            198.18.0.254       UGScg                 en0\n",
        );
        let facts = HostFacts {
            routes: Some(table),
            server_ip: Some("198.18.0.1".parse().unwrap()),
            ..up(&config)
        };
        let p = decide(
            TargetOs::Macos,
            &config,
            std::slice::from_ref(&exit),
            &facts,
        );
        assert!(p.failure.is_none());
        let rendered = lines(&p);
        let tunnel = p.applied.unwrap().full_tunnel.unwrap();
        assert_eq!(tunnel.exit_public_key, exit.public_key);
        let pinned = tunnel.pinned.clone().unwrap();
        assert_eq!(
            pinned.uplink,
            crate::os::route_table::Uplink::Gateway("198.18.0.254".parse().unwrap())
        );
        assert_eq!(
            pinned.pins,
            vec![
                "198.18.0.1".parse::<Ipv4Addr>().unwrap(),
                "198.18.0.7".parse().unwrap()
            ]
        );
        assert_eq!(
            tunnel.keep_outside,
            vec![
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "198.18.0.7".parse().unwrap()
            ]
        );
        let peer = rendered
            .iter()
            .position(|l| l.contains("allowed-ips 10.100.0.7/32,0.0.0.0/0"));
        let half = rendered.iter().position(|l| l.contains("0.0.0.0/1"));
        assert!(peer.unwrap() < half.unwrap(), "{rendered:#?}");

        // Choosing none: the tunnel comes down before the peer loses its default route.
        let mut config = config.clone();
        config.applied.as_mut().unwrap().full_tunnel = Some(tunnel);
        config.use_exit_node = None;
        let p = decide(TargetOs::Macos, &config, &[exit], &facts);
        let rendered = lines(&p);
        assert!(rendered[0].contains("0.0.0.0/1"), "{rendered:#?}");
        assert!(p.applied.unwrap().full_tunnel.is_none());
    }

    #[test]
    fn windows_checks_the_old_service_and_the_folder_acl_before_the_key_is_written() {
        let config = config();
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        // Each step as one line: its commands, its file writes, or the check it makes.
        let order: Vec<String> = p
            .steps
            .iter()
            .flat_map(|s| {
                let mut out: Vec<String> = s.plan.files.iter().map(|f| f.render()).collect();
                out.extend(s.plan.commands.iter().map(|c| c.render_argv()));
                out.extend(s.check.iter().map(|c| format!("check {c:?}")));
                out
            })
            .collect();
        let at = |needle: &str| {
            order
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {order:#?}"))
        };
        let steps = [
            at("/uninstalltunnelservice"),
            at("check ServiceGone"),
            at("CreateDirectory"),
            at("check ConfigDirProtected"),
            at("# write"),
            at("/installtunnelservice"),
        ];
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{order:#?}");
    }

    #[test]
    fn windows_refuses_reserved_names_before_any_step() {
        let mut config = config();
        config.interface = "nul.x".parse().unwrap();
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        assert!(p.steps.is_empty());
        let failure = p.failure.unwrap().to_string();
        assert!(failure.contains("reserved device name"), "{failure}");
        // The same name is fine where it is not reserved.
        let p = decide(TargetOs::Linux, &config, &[], &HostFacts::default());
        assert!(p.failure.is_none());
    }

    #[test]
    fn without_a_routing_table_windows_and_macos_plan_the_halves_and_no_pin() {
        // Planning for another OS: no reader, no table; pins depend on that machine's table.
        for os in [TargetOs::Windows, TargetOs::Macos] {
            let mut config = config();
            config.applied = Some(Applied {
                os: os.as_str().into(),
                ..applied(&config)
            });
            config.use_exit_node = Some("exit".into());
            let exit = info("exit", 7, true);
            let p = decide(os, &config, std::slice::from_ref(&exit), &up(&config));
            let rendered = lines(&p).join("\n");
            assert!(
                rendered.contains("0.0.0.0/1") && rendered.contains("128.0.0.0/1"),
                "{rendered}"
            );
            assert!(
                !rendered.contains("MASK") && !rendered.contains("-gateway"),
                "{rendered}"
            );
            assert!(!rendered.contains("blackhole"), "{rendered}");
        }
    }

    #[test]
    fn an_exit_node_without_a_default_route_fails_after_the_peers_are_applied() {
        let mut config = config();
        config.applied = Some(applied(&config));
        config.exit_node = true;
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &up(&config));
        let failure = p.failure.as_ref().unwrap().to_string();
        assert!(failure.contains("needs a default route"), "{failure}");
        assert!(lines(&p)[0].starts_with("wg set wg0 peer"));

        let facts = HostFacts {
            default_dev: Some("eth0".into()),
            nft: true,
            ..up(&config)
        };
        let p = decide(TargetOs::Linux, &config, &peers, &facts);
        assert!(p.failure.is_none());
        assert!(
            lines(&p).iter().any(|l| l.starts_with("nft ")),
            "{:#?}",
            lines(&p)
        );
        let nat = p.applied.unwrap().nat.unwrap();
        assert_eq!(
            (nat.out_iface.as_str(), nat.firewall.as_str()),
            ("eth0", "nftables")
        );
    }

    #[test]
    fn macos_plans_the_rest_once_wireguard_go_named_the_interface() {
        let config = config();
        let p = decide(TargetOs::Macos, &config, &[], &HostFacts::default());
        assert_eq!(p.awaiting_name, Some("wg0".parse().unwrap()));
        assert!(lines(&p).last().unwrap().contains("wireguard-go utun"));
        let facts = HostFacts {
            created_name: Some("utun7".parse().unwrap()),
            ..HostFacts::default()
        };
        let p = decide(TargetOs::Macos, &config, &[], &facts);
        assert!(p.awaiting_name.is_none());
        assert!(lines(&p).iter().all(|l| !l.contains("wireguard-go")));
        assert!(lines(&p).iter().any(|l| l.contains("utun7")));
        assert_eq!(p.applied.unwrap().interface, "utun7");
        assert_eq!(p.summary.interface, "utun7");
    }

    #[test]
    fn a_dry_run_records_nothing() {
        let config = config();
        let input = PlanInput {
            os: TargetOs::Macos,
            config: &config,
            peers: &[],
            list_unchanged: true,
            dry_run: true,
            paths: &Default::default(),
            live: false,
            hold_silent: false,
        };
        let p = plan(&input, &HostFacts::default());
        assert!(p.steps.iter().all(|s| s.record.is_none()));
        assert_eq!(p.applied, None);
        assert_eq!(p.summary.interface, "utunN");
        assert!(p.summary.list_unchanged);
    }

    #[test]
    fn undo_removes_what_is_recorded_then_forgets_it() {
        let mut config = config();
        assert!(undo(TargetOs::Linux, &config).unwrap().is_empty());
        config.applied = Some(applied(&config));
        let steps = undo(TargetOs::Linux, &config).unwrap();
        assert_eq!(steps.last().unwrap().record, Some(None));
        assert!(undo(TargetOs::Windows, &config).unwrap().is_empty());
    }

    #[test]
    fn extra_routes_skip_the_mesh_and_never_include_a_default_route() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let mesh6: ipnet::Ipv6Net = "fd12:3456:789a::/96".parse().unwrap();
        let desired = [
            peer_spec(&["10.100.0.2/32", "fd12:3456:789a::a64:2/128", "192.0.2.0/24"]),
            peer_spec(&["10.100.0.3/32", "0.0.0.0/0", "::/0"]),
        ];
        let routes: Vec<String> = extra_routes(&desired, mesh, mesh6)
            .iter()
            .map(|n| n.to_string())
            .collect();
        // A default route here would loop WireGuard's own packets into the tunnel.
        assert_eq!(routes, vec!["192.0.2.0/24"]);
    }

    #[test]
    fn only_the_chosen_exit_node_gets_a_default_route() {
        let (a, b) = (info("a", 8, true), info("b", 9, true));
        let peers = [a.clone(), b.clone()];
        let none = desired_peers(&peers, None);
        assert!(none
            .iter()
            .all(|p| p.allowed_ips.iter().all(|n| n.prefix_len() != 0)));
        let chosen = desired_peers(&peers, Some(&b.public_key));
        assert_eq!(chosen[0].allowed_ips.len(), 1);
        assert_eq!(chosen[1].allowed_ips.len(), 2);
    }
}
