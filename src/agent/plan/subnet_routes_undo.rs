//! Taking subnet routes down (for `down` and rebuilds): the router's nftables table and the
//! routes copied into a routing daemon's table, as recorded.

use super::steps::Step;
use crate::agent::state::config::Applied;
use crate::os::subnet_routes as sr;
use crate::os::Plan;
use crate::types::InterfaceName;

/// The plans that remove what `old` records for subnet routes (for `down` and rebuilds),
/// every command tolerating pieces already gone.
pub(super) fn undo(old: &Applied, name: &InterfaceName) -> Vec<Step> {
    let mut steps = Vec::new();
    if old.subnet_router.is_some() {
        steps.push(Step::run(sr::router_off(name)));
    }
    if let Some(t) = &old.routes_table {
        steps.push(Step::run(tolerant(sr::table_routes(
            name,
            t.table,
            &[],
            &t.routes,
        ))));
    }
    steps
}

fn tolerant(mut plan: Plan) -> Plan {
    plan.commands
        .iter_mut()
        .for_each(|c| c.allow_failure = true);
    plan
}
