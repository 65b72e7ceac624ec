//! The replica store (issue 11): several `wgmesh server` processes share one PostgreSQL
//! database, and any of them answers any request. The database holds what must be one truth
//! for the cluster: peers and their addresses, join tokens, the server key and admin secret,
//! the policy, the audit log ([`audit`]), the live replicas ([`cluster`]), the nonces of
//! accepted requests ([`nonces`]) and the single sign-on logins in progress (`sso_logins`). Each replica keeps its
//! in-memory registry as a cache, caught up from the database by sequence number.
//!
//! Every change to peers or tokens runs in one transaction that first takes a cluster-wide
//! advisory lock ([`schema::WRITE_LOCK`]), catches the cache up, decides (the same
//! [`crate::server::registry::Registry`] logic as the JSON store), writes and sends
//! `NOTIFY wgmesh` before committing. So changes commit in sequence order (a replica that
//! saw sequence N has seen every change up to N), two replicas can never hand out one
//! address (and the unique constraints on address and name would refuse it anyway), and a
//! single-use token is used exactly once. The sequence numbers are also the `/peers`
//! versions of every replica (`crate::server::changes`), and policy reloads take one too
//! (`wgmesh_policies`), so a version from one replica means the same on all of them.
//! Reads that catch up run in one REPEATABLE READ snapshot, so they see a prefix of the
//! commits, never a later change without an earlier one. Heartbeats cost no registry write
//! each: a replica batches last-seen times and writes them once per sweep; only a visible
//! change (back online, new endpoint) is written at once. Their nonces are claimed in group
//! commits ([`nonces`]).
//!
//! The `postgres` crate is the synchronous client over tokio-postgres: it runs a small
//! runtime inside each connection, while everything at our level stays blocking std code.

mod audit;
mod cluster;
pub mod nonces;
pub mod pool;
pub mod schema;
mod sso_logins;

use crate::keys::{PrivateKey, PublicKey};
use crate::server::store::PeerRecord;
use crate::server::tokens::{TokenRecord, TokenStore};
use ipnet::Ipv4Net;
use pool::{DbError, Pool};
use postgres::GenericClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The channel every committed change is announced on; the payload says what changed.
pub const CHANNEL: &str = "wgmesh";

/// Connections per replica: requests wait for one rather than opening more, so N replicas
/// never hold more than N times this many sessions on the database.
pub const POOL_SIZE: usize = 8;

/// Milliseconds since the epoch, as the tables store times.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// One change read back from the database, in commit order.
#[derive(Debug, Clone)]
pub enum Change {
    /// A peer was added or changed.
    Put(Box<PeerRecord>),
    /// A peer was removed.
    Delete(PublicKey),
    /// A replica published a policy (its JSON text).
    Policy(String),
}

/// What a replica loads at start: every peer, the policy in force (if any replica
/// published one) and the sequence number both are current to.
#[derive(Debug)]
pub struct Loaded {
    /// Every registered peer.
    pub peers: Vec<PeerRecord>,
    /// The policy text in force at `seq`.
    pub policy: Option<String>,
    /// The last change the load includes: the first version of the replica's change log.
    pub seq: i64,
}

/// The shared database of a cluster of replicas.
#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    healthy: AtomicBool,
    last_error: Mutex<String>,
}

fn bad_data(what: &str, e: impl std::fmt::Display) -> DbError {
    DbError::Data(format!("the database holds an unusable {what}: {e}"))
}

fn record_of(row: &postgres::Row) -> Result<PeerRecord, DbError> {
    let text: String = row.get("record");
    let mut record: PeerRecord =
        serde_json::from_str(&text).map_err(|e| bad_data("peer record", e))?;
    record.online = row.get("online");
    let seen = from_millis(row.get("last_seen"));
    record.last_heartbeat = record.last_heartbeat.max(seen);
    Ok(record)
}

impl PgStore {
    /// Connects to `url` (`postgresql://USER:PASS@HOST:PORT/DB`) and migrates the schema.
    pub fn open(url: &str) -> Result<PgStore, DbError> {
        let config: postgres::Config = url.parse().map_err(|e| {
            DbError::Data(format!(
                "--store is not a PostgreSQL URL ({e}): write postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        let store = PgStore {
            pool: Pool::new(config, POOL_SIZE),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(String::new()),
        };
        let mut conn = store.pool.get()?;
        schema::migrate(&mut conn)?;
        drop(conn);
        Ok(store)
    }

    /// Whether the last database operation succeeded, and if not, why it failed.
    pub fn health(&self) -> Result<(), DbError> {
        if self.healthy.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(DbError::Unreachable(
                self.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ))
        }
    }

    /// Records the outcome of a database operation for [`PgStore::health`].
    pub fn note<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        match &result {
            Ok(_) => self.healthy.store(true, Ordering::Relaxed),
            Err(e) if e.is_outage() => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    log::error!("the database is unreachable: {e}");
                    self.pool.clear_idle();
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
            }
            Err(_) => {}
        }
        result
    }

    /// A connection outside the pool, for the LISTEN thread.
    pub fn listen_connection(&self) -> Result<postgres::Client, DbError> {
        let mut client = self.pool.connect()?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(client)
    }

    /// Runs `f` in a transaction holding the cluster's write lock, announces the change on
    /// [`CHANNEL`] with `payload`, and commits. `f` may be run twice: once more on a fresh
    /// connection when the first one turned out dead (after a database restart).
    pub fn write<R>(
        &self,
        payload: &str,
        f: impl FnMut(&mut postgres::Transaction<'_>) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        self.write_if(payload, f, |_| true)
    }

    /// [`PgStore::write`] that announces the change only when `changed` says `f` changed
    /// something: a check that runs every second (the timeout sweep) and usually finds
    /// nothing must not wake every replica to catch up.
    pub fn write_if<R>(
        &self,
        payload: &str,
        mut f: impl FnMut(&mut postgres::Transaction<'_>) -> Result<R, DbError>,
        changed: impl Fn(&R) -> bool,
    ) -> Result<R, DbError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = (|| {
                let mut conn = self.pool.get()?;
                let mut tx = conn.transaction()?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::WRITE_LOCK])?;
                let value = f(&mut tx)?;
                if changed(&value) {
                    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
                }
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Err(DbError::Pg(e)) if attempt == 1 && e.is_closed() => {
                    self.pool.clear_idle();
                    continue;
                }
                other => return self.note(other),
            }
        }
    }

    /// The cluster's identity: the server key and admin secret, and the mesh network. The
    /// first replica creates them; the others load them, so agents pin one key for all.
    /// `imported` (from `--import-to`) is used instead of fresh ones when there are none.
    pub fn identity(
        &self,
        network: Ipv4Net,
        imported: Option<(PrivateKey, String)>,
    ) -> Result<(PrivateKey, String), DbError> {
        self.write("identity", |tx| {
            let get = |tx: &mut postgres::Transaction<'_>, name: &str| {
                tx.query_opt("SELECT value FROM wgmesh_cluster WHERE name = $1", &[&name])
                    .map(|r| r.map(|row| row.get::<_, String>(0)))
            };
            let put = |tx: &mut postgres::Transaction<'_>, name: &str, value: &str| {
                tx.execute(
                    "INSERT INTO wgmesh_cluster (name, value) VALUES ($1, $2)",
                    &[&name, &value],
                )
            };
            match get(tx, "network")? {
                Some(stored) if stored != network.to_string() => {
                    return Err(DbError::Data(format!(
                        "the database's peers were allocated from {stored}, but --network-cidr is \
                         {network}; peers would be renumbered, so the server refuses: pass \
                         --network-cidr {stored}"
                    )))
                }
                Some(_) => {}
                None => {
                    put(tx, "network", &network.to_string())?;
                }
            }
            let (fresh_key, fresh_secret) = match &imported {
                Some((key, secret)) => (key.clone(), secret.clone()),
                None => (PrivateKey::generate(), crate::keys::random_secret()),
            };
            let key = match get(tx, "server_key")? {
                Some(text) => {
                    PrivateKey::from_base64(&text).map_err(|e| bad_data("server key", e))?
                }
                None => {
                    put(tx, "server_key", &fresh_key.to_base64())?;
                    log::info!("stored the cluster's server key in the database");
                    fresh_key.clone()
                }
            };
            let secret = match get(tx, "admin_secret")? {
                Some(text) => text,
                None => {
                    put(tx, "admin_secret", &fresh_secret)?;
                    fresh_secret.clone()
                }
            };
            if let Some((want, _)) = &imported {
                if want.public_key() != key.public_key() {
                    return Err(DbError::Data(format!(
                        "the database already serves a cluster with server key {}, not this \
                         state's {}: import into an empty database",
                        key.public_key(),
                        want.public_key()
                    )));
                }
            }
            Ok((key, secret))
        })
    }

    /// Every peer and the policy, and the sequence number they are current to, from one
    /// snapshot.
    pub fn load(&self) -> Result<Loaded, DbError> {
        let result = (|| {
            let mut conn = self.pool.get()?;
            let mut tx = snapshot(&mut conn)?;
            let seq = last_committed_seq(&mut tx)?;
            let rows = tx.query("SELECT * FROM wgmesh_peers", &[])?;
            let peers = rows.iter().map(record_of).collect::<Result<Vec<_>, _>>()?;
            let policy = tx
                .query_opt(
                    "SELECT policy FROM wgmesh_policies ORDER BY seq DESC LIMIT 1",
                    &[],
                )?
                .map(|r| r.get::<_, String>(0));
            tx.commit()?;
            Ok(Loaded { peers, policy, seq })
        })();
        self.note(result)
    }

    /// The changes committed after sequence `seq`, in order with their sequence numbers,
    /// and the sequence they reach; read from one snapshot.
    pub fn changes_since(&self, seq: i64) -> Result<(Vec<(i64, Change)>, i64), DbError> {
        let result = (|| {
            let mut conn = self.pool.get()?;
            let mut tx = snapshot(&mut conn)?;
            let found = changes_since(&mut tx, seq)?;
            tx.commit()?;
            Ok(found)
        })();
        self.note(result)
    }

    /// Writes the batched last-seen times of heartbeats this replica answered. Never moves a
    /// time backwards (another replica may have seen the peer later).
    pub fn flush_last_seen(&self, seen: &[(PublicKey, SystemTime)]) -> Result<(), DbError> {
        if seen.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = seen.iter().map(|(k, _)| k.to_base64()).collect();
        let times: Vec<i64> = seen.iter().map(|(_, t)| millis(*t)).collect();
        let result = (|| {
            self.pool.get()?.execute(
                "UPDATE wgmesh_peers SET last_seen = greatest(last_seen, d.t)
                 FROM unnest($1::text[], $2::bigint[]) AS d(k, t)
                 WHERE public_key = d.k",
                &[&keys, &times],
            )?;
            Ok(())
        })();
        self.note(result)
    }

    /// Publishes a policy to every replica: a change with its own sequence number (so every
    /// replica records the reload at the same version), unless it is the policy in force.
    pub fn set_policy(&self, text: &str) -> Result<(), DbError> {
        self.write_if(
            "policy",
            |tx| {
                let latest = tx
                    .query_opt(
                        "SELECT policy FROM wgmesh_policies ORDER BY seq DESC LIMIT 1",
                        &[],
                    )?
                    .map(|r| r.get::<_, String>(0));
                if latest.as_deref() == Some(text) {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO wgmesh_policies (seq, policy) VALUES (nextval('wgmesh_seq'), $1)",
                    &[&text],
                )?;
                tx.execute(
                    "INSERT INTO wgmesh_cluster (name, value) VALUES ('policy', $1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    &[&text],
                )?;
                Ok(true)
            },
            |changed| *changed,
        )
        .map(|_| ())
    }

    /// The join tokens, for `token list`.
    pub fn tokens(&self) -> Result<TokenStore, DbError> {
        let result = (|| load_tokens(&mut *self.pool.get()?))();
        self.note(result)
    }
}

/// A read-only REPEATABLE READ transaction: its queries share one snapshot, which holds a
/// prefix of the commits (writers commit in sequence order under the write lock).
fn snapshot(conn: &mut postgres::Client) -> Result<postgres::Transaction<'_>, DbError> {
    Ok(conn
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

/// The sequence number of the last change visible to `c`. Not the sequence's own
/// `last_value`: that counts numbers handed to transactions not yet committed (or rolled
/// back), and a replica loaded "up to" such a number would never read that change.
pub fn last_committed_seq(c: &mut impl GenericClient) -> Result<i64, DbError> {
    let row = c.query_one(
        "SELECT greatest(
             (SELECT max(seq) FROM wgmesh_peers),
             (SELECT max(seq) FROM wgmesh_deletions),
             (SELECT max(seq) FROM wgmesh_policies),
             0)",
        &[],
    )?;
    Ok(row.get(0))
}

/// The changes committed after `seq`, in order with their sequence numbers, and the
/// sequence they reach. Run it in one snapshot ([`PgStore::changes_since`]) or under the
/// write lock, or a change may be read without an earlier one.
pub fn changes_since(
    c: &mut impl GenericClient,
    seq: i64,
) -> Result<(Vec<(i64, Change)>, i64), DbError> {
    let mut out: Vec<(i64, Change)> = Vec::new();
    for row in c.query("SELECT * FROM wgmesh_peers WHERE seq > $1", &[&seq])? {
        out.push((row.get("seq"), Change::Put(Box::new(record_of(&row)?))));
    }
    for row in c.query(
        "SELECT seq, public_key FROM wgmesh_deletions WHERE seq > $1",
        &[&seq],
    )? {
        let key: String = row.get(1);
        let key = PublicKey::from_base64(&key).map_err(|e| bad_data("public key", e.0))?;
        out.push((row.get(0), Change::Delete(key)));
    }
    for row in c.query(
        "SELECT seq, policy FROM wgmesh_policies WHERE seq > $1",
        &[&seq],
    )? {
        out.push((row.get(0), Change::Policy(row.get(1))));
    }
    out.sort_by_key(|(s, _)| *s);
    let reached = out.last().map_or(seq, |(s, _)| *s);
    Ok((out, reached))
}

/// Inserts or replaces a peer; returns its new sequence number. Only inside
/// [`PgStore::write`], like every use of `wgmesh_seq`: the write lock makes sequence order
/// commit order, which catching up and the `/peers` versions rely on.
pub fn put_peer(c: &mut impl GenericClient, record: &PeerRecord) -> Result<i64, DbError> {
    let text = serde_json::to_string(record).map_err(|e| DbError::Data(e.to_string()))?;
    let row = c.query_one(
        "INSERT INTO wgmesh_peers (public_key, virtual_ip, dns_name, online, last_seen, seq, record)
         VALUES ($1, $2, $3, $4, $5, nextval('wgmesh_seq'), $6)
         ON CONFLICT (public_key) DO UPDATE SET virtual_ip = excluded.virtual_ip,
             dns_name = excluded.dns_name, online = excluded.online,
             last_seen = greatest(wgmesh_peers.last_seen, excluded.last_seen),
             seq = excluded.seq, record = excluded.record
         RETURNING seq",
        &[
            &record.public_key.to_base64(),
            &record.virtual_ip.to_string(),
            &record.dns_name.as_ref().map(|n| n.to_string()),
            &record.online,
            &millis(record.last_heartbeat),
            &text,
        ],
    )?;
    Ok(row.get(0))
}

/// Removes a peer (its address and name become free); returns the deletion's sequence.
pub fn delete_peer(c: &mut impl GenericClient, key: &PublicKey) -> Result<i64, DbError> {
    let key = key.to_base64();
    c.execute("DELETE FROM wgmesh_peers WHERE public_key = $1", &[&key])?;
    let row = c.query_one(
        "INSERT INTO wgmesh_deletions (seq, public_key) VALUES (nextval('wgmesh_seq'), $1)
         RETURNING seq",
        &[&key],
    )?;
    Ok(row.get(0))
}

/// Marks peers whose last sign of life is older than `cutoff` offline; returns how many.
pub fn mark_offline(c: &mut impl GenericClient, cutoff: SystemTime) -> Result<u64, DbError> {
    Ok(c.execute(
        "UPDATE wgmesh_peers SET online = false, seq = nextval('wgmesh_seq')
         WHERE online AND last_seen < $1 AND NOT (record::jsonb ? 'via')",
        &[&millis(cutoff)],
    )?)
}

/// Every join token.
pub fn load_tokens(c: &mut impl GenericClient) -> Result<TokenStore, DbError> {
    let rows = c.query("SELECT record FROM wgmesh_tokens ORDER BY record", &[])?;
    let mut records: Vec<TokenRecord> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).map_err(|e| bad_data("token", e)))
        .collect::<Result<_, _>>()?;
    records.sort_by_key(|r| r.created_at);
    Ok(TokenStore::from_records(records))
}

/// Inserts or replaces one join token.
pub fn put_token(c: &mut impl GenericClient, record: &TokenRecord) -> Result<(), DbError> {
    let text = serde_json::to_string(record).map_err(|e| DbError::Data(e.to_string()))?;
    c.execute(
        "INSERT INTO wgmesh_tokens (id, record) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        &[&record.id.as_str(), &text],
    )?;
    Ok(())
}
