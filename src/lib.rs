//! wgmesh: a WireGuard mesh VPN made of a coordination server and a client agent.
//!
//! The server (`server`) assigns each public key a stable mesh address and tells every peer
//! about the others; the agent (`agent`) turns that list into `wg`/`ip` commands (`os`) and
//! keeps the local interface matching it. Everything is synchronous: std threads, blocking
//! sockets, and child processes.

pub mod agent;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod fsutil;
pub mod fuzzing;
pub mod ipam;
pub mod keys;
pub mod mesh6;
pub mod model;
pub mod netcheck;
pub mod os;
pub mod policy;
pub mod proto;
pub mod reconcile;
pub mod server;
pub mod store;
pub mod stun;
pub mod stun_service;
pub mod timefmt;
pub mod tokens;
pub mod types;
pub mod wgdump;
pub mod wgquick;
