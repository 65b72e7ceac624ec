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
use crate::server::pg::{self, PgStore};
use crate::server::registry::{Prepared, Registration};
use crate::server::store::PeerRecord;
use crate::types::{PeerId, TokenId};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a replica keeps beside its cached registry.
#[derive(Debug)]
pub struct Replica {
    /// The shared database.
    pub db: Arc<PgStore>,
    /// The sequence number the cache is current to; held while catching up or writing so
    /// the two never interleave on this replica.
    pub(super) seq: Mutex<i64>,
    /// Heartbeats answered here since the last flush: key -> last seen.
    pub(super) pending: Mutex<HashMap<PublicKey, SystemTime>>,
    /// When a request for an unknown peer last made this replica catch up, so a stream of
    /// such requests costs at most one query per [`UNKNOWN_PEER_CATCH_UP`].
    pub(super) last_lookup: Mutex<Option<std::time::Instant>>,
    /// Where agents reach this replica (`--advertise`), announced every sweep.
    pub(super) advertise: std::sync::OnceLock<String>,
    /// How long an announcement counts: a replica silent for longer is left out of
    /// `GET /replicas`.
    pub(super) ttl: Duration,
    /// Nonce claims waiting for the next group commit.
    pub(super) claims: crate::server::pg::nonces::NonceClaims,
    /// The last `GET /replicas` list read from the database, and when.
    pub(super) listed: Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

/// How often a request naming an unknown peer may make the replica ask the database.
pub(super) const UNKNOWN_PEER_CATCH_UP: Duration = Duration::from_millis(100);

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
            claims: Default::default(),
            listed: Mutex::new(None),
        }
    }
}

/// The version of this replica's own write, committed at sequence `seq` (the write lock was
/// held, so it follows every change applied before it): every replica records it there.
fn at(seq: Option<i64>) -> u64 {
    super::replica_sync::version_of(seq.unwrap_or(0))
}

/// The answer when the database could not do its part: 503 for an outage (retry), 500 for
/// data this build cannot use.
pub fn db_refusal(e: &DbError) -> Refusal {
    claim_refusal(&crate::server::pg::nonces::ClaimFailed::from(e))
}

/// [`db_refusal`] for a failure shared by a whole group commit.
pub(super) fn claim_refusal(failed: &crate::server::pg::nonces::ClaimFailed) -> Refusal {
    if failed.outage {
        Refusal(
            503,
            format!(
                "{}: nothing was changed; retry shortly (another replica may answer)",
                failed.text
            ),
        )
    } else {
        Refusal(500, format!("{}: nothing was changed", failed.text))
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
            self.apply_changes(changes, reached);
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
                        self.change_registry(|reg| {
                            reg.heartbeat(&record.id, None, source, now).is_some()
                        });
                        lock(&r.pending).insert(key, now);
                    }
                    Some(_) => self.change_registry(|reg| {
                        reg.advance_to(at(s));
                        reg.commit(record.clone())
                    }),
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
        let Some((record, mut visible)) = preview else {
            return Err(unknown_peer(id));
        };
        if !visible {
            // Decided again under the registry lock: a change applied since the preview (the
            // sweep taking the peer offline) makes this heartbeat visible, and visible changes
            // go through the database first, or replicas would disagree on what they show.
            visible = !self.change_registry(|reg| {
                let quiet = reg
                    .heartbeat_preview(id, endpoint, observed, now)
                    .is_some_and(|(_, visible)| !visible);
                if quiet {
                    reg.heartbeat(id, endpoint, observed, now);
                }
                quiet
            });
            if !visible {
                lock(&r.pending).insert(record.public_key, now);
            }
        }
        if visible {
            let mut seq = lock(&r.seq);
            let written = r.db.write("peers", |tx| {
                let (changes, reached) = pg::changes_since(tx, *seq)?;
                self.apply_changes(changes, reached);
                *seq = reached;
                let current = lock(&self.registry).heartbeat_preview(id, endpoint, observed, now);
                match current {
                    Some((record, _)) => pg::put_peer(tx, &record).map(Some),
                    None => Ok(None),
                }
            });
            match written {
                Ok(Some(s)) => {
                    self.change_registry(|reg| {
                        reg.advance_to(at(Some(s)));
                        reg.heartbeat(id, endpoint, observed, now).is_some()
                    });
                    *seq = s;
                }
                Ok(None) => return Err(unknown_peer(id)),
                Err(e) => return Err(db_refusal(&e)),
            }
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// `POST /offline` on a replica: written to the database first (so every replica drops
    /// the peer and its long-polls wake), then applied here. Returns whether the peer is
    /// known; a peer already offline writes nothing.
    pub(super) fn offline_replica(&self, r: &Replica, id: &PeerId) -> Result<bool, Refusal> {
        let mut seq = lock(&r.seq);
        let written = r.db.write("peers", |tx| {
            let (changes, reached) = pg::changes_since(tx, *seq)?;
            self.apply_changes(changes, reached);
            *seq = reached;
            let Some(mut record) = lock(&self.registry).by_id(id).cloned() else {
                return Ok(None);
            };
            if !record.online {
                return Ok(Some(None));
            }
            record.online = false;
            pg::put_peer(tx, &record).map(|s| Some(Some(s)))
        });
        match written {
            Ok(None) => Ok(false),
            Ok(Some(None)) => Ok(true),
            Ok(Some(Some(s))) => {
                self.change_registry(|reg| {
                    reg.advance_to(at(Some(s)));
                    reg.offline(id).is_some()
                });
                *seq = s;
                Ok(true)
            }
            Err(e) => Err(db_refusal(&e)),
        }
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
            self.apply_changes(changes, reached);
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
        self.change_registry(|reg| {
            reg.advance_to(at(Some(s)));
            reg.remove(id)
        });
        *seq = s;
        drop(seq);
        Ok(self.deregistered(req, id, &record, by))
    }

    /// The timeout check of a replica, every second: mark peers silent across the whole
    /// cluster offline, from the database's last-seen times so replicas agree (each
    /// replica's batch reaches the database every `--sweep-interval`, well within the
    /// timeout). Announced only when it took someone offline; every replica (this one
    /// included) then catches up and wakes its long-polls.
    pub(super) fn sweep_replica(&self, r: &Replica, timeout: Duration) {
        let cutoff = SystemTime::now()
            .checked_sub(timeout)
            .unwrap_or(std::time::UNIX_EPOCH);
        match r
            .db
            .write_if("peers", |tx| pg::mark_offline(tx, cutoff), |n| *n > 0)
        {
            Ok(n) if n > 0 => {
                log::warn!("{n} peer(s) timed out: no heartbeat on any replica, marked offline");
                self.metrics.timeouts.fetch_add(n, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => log::warn!("sweep could not reach the database: {e}"),
        }
    }

    /// A replica's work every `--sweep-interval`: write the batched heartbeats, catch up,
    /// forget expired nonces and announce itself.
    pub(super) fn housekeep_replica(&self, r: &Replica) {
        if let Err(e) = self.flush_heartbeats(r) {
            log::warn!("cannot write heartbeats to the database (kept for the next sweep): {e}");
            return;
        }
        if let Err(e) = self.catch_up() {
            log::warn!("cannot catch up with the database: {e}");
        }
        let _ = r.db.purge_nonces(SystemTime::now());
        r.announce();
    }
}
