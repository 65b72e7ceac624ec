//! The plan under construction: what a sync decides from ([`PlanInput`]), the record of
//! what is applied as the sequence goes ([`Builder`]), and the small facts every step asks
//! of that record.

use super::steps::{Step, SyncSummary};
use crate::agent::error::AgentError;
use crate::agent::state::config::{Applied, ClientConfig};
use crate::os::{self, Plan, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
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
    /// The path chosen for each peer ([`crate::agent::decide::path`]): its endpoint and keepalive.
    pub paths:
        &'a std::collections::HashMap<crate::keys::PublicKey, crate::agent::decide::path::Choice>,
    /// `up` applying live changes: new peers whose key sorts above ours get their keepalive
    /// a moment later (see [`crate::agent::decide::stagger::defer_crossing_handshakes`]).
    pub live: bool,
    /// With `live`: keep deferring peers that have not sent anything yet (`up` does for a
    /// few seconds, then turns every keepalive on, so NAT mappings still open both ways).
    pub hold_silent: bool,
    /// With `up --gateway`: the subnet routes granted to this node's devices, which go into
    /// their routers' AllowedIPs ([`crate::agent::decide::device_routes`]).
    pub device_routes: &'a [crate::proto::devices::DeviceRoute],
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
pub(super) fn recorded(config: &ClientConfig, os: TargetOs) -> Option<&Applied> {
    let address = config.assignment.as_ref().map(|a| a.assigned_ip);
    config
        .applied
        .as_ref()
        .filter(|a| a.os == os.as_str() && a.address.is_some() && a.address == address)
}

/// Refuses an interface name the target OS will not take (Windows: reserved device names
/// such as `con` or `nul.x`, a leading or trailing `.`) before anything is read or run,
/// rather than at `/installtunnelservice`.
pub fn check_interface_name(os: TargetOs, config: &ClientConfig) -> Result<(), AgentError> {
    if os == TargetOs::Windows {
        os::observe_windows::check_tunnel_name(&config.interface)
            .map_err(|e| AgentError::Usage(e.0))?;
    }
    Ok(())
}

/// The plan as it is built: its steps, and the record of what is applied after them.
pub(super) struct Builder {
    pub(super) os: TargetOs,
    pub(super) dry_run: bool,
    pub(super) steps: Vec<Step>,
    /// What is recorded as applied at this point of the sequence (never changed in a dry run).
    pub(super) rec: Option<Applied>,
    pub(super) summary: SyncSummary,
    pub(super) awaiting_name: Option<InterfaceName>,
}

impl Builder {
    /// Appends a step.
    pub(super) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Peers whose relay moved to another replica's ([`crate::agent::decide::path::Choice::restart`]) are
    /// removed and added back: that drops the WireGuard session, so the next packet starts a
    /// handshake through the new relay at once instead of after 15 s of unanswered data the
    /// new relay cannot route (it never saw the old session's indexes).
    pub(super) fn restart_moved_relays(
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
    pub(super) fn set_record(&mut self, new: Option<Applied>) {
        if !self.dry_run {
            self.rec = new.clone();
            self.push(Step {
                record: Some(new),
                ..Step::run(Plan::default())
            });
        }
    }

    /// Changes the existing record (if any; never in a dry run).
    pub(super) fn record(&mut self, change: impl FnOnce(&mut Applied)) {
        if let Some(mut rec) = self.rec.clone().filter(|_| !self.dry_run) {
            change(&mut rec);
            self.set_record(Some(rec));
        }
    }
}
