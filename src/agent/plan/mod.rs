//! The agent's decision, as a pure function: from the configuration, the server's peer list
//! and the [`HostFacts`] read beforehand, the ordered plans that make the host match, and
//! what is recorded as applied after each of them. Nothing here reads the host or runs a
//! command, so every branch (rebuild, exit node, full tunnel, routes) is tested on data.
//!
//! The shape follows tailscale's `Router.Set(cfg)` and wg-quick's `cmd_up`: read the host
//! once, then one straight sequence: the interface (reused, or rebuilt from scratch), the
//! full tunnel's removal, the peer diff, the full tunnel's addition, exit-node NAT, routes.

use super::config::{Applied, AppliedTunnel, Assignment, ClientConfig};
use super::desired::{chosen_exit, desired_peers, extra_routes, interface_spec, wanted_tunnel};
use super::error::AgentError;
use super::host::HostFacts;
use super::host_routes;
use crate::agent::reconcile;
use crate::os::route_table::RouteTable;
use crate::os::{self, InterfaceSpec, Plan, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use ipnet::IpNet;
use std::collections::BTreeSet;

mod route_check;
mod steps;
mod tunnel;

pub use super::stagger::{defer_crossing_handshakes, silent_deferred, stuck_deferred};
pub use route_check::route_check;
use route_check::{pinned_peers, with_paths};
pub use steps::{HostCheck, Step, SyncPlan, SyncSummary};
use tunnel::{nat_plan, tunnel_off, tunnel_peer};

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
/// A peer as a log line names it: `hostname (mesh address)`, or its key when the list does
/// not know it (any more).
fn peer_name(peers: &[PeerInfo], key: &crate::keys::PublicKey) -> String {
    match peers.iter().find(|p| &p.public_key == key) {
        Some(p) => format!("{} ({})", p.hostname, p.virtual_ip),
        None => key.to_base64(),
    }
}

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

    /// Peers whose relay moved to another replica's ([`super::path::Choice::restart`]) are
    /// removed and added back: that drops the WireGuard session, so the next packet starts a
    /// handshake through the new relay at once instead of after 15 s of unanswered data the
    /// new relay cannot route (it never saw the old session's indexes).
    fn restart_moved_relays(
        &mut self,
        os: TargetOs,
        real_name: &InterfaceName,
        input: &PlanInput<'_>,
        known: &BTreeSet<crate::keys::PublicKey>,
        desired: &[os::PeerSpec],
        changes: &mut os::PeerChanges,
    ) {
        let restart: Vec<_> = desired
            .iter()
            .filter(|p| known.contains(&p.public_key))
            .filter(|p| input.paths.get(&p.public_key).is_some_and(|c| c.restart))
            .collect();
        if restart.is_empty() {
            return;
        }
        let reset = os::PeerChanges {
            upsert: Vec::new(),
            remove: restart.iter().map(|p| p.public_key).collect(),
        };
        self.push(Step::run(os::apply_peers(os, real_name, &reset)));
        for spec in restart {
            if !changes
                .upsert
                .iter()
                .any(|p| p.public_key == spec.public_key)
            {
                changes.upsert.push(spec.clone());
            }
        }
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
                        peer_name(input.peers, &old.exit_public_key)
                    )),
                );
            }
        }

        let mut changes = reconcile::diff(&desired, &actual_peers);
        let known: BTreeSet<_> = actual_peers.iter().map(|p| p.public_key).collect();
        self.restart_moved_relays(os, &real_name, input, &known, &desired, &mut changes);
        if input.live {
            let mine = spec.private_key.public_key();
            let stuck: Vec<_> = stuck_deferred(&actual_peers, &mine)
                .into_iter()
                .filter(|k| changes.upsert.iter().any(|p| p.public_key == *k))
                // Removed once already when their relay moved.
                .filter(|k| !input.paths.get(k).is_some_and(|c| c.restart))
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
                    peer_name(input.peers, &new.exit_public_key)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::os::wgdump::{Dump, DumpInterface};
    use crate::os::PeerSpec;
    use crate::types::PeerId;
    use ipnet::Ipv4Net;
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
    fn a_peer_whose_relay_moved_is_removed_then_added_back_at_the_new_relay() {
        let mut config = config();
        config.applied = Some(applied(&config));
        let (moved, steady) = (info("moved", 7, false), info("steady", 8, false));
        let old_relay: std::net::SocketAddr = "198.18.0.1:3478".parse().unwrap();
        let new_relay: std::net::SocketAddr = "198.18.0.2:3478".parse().unwrap();
        let mut facts = up(&config);
        for p in [&moved, &steady] {
            facts
                .dump
                .as_mut()
                .unwrap()
                .peers
                .push(crate::os::wgdump::DumpPeer {
                    public_key: p.public_key,
                    has_preshared_key: false,
                    endpoint: Some(old_relay),
                    allowed_ips: p.allowed_ips.clone(),
                    latest_handshake: None,
                    transfer_rx: 0,
                    transfer_tx: 0,
                    persistent_keepalive: Some(25),
                });
        }
        let choice = |endpoint, restart| crate::agent::path::Choice {
            endpoint: Some(endpoint),
            keepalive: 25,
            mode: crate::agent::path::Mode::Relay,
            restart,
        };
        let paths = std::collections::HashMap::from([
            (moved.public_key, choice(new_relay, true)),
            (steady.public_key, choice(old_relay, false)),
        ]);
        for live in [false, true] {
            let input = PlanInput {
                os: TargetOs::Linux,
                config: &config,
                peers: &[moved.clone(), steady.clone()],
                list_unchanged: true,
                dry_run: false,
                paths: &paths,
                live,
                hold_silent: false,
            };
            let rendered = lines(&plan(&input, &facts));
            let key = moved.public_key.to_base64();
            assert_eq!(
                rendered,
                vec![
                    format!("wg set wg0 peer {key} remove"),
                    format!(
                        "wg set wg0 peer {key} endpoint {new_relay} allowed-ips 10.100.0.7/32 \
                         persistent-keepalive 25"
                    ),
                ],
                "live: {live}"
            );
        }
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
