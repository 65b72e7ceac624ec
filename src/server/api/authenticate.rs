//! Who is asking: verifying a request's MAC, checking that the signing key owns the peer id
//! it names, and counting, auditing and rate-limiting failed attempts by source.

use super::error::{too_many, unknown_peer, Refusal};
use super::{Api, Authed};
use crate::keys::PublicKey;
use crate::proto::auth::{self, NONCE_HEADER};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::Request;
use crate::server::storage::{NonceClaim, Signed, StorageError};
use crate::types::PeerId;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

impl Api {
    /// Counts, logs and audits a refused authentication, and charges the source's budget.
    pub(super) fn auth_failed(
        &self,
        req: &Request,
        key: Option<PublicKey>,
        id: Option<&PeerId>,
        why: &str,
    ) {
        let source = req.remote.ip().to_canonical();
        let _ = self.trust.auth_failure_limit.take(source, Instant::now());
        self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
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
    pub(super) fn check_failure_budget(&self, req: &Request) -> Result<(), Refusal> {
        let source = req.remote.ip().to_canonical();
        self.trust
            .auth_failure_limit
            .check(source, Instant::now())
            .map_err(|wait| {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                too_many("failed authentications", source, wait)
            })
    }
    /// Verifies the request's MAC and returns the key that signed it; remembers the signer so
    /// the answer gets signed too.
    pub(super) fn authenticate(
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
                self.claim_nonce(req, &key)?;
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
    pub(super) fn check_owner(
        &self,
        req: &Request,
        key: &PublicKey,
        id: &PeerId,
    ) -> Result<(), Refusal> {
        let owner_of = |id: &PeerId| self.state.registry().by_id(id).map(|r| r.public_key);
        let mut owner = owner_of(id);
        if owner.is_none() {
            // Registered through another replica a moment ago: catch up before refusing.
            self.storage.catch_up_for_unknown();
            owner = owner_of(id);
        }
        match owner {
            None => Err(unknown_peer(id)),
            Some(owner) if owner == *key => self.check_login_of_peer(id),
            Some(_) => {
                let why =
                    format!("request signed by {key} concerns {id}, which belongs to another key");
                self.auth_failed(req, Some(*key), Some(id), &why);
                Err(Refusal(401, why))
            }
        }
    }
}

/// Whether `req` changes shared state by itself (registration, deregistration, offline, an
/// admin change), as opposed to a read or a heartbeat.
fn is_write(req: &Request) -> bool {
    (req.method == "POST" && req.path() != "/heartbeat") || req.method == "DELETE"
}

impl Api {
    /// Refuses a signed request whose nonce was accepted before anywhere in the cluster
    /// (every replica claims each nonce in the shared database, so a request captured on
    /// its way to replica A is refused by B too), or that the store cannot prove fresh
    /// across a restart (the JSON store's write floor).
    fn claim_nonce(&self, req: &Request, key: &PublicKey) -> Result<(), Refusal> {
        let signed = Signed {
            key,
            // Verified with the MAC already: a missing or bad one never gets here.
            timestamp: req
                .header(auth::TIMESTAMP_HEADER)
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_default(),
            nonce: req.header(NONCE_HEADER).unwrap_or_default(),
            write: is_write(req),
        };
        match self.storage.claim_nonce(&signed) {
            Err(StorageError::Denied(denied)) => {
                self.auth_failed(req, Some(*key), None, &denied.why);
                Err(Refusal(denied.status, denied.why))
            }
            Err(e) => Err(e.into()),
            Ok(NonceClaim::Fresh) => Ok(()),
            Ok(NonceClaim::Replayed) => {
                let e = auth::AuthError::Replayed;
                self.auth_failed(req, Some(*key), None, &format!("{e} (on another replica)"));
                Err(Refusal(e.http_status(), e.to_string()))
            }
        }
    }
}
