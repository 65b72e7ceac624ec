//! Routes into the mesh per OS, on their own so the full tunnel's pins ([`super::pins`]) can
//! route its halves the same way without importing the dispatch in `os/mod.rs`.

use super::{linux, macos, windows, Plan, TargetOs};
use crate::types::InterfaceName;
use ipnet::IpNet;

/// Adds and removes routes for extra prefixes routed into the mesh (peers' subnet routes);
/// additions are idempotent and come before removals, and removing a route that is already
/// gone is tolerated.
pub fn routes(os: TargetOs, real_name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    match os {
        TargetOs::Linux => linux::routes(real_name, add, remove),
        TargetOs::Macos => macos::routes(real_name, add, remove),
        TargetOs::Windows => windows::routes(real_name, add, remove),
    }
}
