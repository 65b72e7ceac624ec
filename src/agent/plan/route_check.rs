//! The quick route check between syncs (macOS and Windows, full tunnel in place), and the
//! peer endpoints a full tunnel pins outside, shared with the sync so both pin the same set.

use super::builder::{recorded, Builder, PlanInput};
use super::steps::{Step, SyncSummary};
use crate::agent::decide::desired::desired_peers;
use crate::agent::observe::host::HostFacts;
use crate::os::PeerSpec;
use crate::types::InterfaceName;

/// The quick route check between syncs (macOS and Windows, full tunnel in place): the one
/// step that re-pins or re-adds routes a network change or reboot moved, planned from the
/// observed table in `facts` and the last peer list. Empty when there is nothing to check.
pub fn route_check(input: &PlanInput<'_>, facts: &HostFacts) -> Vec<Step> {
    let config = input.config;
    let (Some(applied), Some(assignment), Some(table)) = (
        recorded(config, input.os),
        config.assignment.as_ref(),
        facts.routes.as_ref(),
    ) else {
        return Vec::new();
    };
    let (Some(tunnel), Ok(real_name)) = (
        applied.full_tunnel.as_ref(),
        applied.interface.parse::<InterfaceName>(),
    ) else {
        return Vec::new();
    };
    let exit = input
        .peers
        .iter()
        .find(|p| p.public_key == tunnel.exit_public_key)
        .map(|p| p.public_key);
    let published = desired_peers(input.peers, exit.as_ref());
    let desired = pinned_peers(&published, &with_paths(&published, input.paths));
    let mut b = Builder {
        os: input.os,
        dry_run: input.dry_run,
        steps: Vec::new(),
        rec: config.applied.clone(),
        summary: SyncSummary::default(),
        awaiting_name: None,
    };
    b.tunnel_routes(&real_name, assignment, tunnel, &desired, facts, table);
    b.steps
}

/// `published` with each peer's chosen path ([`crate::agent::decide::path`]) applied: its endpoint (the
/// relay's, the published one, or None to keep one WireGuard roamed to) and keepalive.
pub(super) fn with_paths(
    published: &[PeerSpec],
    paths: &std::collections::HashMap<crate::keys::PublicKey, crate::agent::decide::path::Choice>,
) -> Vec<PeerSpec> {
    let mut desired = published.to_vec();
    for peer in &mut desired {
        if let Some(choice) = paths.get(&peer.public_key) {
            peer.endpoint = choice.endpoint.map(crate::types::Endpoint);
            peer.persistent_keepalive = Some(choice.keepalive);
        }
    }
    desired
}

/// The peers whose endpoints a full tunnel keeps outside (pins): every peer at its published
/// endpoint, as without a relay (a probe, or a path WireGuard roamed to, sends there), and
/// also at its chosen endpoint where that differs (the relay), so the sync and the route
/// check between syncs pin the same set.
pub(super) fn pinned_peers(published: &[PeerSpec], desired: &[PeerSpec]) -> Vec<PeerSpec> {
    let mut out = published.to_vec();
    out.extend(
        desired
            .iter()
            .filter(|d| {
                d.endpoint.is_some()
                    && !published
                        .iter()
                        .any(|p| p.public_key == d.public_key && p.endpoint == d.endpoint)
            })
            .cloned(),
    );
    out
}
