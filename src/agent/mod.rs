//! The client agent (design 3.1.2): register, heartbeat, fetch the peer list, and make the
//! local WireGuard interface match it.

pub mod client;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod dns;
pub mod engine;
pub mod error;
pub mod host;
pub mod host_routes;
pub mod known;
pub mod netcheck;
pub mod path;
pub mod path_probe;
mod path_relays;
pub mod peer_cache;
pub mod plan;
pub mod reconcile;
pub mod relay_health;
pub mod relay_probe;
pub mod resolver;
pub mod setup;
pub mod sink;
pub mod stagger;
pub mod status;
pub mod teardown;
