//! Reading the world before deciding: the host's facts (interface, routes, services) in one
//! struct, the routing table for the full tunnel, UDP reachability and NAT behaviour
//! (`netcheck`), and whether replica relays still answer. Thin I/O edges; the decisions they
//! feed are in [`super::decide`] and [`crate::agent::plan`].

mod bind_device;
pub mod host;
pub mod host_routes;
pub mod netcheck;
pub mod preflight;
pub mod relay_probe;
