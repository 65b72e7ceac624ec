//! What the API shows about itself: `/healthz` (with the shared database's health on a
//! replica), `/replicas`, and `/metrics` (the API's counters plus those of STUN, the
//! connection layer and the relay, handed over once at startup).

use super::error::{ok_json, Refusal};
use super::Api;
use crate::server::http::{Body, Response};
use crate::server::metrics::Metrics;
use std::sync::Arc;

impl Api {
    /// Hands over the STUN services' counters for `/metrics` (once, at startup).
    pub fn set_stun_stats(&self, stats: Vec<Arc<crate::server::stun_service::StunStats>>) {
        let _ = self.monitored.stun.set(stats);
    }

    /// Hands over the connection layer's counts for `/metrics` (once, at startup).
    pub fn set_http_stats(&self, stats: crate::server::http::StatsHandle) {
        let _ = self.monitored.http.set(stats);
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many peers are registered, and how many of them are online.
    fn counts(&self) -> (usize, usize) {
        let registry = self.state.registry();
        (registry.len(), registry.online())
    }

    pub(super) fn healthz(&self) -> Response {
        let (total, online) = self.counts();
        match self.storage.database_health() {
            None => ok_json(&serde_json::json!({"success": true, "status": "ok",
                "peers": total, "online": online})),
            Some(Ok(())) => ok_json(&serde_json::json!({"success": true, "status": "ok",
                "store": self.storage.kind(), "database": "ok", "peers": total,
                "online": online})),
            Some(Err(e)) => Response::json(
                503,
                serde_json::to_vec(&serde_json::json!({"success": false,
                    "status": "database unreachable", "store": self.storage.kind(),
                    "database": "unreachable", "code": "unavailable",
                    "error": format!("{}: changes are refused until it is back", e.detail()),
                    "peers": total, "online": online}))
                .expect("JSON values serialize"),
            ),
        }
    }

    /// `GET /replicas`: the replicas that announced themselves lately, for agents that must
    /// agree on one of them (see `crate::proto::replicas`); empty on the JSON store.
    pub(super) fn replicas(&self) -> Result<Response, Refusal> {
        let list = self.storage.replicas()?;
        Ok(ok_json(
            &serde_json::json!({"success": true, "replicas": list}),
        ))
    }

    pub(super) fn metrics_text(&self) -> Response {
        let (total, online) = self.counts();
        let stun = self.monitored.stun.get().map_or(&[][..], Vec::as_slice);
        let mut text = self.metrics.render(total, online, stun);
        if let Some(stats) = self.monitored.http.get().and_then(|h| h.get()) {
            stats.render_prometheus(&mut text);
        }
        if let Some(relay) = self.monitored.relay.get() {
            relay.render_prometheus(&mut text);
        }
        Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
            body: Body::Owned(text.into_bytes()),
        }
    }
}
