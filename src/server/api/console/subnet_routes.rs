//! Approving or rejecting a peer's subnet route from its console page: the same `Api`
//! method as `/admin/routes`, audited with the session's actor, for admins only.

use super::respond::see_other;
use super::Visit;
use crate::proto::subnet_routes::RouteDecisionRequest;
use crate::server::api::error::Refusal;
use crate::server::http::Response;
use crate::server::storage::subnet_routes::Verdict;

impl Visit<'_> {
    /// `POST /console/peers/ID/routes/approve|reject` with the form field `prefix`.
    pub(super) fn decide_route(&self, id: &str, verdict: Verdict) -> Result<Response, Refusal> {
        self.require_admin()?;
        let form = self.form();
        let raw = form.get("prefix").map(|p| p.trim()).unwrap_or("");
        let prefix = raw.parse().map_err(|_| {
            Refusal(
                400,
                format!("prefix: {raw:?} is not a prefix such as 192.168.10.0/24"),
            )
        })?;
        let body = RouteDecisionRequest {
            peer: id.to_owned(),
            prefix,
        };
        self.api
            .decide_route(self.req.remote, self.session.role.actor(), &body, verdict)?;
        Ok(see_other(&format!("/console/peers/{id}")))
    }
}
