//! Taking down what a sync set up: the record says exactly what, so nothing else is
//! touched.

use super::steps::Step;
use super::tunnel::{nat_plan, tunnel_off};
use crate::agent::error::AgentError;
use crate::agent::state::config::ClientConfig;
use crate::os::{self, Plan, TargetOs};
use crate::types::InterfaceName;

/// Removes what `config` records as applied for `os`: NAT, the full tunnel and routes
/// (tolerating pieces already gone with the interface), then the interface itself; the last
/// step records nothing applied. Empty when nothing is recorded for `os`.
///
/// `owned` is false on macOS when the recorded `utunN` is no longer ours
/// ([`crate::os::observe_macos::check_utun_owner`], wg-quick's `get_real_interface`): after
/// a crash and a reboot another tunnel may have that name, so nothing through it (routes,
/// its socket) is touched; only the record (and the DNS setup, which is not the
/// interface's) goes.
pub fn undo(os: TargetOs, config: &ClientConfig, owned: bool) -> Result<Vec<Step>, AgentError> {
    let Some(old) = config.applied.as_ref().filter(|a| a.os == os.as_str()) else {
        return Ok(Vec::new());
    };
    let Ok(old_name) = old.interface.parse::<InterfaceName>() else {
        return Ok(Vec::new());
    };
    if !owned {
        let mut steps = Vec::new();
        if let Some(dns) = &old.dns {
            steps.push(Step::run(crate::agent::dns::undo_plan(dns)?));
        }
        steps.push(Step {
            record: Some(None),
            ..Step::run(Plan::default()).note(format!(
                "{old_name} is no longer this mesh's interface (its name file or socket \
                 changed): left alone, forgotten"
            ))
        });
        return Ok(steps);
    }
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
        steps.push(Step::run(crate::agent::dns::undo_plan(dns)?));
    }
    if !old.routes.is_empty() {
        steps.push(Step::run(os::routes(os, &old_name, &[], &old.routes)));
    }
    steps.extend(super::subnet_routes_undo::undo(old, &old_name));
    steps.push(Step {
        record: Some(None),
        ..Step::run(os::destroy(os, &config.interface, &old_name, mesh))
    });
    Ok(steps)
}
