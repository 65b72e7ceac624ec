//! The single sign-on pages a person sees in the browser: approving a machine's login
//! (with the code the machine shows, to compare) and how a login ended.

use super::layout::{bare, message};
use maud::{html, Markup};

/// The approval page of a machine's login: which machine, which code, and the link that
/// goes on to the identity provider.
pub fn approve(hostname: &str, key: &str, code: &str, go: &str) -> Markup {
    bare(
        "Approve a machine",
        html! {
            main.login {
                h1 { "Log in to join a machine" }
                p { "The machine " strong #hostname { (hostname) } " (key " code { (key) } ") asks to join the mesh as you." }
                p { "It shows this code; go on only if it is the same:" }
                p.code #user-code { strong { (code) } }
                p { a.button #approve href=(go) { "Approve and log in" } }
                p.hint { "If you did not run " code { "wgmesh up --login" } " on that machine, close this page." }
            }
        },
    )
}

/// How a login ended: `ok` with what happens next, or the reason it failed.
pub fn outcome(ok: bool, text: &str) -> Markup {
    bare(
        if ok { "Logged in" } else { "Login failed" },
        html! {
            main.login {
                h1 #outcome { (if ok { "Logged in" } else { "Login failed" }) }
                (message(if ok { "ok" } else { "error" }, text))
            }
        },
    )
}

/// The console login through the provider worked: a same-site link on to the console (a
/// redirect straight from the provider's callback would not carry the session cookie,
/// which is `SameSite=Strict`).
pub fn console_welcome(who: &str, role: &str) -> Markup {
    bare(
        "Logged in",
        html! {
            main.login {
                h1 #outcome { "Logged in" }
                (message("ok", &format!("Logged in to the console as {who} ({role}).")))
                p { a.button #continue href="/console/peers" { "Continue to the console" } }
            }
        },
    )
}

/// The console login page's extra: a link to log in through the provider.
pub fn console_link() -> Markup {
    html! {
        p { a.button #sso-login href="/sso/console" { "Log in with single sign-on" } }
    }
}
