//! The server page: the store and its health, the replicas, the relay's counters, and
//! registrations and heartbeats per minute.

use super::layout::{page, Tab, Viewer};
use maud::{html, Markup};

/// What the server page shows.
pub struct ServerView {
    /// `wgmesh` version.
    pub version: &'static str,
    /// `json` or `postgresql`.
    pub store: &'static str,
    /// The database's health, where there is one (`Err` says why it is not ok).
    pub database: Option<Result<(), String>>,
    /// Registered and online peers.
    pub peers: (usize, usize),
    /// The mesh version (`/peers` version).
    pub mesh_version: u64,
    /// The replicas that announced themselves lately.
    pub replicas: Vec<String>,
    /// Relay counters, when the relay runs: (handshake packets, data packets, bytes, pairs).
    pub relay: Option<(u64, u64, u64, u64)>,
    /// Registrations and heartbeats answered over the last minute (or since start, if
    /// shorter), and over how many seconds.
    pub per_minute: (u64, u64, u64),
}

/// The server page.
pub fn server(viewer: Viewer<'_>, v: &ServerView) -> Markup {
    page(
        Tab::Server,
        "Server",
        viewer,
        html! {
            div #live data-live=(v.mesh_version) {
                dl.facts {
                    dt { "Version" } dd { "wgmesh " (v.version) }
                    dt { "Store" } dd { (v.store) }
                    @if let Some(db) = &v.database {
                        dt { "Database" } dd { @match db { Ok(()) => { span.online { "ok" } }, Err(e) => { span.offline { "unreachable" } " " (e) } } }
                    }
                    dt { "Peers" } dd { (v.peers.0) " registered, " (v.peers.1) " online" }
                    dt { "Mesh version" } dd { (v.mesh_version) }
                    dt { "Registrations" } dd { (v.per_minute.0) " in the last " (v.per_minute.2) " s" }
                    dt { "Heartbeats" } dd { (v.per_minute.1) " in the last " (v.per_minute.2) " s" }
                }
                h2 { "Replicas" }
                @if v.replicas.is_empty() {
                    p { "None: this server keeps its own JSON store." }
                } @else {
                    ul { @for r in &v.replicas { li { code { (r) } } } }
                }
                h2 { "Relay" }
                @match v.relay {
                    None => { p { "Off (" code { "--relay off" } " or no UDP port)." } },
                    Some((hs, data, bytes, pairs)) => {
                        dl.facts {
                            dt { "Relayed pairs" } dd { (pairs) }
                            dt { "Handshake packets" } dd { (hs) }
                            dt { "Data packets" } dd { (data) }
                            dt { "Bytes" } dd { (super::bytes(bytes)) }
                        }
                    },
                }
            }
        },
    )
}
