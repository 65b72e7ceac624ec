//! The peers page (search, filters, sort, pages, updated live) and a peer's own page (its
//! registration, its agent's view of every path, and removal behind a confirmation).

use super::layout::{csrf_field, message, page, Tab, Viewer};
use super::{ago, bytes};
use crate::keys::PublicKey;
use crate::proto::report::ReportedPath;
use crate::server::console::view::{PeerFilter, PeerPage, PeerRow, SortKey, StoredReport};
use maud::{html, Markup};
use std::collections::HashMap;
use std::time::SystemTime;

/// The peers page.
pub fn list(
    viewer: Viewer<'_>,
    filter: &PeerFilter,
    page_: &PeerPage,
    tags: &[String],
    now: SystemTime,
    version: u64,
) -> Markup {
    let selected = |want: Option<bool>, value: Option<bool>| want == value;
    page(
        Tab::Peers,
        "Peers",
        viewer,
        html! {
            form.filters method="get" action="/console/peers" {
                input type="search" name="q" value=(filter.q) placeholder="name, address, tag…"
                    aria-label="Search";
                select name="online" aria-label="Online" {
                    option value="" selected[selected(filter.online, None)] { "online or not" }
                    option value="yes" selected[selected(filter.online, Some(true))] { "online" }
                    option value="no" selected[selected(filter.online, Some(false))] { "offline" }
                }
                select name="tag" aria-label="Tag" {
                    option value="" { "any tag" }
                    @for t in tags {
                        option value=(t) selected[filter.tag.as_deref() == Some(t)] { (t) }
                    }
                }
                select name="exit" aria-label="Exit node" {
                    option value="" selected[selected(filter.exit, None)] { "exit node or not" }
                    option value="yes" selected[selected(filter.exit, Some(true))] { "offers exit" }
                    option value="no" selected[selected(filter.exit, Some(false))] { "no exit" }
                }
                label { input type="checkbox" name="relayed" value="yes" checked[filter.relayed]; " relayed" }
                input type="hidden" name="sort" value=(filter.sort.as_str());
                button type="submit" { "Filter" }
            }
            div #live data-live=(version) {
                (table(filter, page_, now))
            }
        },
    )
}

/// The table and the pager: the part that live updates replace.
pub fn table(filter: &PeerFilter, p: &PeerPage, now: SystemTime) -> Markup {
    let sort_link = |key: SortKey, label: &str| {
        html! { a href=(format!("/console/peers?{}", filter.query(1, key))) { (label) } }
    };
    html! {
        p.count { (p.matching) " of " (p.total) " peers" }
        table.peers {
            thead { tr {
                th { (sort_link(SortKey::Hostname, "Peer")) }
                th { (sort_link(SortKey::Address, "Mesh address")) }
                th { "Tags" }
                th { (sort_link(SortKey::Status, "Status")) }
                th { (sort_link(SortKey::LastSeen, "Last heartbeat")) }
                th { "Endpoint" }
                th { "Exit node" }
                th { "Agent" }
            } }
            tbody {
                @for r in &p.rows { (row(r, now)) }
            }
        }
        @if p.pages > 1 {
            nav.pager aria-label="Pages" {
                @if p.page > 1 {
                    a href=(format!("/console/peers?{}", filter.query(p.page - 1, filter.sort))) { "‹ previous" }
                }
                span { "page " (p.page) " of " (p.pages) }
                @if p.page < p.pages {
                    a href=(format!("/console/peers?{}", filter.query(p.page + 1, filter.sort))) { "next ›" }
                }
            }
        }
    }
}

fn row(r: &PeerRow, now: SystemTime) -> Markup {
    html! {
        tr data-peer=(r.id.as_str()) data-host=(r.hostname) {
            td {
                a.host href=(format!("/console/peers/{}", r.id)) { (r.hostname) }
                @if let Some(n) = &r.dns_name { br; small { (n) } }
            }
            td { (r.ipv4) @if let Some(v6) = r.ipv6 { br; small { (v6) } } }
            td { @for t in &r.tags { span.tag { (t) } " " } }
            td { (status(r, now)) }
            td { (ago(r.last_heartbeat, now)) }
            td { (r.endpoint.as_deref().unwrap_or("–")) }
            td {
                @if r.exit_offered { span.badge { "offers" } " " }
                @if let Some(used) = &r.exit_used { "uses " (used) }
            }
            td { (r.version.as_deref().unwrap_or("not reported")) }
        }
    }
}

fn status(r: &PeerRow, now: SystemTime) -> Markup {
    html! {
        @if r.online {
            span.online { "online" }
        } @else {
            span.offline { "offline" } br; small { "since " (ago(r.last_heartbeat, now)) }
        }
        @if r.relayed == Some(true) { br; small.relayed { "relayed" } }
    }
}

/// A peer's own page.
pub fn detail(
    viewer: Viewer<'_>,
    r: &PeerRow,
    report: Option<&StoredReport>,
    names: &HashMap<PublicKey, String>,
    reachable: &[String],
    (now, version): (SystemTime, u64),
    routes: Markup,
) -> Markup {
    page(
        Tab::Peers,
        &r.hostname,
        viewer,
        html! {
            div #live data-live=(version) {
                dl.facts {
                    dt { ".mesh name" } dd { (r.dns_name.as_deref().unwrap_or("–")) }
                    dt { "Peer id" } dd { code { (r.id) } }
                    dt { "Public key" } dd { code { (r.public_key) } }
                    dt { "Mesh addresses" } dd { (r.ipv4) @if let Some(v6) = r.ipv6 { ", " (v6) } }
                    dt { "Tags" } dd { @for t in &r.tags { span.tag { (t) } " " } @if r.tags.is_empty() { "none" } }
                    dt { "Owner" } dd #owner { (r.owner.as_deref().unwrap_or("– (joined with a token)")) }
                    dt { "Status" } dd { (status(r, now)) }
                    dt { "Last heartbeat" } dd { (ago(r.last_heartbeat, now)) }
                    dt { "Registered" } dd { (ago(r.registered_at, now)) }
                    dt { "Endpoint" } dd { (r.endpoint.as_deref().unwrap_or("–")) }
                    dt { "OS" } dd { (r.os) }
                    dt { "Exit node" } dd {
                        @if r.exit_offered { "offers one. " }
                        @match &r.exit_used { Some(u) => { "uses " (u) }, None => { "uses none" } }
                    }
                    dt { "Agent" } dd { (r.version.as_deref().unwrap_or("not reported")) }
                    dt { "May reach" } dd { (reachable.len()) " peers" @if !reachable.is_empty() { ": " (reachable.join(", ")) } }
                }
                h2 { "Paths" }
                @match report {
                    None => { p { "Not reported: its agent is older than the console, or has not reported yet." } },
                    Some(s) => { (paths(s, names, now)) },
                }
            }
            (routes)
            @if viewer.role.may_change() {
                @if r.owner.as_deref().is_some_and(|o| !o.ends_with("(logged out)")) {
                    form method="post" action=(format!("/console/peers/{}/end-login", r.id)) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button #end-login type="submit" { "End this login (it must log in again)" }
                    }
                }
                p { a.button.danger href=(format!("/console/peers/{}/remove", r.id)) { "Remove this peer…" } }
            }
        },
    )
}

fn paths(s: &StoredReport, names: &HashMap<PublicKey, String>, now: SystemTime) -> Markup {
    html! {
        p.count { "As its agent reported " (ago(s.at, now)) "." }
        table.paths {
            thead { tr { th { "Peer" } th { "Path" } th { "Latest handshake" } th { "Received" } th { "Sent" } } }
            tbody {
                @for p in &s.report.paths {
                    tr {
                        td { (names.get(&p.public_key).cloned().unwrap_or_else(|| p.public_key.to_string())) }
                        td { span class=(format!("path {}", p.path.label())) { (p.path.label()) } }
                        td { @match p.handshake_age_secs {
                            Some(secs) => { (super::short(std::time::Duration::from_secs(secs))) " ago" },
                            None => { "never" },
                        } }
                        td { (bytes(p.rx_bytes)) }
                        td { (bytes(p.tx_bytes)) }
                    }
                }
            }
        }
        @if s.report.paths.iter().all(|p| p.path == ReportedPath::Unknown) && !s.report.paths.is_empty() {
            (message("notice", "No handshake in the last 180 s with any peer: no path is proven."))
        }
    }
}

/// The confirmation before removing a peer.
pub fn confirm_remove(viewer: Viewer<'_>, r: &PeerRow) -> Markup {
    page(
        Tab::Peers,
        "Remove a peer",
        viewer,
        html! {
            p {
                "Remove " strong { (r.hostname) } " (" (r.ipv4) ") from the mesh? Every peer drops it "
                "at once and its address returns to the pool. Its agent needs a new join token to "
                "come back."
            }
            form method="post" action=(format!("/console/peers/{}/remove", r.id)) {
                (csrf_field(viewer.csrf))
                button.danger type="submit" { "Remove " (r.hostname) }
                " "
                a href=(format!("/console/peers/{}", r.id)) { "Cancel" }
            }
        },
    )
}
