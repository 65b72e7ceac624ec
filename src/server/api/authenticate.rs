//! Who is asking: verifying a request's MAC, checking that the signing key owns the peer id
//! it names, and counting, auditing and rate-limiting failed attempts by source.

use super::error::{too_many, unknown_peer, Refusal};
use super::{lock, Api, Authed};
use crate::keys::PublicKey;
use crate::proto::auth::{self, NONCE_HEADER};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::Request;
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
                self.check_write_floor(req, &key)?;
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
    /// On the JSON store, refuses a state-changing request its key may have made before the
    /// server restarted, and records it on disk (see `server::write_floor`).
    fn check_write_floor(&self, req: &Request, key: &PublicKey) -> Result<(), Refusal> {
        let Some(floor) = &self.write_floor else {
            return Ok(());
        };
        floor.admit_request(req, key).map_err(|e| {
            if e.http_status() == 401 {
                self.auth_failed(req, Some(*key), None, &e.to_string());
            }
            Refusal(e.http_status(), e.to_string())
        })
    }
    /// Checks that `key` (which signed the request) owns peer `id`: 404 for an unknown id
    /// (so the agent registers again), 401 for someone else's id.
    pub(super) fn check_owner(
        &self,
        req: &Request,
        key: &PublicKey,
        id: &PeerId,
    ) -> Result<(), Refusal> {
        let mut owner = lock(&self.registry).by_id(id).map(|r| r.public_key);
        if owner.is_none() && self.replica.is_some() {
            // Registered through another replica a moment ago: catch up before refusing.
            self.catch_up_for_unknown();
            owner = lock(&self.registry).by_id(id).map(|r| r.public_key);
        }
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
}
