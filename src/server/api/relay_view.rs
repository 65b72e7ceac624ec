//! The API's side of the WireGuard relay: the port advertised in `/peers`, the relay's
//! counters, and the member view (who is online, at which IPs, with which tags) the relay
//! routes by, cached while the registry and policy stay put.

use super::{lock, Api};
use crate::server::relay::{Member, MemberView, RelayStats};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a member view may serve while nothing changed: a member's observed IP can move
/// without changing any list.
const VIEW_MAX_AGE: Duration = Duration::from_secs(10);

impl Api {
    /// Records that the relay runs on UDP `port` (advertised to agents in `/peers`) and
    /// hands over its counters for `/metrics` (once, at startup).
    pub fn set_relay(&self, port: u16, stats: Arc<RelayStats>) {
        self.cache.set_relay_port(port);
        let _ = self.monitored.relay.set(stats);
    }

    /// The online members as the relay needs them: keys, the IPs they are known at, tags
    /// under the current policy. Rebuilt when the registry or policy changed, and at least
    /// every [`VIEW_MAX_AGE`].
    pub fn relay_view(&self) -> Arc<MemberView> {
        let (policy, version) = self.state.policy.current();
        let mut cached = lock(&self.relay_view);
        let registry = self.state.registry();
        let generation = registry.generation();
        if let Some((g, v, at, view)) = cached.as_ref() {
            if *g == generation && *v == version && at.elapsed() < VIEW_MAX_AGE {
                return Arc::clone(view);
            }
        }
        let members: Vec<Member> = registry
            .records()
            .into_iter()
            .filter(|r| r.online)
            .map(|r| Member {
                public_key: r.public_key,
                ips: r
                    .observed_ip
                    .into_iter()
                    .chain(r.endpoint.map(|e| e.0.ip()))
                    .collect(),
                tags: r.tags,
                routes: r.approved_routes,
            })
            .collect();
        drop(registry);
        let view = Arc::new(MemberView::new(members, &policy));
        *cached = Some((generation, version, Instant::now(), Arc::clone(&view)));
        view
    }
}
