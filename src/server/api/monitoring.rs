//! What the API shows about itself: `/healthz` (with the shared database's health on a
//! replica) and `/metrics` (the API's counters plus those of STUN, the connection layer and
//! the relay, handed over once at startup).

use super::error::ok_json;
use super::{lock, Api};
use crate::server::http::{Body, Response};
use crate::server::metrics::Metrics;
use std::sync::Arc;

impl Api {
    /// Hands over the STUN services' counters for `/metrics` (once, at startup).
    pub fn set_stun_stats(&self, stats: Vec<Arc<crate::server::stun_service::StunStats>>) {
        let _ = self.stun_stats.set(stats);
    }
    /// Hands over the connection layer's counts for `/metrics` (once, at startup).
    pub fn set_http_stats(&self, stats: crate::server::http::StatsHandle) {
        let _ = self.http_stats.set(stats);
    }
    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub(super) fn healthz(&self) -> Response {
        let (total, online) = {
            let registry = lock(&self.registry);
            (registry.len(), registry.online())
        };
        if let Some(r) = &self.replica {
            return match r.db.health() {
                Ok(()) => ok_json(&serde_json::json!({"success": true, "status": "ok",
                    "store": "postgresql", "database": "ok", "peers": total, "online": online})),
                Err(e) => Response::json(
                    503,
                    serde_json::to_vec(&serde_json::json!({"success": false,
                        "status": "database unreachable", "store": "postgresql",
                        "database": "unreachable", "code": "unavailable",
                        "error": format!("{e}: changes are refused until it is back"),
                        "peers": total, "online": online}))
                    .expect("JSON values serialize"),
                ),
            };
        }
        ok_json(
            &serde_json::json!({"success": true, "status": "ok", "peers": total, "online": online}),
        )
    }
    pub(super) fn metrics_text(&self) -> Response {
        let (total, online) = {
            let registry = lock(&self.registry);
            (registry.len(), registry.online())
        };
        let stun = self.stun_stats.get().map_or(&[][..], Vec::as_slice);
        Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
            body: Body::Owned({
                let mut text = self.metrics.render(total, online, stun);
                if let Some(stats) = self.http_stats.get().and_then(|h| h.get()) {
                    stats.render_prometheus(&mut text);
                }
                if let Some(relay) = self.relay_stats.get() {
                    relay.render_prometheus(&mut text);
                }
                text.into_bytes()
            }),
        }
    }
}
