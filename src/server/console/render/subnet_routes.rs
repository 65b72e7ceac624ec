//! The subnet-route part of a peer's page: what it advertises, whether each route is
//! approved and in use, and (for an admin) a button to approve or reject each, a form post
//! carrying the session's CSRF token like every console change.

use super::layout::{csrf_field, Viewer};
use crate::proto::subnet_routes::RouteView;
use maud::{html, Markup};

/// The "Subnet routes" section for peer `peer_id` with its advertised `routes`.
pub fn section(viewer: Viewer<'_>, peer_id: &str, routes: &[RouteView]) -> Markup {
    html! {
        h2 { "Subnet routes" }
        @if routes.is_empty() {
            p { "Advertises none (" code { "wgmesh up --advertise-routes" } ")." }
        } @else {
            table.routes {
                thead { tr {
                    th { "Prefix" } th { "Approved" } th { "In use" }
                    @if viewer.role.may_change() { th { "Decision" } }
                } }
                tbody {
                    @for r in routes {
                        tr {
                            td { code { (r.prefix) } }
                            td { @if r.approved { "yes" } @else { "no" } }
                            td { @if r.primary { "primary" } @else if r.approved && r.online { "standby" } @else { "–" } }
                            @if viewer.role.may_change() {
                                td {
                                    @let verb = if r.approved { "reject" } else { "approve" };
                                    form method="post" action=(format!("/console/peers/{peer_id}/routes/{verb}")) {
                                        (csrf_field(viewer.csrf))
                                        input type="hidden" name="prefix" value=(r.prefix.to_string());
                                        button type="submit" class=(if r.approved { "danger" } else { "" }) {
                                            @if r.approved { "Reject" } @else { "Approve" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
