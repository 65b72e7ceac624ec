//! The replica store's tables, created and migrated at start under an advisory lock so that
//! replicas starting together never race, and versioned in `wgmesh_schema_version` so a
//! later build knows what it finds.

use super::pool::DbError;
use postgres::Client;

/// The advisory lock key for migrations (any constant; "wgmesh" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x7767_6d65_7368_0001;

/// The advisory lock key every change to peers and tokens takes inside its transaction, so
/// changes commit in the order of their sequence numbers and replicas catch up without gaps.
pub const WRITE_LOCK: i64 = 0x7767_6d65_7368_0002;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 4;

/// Each migration, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE wgmesh_cluster (name text PRIMARY KEY, value text NOT NULL);
     CREATE SEQUENCE wgmesh_seq;
     CREATE TABLE wgmesh_peers (
         public_key text PRIMARY KEY,
         virtual_ip text NOT NULL UNIQUE,
         dns_name text UNIQUE,
         online boolean NOT NULL,
         last_seen bigint NOT NULL,
         seq bigint NOT NULL,
         record text NOT NULL);
     CREATE INDEX wgmesh_peers_seq ON wgmesh_peers (seq);
     CREATE TABLE wgmesh_deletions (seq bigint PRIMARY KEY, public_key text NOT NULL);
     CREATE TABLE wgmesh_tokens (id text PRIMARY KEY, record text NOT NULL);
     CREATE TABLE wgmesh_audit (
         id bigserial PRIMARY KEY,
         time_ms bigint NOT NULL,
         event text NOT NULL,
         record text NOT NULL);
     CREATE UNLOGGED TABLE wgmesh_nonces (nonce bytea PRIMARY KEY, expires bigint NOT NULL);
     CREATE INDEX wgmesh_nonces_expires ON wgmesh_nonces (expires);",
    // 2: the replicas announce where agents reach them (for the relay's meeting replica).
    "CREATE TABLE wgmesh_replicas (url text PRIMARY KEY, last_seen bigint NOT NULL);",
    // 3: every published policy with its sequence number, so each replica records a reload
    // at the same `/peers` version, in order with the peer changes around it. The policy
    // published before keeps sequence 0: in force from the start, never a change.
    "CREATE TABLE wgmesh_policies (seq bigint PRIMARY KEY, policy text NOT NULL);
     INSERT INTO wgmesh_policies (seq, policy)
         SELECT 0, value FROM wgmesh_cluster WHERE name = 'policy';",
    // 4: single sign-on logins in progress, shared so any replica can poll, approve and
    // finish a login another one started (`started` is the database's clock, in ms).
    "CREATE TABLE wgmesh_sso_logins (
         id text PRIMARY KEY,
         started bigint NOT NULL,
         state text UNIQUE,
         login text NOT NULL);",
];

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a database written by a newer build.
pub fn migrate(client: &mut Client) -> Result<(), DbError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(client);
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlock?;
    Ok(())
}

fn migrate_locked(client: &mut Client) -> Result<(), DbError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS wgmesh_schema_version (version integer NOT NULL)",
    )?;
    let found: Option<i32> = client
        .query_opt("SELECT max(version) FROM wgmesh_schema_version", &[])?
        .and_then(|row| row.get(0));
    let mut version = found.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(DbError::Data(format!(
            "the database schema is version {version}, newer than this build's \
             {SCHEMA_VERSION}: upgrade wgmesh on this replica"
        )));
    }
    while version < SCHEMA_VERSION {
        let mut tx = client.transaction()?;
        tx.batch_execute(MIGRATIONS[version as usize])?;
        tx.execute("DELETE FROM wgmesh_schema_version", &[])?;
        tx.execute(
            "INSERT INTO wgmesh_schema_version (version) VALUES ($1)",
            &[&(version + 1)],
        )?;
        tx.commit()?;
        version += 1;
        log::info!("database schema migrated to version {version}");
    }
    Ok(())
}
