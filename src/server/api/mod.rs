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
pub mod console;
mod devices;
pub mod error;
mod monitoring;
mod peer;
mod relay_view;
mod sso;
mod subnet_routes;
mod sync;

use crate::keys::{PrivateKey, PublicKey};
use crate::proto::auth::{ReplayCache, ServerAuth};
use crate::proto::model::KeyResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::console::view::StoredReport;
use crate::server::http::{Body, Handler, Reply, Request, Response};
use crate::server::live::GroupDelta;
use crate::server::metrics::{Endpoint as MetricEndpoint, Metrics};
use crate::server::peer_list::PeerLists;
use crate::server::relay::{MemberView, RelayStats};
use crate::server::state::MeshState;
use crate::server::storage::{PolicyReload, Storage, StorageError};
use crate::server::stun_service::StunStats;
use crate::server::trust::Trust;
use error::{method_not_allowed, ok_json, Refusal};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Instant, SystemTime};

/// The counters of the other services, handed over once at startup for `/metrics`.
#[derive(Default)]
struct Monitored {
    stun: OnceLock<Vec<Arc<StunStats>>>,
    http: OnceLock<crate::server::http::StatsHandle>,
    relay: OnceLock<Arc<RelayStats>>,
}

/// A cached delta's key: the party (tag group, and routes for a router) and the `since` it
/// answers.
type DeltaKey = (crate::server::policy::Party, u64);

/// A member view for the relay with the registry generation and policy version it was
/// built from, and when.
type CachedView = (u64, u64, Instant, Arc<MemberView>);

/// The coordination API: shared by every connection thread. It reads the mesh from
/// [`MeshState`] and changes it only through its [`Storage`].
pub struct Api {
    state: Arc<MeshState>,
    storage: Box<dyn Storage>,
    /// One cached list per tag group (the caller's sorted tags).
    cache: PeerLists,
    /// One cached delta per tag group and `since`, at the current version only.
    deltas: Mutex<HashMap<DeltaKey, Arc<GroupDelta>>>,
    /// This API's own `Arc`, for long-polls answered after their handler returned.
    me: OnceLock<Weak<Api>>,
    metrics: Metrics,
    monitored: Monitored,
    auth: ServerAuth,
    server_public_key: PublicKey,
    trust: Trust,
    /// Distinguishes ETags across restarts, since generations restart at 1.
    epoch: u64,
    /// The member view last handed to the relay.
    relay_view: Mutex<Option<CachedView>>,
    /// The operator's console, unless `--no-console`.
    console: OnceLock<crate::server::console::state::Console>,
    /// Each agent's latest `POST /report` (memory only), for the console.
    reports: Mutex<HashMap<crate::types::PeerId, StoredReport>>,
    /// Single sign-on, when `--oidc-issuer` is set.
    sso: OnceLock<crate::server::sso::flows::Sso>,
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
    /// Builds the API over the mesh `state` and the `storage` that changes it, signing with
    /// the server's key and deciding who may use it with `trust`.
    pub fn new(
        state: Arc<MeshState>,
        storage: Box<dyn Storage>,
        server_key: PrivateKey,
        trust: Trust,
    ) -> Api {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Api {
            state,
            storage,
            cache: PeerLists::default(),
            deltas: Mutex::new(HashMap::new()),
            me: OnceLock::new(),
            metrics: Metrics::default(),
            monitored: Monitored::default(),
            server_public_key: server_key.public_key(),
            auth: ServerAuth::new(server_key, ReplayCache::default()),
            trust,
            epoch: u64::from_le_bytes(seed),
            relay_view: Mutex::new(None),
            console: OnceLock::new(),
            reports: Mutex::new(HashMap::new()),
            sso: OnceLock::new(),
        }
    }

    /// Lets long-polls outlive their handler call (parked requests resume on this `Arc`);
    /// without it long-polls are answered at once.
    pub fn attach(self: &Arc<Api>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Marks silent peers offline; called by the sweeper thread every second.
    pub fn sweep(&self, timeout: std::time::Duration) {
        let gone = self.storage.sweep(timeout);
        self.metrics.timeouts.fetch_add(gone, Ordering::Relaxed);
        self.sample_rates();
    }

    /// The store's periodic write (every `--sweep-interval`), and its last one at shutdown
    /// (`last`): see [`Storage::persist`].
    pub fn persist(&self, last: bool) -> std::io::Result<()> {
        self.storage.persist(last)
    }

    /// Follows changes made by other replicas until `stop`; returns at once on the JSON
    /// store.
    pub fn follow(&self, stop: &std::sync::atomic::AtomicBool) {
        self.storage.follow(stop)
    }

    /// Publishes where agents reach this server (a replica announces it to the others).
    pub fn advertise(&self, url: String) {
        self.storage.advertise(url)
    }

    /// Approves the advertised routes the policy in force covers, as the server starts (the
    /// policy file may have changed while it was stopped, which is a reload too). A failure
    /// is logged: the routes wait for the next reload or an operator.
    pub fn approve_covered_routes(&self) {
        match self.storage.approve_covered_routes() {
            Ok(0) => {}
            Ok(n) => log::info!("the policy approved advertised routes of {n} peer(s)"),
            Err(e) => log::error!("cannot approve the routes the policy covers: {e}"),
        }
    }

    /// Re-reads the policy file (SIGHUP or `wgmesh policy reload`). A bad file keeps the old
    /// policy and says why; every reload is audited, and a change invalidates every cached
    /// list.
    pub fn reload_policy(
        &self,
        source: Option<std::net::SocketAddr>,
        actor: Option<&str>,
    ) -> Result<PolicyReload, StorageError> {
        let reloaded = self.storage.reload_policy();
        let detail = match &reloaded {
            Ok(r) if r.changed => {
                self.cache.clear();
                log::info!("access policy reloaded: {}", r.text);
                format!("policy reloaded: {}", r.text)
            }
            Ok(_) => {
                log::info!("access policy reloaded: unchanged");
                return reloaded;
            }
            Err(e) => format!("policy reload refused, old policy kept: {e}"),
        };
        let mut event = AuditEvent::new(AuditKind::PolicyChange, SystemTime::now()).detail(detail);
        if let Some(addr) = source {
            event = event.source(addr);
        }
        if let Some(actor) = actor {
            event = event.actor(actor);
        }
        self.trust.audit(event);
        reloaded
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
            "/report" => match method {
                "POST" => (MetricEndpoint::Other, self.report(req, authed)),
                _ => (MetricEndpoint::Other, wrong_method("POST")),
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
            "/devices" => match method {
                "GET" => (MetricEndpoint::Other, self.gateway_devices(req, authed)),
                _ => (MetricEndpoint::Other, wrong_method("GET")),
            },
            "/replicas" => match method {
                "GET" => (MetricEndpoint::Other, self.replicas()),
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
                if let Some(rest) = path.strip_prefix("/sso/") {
                    return (MetricEndpoint::Other, self.sso(req, authed, rest));
                }
                if path == "/console" || path.starts_with("/console/") {
                    return (MetricEndpoint::Other, self.console(req));
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
        if req.method == "GET" && req.path() == "/console/events" {
            return self.console_events(req);
        }
        Reply::Now(self.handle(req))
    }

    fn rejected(&self, status: u16) {
        self.metrics
            .observe(MetricEndpoint::Other, status, std::time::Duration::ZERO);
    }
}
