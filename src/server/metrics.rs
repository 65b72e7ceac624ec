//! Server metrics (design 10.1) in the Prometheus text format, kept in atomics so counting
//! never takes a lock on the request path.

use crate::server::stun_service::{StunCounters, StunStats};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The API endpoints metrics are broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// POST /register
    Register,
    /// POST /heartbeat
    Heartbeat,
    /// GET /peers
    Peers,
    /// POST /deregister and DELETE /peers/ID
    Deregister,
    /// GET /healthz
    Healthz,
    /// GET /metrics
    Metrics,
    /// Anything else (404s, 405s, refused requests).
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 7] = [
        Endpoint::Register,
        Endpoint::Heartbeat,
        Endpoint::Peers,
        Endpoint::Deregister,
        Endpoint::Healthz,
        Endpoint::Metrics,
        Endpoint::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Endpoint::Register => "register",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::Peers => "peers",
            Endpoint::Deregister => "deregister",
            Endpoint::Healthz => "healthz",
            Endpoint::Metrics => "metrics",
            Endpoint::Other => "other",
        }
    }
}

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];
/// Status classes counted per endpoint: 1xx..5xx.
const CLASSES: usize = 5;

#[derive(Debug, Default)]
struct EndpointStats {
    by_class: [AtomicU64; CLASSES],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Every counter the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    endpoints: [EndpointStats; 7],
    /// Registrations that created a new peer.
    pub registrations_new: AtomicU64,
    /// Registrations of a known key (idempotent or updating).
    pub registrations_repeat: AtomicU64,
    /// Registrations refused (invalid, pool exhausted, storage failure).
    pub registrations_failed: AtomicU64,
    /// Heartbeats accepted.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats refused (unknown peer, invalid body).
    pub heartbeats_failed: AtomicU64,
    /// Peers that left.
    pub deregistrations: AtomicU64,
    /// Peers marked offline by the sweeper.
    pub timeouts: AtomicU64,
    /// Requests refused for a bad MAC, stale time, replay, wrong key, bad token or admin
    /// secret.
    pub auth_failures: AtomicU64,
    /// Requests answered 429.
    pub rate_limited: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        let stats = &self.endpoints[endpoint as usize];
        let class = (status / 100).clamp(1, 5) as usize - 1;
        add(&stats.by_class[class], 1);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            add(&stats.buckets[i], 1);
        }
        add(&stats.count, 1);
        add(&stats.sum_micros, elapsed.as_micros() as u64);
    }

    /// Renders everything, with the registry gauges and the STUN services' counters passed in
    /// by the caller.
    pub fn render(
        &self,
        peers_total: usize,
        peers_online: usize,
        stun: &[Arc<StunStats>],
    ) -> String {
        let mut out = String::with_capacity(4096);
        self.render_registry(&mut out, peers_total, peers_online);
        self.render_request_counts(&mut out);
        self.render_durations(&mut out);
        header(
            &mut out,
            "wgmesh_auth_failures_total",
            "counter",
            "Requests refused for a bad MAC, stale time, replay, wrong key, bad token or admin secret.",
        );
        let _ = writeln!(
            out,
            "wgmesh_auth_failures_total {}",
            load(&self.auth_failures)
        );
        header(
            &mut out,
            "wgmesh_rate_limited_total",
            "counter",
            "Requests answered 429.",
        );
        let _ = writeln!(
            out,
            "wgmesh_rate_limited_total {}",
            load(&self.rate_limited)
        );
        if !stun.is_empty() {
            stun.iter()
                .map(|s| s.snapshot())
                .fold(StunCounters::default(), StunCounters::merge)
                .render_prometheus(&mut out);
        }
        out
    }

    /// Peers, registrations, heartbeats, deregistrations and timeouts.
    fn render_registry(&self, out: &mut String, peers_total: usize, peers_online: usize) {
        header(
            out,
            "wgmesh_peers_total",
            "gauge",
            "Registered peers, online or not.",
        );
        let _ = writeln!(out, "wgmesh_peers_total {peers_total}");
        header(
            out,
            "wgmesh_peers_online",
            "gauge",
            "Peers within the heartbeat timeout.",
        );
        let _ = writeln!(out, "wgmesh_peers_online {peers_online}");
        header(
            out,
            "wgmesh_registrations_total",
            "counter",
            "Registrations by result.",
        );
        for (result, c) in [
            ("new", &self.registrations_new),
            ("repeat", &self.registrations_repeat),
            ("failed", &self.registrations_failed),
        ] {
            let _ = writeln!(
                out,
                "wgmesh_registrations_total{{result=\"{result}\"}} {}",
                load(c)
            );
        }
        header(
            out,
            "wgmesh_heartbeats_total",
            "counter",
            "Heartbeats by result.",
        );
        for (result, c) in [
            ("ok", &self.heartbeats_ok),
            ("failed", &self.heartbeats_failed),
        ] {
            let _ = writeln!(
                out,
                "wgmesh_heartbeats_total{{result=\"{result}\"}} {}",
                load(c)
            );
        }
        header(
            out,
            "wgmesh_deregistrations_total",
            "counter",
            "Peers that left.",
        );
        let _ = writeln!(
            out,
            "wgmesh_deregistrations_total {}",
            load(&self.deregistrations)
        );
        header(
            out,
            "wgmesh_peer_timeouts_total",
            "counter",
            "Peers marked offline for missing heartbeats.",
        );
        let _ = writeln!(out, "wgmesh_peer_timeouts_total {}", load(&self.timeouts));
    }

    /// Requests answered, by endpoint and status class (classes never seen are left out).
    fn render_request_counts(&self, out: &mut String) {
        header(
            out,
            "wgmesh_http_requests_total",
            "counter",
            "Requests answered, by endpoint and status class.",
        );
        for endpoint in Endpoint::ALL {
            let stats = &self.endpoints[endpoint as usize];
            for (i, c) in stats.by_class.iter().enumerate() {
                let n = load(c);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "wgmesh_http_requests_total{{endpoint=\"{}\",code=\"{}xx\"}} {n}",
                        endpoint.label(),
                        i + 1
                    );
                }
            }
        }
    }

    /// The request duration histogram, by endpoint.
    fn render_durations(&self, out: &mut String) {
        header(
            out,
            "wgmesh_http_request_duration_seconds",
            "histogram",
            "Time to answer a request, by endpoint.",
        );
        for endpoint in Endpoint::ALL {
            let stats = &self.endpoints[endpoint as usize];
            let label = endpoint.label();
            let mut cumulative = 0;
            for (bound, c) in BUCKETS.iter().zip(&stats.buckets) {
                cumulative += load(c);
                let _ = writeln!(
                    out,
                    "wgmesh_http_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = load(&stats.count);
            let _ = writeln!(
                out,
                "wgmesh_http_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "wgmesh_http_request_duration_seconds_sum{{endpoint=\"{label}\"}} {}",
                load(&stats.sum_micros) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "wgmesh_http_request_duration_seconds_count{{endpoint=\"{label}\"}} {count}"
            );
        }
    }
}

/// Reads a counter.
fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.observe(Endpoint::Peers, 200, Duration::from_micros(50));
        m.observe(Endpoint::Peers, 304, Duration::from_millis(3));
        m.observe(Endpoint::Peers, 404, Duration::from_secs(5));
        let text = m.render(3, 2, &[]);
        assert!(text.contains("wgmesh_peers_total 3\n"));
        assert!(text.contains("wgmesh_http_requests_total{endpoint=\"peers\",code=\"2xx\"} 1"));
        assert!(text.contains("wgmesh_http_requests_total{endpoint=\"peers\",code=\"3xx\"} 1"));
        assert!(text.contains(
            "wgmesh_http_request_duration_seconds_bucket{endpoint=\"peers\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains(
            "wgmesh_http_request_duration_seconds_bucket{endpoint=\"peers\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "wgmesh_http_request_duration_seconds_bucket{endpoint=\"peers\",le=\"+Inf\"} 3"
        ));
    }
}
