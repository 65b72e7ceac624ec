//! HTTP routing and handlers of the coordination API (design 5.2), over the registry and the
//! store. Handlers validate everything before anything is stored, journal a change before
//! acknowledging it, and never hold the registry lock while touching the disk or a socket.
//!
//! Every peer request is authenticated (`crate::proto::auth`): the MAC must come from the key the
//! request concerns (the key being registered, or the key registered under the peer id), and
//! every answer to an authenticated request carries the server's response MAC. A first
//! registration also needs a join token unless the server runs `--open`. `/peers` shows each
//! caller only the peers the access policy lets it see. `/admin/...` takes the admin secret.

mod admin;
mod authenticate;
mod error;
mod monitoring;
mod peer;
mod relay_view;
mod replica;
mod replica_replay;
mod replica_sync;
mod replica_tokens;
mod sync;

pub use error::{parse_body, parse_json, Refusal};
use relay_view::CachedView;
pub use replica::Replica;
pub use replica_sync::listen_loop;

use super::http::{Body, Handler, Notifier, Reply, Request, Response};
use super::live::GroupDelta;
use super::metrics::{Endpoint as MetricEndpoint, Metrics};
use super::peer_list::PeerLists;
use super::registry::Registry;
use super::trust::Trust;
use crate::keys::{PrivateKey, PublicKey};
use crate::proto::auth::{ReplayCache, ServerAuth};
use crate::proto::model::KeyResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::store::{JournalEntry, Store};
use error::{method_not_allowed, ok_json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// The coordination API: shared by every connection thread.
pub struct Api {
    registry: Mutex<Registry>,
    /// The store doubles as the write lock: changes are journaled one at a time, in order.
    /// None when replicas share a database instead.
    store: Mutex<Option<Store>>,
    /// With `--store postgresql://...`: the shared database this replica caches.
    replica: Option<Replica>,
    /// One cached list per tag group (the caller's sorted tags).
    cache: PeerLists,
    /// One cached delta per tag group and `since`, at the current version only.
    deltas: Mutex<HashMap<sync::DeltaKey, Arc<GroupDelta>>>,
    /// Wakes long-polls (`/peers?since=N&wait=SECS`) parked in the connection layer when
    /// the version moves.
    changes: Notifier,
    /// This API's own `Arc`, for long-polls answered after their handler returned.
    me: std::sync::OnceLock<std::sync::Weak<Api>>,
    metrics: Metrics,
    auth: ServerAuth,
    /// On the JSON store: each key's newest change, on disk, against replays after a restart.
    write_floor: Option<crate::server::write_floor::WriteFloor>,
    server_public_key: PublicKey,
    trust: Trust,
    /// Distinguishes ETags across restarts, since generations restart at 1.
    epoch: u64,
    /// The STUN services' counters, exported with the rest.
    stun_stats: std::sync::OnceLock<Vec<Arc<crate::server::stun_service::StunStats>>>,
    /// The connection layer's counts, exported with the rest.
    http_stats: std::sync::OnceLock<super::http::StatsHandle>,
    /// The relay's counters, when it runs.
    relay_stats: std::sync::OnceLock<Arc<super::relay::RelayStats>>,
    /// The member view last handed to the relay, with the generation and policy version
    /// it was built from and when.
    relay_view: Mutex<Option<CachedView>>,
}

/// Who signed a request that verified, so the answer can be signed for them.
#[derive(Clone)]
struct Authed {
    key: PublicKey,
    nonce: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Api {
    /// Builds the API over a loaded registry and its store, signing with the server's key and
    /// deciding who may do what with `trust`.
    pub fn new(registry: Registry, store: Store, server_key: PrivateKey, trust: Trust) -> Api {
        Api::build(registry, Some(store), None, server_key, trust)
    }

    /// Builds the API of one replica over a registry loaded from the shared database.
    pub fn new_replica(
        registry: Registry,
        replica: Replica,
        server_key: PrivateKey,
        trust: Trust,
    ) -> Api {
        Api::build(registry, None, Some(replica), server_key, trust)
    }

    fn build(
        registry: Registry,
        store: Option<Store>,
        replica: Option<Replica>,
        server_key: PrivateKey,
        trust: Trust,
    ) -> Api {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        let write_floor = store.as_ref().map(|s| {
            let now = crate::time::unix_secs(std::time::SystemTime::now());
            let skew = crate::proto::auth::DEFAULT_MAX_CLOCK_SKEW_SECS;
            crate::server::write_floor::WriteFloor::beside(s.path(), now, skew)
        });
        Api {
            write_floor,
            registry: Mutex::new(registry),
            store: Mutex::new(store),
            replica,
            cache: PeerLists::default(),
            deltas: Mutex::new(HashMap::new()),
            changes: Notifier::new(),
            me: std::sync::OnceLock::new(),
            metrics: Metrics::default(),
            server_public_key: server_key.public_key(),
            auth: ServerAuth::new(server_key, ReplayCache::default()),
            trust,
            epoch: u64::from_le_bytes(seed),
            stun_stats: std::sync::OnceLock::new(),
            http_stats: std::sync::OnceLock::new(),
            relay_stats: std::sync::OnceLock::new(),
            relay_view: Mutex::new(None),
        }
    }

    /// Runs `f` on the registry and wakes parked long-polls when it moved the version (a
    /// change any caller may see). The notifier is poked after the lock is released.
    fn change_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let (result, moved) = {
            let mut registry = lock(&self.registry);
            let before = registry.generation();
            let result = f(&mut registry);
            (result, registry.generation() != before)
        };
        if moved {
            self.changes.notify();
        }
        result
    }

    /// Lets long-polls outlive their handler call (parked requests resume on this `Arc`);
    /// without it long-polls are answered at once.
    pub fn attach(self: &Arc<Api>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Marks silent peers offline; called by the sweeper thread every second.
    pub fn sweep(&self, timeout: std::time::Duration) {
        if let Some(r) = &self.replica {
            return self.sweep_replica(r, timeout);
        }
        let gone = lock(&self.registry).sweep(SystemTime::now(), timeout);
        if !gone.is_empty() {
            self.changes.notify();
        }
        for (id, hostname, silent) in &gone {
            log::warn!(
                "peer {id} ({hostname}) timed out: no heartbeat for {silent} s, marked offline"
            );
        }
        self.metrics
            .timeouts
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
    }

    /// Journals what heartbeats and timeouts changed (one fsync for the batch), and rewrites
    /// the snapshot only when the journal has grown enough (or `force`, at shutdown). A mesh
    /// that only heartbeats writes nothing. Holds the store lock throughout so no journaled
    /// change can slip between snapshot and truncation. A replica has no snapshot: its
    /// database is the record; here (every `--sweep-interval`) it writes its batched
    /// heartbeats, catches up, purges nonces and announces itself, and at shutdown
    /// (`force`) it writes its batched heartbeats.
    pub fn compact(&self, force: bool) -> std::io::Result<()> {
        if let Some(r) = &self.replica {
            // The database keeps these; the local batch only needs emptying.
            drop(lock(&self.registry).take_unsaved());
            if !force {
                self.housekeep_replica(r);
                return Ok(());
            }
            return self
                .flush_heartbeats(r)
                .map_err(|e| std::io::Error::other(e.to_string()));
        }
        let mut guard = lock(&self.store);
        let Some(store) = guard.as_mut() else {
            return Ok(());
        };
        let unsaved = lock(&self.registry).take_unsaved();
        let entries: Vec<JournalEntry> = unsaved
            .into_iter()
            .map(|peer| JournalEntry::Put { peer })
            .collect();
        store.append_all(&entries)?;
        if !force && !store.wants_compaction() {
            return Ok(());
        }
        let snapshot = lock(&self.registry).snapshot();
        store.compact(&snapshot)
    }

    /// Re-reads the policy file (SIGHUP or `wgmesh policy reload`). A bad file keeps the old
    /// policy and returns the reason; a change is audited and invalidates every cached list.
    pub fn reload_policy(
        &self,
        source: Option<std::net::SocketAddr>,
    ) -> Result<(bool, String), String> {
        if let Some(r) = &self.replica {
            return self.reload_policy_replica(r, source);
        }
        // Swapped and recorded under the registry lock, so no delta is ever computed with
        // one policy and stamped with the version of the other.
        let reloaded = {
            let mut registry = lock(&self.registry);
            let (replaced, _) = self.trust.policy.current();
            let reloaded = self.trust.policy.reload();
            if let Ok((true, _)) = &reloaded {
                registry.policy_changed(replaced);
            }
            reloaded
        };
        match reloaded {
            Ok((changed, policy)) => {
                let text = policy.to_string();
                if changed {
                    self.cache.clear();
                    self.changes.notify();
                    log::info!("access policy reloaded: {text}");
                    let mut event = AuditEvent::new(AuditKind::PolicyChange, SystemTime::now())
                        .detail(format!("policy reloaded: {text}"));
                    if let Some(addr) = source {
                        event = event.source(addr);
                    }
                    self.trust.audit(event);
                } else {
                    log::info!("access policy reloaded: unchanged");
                }
                Ok((changed, text))
            }
            Err(e) => {
                let mut event = AuditEvent::new(AuditKind::PolicyChange, SystemTime::now())
                    .detail(format!("policy reload refused, old policy kept: {e}"));
                if let Some(addr) = source {
                    event = event.source(addr);
                }
                self.trust.audit(event);
                Err(e.to_string())
            }
        }
    }

    fn route(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> (MetricEndpoint, Result<Response, Refusal>) {
        let path = req.path();
        // HEAD is GET without the body (the connection layer drops it) on every resource.
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        let wrong_method = |allow: &'static str| {
            Err(method_not_allowed(
                format!("{method} is not allowed on {path}: use {allow}"),
                allow,
            ))
        };
        match path {
            "/register" => match method {
                "POST" => (MetricEndpoint::Register, self.register(req, authed)),
                _ => (MetricEndpoint::Register, wrong_method("POST")),
            },
            "/heartbeat" => match method {
                "POST" => (MetricEndpoint::Heartbeat, self.heartbeat(req, authed)),
                _ => (MetricEndpoint::Heartbeat, wrong_method("POST")),
            },
            "/peers" => match method {
                "GET" => (MetricEndpoint::Peers, self.peers(req, authed)),
                _ => (MetricEndpoint::Peers, wrong_method("GET")),
            },
            "/offline" => match method {
                "POST" => (MetricEndpoint::Other, self.offline(req, authed)),
                _ => (MetricEndpoint::Other, wrong_method("POST")),
            },
            "/deregister" => match method {
                "POST" => (
                    MetricEndpoint::Deregister,
                    self.peer_deregister(req, authed, None),
                ),
                _ => (MetricEndpoint::Deregister, wrong_method("POST")),
            },
            "/key" => match method {
                "GET" => (
                    MetricEndpoint::Other,
                    Ok(ok_json(&KeyResponse {
                        success: true,
                        server_public_key: self.server_public_key,
                    })),
                ),
                _ => (MetricEndpoint::Other, wrong_method("GET")),
            },
            "/replicas" => match method {
                "GET" => (MetricEndpoint::Other, self.replicas_answer()),
                _ => (MetricEndpoint::Other, wrong_method("GET")),
            },
            "/healthz" => match method {
                "GET" => (MetricEndpoint::Healthz, Ok(self.healthz())),
                _ => (MetricEndpoint::Healthz, wrong_method("GET")),
            },
            "/metrics" => match method {
                "GET" => (MetricEndpoint::Metrics, Ok(self.metrics_text())),
                _ => (MetricEndpoint::Metrics, wrong_method("GET")),
            },
            _ => {
                if let Some(rest) = path.strip_prefix("/admin/") {
                    return (MetricEndpoint::Other, self.admin(req, rest));
                }
                match path.strip_prefix("/peers/") {
                    Some(raw) => match method {
                        "DELETE" => (
                            MetricEndpoint::Deregister,
                            self.peer_deregister(req, authed, Some(raw)),
                        ),
                        _ => (MetricEndpoint::Deregister, wrong_method("DELETE")),
                    },
                    None => (
                        MetricEndpoint::Other,
                        Err(Refusal(404, format!("no such endpoint: {path}"))),
                    ),
                }
            }
        }
    }

    /// Adds the response MAC for the peer whose request verified.
    fn sign(&self, authed: &Authed, mut response: Response) -> Response {
        let parts: Vec<&[u8]> = match &response.body {
            Body::Empty => vec![],
            Body::Owned(v) => vec![v.as_slice()],
            Body::Shared(buf, ranges) => ranges.iter().map(|r| &buf[r.clone()]).collect(),
        };
        let headers =
            self.auth
                .sign_response_parts(&authed.key, &authed.nonce, response.status, &parts);
        response.headers.extend(headers);
        response
    }
}

/// What finishing an answer needs to know of its request (a parked request is gone by then).
pub(super) struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
    remote: std::net::SocketAddr,
}

impl RequestLine<'_> {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

impl Api {
    /// Signs, counts and logs an answer (or a refusal) to one request.
    fn finish(
        &self,
        req: &RequestLine<'_>,
        endpoint: MetricEndpoint,
        started: Instant,
        authed: Option<&Authed>,
        result: Result<Response, Refusal>,
    ) -> Response {
        let response = match result {
            Ok(response) => response,
            Err(refusal) => {
                log::debug!(
                    "{} {} from {}: {} {}",
                    req.method,
                    req.path(),
                    req.remote,
                    refusal.status,
                    refusal.message
                );
                if endpoint == MetricEndpoint::Register {
                    self.metrics
                        .registrations_failed
                        .fetch_add(1, Ordering::Relaxed);
                } else if endpoint == MetricEndpoint::Heartbeat {
                    self.metrics
                        .heartbeats_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                refusal.into()
            }
        };
        let response = match authed {
            Some(a) => self.sign(a, response),
            None => response,
        };
        if endpoint == MetricEndpoint::Heartbeat && response.status == 200 {
            self.metrics.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
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
}

impl Handler for Api {
    fn handle(&self, req: &Request) -> Response {
        let started = Instant::now();
        let mut authed = None;
        let (endpoint, result) = self.route(req, &mut authed);
        let line = RequestLine {
            method: &req.method,
            target: &req.target,
            remote: req.remote,
        };
        self.finish(&line, endpoint, started, authed.as_ref(), result)
    }

    fn handle_or_park(&self, req: &Request) -> Reply {
        if req.method == "GET" && req.path() == "/peers" && req.query_param("wait").is_some() {
            return self.long_poll(req);
        }
        Reply::Now(self.handle(req))
    }

    fn rejected(&self, status: u16) {
        self.metrics
            .observe(MetricEndpoint::Other, status, std::time::Duration::ZERO);
    }
}
