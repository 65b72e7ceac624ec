//! The tokens page: every join token with its state, a form to create one (its secret shown
//! once, with a copy button and the `wgmesh up` line to paste), and revocation.

use super::layout::{csrf_field, message, page, Tab, Viewer};
use crate::proto::admin::TokenView;
use maud::{html, Markup};
use std::collections::HashMap;

/// A token just created: shown once, never again.
pub struct Created<'a> {
    /// The secret.
    pub secret: &'a str,
    /// Its listing.
    pub view: &'a TokenView,
    /// The command a new machine runs with it.
    pub up_line: &'a str,
}

/// The tokens page. `created_by` maps token ids to who created them (from the audit log).
pub fn tokens(
    viewer: Viewer<'_>,
    list: &[TokenView],
    created_by: &HashMap<String, String>,
    created: Option<Created<'_>>,
    error: Option<&str>,
) -> Markup {
    page(
        Tab::Tokens,
        "Join tokens",
        viewer,
        html! {
            @if let Some(e) = error { (message("error", e)) }
            @if let Some(c) = created {
                section.created {
                    h2 { "Token " (c.view.id) " created" }
                    p { "Copy it now: it is shown this once and stored only as a hash." }
                    p.secret {
                        code #token-secret { (c.secret) }
                        " "
                        button type="button" data-copy="token-secret" { "Copy" }
                    }
                    p { "On a new machine, as root:" }
                    p.secret {
                        code #up-line { (c.up_line) }
                        " "
                        button type="button" data-copy="up-line" { "Copy" }
                    }
                }
            }
            table.tokens {
                thead { tr {
                    th { "Token" } th { "Tags" } th { "Uses left" } th { "Expires" }
                    th { "Created" } th { "By" } th { "State" } th {}
                } }
                tbody {
                    @for t in list {
                        tr data-token=(t.id) {
                            td { code { (t.id) } }
                            td { @for tag in &t.tags { span.tag { (tag) } " " } }
                            td { (t.uses_left.map_or("unlimited".to_owned(), |n| n.to_string())) }
                            td { (t.expires_at.as_deref().unwrap_or("never")) }
                            td { (t.created_at) }
                            td { (created_by.get(&t.id).map_or("admin API", String::as_str)) }
                            td { (t.status) }
                            td {
                                @if viewer.role.may_change() && t.status == "usable" {
                                    form method="post" action=(format!("/console/tokens/{}/revoke", t.id)) data-confirm=(format!("Revoke {}? Machines can no longer join with it.", t.id)) {
                                        (csrf_field(viewer.csrf))
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if list.is_empty() { p { "No join tokens yet." } }
            @if viewer.role.may_change() {
                h2 { "Create a token" }
                form.create method="post" action="/console/tokens" {
                    (csrf_field(viewer.csrf))
                    label { "Tags " input type="text" name="tags" placeholder="tag:dev tag:laptop"; }
                    label { "Uses " input type="number" name="uses" min="1" value="1"; }
                    label { "Expires in " input type="text" name="expires" value="7d" placeholder="7d, 12h, never"; }
                    button type="submit" { "Create token" }
                }
            }
        },
    )
}
