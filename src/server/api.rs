//! HTTP routing and handlers of the coordination API (design 5.2), over the registry and the
//! store. Handlers validate everything before anything is stored, journal a change before
//! acknowledging it, and never hold the registry lock while touching the disk or a socket.

use super::http::{Body, Handler, Request, Response};
use super::metrics::{Endpoint as MetricEndpoint, Metrics};
use super::registry::{Prepared, Registration, Registry};
use crate::ipam::IpamError;
use crate::keys::PublicKey;
use crate::model::{
    DeregisterRequest, HeartbeatRequest, RegisterRequest, RegisterResponse, SuccessResponse,
};
use crate::store::{JournalEntry, Store};
use crate::types::PeerId;
use ipnet::{IpNet, Ipv4Net};
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// Most extra prefixes one peer may advertise.
pub const MAX_ALLOWED_IPS: usize = 64;

/// The serialized online-peer list, shared by every `/peers` answer until the registry's
/// generation moves on. Each caller gets it minus its own entry, as two slices.
#[derive(Debug)]
struct PeerListCache {
    generation: u64,
    body: Arc<Vec<u8>>,
    /// For each listed peer, the bytes to cut (its entry and one adjacent comma).
    cut: std::collections::HashMap<PeerId, Range<usize>>,
}

/// The coordination API: shared by every connection thread.
pub struct Api {
    registry: Mutex<Registry>,
    /// The store doubles as the write lock: changes are journaled one at a time, in order.
    store: Mutex<Store>,
    cache: Mutex<Option<Arc<PeerListCache>>>,
    metrics: Metrics,
    server_public_key: PublicKey,
    /// Distinguishes ETags across restarts, since generations restart at 1.
    epoch: u64,
    /// The STUN services' counters, exported with the rest.
    stun_stats: std::sync::OnceLock<Vec<Arc<crate::stun_service::StunStats>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handler's refusal: status plus message.
struct Refusal(u16, String);

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        Response::error(r.0, &r.1)
    }
}

fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    Response::json(
        200,
        serde_json::to_vec(value).expect("API types always serialize"),
    )
}

fn parse_body<T: DeserializeOwned>(req: &Request) -> Result<T, Refusal> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal(
            400,
            "request body is empty: send a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!("field `{path}`: ")
        };
        Refusal(400, format!("invalid request body: {field}{inner}"))
    })?;
    de.end()
        .map_err(|e| Refusal(400, format!("invalid request body: {e}")))?;
    Ok(value)
}

/// Validates advertised prefixes: bounded, normalized, no default route unless an exit node,
/// and never overlapping the mesh (which would let a peer capture others' addresses).
fn check_allowed_ips(req: &RegisterRequest, mesh: Ipv4Net) -> Result<Vec<IpNet>, Refusal> {
    if req.allowed_ips.len() > MAX_ALLOWED_IPS {
        return Err(Refusal(
            400,
            format!(
                "field `allowed_ips`: {} prefixes given, at most {MAX_ALLOWED_IPS} are accepted",
                req.allowed_ips.len()
            ),
        ));
    }
    let mesh = IpNet::V4(mesh);
    let mut out: Vec<IpNet> = Vec::with_capacity(req.allowed_ips.len());
    for net in &req.allowed_ips {
        let net = net.trunc();
        if net.prefix_len() == 0 && !req.exit_node {
            return Err(Refusal(
                400,
                format!(
                    "field `allowed_ips`: {net} is a default route; set exit_node to offer one"
                ),
            ));
        }
        let overlaps = net.contains(&mesh.network()) || mesh.contains(&net.network());
        if overlaps && net.prefix_len() != 0 {
            return Err(Refusal(
                400,
                format!(
                    "field `allowed_ips`: {net} overlaps the mesh network {mesh}, whose addresses the server assigns"
                ),
            ));
        }
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

impl Api {
    /// Builds the API over a loaded registry and its store.
    pub fn new(registry: Registry, store: Store, server_public_key: PublicKey) -> Api {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Api {
            registry: Mutex::new(registry),
            store: Mutex::new(store),
            cache: Mutex::new(None),
            metrics: Metrics::default(),
            server_public_key,
            epoch: u64::from_le_bytes(seed),
            stun_stats: std::sync::OnceLock::new(),
        }
    }

    /// Hands over the STUN services' counters for `/metrics` (once, at startup).
    pub fn set_stun_stats(&self, stats: Vec<Arc<crate::stun_service::StunStats>>) {
        let _ = self.stun_stats.set(stats);
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks silent peers offline; called by the sweeper thread.
    pub fn sweep(&self, timeout: std::time::Duration) {
        let gone = lock(&self.registry).sweep(SystemTime::now(), timeout);
        for (id, hostname, silent) in &gone {
            log::warn!(
                "peer {id} ({hostname}) timed out: no heartbeat for {silent} s, marked offline"
            );
        }
        self.metrics
            .timeouts
            .fetch_add(gone.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes a fresh snapshot if anything changed, emptying the journal. Holds the store
    /// lock throughout so no journaled change can slip between snapshot and truncation.
    pub fn compact(&self, force: bool) -> std::io::Result<()> {
        let mut store = lock(&self.store);
        let snapshot = {
            let mut registry = lock(&self.registry);
            if !registry.take_dirty() && !force && store.journal_entries() == 0 {
                return Ok(());
            }
            registry.snapshot()
        };
        store.compact(&snapshot)
    }

    fn register(&self, req: &Request) -> Result<Response, Refusal> {
        let body: RegisterRequest = parse_body(req)?;
        let network = lock(&self.registry).network();
        let allowed_ips = check_allowed_ips(&body, network)?;
        let registration = Registration {
            public_key: body.public_key,
            hostname: body.hostname,
            os: body.os,
            endpoint: body.endpoint,
            listen_port: body.listen_port,
            exit_node: body.exit_node,
            allowed_ips,
            observed_ip: req.remote.ip().to_canonical(),
        };
        let now = SystemTime::now();
        let mut store = lock(&self.store);
        let prepared = lock(&self.registry)
            .prepare(&registration, now)
            .map_err(|e| match e {
                IpamError::Exhausted(_) => Refusal(503, e.to_string()),
                other => Refusal(500, other.to_string()),
            })?;
        let record = match &prepared {
            Prepared::Unchanged(record) => {
                drop(store);
                let observed = registration.observed_ip;
                lock(&self.registry).heartbeat(&record.id, None, observed, now);
                self.metrics
                    .registrations_repeat
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                record.clone()
            }
            Prepared::Write {
                record,
                fresh_address,
            } => {
                let entry = JournalEntry::Put {
                    peer: record.clone(),
                };
                if let Err(e) = store.append(&entry) {
                    lock(&self.registry).abort(&prepared);
                    log::error!("registration of {} failed: {e}", record.public_key);
                    return Err(Refusal(
                        500,
                        format!("registration could not be stored: {e}"),
                    ));
                }
                lock(&self.registry).commit(record.clone());
                drop(store);
                let counter = if *fresh_address {
                    log::info!(
                        "registered {} ({}) as {} at {}",
                        record.id,
                        record.hostname,
                        record.virtual_ip,
                        record
                            .published_endpoint()
                            .map_or("unknown endpoint".into(), |e| e.to_string())
                    );
                    &self.metrics.registrations_new
                } else {
                    log::info!(
                        "updated registration of {} ({})",
                        record.id,
                        record.hostname
                    );
                    &self.metrics.registrations_repeat
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                record.clone()
            }
        };
        Ok(ok_json(&RegisterResponse {
            success: true,
            assigned_ip: record.virtual_ip,
            network_cidr: network,
            peer_id: record.id,
            server_public_key: self.server_public_key,
        }))
    }

    fn heartbeat(&self, req: &Request) -> Result<Response, Refusal> {
        let body: HeartbeatRequest = parse_body(req)?;
        let observed = req.remote.ip().to_canonical();
        let known = lock(&self.registry)
            .heartbeat(&body.peer_id, body.endpoint, observed, SystemTime::now())
            .is_some();
        if !known {
            return Err(unknown_peer(&body.peer_id));
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    fn deregister(&self, id: &PeerId) -> Result<Response, Refusal> {
        let mut store = lock(&self.store);
        let Some(record) = lock(&self.registry).by_id(id).cloned() else {
            return Err(unknown_peer(id));
        };
        store
            .append(&JournalEntry::Delete {
                public_key: record.public_key,
            })
            .map_err(|e| Refusal(500, format!("deregistration could not be stored: {e}")))?;
        lock(&self.registry).remove(id);
        drop(store);
        log::info!(
            "deregistered {id} ({}); {} returns to the pool",
            record.hostname,
            record.virtual_ip
        );
        self.metrics
            .deregistrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    fn etag(&self, generation: u64) -> String {
        format!("\"{:016x}-{generation}\"", self.epoch)
    }

    fn peers(&self, req: &Request) -> Result<Response, Refusal> {
        let Some(raw_id) = req.query_param("peer_id") else {
            return Err(Refusal(
                400,
                "missing query parameter `peer_id`: call GET /peers?peer_id=YOUR_PEER_ID".into(),
            ));
        };
        let id: PeerId = raw_id
            .parse()
            .map_err(|e| Refusal(400, format!("query parameter `peer_id`: {e}")))?;
        let generation = {
            let registry = lock(&self.registry);
            if registry.by_id(&id).is_none() {
                return Err(unknown_peer(&id));
            }
            registry.generation()
        };
        let etag = self.etag(generation);
        if let Some(tags) = req.header("if-none-match") {
            if tags.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
                return Ok(Response {
                    status: 304,
                    headers: vec![("ETag", etag)],
                    body: Body::Empty,
                });
            }
        }
        let cache = self.current_list();
        let parts = match cache.cut.get(&id) {
            Some(cut) => [0..cut.start, cut.end..cache.body.len()],
            None => [0..cache.body.len(), 0..0],
        };
        Ok(Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("ETag", self.etag(cache.generation)),
            ],
            body: Body::Shared(cache.body.clone(), parts),
        })
    }

    /// The cached list for the current generation, rebuilt by one thread when stale; the
    /// registry lock is held only to copy the entries, never while serializing.
    fn current_list(&self) -> Arc<PeerListCache> {
        let mut slot = lock(&self.cache);
        let (generation, entries) = {
            let registry = lock(&self.registry);
            if let Some(cache) = slot
                .as_ref()
                .filter(|c| c.generation == registry.generation())
            {
                return cache.clone();
            }
            (registry.generation(), registry.online_entries())
        };
        let mut body = Vec::with_capacity(64 + entries.len() * 320);
        body.extend_from_slice(b"{\"peers\":[");
        let mut spans = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            serde_json::to_writer(&mut body, entry).expect("API types always serialize");
            spans.push((entry.id.clone(), start..body.len()));
        }
        body.extend_from_slice(b"]}");
        let count = spans.len();
        let cut = spans
            .into_iter()
            .enumerate()
            .map(|(i, (id, span))| {
                // Cut the entry with the comma before it, or after it for the first entry.
                let range = if i > 0 {
                    span.start - 1..span.end
                } else if count > 1 {
                    span.start..span.end + 1
                } else {
                    span
                };
                (id, range)
            })
            .collect();
        let cache = Arc::new(PeerListCache {
            generation,
            body: Arc::new(body),
            cut,
        });
        *slot = Some(cache.clone());
        cache
    }

    fn healthz(&self) -> Response {
        let (total, online) = {
            let registry = lock(&self.registry);
            (registry.len(), registry.online())
        };
        ok_json(
            &serde_json::json!({"success": true, "status": "ok", "peers": total, "online": online}),
        )
    }

    fn metrics_text(&self) -> Response {
        let (total, online) = {
            let registry = lock(&self.registry);
            (registry.len(), registry.online())
        };
        Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
            body: Body::Owned(
                self.metrics
                    .render(total, online, &self.stun_metrics())
                    .into_bytes(),
            ),
        }
    }

    fn stun_metrics(&self) -> String {
        let mut out = String::new();
        if let Some(stats) = self.stun_stats.get().filter(|s| !s.is_empty()) {
            stats
                .iter()
                .map(|s| s.snapshot())
                .fold(crate::stun_service::StunCounters::default(), |a, b| {
                    a.merge(b)
                })
                .render_prometheus(&mut out);
        }
        out
    }

    fn route(&self, req: &Request) -> (MetricEndpoint, Result<Response, Refusal>) {
        let path = req.path();
        let method = req.method.as_str();
        let wrong_method = |allow: &'static str| {
            Err(Refusal(
                405,
                format!("{method} is not allowed on {path}: use {allow}"),
            ))
        };
        match path {
            "/register" => match method {
                "POST" => (MetricEndpoint::Register, self.register(req)),
                _ => (MetricEndpoint::Register, wrong_method("POST")),
            },
            "/heartbeat" => match method {
                "POST" => (MetricEndpoint::Heartbeat, self.heartbeat(req)),
                _ => (MetricEndpoint::Heartbeat, wrong_method("POST")),
            },
            "/peers" => match method {
                "GET" => (MetricEndpoint::Peers, self.peers(req)),
                _ => (MetricEndpoint::Peers, wrong_method("GET")),
            },
            "/deregister" => match method {
                "POST" => (
                    MetricEndpoint::Deregister,
                    parse_body::<DeregisterRequest>(req).and_then(|b| self.deregister(&b.peer_id)),
                ),
                _ => (MetricEndpoint::Deregister, wrong_method("POST")),
            },
            "/healthz" => match method {
                "GET" | "HEAD" => (MetricEndpoint::Healthz, Ok(self.healthz())),
                _ => (MetricEndpoint::Healthz, wrong_method("GET")),
            },
            "/metrics" => match method {
                "GET" => (MetricEndpoint::Metrics, Ok(self.metrics_text())),
                _ => (MetricEndpoint::Metrics, wrong_method("GET")),
            },
            _ => match path.strip_prefix("/peers/") {
                Some(raw) => match method {
                    "DELETE" => (
                        MetricEndpoint::Deregister,
                        raw.parse::<PeerId>()
                            .map_err(|e| Refusal(400, format!("path: {e}")))
                            .and_then(|id| self.deregister(&id)),
                    ),
                    _ => (MetricEndpoint::Deregister, wrong_method("DELETE")),
                },
                None => (
                    MetricEndpoint::Other,
                    Err(Refusal(404, format!("no such endpoint: {path}"))),
                ),
            },
        }
    }
}

fn unknown_peer(id: &PeerId) -> Refusal {
    Refusal(
        404,
        format!("unknown peer {id}: it never registered or was deregistered; register again"),
    )
}

impl Handler for Api {
    fn handle(&self, req: &Request) -> Response {
        let started = Instant::now();
        let (endpoint, result) = self.route(req);
        let response = match result {
            Ok(response) => response,
            Err(refusal) => {
                log::debug!(
                    "{} {} from {}: {} {}",
                    req.method,
                    req.path(),
                    req.remote,
                    refusal.0,
                    refusal.1
                );
                if endpoint == MetricEndpoint::Register {
                    self.metrics
                        .registrations_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if endpoint == MetricEndpoint::Heartbeat {
                    self.metrics
                        .heartbeats_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let mut response: Response = refusal.into();
                if response.status == 405 {
                    let allow = match endpoint {
                        MetricEndpoint::Peers
                        | MetricEndpoint::Healthz
                        | MetricEndpoint::Metrics => "GET",
                        MetricEndpoint::Deregister if req.path().starts_with("/peers/") => "DELETE",
                        _ => "POST",
                    };
                    response = response.with_header("Allow", allow.into());
                }
                response
            }
        };
        if endpoint == MetricEndpoint::Heartbeat && response.status == 200 {
            self.metrics
                .heartbeats_ok
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        log::debug!(
            "{} {} from {} -> {}",
            req.method,
            req.target,
            req.remote,
            response.status
        );
        self.metrics
            .observe(endpoint, response.status, started.elapsed());
        response
    }

    fn rejected(&self, status: u16) {
        self.metrics
            .observe(MetricEndpoint::Other, status, std::time::Duration::ZERO);
    }
}
