//! HTTP routing and handlers of the coordination API (design 5.2), over the registry and the
//! store. Handlers validate everything before anything is stored, journal a change before
//! acknowledging it, and never hold the registry lock while touching the disk or a socket.
//!
//! Every peer request is authenticated (`crate::auth`): the MAC must come from the key the
//! request concerns (the key being registered, or the key registered under the peer id), and
//! every answer to an authenticated request carries the server's response MAC. A first
//! registration also needs a join token unless the server runs `--open`. `/peers` shows each
//! caller only the peers the access policy lets it see. `/admin/...` takes the admin secret.

use super::changes::{self, PeerState, Since};
use super::http::{Body, Handler, Notifier, Park, Reply, Request, Response, Wake};
use super::live::{self, GroupDelta, PeersQuery};
use super::metrics::{Endpoint as MetricEndpoint, Metrics};
use super::registry::{Prepared, Registration, Registry};
use super::trust::{Trust, ADMIN_HEADER};
use crate::audit::{AuditEvent, AuditKind};
use crate::auth::{self, ReplayCache, ServerAuth, NONCE_HEADER};
use crate::ipam::IpamError;
use crate::keys::{PrivateKey, PublicKey};
use crate::model::{
    DeregisterRequest, HeartbeatRequest, KeyResponse, OfflineRequest, PeerInfo, RegisterRequest,
    RegisterResponse, SuccessResponse,
};
use crate::policy::Membership;
use crate::store::{JournalEntry, Store};
use crate::tokens::{Tag, TokenRecord};
use crate::types::PeerId;
use ipnet::{IpNet, Ipv4Net};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Most extra prefixes one peer may advertise.
pub const MAX_ALLOWED_IPS: usize = 64;

/// The serialized list of online peers one tag group may see, shared by every `/peers` answer
/// to that group until the registry's generation or the policy moves on. Each caller gets it
/// minus its own entry, as two slices.
#[derive(Debug)]
struct PeerListCache {
    generation: u64,
    policy_version: u64,
    body: Arc<Vec<u8>>,
    /// For each listed peer, the bytes to cut (its entry and one adjacent comma).
    cut: std::collections::HashMap<PeerId, Range<usize>>,
}

/// A cached delta's key: the tag group and the `since` it answers.
type DeltaKey = (Vec<Tag>, u64);

/// What `/peers?since=N` has for one caller right now.
enum SinceAnswer {
    /// Send this (a delta or the full list).
    Ready(Response),
    /// Nothing this caller sees changed; it is current at this version.
    Nothing(u64),
}

/// What a tag group at `since` needs.
enum GroupAnswer {
    /// Nothing changed at all.
    Current(u64),
    /// `since` is unknown or too old: the full list.
    Full,
    /// The group's delta (which may still be empty for a given caller).
    Delta(Arc<GroupDelta>),
}

fn delta_response(body: Vec<u8>) -> Response {
    Response::json(200, body)
}

/// The coordination API: shared by every connection thread.
pub struct Api {
    registry: Mutex<Registry>,
    /// The store doubles as the write lock: changes are journaled one at a time, in order.
    store: Mutex<Store>,
    /// One cached list per tag group (the caller's sorted tags).
    cache: Mutex<HashMap<Vec<Tag>, Arc<PeerListCache>>>,
    /// One cached delta per tag group and `since`, at the current version only.
    deltas: Mutex<HashMap<DeltaKey, Arc<GroupDelta>>>,
    /// Wakes long-polls (`/peers?since=N&wait=SECS`) parked in the connection layer when
    /// the version moves.
    changes: Notifier,
    /// This API's own `Arc`, for long-polls answered after their handler returned.
    me: std::sync::OnceLock<std::sync::Weak<Api>>,
    metrics: Metrics,
    auth: ServerAuth,
    server_public_key: PublicKey,
    trust: Trust,
    auth_failures: AtomicU64,
    rate_limited: AtomicU64,
    /// Distinguishes ETags across restarts, since generations restart at 1.
    epoch: u64,
    /// The STUN services' counters, exported with the rest.
    stun_stats: std::sync::OnceLock<Vec<Arc<crate::stun_service::StunStats>>>,
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

/// A handler's refusal: status plus message, and how long to wait for a 429.
struct Refusal {
    status: u16,
    message: String,
    retry_after: Option<Duration>,
}

// A braced struct lives only in the type namespace, so this constructor keeps the terse
// `Refusal(400, ...)` of every handler.

#[allow(non_snake_case)]
fn Refusal(status: u16, message: String) -> Refusal {
    Refusal {
        status,
        message,
        retry_after: None,
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        let response = Response::error(r.status, &r.message);
        match r.retry_after {
            Some(wait) => response.with_header("Retry-After", wait.as_secs().max(1).to_string()),
            None => response,
        }
    }
}

fn too_many(what: &str, source: IpAddr, wait: Duration) -> Refusal {
    Refusal {
        status: 429,
        message: format!(
            "too many {what} from {source}: retry after {} s",
            wait.as_secs().max(1)
        ),
        retry_after: Some(wait),
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
fn check_allowed_ips(
    req: &RegisterRequest,
    mesh: Ipv4Net,
    mesh6: ipnet::Ipv6Net,
) -> Result<Vec<IpNet>, Refusal> {
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
        let overlaps = [mesh, IpNet::V6(mesh6)]
            .iter()
            .any(|m| net.contains(&m.network()) || m.contains(&net.network()));
        if overlaps && net.prefix_len() != 0 {
            return Err(Refusal(
                400,
                format!(
                    "field `allowed_ips`: {net} overlaps the mesh network {mesh} or {mesh6}, whose addresses the server assigns"
                ),
            ));
        }
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// `POST /admin/tokens`: what the operator asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCreateRequest {
    #[serde(default)]
    uses: Option<u32>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

/// One token as `token list` shows it: never the hash, and a status column.
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    uses_left: Option<u32>,
    expires_at: Option<String>,
    tags: Vec<Tag>,
    created_at: String,
    revoked: bool,
    status: String,
}

fn token_view(t: &TokenRecord, now: SystemTime) -> TokenView {
    TokenView {
        id: t.id.to_string(),
        uses_left: t.uses_left,
        expires_at: t.expires_at.map(crate::audit::rfc3339),
        tags: t.tags.clone(),
        created_at: crate::audit::rfc3339(t.created_at),
        revoked: t.revoked,
        status: match t.check(now) {
            Ok(()) => "usable".into(),
            Err(crate::tokens::TokenError::Revoked { .. }) => "revoked".into(),
            Err(crate::tokens::TokenError::Expired { .. }) => "expired".into(),
            Err(crate::tokens::TokenError::UsedUp { .. }) => "used up".into(),
            Err(e) => e.to_string(),
        },
    }
}

/// One peer in the admin view: everything the registry holds, offline peers included.
#[derive(Debug, Serialize)]
struct AdminPeerView {
    id: PeerId,
    public_key: PublicKey,
    virtual_ip: std::net::Ipv4Addr,
    hostname: String,
    os: String,
    endpoint: Option<String>,
    online: bool,
    tags: Vec<Tag>,
    registered_at: String,
    last_heartbeat: String,
}

impl Api {
    /// Builds the API over a loaded registry and its store, signing with the server's key and
    /// deciding who may do what with `trust`.
    pub fn new(registry: Registry, store: Store, server_key: PrivateKey, trust: Trust) -> Api {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Api {
            registry: Mutex::new(registry),
            store: Mutex::new(store),
            cache: Mutex::new(HashMap::new()),
            deltas: Mutex::new(HashMap::new()),
            changes: Notifier::new(),
            me: std::sync::OnceLock::new(),
            metrics: Metrics::default(),
            server_public_key: server_key.public_key(),
            auth: ServerAuth::new(server_key, ReplayCache::default()),
            trust,
            auth_failures: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            epoch: u64::from_le_bytes(seed),
            stun_stats: std::sync::OnceLock::new(),
        }
    }

    /// Lets long-polls outlive their handler call (parked requests resume on this `Arc`);
    /// without it long-polls are answered at once.
    pub fn attach(self: &Arc<Api>) {
        let _ = self.me.set(Arc::downgrade(self));
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

    /// Re-reads the policy file (SIGHUP or `wgmesh policy reload`). A bad file keeps the old
    /// policy and returns the reason; a change is audited and invalidates every cached list.
    pub fn reload_policy(
        &self,
        source: Option<std::net::SocketAddr>,
    ) -> Result<(bool, String), String> {
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
                    lock(&self.cache).clear();
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

    /// Counts, logs and audits a refused authentication, and charges the source's budget.
    fn auth_failed(&self, req: &Request, key: Option<PublicKey>, id: Option<&PeerId>, why: &str) {
        let source = req.remote.ip().to_canonical();
        let _ = self.trust.auth_failure_limit.take(source, Instant::now());
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "refused {} {} from {}: {why}",
            req.method,
            req.path(),
            req.remote
        );
        let mut event = AuditEvent::new(AuditKind::AuthFailure, SystemTime::now())
            .source(req.remote)
            .detail(format!("{} {}: {why}", req.method, req.path()));
        if let Some(key) = key {
            event = event.peer_key(key);
        }
        if let Some(id) = id {
            event = event.peer_id(id.clone());
        }
        self.trust.audit(event);
    }

    /// Refuses sources that failed authentication too often, before any expensive work.
    fn check_failure_budget(&self, req: &Request) -> Result<(), Refusal> {
        let source = req.remote.ip().to_canonical();
        self.trust
            .auth_failure_limit
            .check(source, Instant::now())
            .map_err(|wait| {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                too_many("failed authentications", source, wait)
            })
    }

    /// Verifies the request's MAC and returns the key that signed it; remembers the signer so
    /// the answer gets signed too.
    fn authenticate(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<PublicKey, Refusal> {
        self.check_failure_budget(req)?;
        let verified = self.auth.verify_request(
            &|name| req.header(name),
            &req.method,
            &req.target,
            &req.body,
            SystemTime::now(),
        );
        match verified {
            Ok(key) => {
                *authed = Some(Authed {
                    key,
                    nonce: req.header(NONCE_HEADER).unwrap_or_default().to_owned(),
                });
                Ok(key)
            }
            Err(e) => {
                if e.http_status() == 401 {
                    let claimed = req
                        .header(auth::KEY_HEADER)
                        .and_then(|k| PublicKey::from_base64(k).ok());
                    self.auth_failed(req, claimed, None, &e.to_string());
                }
                Err(Refusal(e.http_status(), e.to_string()))
            }
        }
    }

    /// Checks that `key` (which signed the request) owns peer `id`: 404 for an unknown id
    /// (so the agent registers again), 401 for someone else's id.
    fn check_owner(&self, req: &Request, key: &PublicKey, id: &PeerId) -> Result<(), Refusal> {
        let owner = lock(&self.registry).by_id(id).map(|r| r.public_key);
        match owner {
            None => Err(unknown_peer(id)),
            Some(owner) if owner == *key => Ok(()),
            Some(_) => {
                let why =
                    format!("request signed by {key} concerns {id}, which belongs to another key");
                self.auth_failed(req, Some(*key), Some(id), &why);
                Err(Refusal(401, why))
            }
        }
    }

    fn register(&self, req: &Request, authed: &mut Option<Authed>) -> Result<Response, Refusal> {
        let source = req.remote.ip().to_canonical();
        self.trust
            .register_limit
            .take(source, Instant::now())
            .map_err(|wait| {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                too_many("registrations", source, wait)
            })?;
        let key = self.authenticate(req, authed)?;
        let body: RegisterRequest = parse_body(req)?;
        if body.public_key != key {
            let why = format!(
                "request signed by {key} tries to register {}: only a key's owner may register it",
                body.public_key
            );
            self.auth_failed(req, Some(key), None, &why);
            return Err(Refusal(401, why));
        }
        let network = lock(&self.registry).network();
        let mesh6 = crate::mesh6::prefix(&self.server_public_key);
        let allowed_ips = check_allowed_ips(&body, network, mesh6)?;
        let mut registration = Registration {
            public_key: body.public_key,
            hostname: body.hostname,
            os: body.os,
            endpoint: body.endpoint,
            listen_port: body.listen_port,
            exit_node: body.exit_node,
            allowed_ips,
            observed_ip: source,
            tags: Vec::new(),
        };
        let now = SystemTime::now();
        let mut store = lock(&self.store);
        let known = lock(&self.registry).knows(&key);
        // A known key proves ownership with its MAC and keeps the tags it joined with; a new
        // key needs an invitation, which is checked here but used up only once all else passed.
        let mut tokens = lock(&self.trust.tokens);
        let redeemed: Result<_, (u16, String)> = match &body.token {
            _ if known => Ok(None),
            None if self.trust.open => Ok(None),
            None => Err((
                401,
                "a join token is required to register a new key: pass --token \
                 (create one with `wgmesh token create` on the server)"
                    .to_owned(),
            )),
            Some(text) => {
                let mut next = tokens.store.clone();
                match next.redeem_record(text, now) {
                    Ok(record) => {
                        let record = record.clone();
                        registration.tags = record.tags.clone();
                        Ok(Some((next, record)))
                    }
                    Err(e) => Err((e.http_status(), e.to_string())),
                }
            }
        };
        let redeemed = match redeemed {
            Ok(r) => r,
            Err((status, why)) => {
                // Audit outside the locks: a refusal must not hold up other registrations.
                drop(tokens);
                drop(store);
                self.auth_failed(req, Some(key), None, &why);
                return Err(Refusal(status, why));
            }
        };
        let prepared = lock(&self.registry)
            .prepare(&registration, now)
            .map_err(|e| match e {
                IpamError::Exhausted(_) => Refusal(503, e.to_string()),
                other => Refusal(500, other.to_string()),
            })?;
        let record = match &prepared {
            Prepared::Unchanged(record) => {
                drop(tokens);
                drop(store);
                let moved = {
                    let mut registry = lock(&self.registry);
                    let before = registry.generation();
                    registry.heartbeat(&record.id, None, source, now);
                    registry.generation() != before
                };
                if moved {
                    self.changes.notify();
                }
                self.metrics
                    .registrations_repeat
                    .fetch_add(1, Ordering::Relaxed);
                record.clone()
            }
            Prepared::Write {
                record,
                fresh_address,
            } => {
                let previous = tokens.store.clone();
                if let Some((next, _)) = &redeemed {
                    if let Err(e) = tokens.replace(next.clone()) {
                        lock(&self.registry).abort(&prepared);
                        log::error!("cannot save the token file: {e}");
                        return Err(Refusal(
                            500,
                            format!("registration could not be stored: {e}"),
                        ));
                    }
                }
                let entry = JournalEntry::Put {
                    peer: record.clone(),
                };
                if let Err(e) = store.append(&entry) {
                    lock(&self.registry).abort(&prepared);
                    if redeemed.is_some() {
                        let _ = tokens.replace(previous);
                    }
                    log::error!("registration of {} failed: {e}", record.public_key);
                    return Err(Refusal(
                        500,
                        format!("registration could not be stored: {e}"),
                    ));
                }
                lock(&self.registry).commit(record.clone());
                drop(tokens);
                drop(store);
                self.changes.notify();
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
                counter.fetch_add(1, Ordering::Relaxed);
                let mut event = AuditEvent::new(AuditKind::Registration, now)
                    .source(req.remote)
                    .peer_key(record.public_key)
                    .detail(format!(
                        "{} {} as {} with tags {}",
                        if *fresh_address {
                            "registered"
                        } else {
                            "re-registered"
                        },
                        record.hostname,
                        record.virtual_ip,
                        crate::policy::describe_tags(&record.tags)
                    ));
                if let Some((_, token)) = &redeemed {
                    event = event.token(token.id.clone());
                }
                self.trust.audit(event);
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

    fn heartbeat(&self, req: &Request, authed: &mut Option<Authed>) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: HeartbeatRequest = parse_body(req)?;
        self.check_owner(req, &key, &body.peer_id)?;
        let observed = req.remote.ip().to_canonical();
        let (known, moved) = {
            let mut registry = lock(&self.registry);
            let before = registry.generation();
            let known = registry
                .heartbeat(&body.peer_id, body.endpoint, observed, SystemTime::now())
                .is_some();
            (known, registry.generation() != before)
        };
        if moved {
            self.changes.notify();
        }
        if !known {
            return Err(unknown_peer(&body.peer_id));
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    fn deregister(&self, req: &Request, id: &PeerId, by: &str) -> Result<Response, Refusal> {
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
        self.changes.notify();
        log::info!(
            "deregistered {id} ({}) {by}; {} returns to the pool",
            record.hostname,
            record.virtual_ip
        );
        self.metrics.deregistrations.fetch_add(1, Ordering::Relaxed);
        self.trust.audit(
            AuditEvent::new(AuditKind::Deregistration, SystemTime::now())
                .source(req.remote)
                .peer_key(record.public_key)
                .detail(format!(
                    "{} ({}) removed {by}",
                    record.hostname, record.virtual_ip
                )),
        );
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    fn peer_deregister(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
        id: Option<&str>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let id = match id {
            Some(raw) => raw
                .parse::<PeerId>()
                .map_err(|e| Refusal(400, format!("path: {e}")))?,
            None => parse_body::<DeregisterRequest>(req)?.peer_id,
        };
        self.check_owner(req, &key, &id)?;
        self.deregister(req, &id, "by itself")
    }

    fn etag(&self, generation: u64, policy_version: u64) -> String {
        format!("\"{:016x}-{generation}-{policy_version}\"", self.epoch)
    }

    /// `GET /peers` without holding: a long-poll reaching here (outside the connection
    /// layer's parking) is answered at once.
    fn peers(&self, req: &Request, authed: &mut Option<Authed>) -> Result<Response, Refusal> {
        let (query, tags) = self.peers_query(req, authed)?;
        Ok(self.peers_answer(req.header("if-none-match"), &query, &tags))
    }

    /// Authenticates a `/peers` request and parses it; returns the query and the caller's tags.
    fn peers_query(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<(PeersQuery, Vec<Tag>), Refusal> {
        let key = self.authenticate(req, authed)?;
        let query = PeersQuery::parse(|name| req.query_param(name)).map_err(|e| Refusal(400, e))?;
        self.check_owner(req, &key, &query.peer_id)?;
        let tags = match lock(&self.registry).by_id(&query.peer_id) {
            Some(record) => record.tags.clone(),
            None => return Err(unknown_peer(&query.peer_id)),
        };
        Ok((query, tags))
    }

    /// The answer to a `/peers` query right now: the full list (or 304), or what changed
    /// since its version (empty when nothing did).
    fn peers_answer(
        &self,
        if_none_match: Option<&str>,
        query: &PeersQuery,
        tags: &[Tag],
    ) -> Response {
        let id = &query.peer_id;
        let Some(since) = query.since else {
            return self.full_list(if_none_match, id, tags);
        };
        match self.answer_since(if_none_match, id, tags, since) {
            SinceAnswer::Ready(response) => response,
            SinceAnswer::Nothing(version) => delta_response(live::empty_delta(version)),
        }
    }

    /// The whole list a caller may see (`"full": true`), or 304 when its ETag is current.
    fn full_list(&self, if_none_match: Option<&str>, id: &PeerId, tags: &[Tag]) -> Response {
        let generation = lock(&self.registry).generation();
        let (_, policy_version) = self.trust.policy.current();
        let etag = self.etag(generation, policy_version);
        if let Some(tags) = if_none_match {
            if tags.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
                return Response {
                    status: 304,
                    headers: vec![("ETag", etag)],
                    body: Body::Empty,
                };
            }
        }
        let cache = self.current_list(tags);
        let parts = match cache.cut.get(id) {
            Some(cut) => [0..cut.start, cut.end..cache.body.len()],
            None => [0..cache.body.len(), 0..0],
        };
        Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("ETag", self.etag(cache.generation, cache.policy_version)),
            ],
            body: Body::Shared(cache.body.clone(), parts),
        }
    }

    /// What a caller at version `since` gets now: a delta, the full list when `since` cannot
    /// be answered as a delta, or nothing (with the version it is current at).
    fn answer_since(
        &self,
        if_none_match: Option<&str>,
        id: &PeerId,
        tags: &[Tag],
        since: u64,
    ) -> SinceAnswer {
        match self.group_delta(tags, since) {
            GroupAnswer::Full => SinceAnswer::Ready(self.full_list(if_none_match, id, tags)),
            GroupAnswer::Current(version) => SinceAnswer::Nothing(version),
            GroupAnswer::Delta(delta) if delta.is_empty_for(id) => {
                SinceAnswer::Nothing(delta.version)
            }
            GroupAnswer::Delta(delta) => SinceAnswer::Ready(delta_response(delta.body_for(id))),
        }
    }

    /// The delta from `since` to now for a tag group, computed and serialized once per
    /// group, `since` and version, whoever asks. The policy is read under the registry lock,
    /// where reloads swap it, so a delta and its version always belong together.
    fn group_delta(&self, group: &[Tag], since: u64) -> GroupAnswer {
        let mut slots = lock(&self.deltas);
        let key = (group.to_vec(), since);
        let registry = lock(&self.registry);
        let version = registry.generation();
        if let Some(delta) = slots.get(&key).filter(|d| d.version == version) {
            return GroupAnswer::Delta(delta.clone());
        }
        let (peers, policy_then) = match registry.changes().since(since) {
            Since::Current => return GroupAnswer::Current(version),
            Since::Full => return GroupAnswer::Full,
            Since::Delta { peers, policy_then } => (peers, policy_then),
        };
        let (policy, _) = self.trust.policy.current();
        let plan = changes::delta(
            &peers,
            policy_then.as_deref(),
            &policy,
            group,
            |id| {
                registry.by_id(id).map(|r| PeerState {
                    tags: &r.tags,
                    online: r.online,
                })
            },
            registry.online_ids(),
        );
        let entries: Vec<PeerInfo> = plan
            .changed
            .iter()
            .filter_map(|id| registry.info(id))
            .collect();
        drop(registry);
        let delta = Arc::new(GroupDelta {
            version,
            changed: entries
                .into_iter()
                .map(|entry| {
                    let bytes = serde_json::to_vec(&entry).expect("API types always serialize");
                    (entry.id, bytes)
                })
                .collect(),
            removed: plan.removed,
        });
        slots.retain(|_, d| d.version == version);
        slots.insert(key, delta.clone());
        GroupAnswer::Delta(delta)
    }

    /// `POST /offline`: a peer stopping on purpose leaves everyone's list now, keeping its
    /// registration and address; its next heartbeat or registration brings it back.
    fn offline(&self, req: &Request, authed: &mut Option<Authed>) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: OfflineRequest = parse_body(req)?;
        self.check_owner(req, &key, &body.peer_id)?;
        let (known, moved) = {
            let mut registry = lock(&self.registry);
            let before = registry.generation();
            let known = registry.offline(&body.peer_id).is_some();
            (known, registry.generation() != before)
        };
        if !known {
            return Err(unknown_peer(&body.peer_id));
        }
        if moved {
            self.changes.notify();
            log::info!("peer {} went offline on purpose", body.peer_id);
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// The cached list for a tag group at the current generation and policy, rebuilt by one
    /// thread when stale; the registry lock is held only to copy the entries, never while
    /// serializing.
    fn current_list(&self, group: &[Tag]) -> Arc<PeerListCache> {
        let mut slots = lock(&self.cache);
        let (policy, policy_version, generation, entries) = {
            let registry = lock(&self.registry);
            let (policy, policy_version) = self.trust.policy.current();
            let generation = registry.generation();
            if let Some(cache) = slots
                .get(group)
                .filter(|c| c.generation == generation && c.policy_version == policy_version)
            {
                return cache.clone();
            }
            (policy, policy_version, generation, registry.online_tagged())
        };
        if slots
            .values()
            .any(|c| c.generation != generation || c.policy_version != policy_version)
        {
            slots.clear();
        }
        let mine = policy.membership(group);
        let mut memberships: HashMap<Vec<Tag>, Membership> = HashMap::new();
        let visible: Vec<_> = entries
            .iter()
            .filter(|(tags, _)| {
                memberships
                    .entry(tags.clone())
                    .or_insert_with(|| policy.membership(tags))
                    .sees(&mine)
            })
            .map(|(_, entry)| entry)
            .collect();
        let mut body = Vec::with_capacity(64 + visible.len() * 320);
        body.extend_from_slice(
            format!("{{\"success\":true,\"version\":{generation},\"full\":true,\"peers\":[")
                .as_bytes(),
        );
        let mut spans = Vec::with_capacity(visible.len());
        for (i, entry) in visible.iter().enumerate() {
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
            policy_version,
            body: Arc::new(body),
            cut,
        });
        slots.insert(group.to_vec(), cache.clone());
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
        let extra = format!(
            "# HELP wgmesh_auth_failures_total Requests refused for a bad MAC, stale time, replay, wrong key, bad token or admin secret.\n\
             # TYPE wgmesh_auth_failures_total counter\n\
             wgmesh_auth_failures_total {}\n\
             # HELP wgmesh_rate_limited_total Requests answered 429.\n\
             # TYPE wgmesh_rate_limited_total counter\n\
             wgmesh_rate_limited_total {}\n",
            self.auth_failures.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed)
        );
        Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".into())],
            body: Body::Owned(
                self.metrics
                    .render(total, online, &(extra + &self.stun_metrics()))
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

    /// Checks the admin secret; failures count against the source's failure budget.
    fn admin_check(&self, req: &Request) -> Result<(), Refusal> {
        self.check_failure_budget(req)?;
        if self.trust.admin.matches(req.header(ADMIN_HEADER)) {
            return Ok(());
        }
        let why = "admin requests need `Authorization: Bearer SECRET` with the server's \
                   admin.secret (peers' own credentials never open /admin)";
        self.auth_failed(req, None, None, why);
        Err(Refusal(401, why.into()))
    }

    fn admin(&self, req: &Request, rest: &str) -> Result<Response, Refusal> {
        self.admin_check(req)?;
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        let now = SystemTime::now();
        match (method, rest) {
            ("GET", "tokens") => {
                let tokens = lock(&self.trust.tokens);
                let list: Vec<TokenView> = tokens
                    .store
                    .list()
                    .iter()
                    .map(|t| token_view(t, now))
                    .collect();
                Ok(ok_json(
                    &serde_json::json!({"success": true, "tokens": list}),
                ))
            }
            ("POST", "tokens") => {
                let body: TokenCreateRequest = parse_body(req)?;
                let expires = body
                    .expires
                    .as_deref()
                    .map(crate::tokens::parse_expiry)
                    .transpose()
                    .map_err(|e| Refusal(400, format!("field `expires`: {e}")))?;
                let mut tokens = lock(&self.trust.tokens);
                let mut next = tokens.store.clone();
                let (secret, record) = next
                    .create(body.uses, expires, body.tags, now)
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                tokens
                    .replace(next)
                    .map_err(|e| Refusal(500, format!("token could not be stored: {e}")))?;
                drop(tokens);
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenCreate, now)
                        .source(req.remote)
                        .token(record.id.clone())
                        .detail(format!(
                            "uses {}, expires {}, tags {}",
                            record
                                .uses_left
                                .map_or("unlimited".into(), |n| n.to_string()),
                            record
                                .expires_at
                                .map_or("never".into(), crate::audit::rfc3339),
                            crate::policy::describe_tags(&record.tags)
                        )),
                );
                log::info!("created join token {}", record.id);
                let view = token_view(&record, now);
                Ok(ok_json(
                    &serde_json::json!({"success": true, "token": secret, "info": view}),
                ))
            }
            ("GET", "peers") => {
                let records = lock(&self.registry).records();
                let list: Vec<AdminPeerView> = records
                    .iter()
                    .map(|r| AdminPeerView {
                        id: r.id.clone(),
                        public_key: r.public_key,
                        virtual_ip: r.virtual_ip,
                        hostname: r.hostname.to_string(),
                        os: r.os.to_string(),
                        endpoint: r.published_endpoint().map(|e| e.to_string()),
                        online: r.online,
                        tags: r.tags.clone(),
                        registered_at: crate::audit::rfc3339(r.registered_at),
                        last_heartbeat: crate::audit::rfc3339(r.last_heartbeat),
                    })
                    .collect();
                Ok(ok_json(
                    &serde_json::json!({"success": true, "peers": list}),
                ))
            }
            ("POST", "policy/reload") => match self.reload_policy(Some(req.remote)) {
                Ok((changed, policy)) => Ok(ok_json(
                    &serde_json::json!({"success": true, "changed": changed, "policy": policy}),
                )),
                Err(e) => Err(Refusal(400, format!("{e}; the old policy stays in force"))),
            },
            _ => {
                if let Some(id) = rest.strip_prefix("tokens/") {
                    if method != "DELETE" {
                        return Err(Refusal(
                            405,
                            format!("{method} is not allowed here: use DELETE"),
                        ));
                    }
                    let mut tokens = lock(&self.trust.tokens);
                    let mut next = tokens.store.clone();
                    let record = next
                        .revoke(id)
                        .map_err(|e| Refusal(e.http_status(), e.to_string()))?
                        .clone();
                    tokens
                        .replace(next)
                        .map_err(|e| Refusal(500, format!("token could not be stored: {e}")))?;
                    drop(tokens);
                    self.trust.audit(
                        AuditEvent::new(AuditKind::TokenRevoke, now)
                            .source(req.remote)
                            .token(record.id.clone())
                            .detail("revoked"),
                    );
                    log::info!("revoked join token {}", record.id);
                    return Ok(ok_json(&SuccessResponse { success: true }));
                }
                if let Some(raw) = rest.strip_prefix("peers/") {
                    if method != "DELETE" {
                        return Err(Refusal(
                            405,
                            format!("{method} is not allowed here: use DELETE"),
                        ));
                    }
                    let id: PeerId = raw
                        .parse()
                        .map_err(|e| Refusal(400, format!("path: {e}")))?;
                    return self.deregister(req, &id, "by an operator");
                }
                Err(Refusal(
                    404,
                    format!("no such admin endpoint: {method} /admin/{rest}"),
                ))
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
            Err(Refusal(
                405,
                format!("{method} is not allowed on {path}: use {allow}"),
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

fn unknown_peer(id: &PeerId) -> Refusal {
    Refusal(
        404,
        format!("unknown peer {id}: it never registered or was deregistered; register again"),
    )
}

/// What finishing an answer needs to know of its request (a parked request is gone by then).
struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
    remote: std::net::SocketAddr,
}

impl RequestLine<'_> {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// A long-poll held until something its caller sees changes: everything needed to answer
/// it later, since the request itself (and its nonce) cannot be run again.
struct HeldPoll {
    id: PeerId,
    tags: Vec<Tag>,
    since: u64,
    deadline: Instant,
    authed: Option<Authed>,
    method: String,
    target: String,
    remote: std::net::SocketAddr,
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
                let mut response: Response = refusal.into();
                if response.status == 405 {
                    let allow = match endpoint {
                        MetricEndpoint::Peers
                        | MetricEndpoint::Healthz
                        | MetricEndpoint::Metrics => "GET",
                        MetricEndpoint::Deregister if req.path().starts_with("/peers/") => "DELETE",
                        MetricEndpoint::Other if req.path() == "/key" => "GET",
                        MetricEndpoint::Other if req.path() == "/offline" => "POST",
                        MetricEndpoint::Other => "DELETE",
                        _ => "POST",
                    };
                    response = response.with_header("Allow", allow.into());
                }
                response
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

    /// `GET /peers?...&wait=SECS`: answered now when there is something to say (or the
    /// request is refused), else parked in the connection layer without a thread until the
    /// version moves or the wait runs out.
    fn long_poll(&self, req: &Request) -> Reply {
        let started = Instant::now();
        let line = RequestLine {
            method: &req.method,
            target: &req.target,
            remote: req.remote,
        };
        let mut authed = None;
        let prepared = self.peers_query(req, &mut authed);
        let (query, tags) = match prepared {
            Ok(ok) => ok,
            Err(refusal) => {
                return Reply::Now(self.finish(
                    &line,
                    MetricEndpoint::Peers,
                    started,
                    authed.as_ref(),
                    Err(refusal),
                ))
            }
        };
        let (Some(since), Some(wait), Some(api)) = (
            query.since,
            query.wait,
            self.me.get().and_then(std::sync::Weak::upgrade),
        ) else {
            let result = self.peers_answer(req.header("if-none-match"), &query, &tags);
            return Reply::Now(self.finish(
                &line,
                MetricEndpoint::Peers,
                started,
                authed.as_ref(),
                Ok(result),
            ));
        };
        let held = HeldPoll {
            id: query.peer_id,
            tags,
            since,
            deadline: Instant::now() + wait,
            authed,
            method: req.method.clone(),
            target: req.target.clone(),
            remote: req.remote,
        };
        api.hold(held, None)
    }

    /// Answers a held long-poll if its caller has something to see (or its time ran out),
    /// else parks it (again) until the next change.
    fn hold(self: Arc<Self>, held: HeldPoll, wake: Option<Wake>) -> Reply {
        let started = Instant::now();
        let seen = self.changes.version();
        let answer = self.answer_since(None, &held.id, &held.tags, held.since);
        let response = match answer {
            SinceAnswer::Ready(response) => response,
            SinceAnswer::Nothing(version)
                if wake == Some(Wake::Deadline) || Instant::now() >= held.deadline =>
            {
                delta_response(live::empty_delta(version))
            }
            SinceAnswer::Nothing(_) => {
                let (notifier, deadline) = (self.changes.clone(), held.deadline);
                let api = self.clone();
                return Reply::Park(Park::new(&notifier, seen, deadline, move |wake| {
                    api.hold(held, Some(wake))
                }));
            }
        };
        let line = RequestLine {
            method: &held.method,
            target: &held.target,
            remote: held.remote,
        };
        Reply::Now(self.finish(
            &line,
            MetricEndpoint::Peers,
            started,
            held.authed.as_ref(),
            Ok(response),
        ))
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
