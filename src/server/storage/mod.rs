//! One storage interface under the API. The handlers authenticate, parse, call a
//! [`Storage`] method and answer; they never ask which store is behind it. Two
//! implementations: the JSON journal of a single server ([`json`]) and a replica of a
//! cluster sharing PostgreSQL ([`replica`]). Both keep [`crate::server::state::MeshState`]
//! (the registry every reader sees) current, decide admission with the one rule in
//! [`admission`], and say why a change failed with one [`StorageError`].
//!
//! Later ways to admit or change peers (single sign-on, devices, routes) are new methods
//! here, written once per store, never branches in a handler.

pub mod admission;
pub mod import;
pub mod json;
pub mod logout;
pub mod replica;
pub mod subnet_routes;
pub mod write_floor;

use crate::keys::PublicKey;
use crate::server::ipam::IpamError;
use crate::server::registry::Registration;
use crate::server::sso::logins::LoginTable;
use crate::server::store::PeerRecord;
use crate::server::tokens::{TokenError, TokenRecord, TokenStore};
use crate::types::{Endpoint, PeerId, TokenId};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a store did not make a change. Each maps to one HTTP status; nothing was changed.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageError {
    /// Admission refused the caller (a missing, unknown or spent join token): 401 or 403,
    /// audited as an authentication failure.
    Denied(admission::Denied),
    /// The request was understood but cannot be done as asked (a token operation on an
    /// unknown id, a zero-use token): the status and what to do.
    Refused(u16, String),
    /// The mesh has no free address left: 503.
    Exhausted(String),
    /// The shared database is unreachable: 503, retry (another replica may answer).
    Unavailable(String),
    /// The change could not be made durable, or the stored data is unusable: 500.
    Failed(String),
}

impl StorageError {
    /// The HTTP status this failure is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            StorageError::Denied(d) => d.status,
            StorageError::Refused(status, _) => *status,
            StorageError::Exhausted(_) | StorageError::Unavailable(_) => 503,
            StorageError::Failed(_) => 500,
        }
    }
}

impl StorageError {
    /// The reason alone, without the advice the full message adds.
    pub fn detail(&self) -> &str {
        match self {
            StorageError::Denied(d) => &d.why,
            StorageError::Refused(_, why)
            | StorageError::Exhausted(why)
            | StorageError::Unavailable(why)
            | StorageError::Failed(why) => why,
        }
    }
}

impl From<TokenError> for StorageError {
    fn from(e: TokenError) -> StorageError {
        StorageError::Refused(e.http_status(), e.to_string())
    }
}

impl From<subnet_routes::Refused> for StorageError {
    fn from(e: subnet_routes::Refused) -> StorageError {
        StorageError::Refused(e.status, e.why)
    }
}

impl From<IpamError> for StorageError {
    /// No address left is 503 (the operator can widen the network); a broken pool is 500.
    fn from(e: IpamError) -> StorageError {
        match e {
            IpamError::Exhausted(_) => StorageError::Exhausted(e.to_string()),
            other => StorageError::Failed(other.to_string()),
        }
    }
}

impl From<crate::server::devices::DeviceError> for StorageError {
    /// A full pool is 503 like a registration's; every other refusal keeps its status.
    fn from(e: crate::server::devices::DeviceError) -> StorageError {
        use crate::server::devices::DeviceError;
        match e {
            DeviceError::Pool(pool) => pool.into(),
            other => StorageError::Refused(other.http_status(), other.to_string()),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Denied(d) => f.write_str(&d.why),
            StorageError::Refused(_, why) | StorageError::Exhausted(why) => f.write_str(why),
            StorageError::Unavailable(why) => write!(
                f,
                "{why}: nothing was changed; retry shortly (another replica may answer)"
            ),
            StorageError::Failed(why) => write!(f, "{why}: nothing was changed"),
        }
    }
}

impl std::error::Error for StorageError {}

/// What a registration did.
#[derive(Debug, Clone)]
pub enum Registered {
    /// Same key, same details: nothing to write; it counted as a heartbeat.
    Unchanged(PeerRecord),
    /// A new or changed record, durable before this returns.
    Written {
        /// The record as stored.
        record: PeerRecord,
        /// Whether the key got a new address (a first registration).
        fresh_address: bool,
        /// The join token redeemed for it, if any.
        token: Option<TokenId>,
    },
}

/// What `POST /offline` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WentOffline {
    /// No such peer.
    Unknown,
    /// It was already offline: nothing changed.
    Already,
    /// It is offline now, and every list drops it.
    Now,
}

/// Whether a signed request's nonce was accepted before, anywhere in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceClaim {
    /// First use (or the store keeps no shared record: the server's own replay cache
    /// decides alone).
    Fresh,
    /// Another replica accepted it already: a replay.
    Replayed,
}

/// A signed request whose MAC verified, as the store sees it for replay protection.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The key that signed it.
    pub key: &'a PublicKey,
    /// Its timestamp (Unix seconds).
    pub timestamp: u64,
    /// Its nonce, as sent (base64).
    pub nonce: &'a str,
    /// Whether it changes state by itself (registration, deregistration, offline, an
    /// admin change), as opposed to a read or a heartbeat.
    pub write: bool,
}

/// A policy reload's result: whether the policy changed, and the policy now in force.
#[derive(Debug, Clone)]
pub struct PolicyReload {
    /// Whether anything changed.
    pub changed: bool,
    /// The policy in force, described for logs and the admin answer.
    pub text: String,
}

/// A token change run inside the store's write: returns the record it created or changed,
/// which the store saves with the rest of the token set.
pub type TokenChange<'a> = &'a mut dyn FnMut(&mut TokenStore) -> Result<TokenRecord, TokenError>;

/// The storage behind the API: every change to peers, tokens and the policy, made durable
/// (and visible to other replicas) before it is acknowledged, and applied to the shared
/// [`crate::server::state::MeshState`].
pub trait Storage: Send + Sync {
    /// The store's name for `/healthz`: `json` or `postgresql`.
    fn kind(&self) -> &'static str;

    /// Admits (see [`admission`]) and stores a registration, with the token it redeems in
    /// the same write.
    fn register(
        &self,
        registration: Registration,
        credential: admission::Credential<'_>,
        now: SystemTime,
    ) -> Result<Registered, StorageError>;

    /// Records a heartbeat; false when the peer is unknown.
    fn heartbeat(
        &self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed: IpAddr,
        now: SystemTime,
    ) -> Result<bool, StorageError>;

    /// Takes a peer offline on its own request (it keeps its registration).
    fn offline(&self, id: &PeerId) -> Result<WentOffline, StorageError>;

    /// Removes a peer; its record, or None when there was no such peer.
    fn deregister(&self, id: &PeerId) -> Result<Option<PeerRecord>, StorageError>;

    /// Ends a peer's single sign-on login at once (see [`logout`]); its changed record, or
    /// None when there was no such peer.
    fn end_login(&self, id: &PeerId, now: SystemTime) -> Result<Option<PeerRecord>, StorageError>;

    /// Adds a device behind a gateway ([`crate::server::devices`]): decided on the current
    /// registry, durable (and visible to other replicas) before it returns.
    fn add_device(
        &self,
        device: &crate::server::devices::NewDevice,
        now: SystemTime,
    ) -> Result<PeerRecord, StorageError>;

    /// Removes the device called `name` (its `.mesh` name); its record, or None when there
    /// is no such device. Its address returns to the pool.
    fn remove_device(&self, name: &str) -> Result<Option<PeerRecord>, StorageError>;

    /// The join tokens as stored now.
    fn tokens(&self) -> Result<TokenStore, StorageError>;

    /// Runs `change` on the current token set and saves the record it returns, atomically.
    fn change_tokens(&self, change: TokenChange<'_>) -> Result<TokenRecord, StorageError>;

    /// Approves or rejects one advertised subnet route of peer `id`, decided by
    /// [`subnet_routes::decide`] on the state as of this write; the record as stored. An
    /// unknown peer is `Refused(404)`.
    fn decide_route(
        &self,
        id: &PeerId,
        prefix: ipnet::IpNet,
        verdict: subnet_routes::Verdict,
    ) -> Result<PeerRecord, StorageError>;

    /// Marks peers silent for longer than `timeout` offline; how many it took offline.
    fn sweep(&self, timeout: Duration) -> u64;

    /// The periodic write (`--sweep-interval`), and the final one at shutdown (`last`): the
    /// JSON store journals heartbeats and compacts; a replica flushes its batched
    /// heartbeats and does its housekeeping.
    fn persist(&self, last: bool) -> std::io::Result<()>;

    /// Re-reads the policy file and puts it in force (on every replica, for a cluster); a
    /// changed policy then approves the advertised routes its `routes` rules cover.
    fn reload_policy(&self) -> Result<PolicyReload, StorageError>;

    /// Approves the advertised routes the `routes` rules of the policy in force cover
    /// ([`subnet_routes::reload_approvals`]), as the server starts (its policy file may have
    /// changed while it was stopped); how many peers changed.
    fn approve_covered_routes(&self) -> Result<usize, StorageError>;

    /// Refuses a signed request this store cannot prove fresh beyond the server's own
    /// in-memory replay cache: one another replica accepted, or (after a restart) a change
    /// its key may have made before. `Denied` says why a request was refused outright.
    fn claim_nonce(&self, signed: &Signed<'_>) -> Result<NonceClaim, StorageError>;

    /// Catches up before answering a caller holding version `since`, when it is ahead of
    /// this server's (another replica gave it out).
    fn catch_up_to(&self, _since: u64) {}

    /// Catches up before answering "unknown peer" (it may have registered elsewhere a
    /// moment ago), at a bounded rate.
    fn catch_up_for_unknown(&self) {}

    /// The replicas that announced themselves lately (`GET /replicas`); none on the JSON
    /// store.
    fn replicas(&self) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }

    /// The shared database's health, where there is one.
    fn database_health(&self) -> Option<Result<(), StorageError>> {
        None
    }

    /// Where single sign-on keeps logins in progress when they must outlive this process
    /// or be seen by other replicas (the shared database); None: in memory.
    fn login_table(&self) -> Option<Arc<dyn LoginTable>> {
        None
    }

    /// Publishes where agents reach this server (a replica announces it to the others).
    fn advertise(&self, _url: String) {}

    /// Follows changes made elsewhere until `stop` (a replica's LISTEN loop); returns at
    /// once for a store with nobody else writing.
    fn follow(&self, _stop: &AtomicBool) {}
}
