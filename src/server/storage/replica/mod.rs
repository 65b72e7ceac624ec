//! A replica of a cluster sharing one PostgreSQL database (`--store`, see
//! `crate::server::pg`): each change is decided and written in one locked transaction
//! ([`writes`]), then applied to this replica's registry; other replicas catch up on
//! `NOTIFY` ([`follow`]). Reads come from the registry; when the database is unreachable,
//! changes are refused with 503 and nothing is half-written. [`cluster`] holds what only a
//! cluster has: the replica list, nonce claims and the database's health; [`open`] loads a
//! replica at start.

mod cluster;
mod follow;
pub mod open;
mod sso;
mod subnet_routes;
mod writes;

use super::admission::{Credential, Rules};
use super::{
    NonceClaim, PolicyReload, Registered, Signed, Storage, StorageError, TokenChange, WentOffline,
};
use crate::keys::PublicKey;
use crate::server::pg::nonces::{ClaimFailed, NonceClaims};
use crate::server::pg::pool::DbError;
use crate::server::pg::PgStore;
use crate::server::registry::Registration;
use crate::server::sso::logins::LoginTable;
use crate::server::state::MeshState;
use crate::server::store::PeerRecord;
use crate::server::tokens::{TokenRecord, TokenStore};
use crate::types::{Endpoint, PeerId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// How often a request naming an unknown peer may make the replica ask the database.
const UNKNOWN_PEER_CATCH_UP: Duration = Duration::from_millis(100);

/// One replica: the shared database and what this replica keeps beside its registry.
pub struct ReplicaStorage {
    state: Arc<MeshState>,
    db: Arc<PgStore>,
    rules: Rules,
    /// The sequence number the registry is current to; held while catching up or writing
    /// so the two never interleave on this replica.
    seq: Mutex<i64>,
    /// Heartbeats answered here since the last flush: key -> last seen.
    pending: Mutex<HashMap<PublicKey, SystemTime>>,
    /// When a request for an unknown peer last made this replica catch up, so a stream of
    /// such requests costs at most one query per [`UNKNOWN_PEER_CATCH_UP`].
    last_lookup: Mutex<Option<Instant>>,
    /// Where agents reach this replica (`--advertise`), announced every sweep.
    advertise: OnceLock<String>,
    /// How long an announcement counts: a replica silent for longer is left out of
    /// `GET /replicas` (the heartbeat timeout: a replica is treated like a peer).
    ttl: Duration,
    /// Nonce claims waiting for the next group commit.
    claims: NonceClaims,
    /// The last `GET /replicas` list read from the database, and when.
    listed: Mutex<Option<(Instant, Vec<String>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A database failure as the API reports it: 503 for an outage (retry), 500 for data this
/// build cannot use.
fn db_failed(e: &DbError) -> StorageError {
    claim_failed(&ClaimFailed::from(e))
}

/// [`db_failed`] for a failure shared by a whole group commit.
fn claim_failed(failed: &ClaimFailed) -> StorageError {
    if failed.outage {
        StorageError::Unavailable(failed.text.clone())
    } else {
        StorageError::Failed(failed.text.clone())
    }
}

impl ReplicaStorage {
    /// A replica whose registry (in `state`) was loaded at sequence `seq`; announcements
    /// count for `ttl`.
    pub fn new(
        state: Arc<MeshState>,
        db: Arc<PgStore>,
        seq: i64,
        rules: Rules,
        ttl: Duration,
    ) -> ReplicaStorage {
        ReplicaStorage {
            state,
            db,
            rules,
            seq: Mutex::new(seq),
            pending: Mutex::new(HashMap::new()),
            last_lookup: Mutex::new(None),
            advertise: OnceLock::new(),
            ttl,
            claims: NonceClaims::default(),
            listed: Mutex::new(None),
        }
    }
}

impl Storage for ReplicaStorage {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn register(
        &self,
        registration: Registration,
        credential: Credential<'_>,
        now: SystemTime,
    ) -> Result<Registered, StorageError> {
        self.write_registration(registration, credential, now)
    }

    fn heartbeat(
        &self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed: IpAddr,
        now: SystemTime,
    ) -> Result<bool, StorageError> {
        self.write_heartbeat(id, endpoint, observed, now)
    }

    fn offline(&self, id: &PeerId) -> Result<WentOffline, StorageError> {
        self.write_offline(id)
    }

    fn deregister(&self, id: &PeerId) -> Result<Option<PeerRecord>, StorageError> {
        self.write_deregistration(id)
    }

    fn decide_route(
        &self,
        id: &PeerId,
        prefix: ipnet::IpNet,
        verdict: super::subnet_routes::Verdict,
    ) -> Result<PeerRecord, StorageError> {
        self.write_route_decision(id, prefix, verdict)
    }

    fn end_login(&self, id: &PeerId, now: SystemTime) -> Result<Option<PeerRecord>, StorageError> {
        self.write_end_login(id, now)
    }

    fn add_device(
        &self,
        device: &crate::server::devices::NewDevice,
        now: std::time::SystemTime,
    ) -> Result<PeerRecord, StorageError> {
        self.write_device(device, now)
    }

    fn remove_device(&self, name: &str) -> Result<Option<PeerRecord>, StorageError> {
        self.catch_up_for_unknown();
        let found = crate::server::devices::find_device(&self.state.registry(), name);
        match found {
            Some(device) => self.write_deregistration(&device.id),
            None => Ok(None),
        }
    }

    fn tokens(&self) -> Result<TokenStore, StorageError> {
        self.db.tokens().map_err(|e| db_failed(&e))
    }

    fn change_tokens(&self, change: TokenChange<'_>) -> Result<TokenRecord, StorageError> {
        self.write_tokens(change)
    }

    fn sweep(&self, timeout: Duration) -> u64 {
        self.mark_silent_offline(timeout)
    }

    fn persist(&self, last: bool) -> std::io::Result<()> {
        // The database keeps what heartbeats changed; the registry's batch only needs
        // emptying.
        drop(self.state.registry().take_unsaved());
        if last {
            return self
                .flush_heartbeats()
                .map_err(|e| std::io::Error::other(e.to_string()));
        }
        self.housekeep();
        Ok(())
    }

    fn reload_policy(&self) -> Result<PolicyReload, StorageError> {
        self.publish_policy()
    }

    fn approve_covered_routes(&self) -> Result<usize, StorageError> {
        let (policy, _) = self.state.policy.current();
        self.write_reload_approvals(&policy)
    }

    fn claim_nonce(&self, signed: &Signed<'_>) -> Result<NonceClaim, StorageError> {
        self.claim(signed.nonce.as_bytes(), signed.write)
    }

    fn catch_up_to(&self, since: u64) {
        if since <= self.state.registry().generation() {
            return;
        }
        if let Err(e) = self.catch_up() {
            log::debug!("cannot catch up with the database: {e}");
        }
    }

    fn catch_up_for_unknown(&self) {
        let now = Instant::now();
        {
            let mut last = lock(&self.last_lookup);
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_PEER_CATCH_UP) {
                return;
            }
            *last = Some(now);
        }
        if let Err(e) = self.catch_up() {
            log::debug!("cannot catch up with the database: {e}");
        }
    }

    fn replicas(&self) -> Result<Vec<String>, StorageError> {
        self.listed_replicas()
    }

    fn database_health(&self) -> Option<Result<(), StorageError>> {
        Some(self.db.health().map_err(|e| db_failed(&e)))
    }

    fn login_table(&self) -> Option<Arc<dyn LoginTable>> {
        Some(self.db.clone())
    }

    fn advertise(&self, url: String) {
        log::info!("announcing this replica as {url}");
        let _ = self.advertise.set(url);
        self.announce();
    }

    fn follow(&self, stop: &AtomicBool) {
        self.listen_loop(stop);
    }
}
