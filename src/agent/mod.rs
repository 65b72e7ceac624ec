//! The client agent (design 3.1.2): register, heartbeat, fetch the peer list, and make the
//! local WireGuard interface match it.
//!
//! The folders follow one sync: [`observe`] reads the host and the network into facts,
//! [`decide`] and [`plan`] turn facts and the server's list into ordered plans (pure, tested
//! on data), [`apply`] runs them and records what is applied in [`state`]; [`run`] is the
//! long-running part (the engine's step, `up`'s loop). [`client`] talks to the server, and
//! [`dns`] serves `.mesh` names with the same observe/decide/apply split inside.

pub mod apply;
pub mod client;
pub mod decide;
pub mod dns;
pub mod error;
pub mod gateway;
pub mod observe;
pub mod plan;
pub mod report;
pub mod run;
pub mod state;
pub mod status;
