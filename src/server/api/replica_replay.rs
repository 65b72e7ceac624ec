//! Replay protection across replicas (issue 11): a signed request one replica accepted is
//! refused by every other, because each claims the request's nonce in the shared database
//! (in group commits, [`crate::server::pg::nonces`]) after the replica's own replay cache
//! passed it.

use super::error::Refusal;
use super::replica::claim_refusal;
use super::Api;
use crate::keys::PublicKey;
use crate::server::http::Request;
use crate::server::pg;
use std::time::SystemTime;

/// Whether `req` changes shared state by itself (registration, deregistration, offline, an
/// admin change), as opposed to a read or a heartbeat.
fn is_write(req: &Request) -> bool {
    (req.method == "POST" && req.path() != "/heartbeat") || req.method == "DELETE"
}

impl Api {
    /// Refuses a signed request whose nonce some replica already accepted: every signed
    /// request, reads and heartbeats included, claims its nonce in the shared table (in
    /// group commits, [`crate::server::pg::nonces`]), so a request captured on its way to
    /// replica A is refused by B too.
    pub(super) fn claim_nonce(&self, req: &Request, key: &PublicKey) -> Result<(), Refusal> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        if !is_write(req) && r.db.health().is_err() {
            // Known down: reads and heartbeats do not wait for a connect timeout each (see
            // the outage arm below); the sweep notices when the database is back.
            return Ok(());
        }
        let nonce = req
            .header(crate::proto::auth::NONCE_HEADER)
            .unwrap_or_default();
        let now = pg::millis(SystemTime::now()) as u64 / 1000;
        let expires = now + 2 * crate::proto::auth::DEFAULT_MAX_CLOCK_SKEW_SECS;
        match r
            .claims
            .claim(nonce.as_bytes(), |batch| r.db.claim_nonces(batch, expires))
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                let e = crate::proto::auth::AuthError::Replayed;
                self.auth_failed(req, Some(*key), None, &format!("{e} (on another replica)"));
                Err(Refusal(e.http_status(), e.to_string()))
            }
            // While the database is unreachable, reads and heartbeats still come from the
            // cache (agents keep working), checked by this replica's own replay cache only:
            // safe, because nothing they could change reaches another replica until the
            // database is back (a heartbeat that others would see is written first, and
            // fails). Writes fail with 503 as they must.
            Err(failed) if failed.outage && !is_write(req) => Ok(()),
            Err(failed) => Err(claim_refusal(&failed)),
        }
    }
}
