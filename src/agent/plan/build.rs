//! The sync's decision as a straight sequence of named steps (wg-quick's `cmd_up` shape):
//! what is wanted, the interface (reused or rebuilt), the Windows kill-switch file, the
//! full tunnel's removal, the peer diff, the full tunnel's addition and its routes, exit-node
//! NAT, subnet routes. Each step is a method of [`Builder`] that pushes its plans in order.

use super::builder::{check_interface_name, interface_to_read, recorded, Builder, PlanInput};
use super::route_check::{pinned_peers, with_paths};
use super::steps::{HostCheck, Step, SyncSummary};
use super::tunnel::{tunnel_off, tunnel_peer};
use super::undo::undo;
use crate::agent::decide::desired::{
    chosen_exit, desired_peers, extra_routes, interface_spec, wanted_tunnel,
};
use crate::agent::decide::reconcile;
use crate::agent::decide::stagger::{defer_crossing_handshakes, silent_deferred, stuck_deferred};
use crate::agent::error::AgentError;
use crate::agent::observe::host::HostFacts;
use crate::agent::observe::host_routes;
use crate::agent::state::config::{Applied, AppliedTunnel, Assignment, ExitFallback};
use crate::os::route_table::RouteTable;
use crate::os::wgdump::DumpPeer;
use crate::os::{self, InterfaceSpec, PeerSpec, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use ipnet::IpNet;
use std::collections::BTreeSet;

/// A peer as a log line names it: `hostname (mesh address)`, or its key when the list does
/// not know it (any more).
fn peer_name(peers: &[PeerInfo], key: &crate::keys::PublicKey) -> String {
    match peers.iter().find(|p| &p.public_key == key) {
        Some(p) => format!("{} ({})", p.hostname, p.virtual_ip),
        None => key.to_base64(),
    }
}

/// What one sync wants, worked out once from the configuration and the server's list.
pub(super) struct Wanted<'a> {
    pub(super) spec: InterfaceSpec,
    pub(super) assignment: Assignment,
    pub(super) exit: Option<&'a PeerInfo>,
    /// Every peer as the server published it.
    pub(super) published: Vec<PeerSpec>,
    /// The same with each peer's chosen path applied.
    pub(super) desired: Vec<PeerSpec>,
    /// The subnet routes this node uses, each through one router.
    pub(super) accepted: Vec<crate::agent::decide::subnet_routes::AcceptedRoute>,
    /// Prefixes in routers' AllowedIPs for this gateway's devices only: no route of ours.
    pub(super) device_only: BTreeSet<IpNet>,
}

/// The interface the rest of the sync works on.
struct Interface {
    real_name: InterfaceName,
    /// Its peers as `wg show dump` showed them (none when just created).
    actual_peers: Vec<DumpPeer>,
    /// A full tunnel the undo of a rebuild removed (its routes still show in the table,
    /// which was read before any step ran).
    gone_tunnel: Option<AppliedTunnel>,
}

/// Whether `have` and `want` are different full tunnels, so the old one must be taken down
/// and the new one set up. On macOS and Windows only a different exit node (or what it
/// carries, or whether IPv6 may enter the tunnel) is: a moved exit endpoint or server
/// address only moves pins, which the route step does with add before delete, never
/// leaving a moment without the halves (darwin.bash's monitor moves only endpoint routes
/// too). Linux's policy rules name the kept-outside addresses, so any change rebuilds them.
pub(super) fn tunnel_replaced(
    os: TargetOs,
    have: Option<&AppliedTunnel>,
    want: Option<&AppliedTunnel>,
) -> bool {
    match (have, want) {
        (Some(h), Some(w)) if host_routes::uses_host_routes(os) => {
            let v6_out = |t: &AppliedTunnel| t.keep_outside.iter().any(|a| a.is_ipv6());
            h.exit_public_key != w.exit_public_key
                || h.exit_ipv6 != w.exit_ipv6
                || h.exit_allowed_ips != w.exit_allowed_ips
                || v6_out(h) != v6_out(w)
        }
        (h, w) => h != w,
    }
}

impl Builder {
    pub(super) fn build(
        &mut self,
        input: &PlanInput<'_>,
        facts: &HostFacts,
    ) -> Result<(), AgentError> {
        let mut w = self.wanted(input)?;
        if self.os == TargetOs::Macos && w.spec.mtu == 0 {
            // darwin.bash's `set_mtu`: the uplink's MTU - 80 (1500 - 80 when unknown).
            w.spec.mtu = os::mtu_below(facts.uplink_mtu);
        }
        let kill_switch = self.kill_switch(input, facts, &w);
        let Some(iface) = self.interface(input, facts, &w, kill_switch.as_ref())? else {
            return Ok(());
        };
        let real_name = iface.real_name.clone();
        self.summary.interface = real_name.to_string();
        self.kill_switch_file(&w.spec, kill_switch);

        // The tunnel goes before peers change when it is being removed (its `off` rewrites
        // the old exit peer, which must still exist), and after when it is being added.
        let have_tunnel = self.rec.as_ref().and_then(|a| a.full_tunnel.clone());
        let want_tunnel = wanted_tunnel(
            input.config,
            self.os,
            w.exit,
            &w.desired,
            have_tunnel.as_ref(),
            (facts.server_ip, facts.gateway),
        );
        let replaced = tunnel_replaced(self.os, have_tunnel.as_ref(), want_tunnel.as_ref());
        if let Some(old) = have_tunnel.as_ref().filter(|_| replaced) {
            self.push(
                Step::run(tunnel_off(self.os, &real_name, old, false)).note(format!(
                    "stopped routing internet traffic through exit node {}",
                    peer_name(input.peers, &old.exit_public_key)
                )),
            );
        }
        self.peers(input, &w, &real_name, &iface.actual_peers);
        let want_tunnel =
            self.tunnel_on(&real_name, want_tunnel, replaced, &have_tunnel, input.peers);
        let removed = match (&have_tunnel, &iface.gone_tunnel) {
            (Some(old), _) if replaced => Some(old),
            (_, gone) => gone.as_ref(),
        };
        self.tunnel_routes_step(
            &real_name,
            &w,
            want_tunnel.as_ref(),
            replaced,
            removed,
            facts,
        );
        self.nat(input.config, &real_name, w.assignment.network_cidr, facts)?;
        self.subnet_routes(&real_name, &w, facts);
        self.serve_subnet_routes(
            input.config,
            input.peers,
            &real_name,
            (&w.assignment, &w.accepted),
        );
        self.summary.peers = w.desired.len();
        Ok(())
    }

    /// The configuration and the server's list turned into what this sync wants.
    fn wanted<'a>(&mut self, input: &PlanInput<'a>) -> Result<Wanted<'a>, AgentError> {
        let config = input.config;
        check_interface_name(self.os, config)?;
        let assignment = config
            .assignment
            .clone()
            .ok_or_else(|| AgentError::Usage("not registered yet".into()))?;
        let spec = interface_spec(config, &assignment);
        let exit = chosen_exit(config, input.peers)?;
        let (used, accepted) = crate::agent::decide::subnet_routes::select(
            input.peers,
            config.accept_routes,
            &config.subnet_routes.advertised(),
            crate::agent::decide::subnet_routes::MeshNets {
                v4: assignment.network_cidr,
                v6: crate::proto::mesh6::prefix(&assignment.server_public_key),
            },
        );
        let mut published = desired_peers(&used, exit.map(|p| &p.public_key));
        let device_only = crate::agent::decide::device_routes::add_device_routes(
            &mut published,
            input.peers,
            input.device_routes,
        );
        let desired = with_paths(&published, input.paths);
        self.summary = SyncSummary {
            peer_id: assignment.peer_id.to_string(),
            address: assignment.assigned_ip.to_string(),
            list_unchanged: input.list_unchanged,
            ..SyncSummary::default()
        };
        Ok(Wanted {
            spec,
            assignment,
            exit,
            published,
            desired,
            accepted,
            device_only,
        })
    }

    /// Windows with an exit node and `--exit-fallback block`: the exit peer in the form the
    /// tunnel service's file carries it (with its default routes), so wireguard-windows
    /// turns its kill-switch firewall on at every start of the service.
    fn kill_switch(
        &self,
        input: &PlanInput<'_>,
        facts: &HostFacts,
        w: &Wanted<'_>,
    ) -> Option<PeerSpec> {
        if self.os != TargetOs::Windows || input.config.exit_fallback != ExitFallback::Block {
            return None;
        }
        let have = recorded(input.config, self.os).and_then(|a| a.full_tunnel.as_ref());
        let want = wanted_tunnel(
            input.config,
            self.os,
            w.exit,
            &w.desired,
            have,
            (facts.server_ip, facts.gateway),
        )?;
        Some(tunnel_peer(&want, true))
    }

    /// The interface: reused when it has our key, port and address (and, on Windows, the
    /// service started with the kill-switch on exactly when it is wanted: its firewall is
    /// decided at start), otherwise rebuilt. `None` when macOS must first read the name
    /// wireguard-go picked.
    fn interface(
        &mut self,
        input: &PlanInput<'_>,
        facts: &HostFacts,
        w: &Wanted<'_>,
        kill_switch: Option<&PeerSpec>,
    ) -> Result<Option<Interface>, AgentError> {
        let config = input.config;
        let os = self.os;
        let same_firewall =
            recorded(config, os).is_some_and(|a| a.kill_switch.is_some() == kill_switch.is_some());
        let reusable = facts
            .dump
            .as_ref()
            .filter(|d| d.interface.public_key == Some(w.spec.private_key.public_key()))
            .filter(|d| d.interface.listen_port == w.spec.listen_port)
            .filter(|_| same_firewall);
        let fresh = |real_name| Interface {
            real_name,
            actual_peers: Vec::new(),
            gone_tunnel: None,
        };
        Ok(match (&facts.created_name, reusable) {
            (Some(real), _) => {
                // Second pass on macOS: the interface was just created under this name.
                self.configure(&w.spec, &w.assignment, real, kill_switch);
                Some(fresh(real.clone()))
            }
            (None, Some(dump)) => Some(Interface {
                real_name: interface_to_read(config, os),
                actual_peers: dump.peers.clone(),
                gone_tunnel: None,
            }),
            (None, None) => self.rebuild(input, facts, w, kill_switch)?,
        })
    }

    /// Missing, stale (another key, port or address), never applied, or (Windows) started
    /// with the other firewall: undo what is recorded and start clean.
    fn rebuild(
        &mut self,
        input: &PlanInput<'_>,
        facts: &HostFacts,
        w: &Wanted<'_>,
        kill_switch: Option<&PeerSpec>,
    ) -> Result<Option<Interface>, AgentError> {
        let os = self.os;
        let gone_tunnel = self
            .rec
            .as_ref()
            .filter(|a| a.os == os.as_str())
            .and_then(|a| a.full_tunnel.clone());
        for mut step in undo(os, input.config, facts.utun_ours.unwrap_or(true))? {
            if step.record.is_some() {
                if self.dry_run {
                    step.record = None;
                } else {
                    self.rec = None;
                }
            }
            self.push(step);
        }
        let network = w.assignment.network_cidr;
        self.push(Step::run(os::destroy(
            os,
            &w.spec.name,
            &w.spec.name,
            network,
        )));
        if os == TargetOs::Windows {
            self.push(Step::check(HostCheck::ServiceGone(w.spec.name.clone())));
        }
        self.push(Step::run(os::create(os, &w.spec.name)));
        if os == TargetOs::Windows {
            // `create` made the folder protected, or left an existing one as it is.
            self.push(Step::check(HostCheck::ConfigDirProtected));
        }
        let real = match os {
            TargetOs::Macos if self.dry_run => "utunN".parse().expect("literal"),
            TargetOs::Macos => {
                self.awaiting_name = Some(w.spec.name.clone());
                return Ok(None);
            }
            _ => w.spec.name.clone(),
        };
        self.configure(&w.spec, &w.assignment, &real, kill_switch);
        Ok(Some(Interface {
            real_name: real,
            actual_peers: Vec::new(),
            gone_tunnel,
        }))
    }

    /// Windows: rewrites the tunnel's file when the kill-switch peer moved (another exit
    /// node, endpoint or allowed IPs) while the service keeps running with its firewall;
    /// the service reads the file at its next start.
    fn kill_switch_file(&mut self, spec: &InterfaceSpec, kill_switch: Option<PeerSpec>) {
        let have = self.rec.as_ref().and_then(|a| a.kill_switch.clone());
        if self.os != TargetOs::Windows || have == kill_switch || kill_switch.is_none() {
            return;
        }
        self.push(Step::run(os::windows_config_file(
            spec,
            kill_switch.as_ref(),
        )));
        self.record(|a| a.kill_switch = kill_switch);
    }

    /// The peer diff, with relays that moved restarted and (in `up`) crossing handshakes
    /// deferred; fills the summary's added/updated/removed.
    fn peers(
        &mut self,
        input: &PlanInput<'_>,
        w: &Wanted<'_>,
        real_name: &InterfaceName,
        actual_peers: &[DumpPeer],
    ) {
        let os = self.os;
        let mut changes = reconcile::diff(&w.desired, actual_peers);
        let known: BTreeSet<_> = actual_peers.iter().map(|p| p.public_key).collect();
        self.restart_moved_relays(os, real_name, input, &known, &w.desired, &mut changes);
        if input.live {
            let mine = w.spec.private_key.public_key();
            let stuck: Vec<_> = stuck_deferred(actual_peers, &mine)
                .into_iter()
                .filter(|k| changes.upsert.iter().any(|p| p.public_key == *k))
                // Removed once already when their relay moved.
                .filter(|k| !input.paths.get(k).is_some_and(|c| c.restart))
                .collect();
            if !stuck.is_empty() {
                let reset = os::PeerChanges {
                    upsert: Vec::new(),
                    remove: stuck,
                };
                self.push(Step::run(os::apply_peers(os, real_name, &reset)));
            }
            let mut deferred = defer_crossing_handshakes(&mut changes, &known, &mine);
            if input.hold_silent {
                let silent = silent_deferred(actual_peers, &mine);
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
        self.push(Step::run(os::apply_peers(os, real_name, &changes)));
    }

    /// Sets up a new (or replaced) full tunnel and records it; a tunnel that only moved
    /// (endpoint, server address) is recorded with its pins, which the route step moves.
    /// Returns the tunnel as recorded.
    fn tunnel_on(
        &mut self,
        real_name: &InterfaceName,
        mut want: Option<AppliedTunnel>,
        replaced: bool,
        have: &Option<AppliedTunnel>,
        peers: &[PeerInfo],
    ) -> Option<AppliedTunnel> {
        let os = self.os;
        if replaced {
            if let Some(new) = want.as_mut() {
                let plan = if host_routes::uses_host_routes(os) {
                    // Only the WireGuard half here: the routes follow, planned from the
                    // observed routing table like on every sync.
                    new.pinned = None;
                    os::pins::exit_peer_plan(os, real_name, &tunnel_peer(new, true), true)
                } else {
                    os::full_tunnel_on(
                        os,
                        real_name,
                        &tunnel_peer(new, true),
                        &new.keep_outside,
                        new.gateway,
                    )
                };
                self.push(Step::run(plan).note(format!(
                    "routing internet traffic through exit node {}",
                    peer_name(peers, &new.exit_public_key)
                )));
            }
        }
        if replaced || want != *have {
            self.record(|a| a.full_tunnel = want.clone());
        }
        want
    }

    /// macOS and Windows: the tunnel's halves and pins from the observed table, as it will
    /// be once `removed` (a replaced or rebuilt tunnel) is gone; without a table (planning
    /// for another OS), a new tunnel's halves and no pins.
    fn tunnel_routes_step(
        &mut self,
        real_name: &InterfaceName,
        w: &Wanted<'_>,
        tunnel: Option<&AppliedTunnel>,
        replaced: bool,
        removed: Option<&AppliedTunnel>,
        facts: &HostFacts,
    ) {
        let Some(tunnel) = tunnel else {
            return;
        };
        let os = self.os;
        if let Some(table) = &facts.routes {
            let table = match removed {
                Some(old) => host_routes::without_tunnel(os, real_name, &w.assignment, old, table),
                None => table.clone(),
            };
            let pinned = pinned_peers(&w.published, &w.desired);
            self.tunnel_routes(real_name, &w.assignment, tunnel, &pinned, facts, &table);
        } else if replaced && host_routes::uses_host_routes(os) {
            let routes = host_routes::tunnel(
                os,
                real_name,
                w.assignment.assigned_ip,
                w.assignment.network_cidr,
                host_routes::ipv6_allowed(facts.server_ip, tunnel),
            );
            let (plan, _) = routes.reconcile(&RouteTable::default(), &[], None);
            self.push(Step::run(plan));
        }
    }

    /// Routes for peers' subnets: added and removed by the recorded difference, all re-added
    /// when the table shows one missing (a Windows reboot forgets `store=active` routes).
    fn subnet_routes(&mut self, real_name: &InterfaceName, w: &Wanted<'_>, facts: &HostFacts) {
        let os = self.os;
        let mut want_routes = extra_routes(
            &w.desired,
            w.assignment.network_cidr,
            crate::proto::mesh6::prefix(&w.assignment.server_public_key),
        );
        want_routes.retain(|r| !w.device_only.contains(r));
        let mut have_routes: BTreeSet<IpNet> = self
            .rec
            .as_ref()
            .map(|a| a.routes.iter().copied().collect())
            .unwrap_or_default();
        if let Some(table) = &facts.routes {
            let recorded: Vec<IpNet> = have_routes.iter().copied().collect();
            if host_routes::routes_missing(os, real_name, &w.assignment, table, &recorded) {
                have_routes.clear();
            }
        }
        let add: Vec<IpNet> = want_routes.difference(&have_routes).copied().collect();
        let remove: Vec<IpNet> = have_routes.difference(&want_routes).copied().collect();
        if !add.is_empty() || !remove.is_empty() {
            self.push(Step::run(os::routes(os, real_name, &add, &remove)));
            self.record(|a| a.routes = want_routes.into_iter().collect());
        }
    }

    /// Configures a just-created interface and records it as the fresh applied state. On
    /// Windows the service's file carries `kill_switch`, and the sync waits (bounded) for
    /// the tunnel's adapter before any `wg.exe set`: `/installtunnelservice` returns once
    /// the service started, and the adapter comes later.
    pub(super) fn configure(
        &mut self,
        spec: &InterfaceSpec,
        assignment: &Assignment,
        real: &InterfaceName,
        kill_switch: Option<&PeerSpec>,
    ) {
        let plan = os::configure(self.os, spec, real, &[], kill_switch);
        self.push(Step::run(plan).note(format!(
            "created interface {real} with address {}",
            assignment.assigned_ip
        )));
        if self.os == TargetOs::Windows {
            self.push(Step::check(HostCheck::TunnelUp(real.clone())));
        }
        self.summary.created_interface = true;
        self.set_record(Some(Applied {
            os: self.os.as_str().to_owned(),
            interface: real.to_string(),
            address: Some(assignment.assigned_ip),
            kill_switch: kill_switch.cloned(),
            ..Applied::default()
        }));
    }
}
