//! The agent's pure decisions besides the sync plan itself ([`crate::agent::plan`]): what the mesh
//! wants (desired peers, routes, exit node), the peer diff against WireGuard, staggering
//! crossing first handshakes, the direct-or-relay path choice and relay health. No I/O:
//! every function here is tested on data.

pub mod desired;
pub mod device_routes;
pub mod path;
pub mod reconcile;
pub mod relay_health;
pub mod stagger;
pub mod subnet_routes;
