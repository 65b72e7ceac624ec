//! The subnet-route share of the sync plan (Linux): serving as a subnet router (forwarding,
//! the filter and NAT in the router's own nftables table), and copying the accepted routes
//! and the mesh into a routing daemon's table (`--routes-to-table`). Both compare what is
//! wanted with what is recorded and change only on a difference; `subnet_routes_undo`
//! removes both.

use super::{Builder, Step};
use crate::agent::decide::subnet_routes::{router_state, table_routes, AcceptedRoute, MeshNets};
use crate::agent::state::config::{Assignment, ClientConfig};
use crate::agent::state::subnet_routes::{AppliedSubnetRouter, AppliedTableRoutes};
use crate::os::subnet_routes::{self as sr, RouterRules};
use crate::os::TargetOs;
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use ipnet::IpNet;

fn rules(s: &AppliedSubnetRouter) -> RouterRules<'_> {
    RouterRules {
        prefixes: &s.prefixes,
        access: &s.access,
        mesh: &s.mesh,
        snat: s.snat,
    }
}

impl Builder {
    /// Serves this node's advertised networks, and fills the routing daemon's table.
    pub(super) fn serve_subnet_routes(
        &mut self,
        config: &ClientConfig,
        peers: &[PeerInfo],
        real_name: &InterfaceName,
        (assignment, accepted): (&Assignment, &[AcceptedRoute]),
    ) {
        if self.os != TargetOs::Linux {
            return;
        }
        let mesh = MeshNets {
            v4: assignment.network_cidr,
            v6: crate::proto::mesh6::prefix(&assignment.server_public_key),
        };
        self.subnet_router(real_name, router_state(config, peers, mesh));
        self.routes_table(real_name, table_routes(config, accepted, mesh));
    }

    fn subnet_router(&mut self, real_name: &InterfaceName, want: Option<AppliedSubnetRouter>) {
        let have = self.rec.as_ref().and_then(|a| a.subnet_router.clone());
        if have == want {
            return;
        }
        match &want {
            Some(s) => {
                let prefixes: Vec<String> = s.prefixes.iter().map(IpNet::to_string).collect();
                self.push(Step::run(sr::router_on(real_name, rules(s))).note(format!(
                    "routing {} for {} mesh address(es){}",
                    prefixes.join(", "),
                    s.access.iter().map(|a| a.sources.len()).sum::<usize>(),
                    if s.snat { ", masqueraded" } else { "" }
                )));
            }
            None => self.push(Step::run(sr::router_off(real_name))),
        }
        self.record(|a| a.subnet_router = want);
    }

    fn routes_table(&mut self, real_name: &InterfaceName, want: Option<AppliedTableRoutes>) {
        let have = self.rec.as_ref().and_then(|a| a.routes_table.clone());
        if have == want {
            return;
        }
        if let Some(old) = &have {
            let keep: &[IpNet] = match &want {
                Some(w) if w.table == old.table => &w.routes,
                _ => &[],
            };
            let gone: Vec<IpNet> = old
                .routes
                .iter()
                .filter(|r| !keep.contains(r))
                .copied()
                .collect();
            if !gone.is_empty() {
                self.push(Step::run(sr::table_routes(
                    real_name,
                    old.table,
                    &[],
                    &gone,
                )));
            }
        }
        if let Some(new) = &want {
            let fresh: Vec<IpNet> = new
                .routes
                .iter()
                .filter(|r| {
                    have.as_ref()
                        .is_none_or(|h| h.table != new.table || !h.routes.contains(r))
                })
                .copied()
                .collect();
            if !fresh.is_empty() {
                self.push(
                    Step::run(sr::table_routes(real_name, new.table, &fresh, &[])).note(format!(
                        "{} route(s) into table {}",
                        fresh.len(),
                        new.table
                    )),
                );
            }
        }
        self.record(|a| a.routes_table = want);
    }
}

#[cfg(test)]
mod tests;
