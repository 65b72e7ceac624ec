//! Starting a replica: open the shared database (migrating its schema), load or create the
//! cluster's identity (server key, admin secret, network) and load every peer and the
//! policy in force, all current to one sequence number.

use crate::keys::PrivateKey;
use crate::server::config::{ServerConfig, ServerError};
use crate::server::pg::pool::DbError;
use crate::server::pg::PgStore;
use crate::server::policy::Policy;
use crate::server::registry::Registry;
use crate::server::store::{Snapshot, FORMAT_VERSION};
use std::sync::Arc;

/// What a replica starts from.
pub struct OpenedReplica {
    /// The shared database.
    pub db: Arc<PgStore>,
    /// The cluster's server key (the same on every replica: agents pin it).
    pub key: PrivateKey,
    /// The cluster's admin secret.
    pub admin_secret: String,
    /// Every peer, loaded into a registry whose versions follow the database's sequence.
    pub registry: Registry,
    /// The policy the cluster had in force at `seq`, if it holds a usable one.
    pub policy: Option<Policy>,
    /// The sequence number the load is current to.
    pub seq: i64,
}

/// Opens the database at `url` and loads the cluster.
pub fn open(config: &ServerConfig, url: &str) -> Result<OpenedReplica, ServerError> {
    let db_error = |e: DbError| ServerError::Database(format!("--store: {e}"));
    let db = Arc::new(PgStore::open(url).map_err(|e| match e {
        DbError::Data(m) if m.starts_with("--store") => ServerError::Config(m),
        other => db_error(other),
    })?);
    let (key, admin_secret) = db.identity(config.network, None).map_err(db_error)?;
    let loaded = db.load().map_err(db_error)?;
    let snapshot = Snapshot {
        version: FORMAT_VERSION,
        network_cidr: config.network,
        peers: loaded.peers,
    };
    let mut registry =
        Registry::from_snapshot(snapshot).map_err(|e| ServerError::Config(e.to_string()))?;
    registry.set_mesh6(crate::proto::mesh6::prefix(&key.public_key()));
    // `/peers` versions are the database's sequence numbers, the same on every replica.
    registry.follow_versions(loaded.seq.max(0) as u64);
    // The policy in force at `seq` (what every replica showed then), even when this replica
    // brings a policy file: publishing it is then a change at its own version.
    let policy = match loaded.policy.as_deref().map(Policy::from_json) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            log::error!("the database holds an unusable policy: {e}");
            None
        }
        None => Some(Policy::allow_all()),
    };
    Ok(OpenedReplica {
        db,
        key,
        admin_secret,
        registry,
        policy,
        seq: loaded.seq,
    })
}
