//! The full tunnel's and exit-node NAT's share of the sync plan: the route step that keeps
//! the tunnel's halves and pins matching the host, NAT for serving as an exit node, and the
//! plans that take both down again (also used by [`super::undo`]).

use super::builder::Builder;
use super::steps::Step;
use crate::agent::decide::desired::PERSISTENT_KEEPALIVE;
use crate::agent::error::AgentError;
use crate::agent::observe::host::HostFacts;
use crate::agent::observe::host_routes;
use crate::agent::state::config::{AppliedNat, AppliedTunnel, Assignment, ClientConfig};
use crate::os::route_table::RouteTable;
use crate::os::{self, PeerSpec, Plan, TargetOs};
use crate::types::InterfaceName;
use ipnet::Ipv4Net;

impl Builder {
    /// macOS and Windows: the step that makes the tunnel's halves and pins match the
    /// observed table, recording what is pinned when it changed.
    pub(super) fn tunnel_routes(
        &mut self,
        real_name: &InterfaceName,
        assignment: &Assignment,
        tunnel: &AppliedTunnel,
        desired: &[PeerSpec],
        facts: &HostFacts,
        table: &RouteTable,
    ) {
        let kill_switch_off = self.rec.as_ref().is_none_or(|a| a.kill_switch.is_none());
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
            (facts.server_ip, kill_switch_off),
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

    /// Sets up, changes or removes NAT so this host serves as an exit node when asked to.
    pub(super) fn nat(
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

pub(super) fn tunnel_off(
    os: TargetOs,
    real_name: &InterfaceName,
    t: &AppliedTunnel,
    tolerant: bool,
) -> Plan {
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
pub(super) fn tunnel_peer(t: &AppliedTunnel, with_default: bool) -> PeerSpec {
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

pub(super) fn nat_plan(
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
