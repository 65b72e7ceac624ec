//! What only a cluster has: the replicas announcing themselves (for `GET /replicas` and the
//! relay's rendezvous), every replica claiming each signed request's nonce so a replay to
//! another replica is refused, and the housekeeping each replica does every sweep interval.

use super::{claim_failed, db_failed, lock, ReplicaStorage};
use crate::server::pg;
use crate::server::storage::{NonceClaim, StorageError};
use std::time::{Duration, Instant, SystemTime};

/// How long a replica answers `GET /replicas` from its last query: agents with relayed
/// peers ask every 10 s, so this bounds their cost to one query a second per replica.
const REPLICA_LIST_FRESH: Duration = Duration::from_secs(1);

impl ReplicaStorage {
    /// Tells the other replicas (and through `GET /replicas`, the agents) this one is alive.
    pub(super) fn announce(&self) {
        if let Some(url) = self.advertise.get() {
            if let Err(e) = self.db.announce(url) {
                log::warn!("cannot announce this replica: {e}");
            }
        }
    }

    /// The replicas that announced themselves within the last `ttl`, from a cache at most
    /// [`REPLICA_LIST_FRESH`] old.
    pub(super) fn listed_replicas(&self) -> Result<Vec<String>, StorageError> {
        let mut listed = lock(&self.listed);
        if let Some((at, list)) = &*listed {
            if at.elapsed() < REPLICA_LIST_FRESH {
                return Ok(list.clone());
            }
        }
        let since = SystemTime::now()
            .checked_sub(self.ttl)
            .unwrap_or(std::time::UNIX_EPOCH);
        let list = self.db.replicas(since).map_err(|e| db_failed(&e))?;
        *listed = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// A replica's work every `--sweep-interval`: write the batched heartbeats, catch up,
    /// forget expired nonces and announce itself.
    pub(super) fn housekeep(&self) {
        if let Err(e) = self.flush_heartbeats() {
            log::warn!("cannot write heartbeats to the database (kept for the next sweep): {e}");
            return;
        }
        if let Err(e) = self.catch_up() {
            log::warn!("cannot catch up with the database: {e}");
        }
        let _ = self.db.purge_nonces(SystemTime::now());
        self.announce();
    }

    /// Claims a request's nonce in the shared table (see `crate::server::pg::nonces`).
    /// While the database is unreachable, reads and heartbeats still come from the
    /// registry (agents keep working), checked by this replica's own replay cache only:
    /// safe, because nothing they could change reaches another replica until the database
    /// is back (a heartbeat that others would see is written first, and fails). Writes
    /// fail with 503 as they must.
    pub(super) fn claim(&self, nonce: &[u8], write: bool) -> Result<NonceClaim, StorageError> {
        if !write && self.db.health().is_err() {
            // Known down: reads and heartbeats do not wait for a connect timeout each; the
            // sweep notices when the database is back.
            return Ok(NonceClaim::Fresh);
        }
        let now = pg::millis(SystemTime::now()) as u64 / 1000;
        let expires = now + 2 * crate::proto::auth::DEFAULT_MAX_CLOCK_SKEW_SECS;
        match self
            .claims
            .claim(nonce, |batch| self.db.claim_nonces(batch, expires))
        {
            Ok(true) => Ok(NonceClaim::Fresh),
            Ok(false) => Ok(NonceClaim::Replayed),
            Err(failed) if failed.outage && !write => Ok(NonceClaim::Fresh),
            Err(failed) => Err(claim_failed(&failed)),
        }
    }
}
