//! What the agent keeps between runs: the configuration file (key, server, assignment, what
//! is applied, so `down` can undo exactly that), the last peer list beside it, and the peer
//! list as known between syncs with the deltas that change it.

pub mod config;
pub mod known;
pub mod peer_cache;
pub mod subnet_routes;
