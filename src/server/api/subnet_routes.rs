//! `/admin/routes`: the operator's view of advertised subnet routes, and approving or
//! rejecting one (audited). The decision itself is the store's
//! ([`crate::server::storage::subnet_routes`]); this is the HTTP edge.

use super::admin::ADMIN_ACTOR;
use super::error::{method_not_allowed, ok_json, parse_body, Refusal};
use super::Api;
use crate::proto::subnet_routes::{primary, RouteDecisionRequest, RouteView, RoutesResponse};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::registry::Registry;
use crate::server::storage::subnet_routes::{advertised, Verdict};
use crate::server::store::PeerRecord;
use crate::types::PeerId;
use std::net::SocketAddr;
use std::time::SystemTime;

/// Every advertised route of every registered peer, marked approved and primary, by prefix
/// then router address.
pub(super) fn route_views(records: &[PeerRecord]) -> Vec<RouteView> {
    let mut views: Vec<RouteView> = records
        .iter()
        .flat_map(|r| {
            advertised(r).into_iter().map(|prefix| RouteView {
                approved: r.approved_routes.contains(&prefix),
                hostname: r.hostname.to_string(),
                online: r.online,
                peer_id: r.id.clone(),
                prefix,
                primary: false,
                virtual_ip: r.virtual_ip,
            })
        })
        .collect();
    let in_use: Vec<_> = views
        .iter()
        .map(|v| {
            primary(
                views
                    .iter()
                    .filter(|o| o.prefix == v.prefix && o.approved && o.online)
                    .map(|o| o.virtual_ip),
            )
        })
        .collect();
    for (view, chosen) in views.iter_mut().zip(in_use) {
        view.primary = view.approved && view.online && chosen == Some(view.virtual_ip);
    }
    views.sort_by_key(|v| (v.prefix, v.virtual_ip));
    views
}

/// The peer an operator names by id, hostname or mesh address.
fn find_peer(registry: &Registry, name: &str) -> Result<PeerId, Refusal> {
    let found: Vec<&PeerRecord> = registry
        .iter()
        .filter(|r| {
            r.id.as_str() == name
                || r.hostname.as_str() == name
                || r.virtual_ip.to_string() == name
                || r.dns_name.as_ref().is_some_and(|n| n.to_string() == name)
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(Refusal(
            404,
            format!("field `peer`: no registered peer is named {name:?} (give its id, hostname or mesh address; see `wgmesh routes list`)"),
        )),
        _ => Err(Refusal(
            409,
            format!("field `peer`: {} peers are named {name:?}: give the peer id instead (see `wgmesh routes list`)", found.len()),
        )),
    }
}

impl Api {
    /// Routes `/admin/routes[/approve|/reject]` (the admin secret is already checked).
    pub(super) fn admin_routes(
        &self,
        req: &Request,
        method: &str,
        rest: &str,
    ) -> Result<Response, Refusal> {
        let verdict = match (method, rest) {
            ("GET", "routes") => return Ok(self.routes_answer()),
            ("POST", "routes/approve") => Verdict::Approve,
            ("POST", "routes/reject") => Verdict::Reject,
            (_, "routes") => {
                return Err(method_not_allowed(
                    format!("{method} is not allowed here: use GET"),
                    "GET",
                ))
            }
            (_, "routes/approve" | "routes/reject") => {
                return Err(method_not_allowed(
                    format!("{method} is not allowed here: use POST"),
                    "POST",
                ))
            }
            _ => {
                return Err(Refusal(
                    404,
                    format!("no such admin endpoint: {method} /admin/{rest}"),
                ))
            }
        };
        let body: RouteDecisionRequest = parse_body(req)?;
        self.decide_route(req.remote, ADMIN_ACTOR, &body, verdict)?;
        Ok(self.routes_answer())
    }

    fn routes_answer(&self) -> Response {
        let records = self.state.registry().records();
        ok_json(&RoutesResponse {
            routes: route_views(&records),
            success: true,
        })
    }

    /// Approves or rejects one route (for the admin API and the console), audited as
    /// `actor`'s.
    pub(super) fn decide_route(
        &self,
        source: SocketAddr,
        actor: &str,
        body: &RouteDecisionRequest,
        verdict: Verdict,
    ) -> Result<PeerRecord, Refusal> {
        let id = find_peer(&self.state.registry(), &body.peer)?;
        let prefix = body.prefix.trunc();
        let record = self.storage.decide_route(&id, prefix, verdict)?;
        let (kind, done) = match verdict {
            Verdict::Approve => (AuditKind::RouteApprove, "approved"),
            Verdict::Reject => (AuditKind::RouteReject, "rejected"),
        };
        self.trust.audit(
            AuditEvent::new(kind, SystemTime::now())
                .source(source)
                .actor(actor)
                .peer_key(record.public_key)
                .detail(format!(
                    "subnet route {prefix} of {} ({}) {done}",
                    record.hostname, record.virtual_ip
                )),
        );
        log::info!(
            "subnet route {prefix} of {} {done} ({actor})",
            record.hostname
        );
        Ok(record)
    }
}
