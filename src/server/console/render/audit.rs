//! The audit log page: newest first, filtered by actor, action, peer and time, paged.

use super::layout::{page, Tab, Viewer};
use crate::server::audit::AuditEvent;
use maud::{html, Markup};

/// Events shown per page.
pub const AUDIT_PAGE: usize = 100;

/// The audit page's filter, as given in its query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Actor substring.
    pub actor: String,
    /// Event kind (`registration`, `token_create`, …), empty for all.
    pub action: String,
    /// Peer id or key substring.
    pub peer: String,
    /// Only events at or after this RFC 3339 time (empty: all).
    pub since: String,
    /// The page, from 1.
    pub page: usize,
}

/// Every action an audit event can record, for the filter's choices.
pub const ACTIONS: [&str; 7] = [
    "registration",
    "deregistration",
    "token_create",
    "token_revoke",
    "policy_change",
    "auth_failure",
    "console_login",
];

/// The audit page: `events` is already filtered and newest first; `matching` counts them
/// all, `pages` the pages.
pub fn audit(
    viewer: Viewer<'_>,
    filter: &AuditFilter,
    events: &[AuditEvent],
    matching: usize,
    pages: usize,
    error: Option<&str>,
) -> Markup {
    let link = |page: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("actor", &filter.actor)
            .append_pair("action", &filter.action)
            .append_pair("peer", &filter.peer)
            .append_pair("since", &filter.since)
            .append_pair("page", &page.to_string());
        format!("/console/audit?{}", q.finish())
    };
    page(
        Tab::Audit,
        "Audit log",
        viewer,
        html! {
            form.filters method="get" action="/console/audit" {
                input type="text" name="actor" value=(filter.actor) placeholder="actor" aria-label="Actor";
                select name="action" aria-label="Action" {
                    option value="" { "any action" }
                    @for a in ACTIONS { option value=(a) selected[filter.action == a] { (a) } }
                }
                input type="text" name="peer" value=(filter.peer) placeholder="peer id or key" aria-label="Peer";
                input type="text" name="since" value=(filter.since) placeholder="since (RFC 3339)" aria-label="Since";
                button type="submit" { "Filter" }
            }
            @if let Some(e) = error { (super::layout::message("error", e)) }
            p.count { (matching) " events" }
            table.audit {
                thead { tr { th { "Time" } th { "Action" } th { "Actor" } th { "Peer" } th { "Source" } th { "Detail" } } }
                tbody {
                    @for e in events {
                        tr {
                            td { (crate::time::format_exact(e.time)) }
                            td { (serde_json::to_value(e.event).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) }
                            td { (e.actor.as_deref().unwrap_or("–")) }
                            td { (e.peer_id.as_ref().map_or("–".to_owned(), |p| p.to_string())) }
                            td { (e.source.map_or("–".to_owned(), |s| s.to_string())) }
                            td { (e.detail) }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="Pages" {
                    @if filter.page > 1 { a href=(link(filter.page - 1)) { "‹ newer" } }
                    span { "page " (filter.page) " of " (pages) }
                    @if filter.page < pages { a href=(link(filter.page + 1)) { "older ›" } }
                }
            }
        },
    )
}
