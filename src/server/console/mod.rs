//! The operator's console at `/console`: the whole mesh in a browser, served by the server
//! itself (no second service, no build chain, no database of its own). Pages are rendered
//! on the server with `maud` (HTML written as Rust, checked at compile time, every string
//! escaped by default); a little plain JavaScript, served from `/console/static/` and never
//! inline, refreshes a page's table when the mesh changes. A strict Content-Security-Policy
//! forbids everything else.
//!
//! This module is the pure half: sessions and CSRF ([`session`]), form and cookie parsing
//! ([`form`]), what each page shows ([`view`]) and how it is drawn ([`render`]). The HTTP
//! edge that gathers the data and performs the actions is `crate::server::api::console`.

pub mod form;
pub mod render;
pub mod session;
pub mod state;
pub mod view;

/// The path every console page lives under.
pub const PREFIX: &str = "/console";

/// The stylesheet, embedded in the binary.
pub const CSS: &str = include_str!("assets/console.css");

/// The script that keeps tables live and asks before destructive actions, embedded.
pub const JS: &str = include_str!("assets/console.js");

/// The headers every console answer carries: no script but our own, no framing, no
/// sniffing, and the Origin header kept on same-origin posts (the CSRF check needs it).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];
