//! The API's paths when replicas share a PostgreSQL database (`--store`, see
//! `crate::server::pg`): each change is decided and written in one locked transaction, then
//! applied to this replica's cached registry; other replicas catch up on `NOTIFY`.
//! Reads (`/peers`, `/healthz` counts) come from the cache; when the database is
//! unreachable, changes are answered 503 and nothing is half-written.

use super::error::{ok_json, unknown_peer, Refusal};
use super::{lock, Api};
use crate::keys::PublicKey;
use crate::proto::model::{RegisterResponse, SuccessResponse};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::ipam::IpamError;
use crate::server::pg::pool::DbError;
use crate::server::pg::{self, Change, PgStore};
use crate::server::policy::Policy;
use crate::server::registry::{Prepared, Registration};
use crate::server::store::PeerRecord;
use crate::types::{PeerId, TokenId};
use ipnet::Ipv4Net;
use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a replica keeps beside its cached registry.
#[derive(Debug)]
pub struct Replica {
    /// The shared database.
    pub db: Arc<PgStore>,
    /// The sequence number the cache is current to; held while catching up or writing so
    /// the two never interleave on this replica.
    seq: Mutex<i64>,
    /// Heartbeats answered here since the last flush: key -> last seen.
    pending: Mutex<HashMap<PublicKey, SystemTime>>,
    /// When a request for an unknown peer last made this replica catch up, so a stream of
    /// such requests costs at most one query per [`UNKNOWN_PEER_CATCH_UP`].
    last_lookup: Mutex<Option<std::time::Instant>>,
    /// Where agents reach this replica (`--advertise`), announced every sweep.
    advertise: std::sync::OnceLock<String>,
    /// How long an announcement counts: a replica silent for longer is left out of
    /// `GET /replicas`.
    ttl: Duration,
}

/// How often a request naming an unknown peer may make the replica ask the database.
const UNKNOWN_PEER_CATCH_UP: Duration = Duration::from_millis(100);

impl Replica {
    /// Counts announcements for `ttl` (the heartbeat timeout: a replica is treated like a
    /// peer).
    pub fn with_ttl(mut self, ttl: Duration) -> Replica {
        self.ttl = ttl;
        self
    }

    /// Tells the other replicas (and through `GET /replicas`, the agents) this one is alive.
    pub fn announce(&self) {
        if let Some(url) = self.advertise.get() {
            if let Err(e) = self.db.announce(url) {
                log::warn!("cannot announce this replica: {e}");
            }
        }
    }

    /// A replica whose cache was loaded at sequence `seq`.
    pub fn new(db: Arc<PgStore>, seq: i64) -> Replica {
        Replica {
            db,
            seq: Mutex::new(seq),
            pending: Mutex::new(HashMap::new()),
            last_lookup: Mutex::new(None),
            advertise: std::sync::OnceLock::new(),
            ttl: Duration::from_secs(120),
        }
    }
}

/// The answer when the database could not do its part: 503 for an outage (retry), 500 for
/// data this build cannot use.
pub fn db_refusal(e: &DbError) -> Refusal {
    if e.is_outage() {
        Refusal(
            503,
            format!("{e}: nothing was changed; retry shortly (another replica may answer)"),
        )
    } else {
        Refusal(500, format!("{e}: nothing was changed"))
    }
}

// Lives only for the length of one request, never in bulk.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Refused {
        status: u16,
        why: String,
        audit: bool,
    },
    Done {
        record: PeerRecord,
        fresh: Option<bool>,
        token: Option<TokenId>,
        seq: Option<i64>,
    },
}

impl Api {
    fn apply_changes(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut registry = lock(&self.registry);
        for change in changes {
            match change {
                Change::Put(record) => registry.apply_remote(*record),
                Change::Delete(key) => {
                    registry.remove(&PeerId::for_key(&key));
                }
            }
        }
    }

    /// Brings the cache up to date with the database.
    pub fn catch_up(&self) -> Result<(), DbError> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        let mut seq = lock(&r.seq);
        let (changes, reached) = r.db.changes_since(*seq)?;
        self.apply_changes(changes);
        *seq = reached;
        Ok(())
    }

    /// Catches up before answering "unknown peer" (it may have registered through another
    /// replica a moment ago), at most once per [`UNKNOWN_PEER_CATCH_UP`].
    pub(super) fn catch_up_for_unknown(&self) {
        let Some(r) = &self.replica else { return };
        let now = std::time::Instant::now();
        {
            let mut last = lock(&r.last_lookup);
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_PEER_CATCH_UP) {
                return;
            }
            *last = Some(now);
        }
        if let Err(e) = self.catch_up() {
            log::debug!("cannot catch up with the database: {e}");
        }
    }

    /// Writes the heartbeats batched since the last sweep (also at shutdown, so a clean
    /// stop loses none).
    pub(super) fn flush_heartbeats(&self, r: &Replica) -> Result<(), DbError> {
        let batch: Vec<(PublicKey, SystemTime)> = lock(&r.pending).drain().collect();
        if let Err(e) = r.db.flush_last_seen(&batch) {
            let mut pending = lock(&r.pending);
            for (k, t) in batch {
                let slot = pending.entry(k).or_insert(t);
                *slot = (*slot).max(t);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Loads the cluster's policy from the database and puts it in force here.
    pub fn policy_from_db(&self) {
        let Some(r) = &self.replica else { return };
        match r.db.policy() {
            Ok(Some(text)) => match Policy::from_json(&text) {
                Ok(policy) => {
                    if self.trust.policy.replace(policy) {
                        self.cache.clear();
                        log::info!("access policy changed by another replica");
                    }
                }
                Err(e) => log::error!("the database holds an unusable policy: {e}"),
            },
            Ok(None) => {}
            Err(e) => log::warn!("cannot read the policy from the database: {e}"),
        }
    }

    pub(super) fn reload_policy_replica(
        &self,
        r: &Replica,
        source: Option<std::net::SocketAddr>,
    ) -> Result<(bool, String), String> {
        let Some(path) = self.trust.policy.path() else {
            self.policy_from_db();
            let (policy, _) = self.trust.policy.current();
            return Ok((false, policy.to_string()));
        };
        let fresh = Policy::load(path).map_err(|e| e.to_string())?;
        r.db.set_policy(&fresh.to_json_pretty())
            .map_err(|e| format!("cannot publish the policy to the other replicas: {e}"))?;
        let text = fresh.to_string();
        let changed = self.trust.policy.replace(fresh);
        if changed {
            self.cache.clear();
            log::info!("access policy reloaded and published to every replica: {text}");
            let mut event = AuditEvent::new(AuditKind::PolicyChange, SystemTime::now())
                .detail(format!("policy reloaded: {text}"));
            if let Some(addr) = source {
                event = event.source(addr);
            }
            self.trust.audit(event);
        }
        Ok((changed, text))
    }

    /// Refuses a signed write whose nonce some replica already accepted.
    pub(super) fn claim_nonce(&self, req: &Request, key: &PublicKey) -> Result<(), Refusal> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        let write = (req.method == "POST" && req.path() != "/heartbeat") || req.method == "DELETE";
        if !write {
            return Ok(());
        }
        let nonce = req
            .header(crate::proto::auth::NONCE_HEADER)
            .unwrap_or_default();
        let now = pg::millis(SystemTime::now()) as u64 / 1000;
        let expires = now + 2 * crate::proto::auth::DEFAULT_MAX_CLOCK_SKEW_SECS;
        match r.db.claim_nonce(nonce.as_bytes(), expires) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let e = crate::proto::auth::AuthError::Replayed;
                self.auth_failed(req, Some(*key), None, &format!("{e} (on another replica)"));
                Err(Refusal(e.http_status(), e.to_string()))
            }
            Err(e) => Err(db_refusal(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_replica(
        &self,
        r: &Replica,
        req: &Request,
        key: PublicKey,
        mut registration: Registration,
        token: Option<&str>,
        now: SystemTime,
        network: Ipv4Net,
    ) -> Result<Response, Refusal> {
        let mut seq = lock(&r.seq);
        let mut prepared_slot: Option<Prepared> = None;
        let open = self.trust.open;
        let result = r.db.write("peers", |tx| {
            if let Some(p) = prepared_slot.take() {
                lock(&self.registry).abort(&p);
            }
            let (changes, reached) = pg::changes_since(tx, *seq)?;
            self.apply_changes(changes);
            *seq = reached;
            let known = lock(&self.registry).knows(&key);
            let mut token_id = None;
            match token {
                _ if known => {}
                None if open => {}
                None => {
                    return Ok(Outcome::Refused {
                        status: 401,
                        why: "a join token is required to register a new key: pass --token \
                              (create one with `wgmesh token create` on the server)"
                            .into(),
                        audit: true,
                    })
                }
                Some(text) => {
                    let mut store = pg::load_tokens(tx)?;
                    match store.redeem_record(text, now) {
                        Ok(record) => {
                            registration.tags = record.tags.clone();
                            pg::put_token(tx, record)?;
                            token_id = Some(record.id.clone());
                        }
                        Err(e) => {
                            return Ok(Outcome::Refused {
                                status: e.http_status(),
                                why: e.to_string(),
                                audit: true,
                            })
                        }
                    }
                }
            }
            let prepared = match lock(&self.registry).prepare(&registration, now) {
                Ok(p) => p,
                Err(e) => {
                    let status = if matches!(e, IpamError::Exhausted(_)) {
                        503
                    } else {
                        500
                    };
                    return Ok(Outcome::Refused {
                        status,
                        why: e.to_string(),
                        audit: false,
                    });
                }
            };
            let (record, fresh) = match &prepared {
                Prepared::Unchanged(record) if record.online => {
                    return Ok(Outcome::Done {
                        record: record.clone(),
                        fresh: None,
                        token: token_id,
                        seq: None,
                    })
                }
                Prepared::Unchanged(record) => {
                    let mut record = record.clone();
                    record.online = true;
                    record.last_heartbeat = now;
                    (record, false)
                }
                Prepared::Write {
                    record,
                    fresh_address,
                } => (record.clone(), *fresh_address),
            };
            prepared_slot = Some(prepared);
            let s = pg::put_peer(tx, &record)?;
            Ok(Outcome::Done {
                record,
                fresh: Some(fresh),
                token: token_id,
                seq: Some(s),
            })
        });
        let source = req.remote.ip().to_canonical();
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                if let Some(p) = prepared_slot.take() {
                    lock(&self.registry).abort(&p);
                }
                log::error!("registration of {key} failed: {e}");
                return Err(db_refusal(&e));
            }
        };
        let (record, fresh, token) = match outcome {
            Outcome::Refused { status, why, audit } => {
                drop(seq);
                if audit {
                    self.auth_failed(req, Some(key), None, &why);
                }
                return Err(Refusal(status, why));
            }
            Outcome::Done {
                record,
                fresh,
                token,
                seq: s,
            } => {
                match fresh {
                    None => {
                        lock(&self.registry).heartbeat(&record.id, None, source, now);
                        lock(&r.pending).insert(key, now);
                    }
                    Some(_) => lock(&self.registry).commit(record.clone()),
                }
                if let Some(s) = s {
                    *seq = s;
                }
                (record, fresh, token)
            }
        };
        drop(seq);
        let counter = if fresh == Some(true) {
            log::info!(
                "registered {} ({}) as {}",
                record.id,
                record.hostname,
                record.virtual_ip
            );
            &self.metrics.registrations_new
        } else {
            &self.metrics.registrations_repeat
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(fresh) = fresh {
            let mut event = AuditEvent::new(AuditKind::Registration, now)
                .source(req.remote)
                .peer_key(record.public_key)
                .detail(format!(
                    "{} {} as {} with tags {}",
                    if fresh { "registered" } else { "re-registered" },
                    record.hostname,
                    record.virtual_ip,
                    crate::server::policy::describe_tags(&record.tags)
                ));
            if let Some(id) = token {
                event = event.token(id);
            }
            self.trust.audit(event);
        }
        Ok(ok_json(&RegisterResponse {
            success: true,
            assigned_ip: record.virtual_ip,
            network_cidr: network,
            peer_id: record.id,
            server_public_key: self.server_public_key,
            dns_name: record.dns_name,
        }))
    }

    /// A heartbeat: in memory (batched to the database at the next sweep) unless others
    /// would see the change, which is written first.
    pub(super) fn heartbeat_replica(
        &self,
        r: &Replica,
        id: &PeerId,
        endpoint: Option<crate::types::Endpoint>,
        observed: std::net::IpAddr,
    ) -> Result<Response, Refusal> {
        let now = SystemTime::now();
        let preview = lock(&self.registry).heartbeat_preview(id, endpoint, observed, now);
        let Some((record, visible)) = preview else {
            return Err(unknown_peer(id));
        };
        if visible {
            let mut seq = lock(&r.seq);
            let written = r.db.write("peers", |tx| {
                let (changes, reached) = pg::changes_since(tx, *seq)?;
                self.apply_changes(changes);
                *seq = reached;
                let current = lock(&self.registry).heartbeat_preview(id, endpoint, observed, now);
                match current {
                    Some((record, _)) => pg::put_peer(tx, &record).map(Some),
                    None => Ok(None),
                }
            });
            match written {
                Ok(Some(s)) => {
                    lock(&self.registry).heartbeat(id, endpoint, observed, now);
                    *seq = s;
                }
                Ok(None) => return Err(unknown_peer(id)),
                Err(e) => return Err(db_refusal(&e)),
            }
        } else {
            lock(&self.registry).heartbeat(id, endpoint, observed, now);
            lock(&r.pending).insert(record.public_key, now);
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    pub(super) fn deregister_replica(
        &self,
        r: &Replica,
        req: &Request,
        id: &PeerId,
        by: &str,
    ) -> Result<Response, Refusal> {
        let mut seq = lock(&r.seq);
        let result = r.db.write("peers", |tx| {
            let (changes, reached) = pg::changes_since(tx, *seq)?;
            self.apply_changes(changes);
            *seq = reached;
            let Some(record) = lock(&self.registry).by_id(id).cloned() else {
                return Ok(None);
            };
            let s = pg::delete_peer(tx, &record.public_key)?;
            Ok(Some((record, s)))
        });
        let (record, s) = match result {
            Ok(Some(found)) => found,
            Ok(None) => return Err(unknown_peer(id)),
            Err(e) => return Err(db_refusal(&e)),
        };
        lock(&self.registry).remove(id);
        *seq = s;
        drop(seq);
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

    /// The sweep of a replica: write the batched heartbeats, mark peers silent across the
    /// whole cluster offline (from the database's last-seen times, so replicas agree), catch
    /// up, and forget expired nonces.
    pub(super) fn sweep_replica(&self, r: &Replica, timeout: Duration) {
        if let Err(e) = self.flush_heartbeats(r) {
            log::warn!("cannot write heartbeats to the database (kept for the next sweep): {e}");
            return;
        }
        let now = SystemTime::now();
        let cutoff = now.checked_sub(timeout).unwrap_or(std::time::UNIX_EPOCH);
        match r.db.write("peers", |tx| pg::mark_offline(tx, cutoff)) {
            Ok(n) if n > 0 => {
                log::warn!("{n} peer(s) timed out: no heartbeat on any replica, marked offline");
                self.metrics.timeouts.fetch_add(n, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => log::warn!("sweep could not reach the database: {e}"),
        }
        if let Err(e) = self.catch_up() {
            log::warn!("cannot catch up with the database: {e}");
        }
        let _ = r.db.purge_nonces(now);
        r.announce();
    }

    /// Publishes where agents reach this replica (once, when the socket is bound) and
    /// announces it at once.
    pub fn advertise(&self, url: String) {
        if let Some(r) = &self.replica {
            log::info!("announcing this replica as {url}");
            let _ = r.advertise.set(url);
            r.announce();
        }
    }

    /// `GET /replicas`: the replicas that announced themselves lately, for agents that must
    /// agree on one of them (see `crate::proto::replicas`); empty on the JSON store.
    pub(super) fn replicas_answer(&self) -> Result<Response, Refusal> {
        let list = match &self.replica {
            None => Vec::new(),
            Some(r) => {
                let since = SystemTime::now()
                    .checked_sub(r.ttl)
                    .unwrap_or(std::time::UNIX_EPOCH);
                r.db.replicas(since).map_err(|e| db_refusal(&e))?
            }
        };
        Ok(ok_json(
            &serde_json::json!({"success": true, "replicas": list}),
        ))
    }

    /// The admin token endpoints on the shared database; None for other endpoints.
    pub(super) fn admin_tokens_replica(
        &self,
        r: &Replica,
        req: &Request,
        rest: &str,
        now: SystemTime,
    ) -> Option<Result<Response, Refusal>> {
        use crate::proto::admin::{TokenCreateRequest, TokenCreateResponse, TokenListResponse};
        let method = req.method.as_str();
        Some(match (method, rest) {
            ("GET", "tokens") => r.db.tokens().map_err(|e| db_refusal(&e)).map(|store| {
                ok_json(&TokenListResponse {
                    success: true,
                    tokens: store
                        .list()
                        .iter()
                        .map(|t| super::admin::token_view(t, now))
                        .collect(),
                })
            }),
            ("POST", "tokens") => (|| {
                let body: TokenCreateRequest = super::error::parse_body(req)?;
                let expires = body
                    .expires
                    .as_deref()
                    .map(crate::server::tokens::parse_expiry)
                    .transpose()
                    .map_err(|e| Refusal(400, format!("field `expires`: {e}")))?;
                let made = r.db.write("tokens", |tx| {
                    let mut store = pg::load_tokens(tx)?;
                    match store.create(body.uses, expires, body.tags.clone(), now) {
                        Ok((secret, record)) => {
                            pg::put_token(tx, &record)?;
                            Ok(Ok((secret, record)))
                        }
                        Err(e) => Ok(Err(e)),
                    }
                });
                let (secret, record) = made
                    .map_err(|e| db_refusal(&e))?
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenCreate, now)
                        .source(req.remote)
                        .token(record.id.clone())
                        .detail("created"),
                );
                log::info!("created join token {}", record.id);
                Ok(ok_json(&TokenCreateResponse {
                    info: super::admin::token_view(&record, now),
                    success: true,
                    token: secret,
                }))
            })(),
            ("DELETE", _) if rest.starts_with("tokens/") => (|| {
                let id = &rest["tokens/".len()..];
                let revoked = r.db.write("tokens", |tx| {
                    let mut store = pg::load_tokens(tx)?;
                    match store.revoke(id) {
                        Ok(record) => {
                            let record = record.clone();
                            pg::put_token(tx, &record)?;
                            Ok(Ok(record))
                        }
                        Err(e) => Ok(Err(e)),
                    }
                });
                let record = revoked
                    .map_err(|e| db_refusal(&e))?
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenRevoke, now)
                        .source(req.remote)
                        .token(record.id.clone())
                        .detail("revoked"),
                );
                Ok(ok_json(&SuccessResponse { success: true }))
            })(),
            _ => return None,
        })
    }
}

/// Keeps one connection LISTENing and catches the cache up whenever another replica (or
/// this one) commits a change, and at least every few seconds; reconnects after an outage
/// and then catches up in full.
pub fn listen_loop(api: &Api, stop: &AtomicBool) {
    let Some(r) = &api.replica else { return };
    while !stop.load(Ordering::Relaxed) {
        let mut client = match r.db.listen_connection() {
            Ok(c) => c,
            Err(e) => {
                let _ = r.db.note::<()>(Err(e));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let _ = r.db.note(api.catch_up());
        api.policy_from_db();
        let mut idle_rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let (mut peers, mut policy, mut broken) = (false, false, false);
            {
                // Wait for the first notification, then take whatever else is queued without
                // waiting: a steady stream of changes must not postpone catching up.
                let mut notes = client.notifications();
                let first = notes.timeout_iter(Duration::from_millis(250)).next();
                let mut seen = Vec::new();
                match first {
                    Ok(Some(n)) => {
                        seen.push(n);
                        let mut queued = notes.iter();
                        loop {
                            match queued.next() {
                                Ok(Some(n)) => seen.push(n),
                                Ok(None) => break,
                                Err(_) => {
                                    broken = true;
                                    break;
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => broken = true,
                }
                for n in &seen {
                    match n.payload() {
                        "policy" => policy = true,
                        _ => peers = true,
                    }
                }
            }
            if broken || client.is_closed() {
                break;
            }
            idle_rounds += 1;
            if peers || idle_rounds >= 20 {
                idle_rounds = 0;
                if let Err(e) = r.db.note(api.catch_up()) {
                    log::warn!("cannot catch up with the database: {e}");
                }
            }
            if policy {
                api.policy_from_db();
            }
        }
    }
}
