//! The login page: the admin or auditor secret, exchanged for a session.

use super::layout::{bare, message};
use maud::{html, Markup};

/// The login form, with the reason the last attempt failed, if any.
pub fn login(error: Option<&str>) -> Markup {
    login_with(error, None)
}

/// The login form with `extra` below the secret form (the single sign-on link).
pub fn login_with(error: Option<&str>, extra: Option<Markup>) -> Markup {
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
                @if let Some(extra) = extra { (extra) }
                p.hint {
                    "The admin secret is in " code { "admin.secret" } " beside the server's state "
                    "(the auditor's, read-only, in " code { "auditor.secret" } ")."
                }
            }
        },
    )
}
