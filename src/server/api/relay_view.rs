//! The API's side of the WireGuard relay: the port advertised in `/peers`, the relay's
//! counters, and the member view (who is online, at which IPs, with which tags) the relay
//! routes by, cached while the registry and policy stay put.

use super::{lock, Api};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A member view for the relay with the registry generation and policy version it was
/// built from, and when.
pub(super) type CachedView = (u64, u64, Instant, Arc<crate::server::relay::MemberView>);

impl Api {
    /// Records that the relay runs on UDP `port` (advertised to agents in `/peers`) and
    /// hands over its counters for `/metrics` (once, at startup).
    pub fn set_relay(&self, port: u16, stats: Arc<crate::server::relay::RelayStats>) {
        self.cache.set_relay_port(port);
        let _ = self.relay_stats.set(stats);
    }
    /// The online members as the relay needs them: keys, the IPs they are known at, tags
    /// under the current policy. Rebuilt when the registry or policy changed, and at least
    /// every 10 s (a member's observed IP can move without changing any list).
    pub fn relay_view(&self) -> Arc<crate::server::relay::MemberView> {
        let (policy, version) = self.trust.policy.current();
        let mut cached = lock(&self.relay_view);
        let registry = lock(&self.registry);
        let generation = registry.generation();
        if let Some((g, v, at, view)) = cached.as_ref() {
            if *g == generation && *v == version && at.elapsed() < Duration::from_secs(10) {
                return Arc::clone(view);
            }
        }
        let members: Vec<crate::server::relay::Member> = registry
            .records()
            .into_iter()
            .filter(|r| r.online)
            .map(|r| crate::server::relay::Member {
                public_key: r.public_key,
                ips: r
                    .observed_ip
                    .into_iter()
                    .chain(r.endpoint.map(|e| e.0.ip()))
                    .collect(),
                tags: r.tags,
            })
            .collect();
        drop(registry);
        let view = Arc::new(crate::server::relay::MemberView::new(members, &policy));
        *cached = Some((generation, version, Instant::now(), Arc::clone(&view)));
        view
    }
}
