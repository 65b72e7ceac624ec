//! The access page: the policy in force, a check of a new policy before it replaces the old
//! one, and who can reach whom, by tag and for one peer.

use super::layout::{csrf_field, message, page, Tab, Viewer};
use crate::types::Tag;
use maud::{html, Markup};

/// The outcome of checking a candidate policy.
pub enum Check<'a> {
    /// It parses; the matrix it would give follows.
    Valid(&'a str),
    /// It does not; the reason names the line or entry.
    Invalid(&'a str),
}

/// Everything the access page shows.
pub struct AccessView<'a> {
    /// The policy in force, as pretty JSON.
    pub policy: &'a str,
    /// Where the server reads it from (`--policy`), if anywhere.
    pub file: Option<String>,
    /// The matrix's groups (the empty group is untagged peers).
    pub groups: &'a [Vec<Tag>],
    /// Whether row group sees column group.
    pub matrix: &'a [Vec<bool>],
    /// What each group may reach of the approved subnet routes, in words.
    pub networks: &'a [String],
    /// A candidate policy and how its check went.
    pub candidate: Option<(&'a str, Check<'a>)>,
    /// The hostnames to choose one peer from.
    pub hostnames: &'a [String],
    /// One peer and the peers it may reach.
    pub one_peer: Option<(&'a str, &'a [String])>,
}

fn group_name(g: &[Tag]) -> String {
    match g.first() {
        None => "(untagged)".into(),
        Some(t) => t.to_string(),
    }
}

/// The access page.
pub fn access(viewer: Viewer<'_>, v: &AccessView<'_>) -> Markup {
    page(
        Tab::Access,
        "Access",
        viewer,
        html! {
            h2 { "Policy in force" }
            @match &v.file {
                Some(f) => { p { "Read from " code { (f) } ". Edit the file, check it below, then reload." } },
                None => { p { "No policy file (" code { "--policy" } "): everyone sees everyone." } },
            }
            pre.policy { (v.policy) }
            @if viewer.role.may_change() && v.file.is_some() {
                form method="post" action="/console/access/reload" {
                    (csrf_field(viewer.csrf))
                    button type="submit" { "Reload the policy file" }
                }
            }
            h2 { "Who can reach whom" }
            (matrix(v.groups, v.matrix))
            h2 { "Subnet routes each group may reach" }
            p { "Granted by prefixes (or " code { "\"*\"" } ") in a rule's " code { "to" } "; seeing a router grants none of its networks." }
            table.networks {
                thead { tr { th { "group" } th { "networks" } } }
                tbody {
                    @for (g, nets) in v.groups.iter().zip(v.networks) {
                        tr { th { (group_name(g)) } td { (nets) } }
                    }
                }
            }
            h2 { "One peer" }
            form method="get" action="/console/access" {
                select name="peer" aria-label="Peer" {
                    @for h in v.hostnames {
                        option value=(h) selected[v.one_peer.is_some_and(|(p, _)| p == h)] { (h) }
                    }
                }
                button type="submit" { "Show" }
            }
            @if let Some((host, reach)) = v.one_peer {
                p { strong { (host) } " may reach " (reach.len()) " peers"
                    @if !reach.is_empty() { ": " (reach.join(", ")) } "." }
            }
            h2 { "Check a new policy" }
            form method="post" action="/console/access/check" {
                (csrf_field(viewer.csrf))
                textarea name="policy" rows="10" cols="70" aria-label="Policy JSON" {
                    (v.candidate.as_ref().map_or(v.policy, |(text, _)| text))
                }
                br;
                button type="submit" { "Check" }
            }
            @if let Some((_, check)) = &v.candidate {
                @match check {
                    Check::Valid(summary) => { (message("notice", &format!("Valid: {summary}. Nothing was changed; put it in the policy file and reload to use it."))) },
                    Check::Invalid(why) => { (message("error", why)) },
                }
            }
        },
    )
}

fn matrix(groups: &[Vec<Tag>], m: &[Vec<bool>]) -> Markup {
    html! {
        table.matrix {
            thead { tr { th { "from \\ to" } @for g in groups { th { (group_name(g)) } } } }
            tbody {
                @for (g, row) in groups.iter().zip(m) {
                    tr {
                        th { (group_name(g)) }
                        @for yes in row {
                            @if *yes { td.yes { "✓" } } @else { td.no { "–" } }
                        }
                    }
                }
            }
        }
    }
}
