//! wgmesh: a WireGuard mesh VPN made of a coordination server and a client agent.
//!
//! The server (`server`) assigns each public key a stable mesh address and tells every peer
//! about the others; the agent (`agent`) turns that list into `wg`/`ip` commands (`os`) and
//! keeps the local interface matching it. What both sides say to each other (JSON types,
//! request authentication, STUN) is `proto`; `cli` is only flags, printing and exit codes.
//! Everything is synchronous: std threads, blocking sockets, and child processes.

pub mod agent;
pub mod cli;
pub mod devconf;
pub mod fsutil;
pub mod fuzzing;
pub mod keys;
pub mod os;
pub mod proto;
pub mod server;
pub mod time;
pub mod types;
