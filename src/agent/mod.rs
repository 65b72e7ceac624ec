//! The client agent (design 3.1.2): register, heartbeat, fetch the peer list, and make the
//! local WireGuard interface match it.

mod bind_device;
pub mod client;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod dns;
pub mod engine;
pub mod error;
pub mod host;
pub mod host_routes;
pub mod instance;
pub mod known;
pub mod netcheck;
pub mod path;
mod path_relays;
pub mod peer_cache;
pub mod plan;
pub mod preflight;
pub mod reconcile;
pub mod relay_health;
pub mod relay_probe;
pub mod resolver;
pub mod setup;
pub mod sink;
pub mod stagger;
pub mod status;
pub mod teardown;
