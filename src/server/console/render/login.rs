//! The login page: the admin or auditor secret, exchanged for a session.

use super::layout::{bare, message};
use maud::{html, Markup};

/// The login form, with the reason the last attempt failed, if any.
pub fn login(error: Option<&str>) -> Markup {
    bare(
        "Log in",
        html! {
            main.login {
                h1 { "wgmesh console" }
                @if let Some(e) = error { (message("error", e)) }
                form method="post" action="/console/login" {
                    label for="secret" { "Admin or auditor secret" }
                    input #secret type="password" name="secret" autocomplete="current-password"
                        required autofocus;
                    button type="submit" { "Log in" }
                }
                p.hint {
                    "The admin secret is in " code { "admin.secret" } " beside the server's state "
                    "(the auditor's, read-only, in " code { "auditor.secret" } ")."
                }
            }
        },
    )
}
