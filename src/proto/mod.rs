//! What server and agent share on the wire: the JSON model, request authentication, the
//! STUN codec and the IPv6 mesh address scheme. Nothing here touches the host or a socket.

pub mod admin;
pub mod auth;
pub mod devices;
pub mod mesh6;
pub mod model;
pub mod replicas;
pub mod report;
pub mod sso;
pub mod stun;
pub mod subnet_routes;
pub mod wg_wire;
