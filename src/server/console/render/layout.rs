//! The frame every logged-in page shares: the navigation, who is logged in, the logout
//! button, and the script and stylesheet (external files: the CSP forbids inline ones).

use crate::server::console::session::Role;
use maud::{html, Markup, DOCTYPE};

/// The pages in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// `/console/peers`
    Peers,
    /// `/console/tokens`
    Tokens,
    /// `/console/devices`
    Devices,
    /// `/console/access`
    Access,
    /// `/console/audit`
    Audit,
    /// `/console/server`
    Server,
}

const TABS: [(Tab, &str, &str); 6] = [
    (Tab::Peers, "/console/peers", "Peers"),
    (Tab::Tokens, "/console/tokens", "Tokens"),
    (Tab::Devices, "/console/devices", "Devices"),
    (Tab::Access, "/console/access", "Access"),
    (Tab::Audit, "/console/audit", "Audit log"),
    (Tab::Server, "/console/server", "Server"),
];

/// What the frame needs to know about the viewer.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// What the session may do.
    pub role: Role,
    /// The session's CSRF token, put in every form.
    pub csrf: &'a str,
}

/// A bare page (the login form), without navigation.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wgmesh" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body { (body) }
        }
    }
}

/// A page with the navigation, `title` as its heading and `body` below it.
pub fn page(tab: Tab, title: &str, viewer: Viewer<'_>, body: Markup) -> Markup {
    bare(
        title,
        html! {
            header {
                nav {
                    span.brand { "wgmesh" }
                    @for (t, href, label) in TABS {
                        @if t == tab {
                            a.current href=(href) aria-current="page" { (label) }
                        } @else {
                            a href=(href) { (label) }
                        }
                    }
                }
                div.who {
                    span.role { (viewer.role.actor()) }
                    @if viewer.role == Role::Auditor { " (read-only)" }
                    form method="post" action="/console/logout" {
                        (csrf_field(viewer.csrf))
                        button type="submit" { "Log out" }
                    }
                }
            }
            main {
                h1 { (title) }
                (body)
            }
        },
    )
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A message box: `kind` is `error` or `notice`.
pub fn message(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("message {kind}")) role="status" { (text) } }
}
