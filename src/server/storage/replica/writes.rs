//! Every change a replica makes: one transaction under the cluster's write lock that first
//! catches this replica up (so it decides on the cluster's latest state), decides with the
//! same registry and admission logic as the JSON store, writes, and commits; only then is
//! the change applied to this replica's registry, at the sequence number the database gave
//! it, so every replica records it at the same version.

use super::{db_failed, lock, ReplicaStorage};
use crate::keys::PublicKey;
use crate::server::pg;
use crate::server::pg::pool::DbError;
use crate::server::registry::{Prepared, Registration};
use crate::server::storage::admission::{self, Credential};
use crate::server::storage::subnet_routes;
use crate::server::storage::{Registered, StorageError, TokenChange, WentOffline};
use crate::server::store::PeerRecord;
use crate::server::tokens::{TokenRecord, TokenStore};
use crate::types::{Endpoint, PeerId, TokenId};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// The version of this replica's own write, committed at sequence `seq` (the write lock was
/// held, so it follows every change applied before it): every replica records it there.
fn at(seq: i64) -> u64 {
    super::follow::version_of(seq)
}

/// What a registration transaction decided.
// Lives only for the length of one request, never in bulk.
#[allow(clippy::large_enum_variant)]
enum Decided {
    /// Refused; nothing was written.
    Refused(StorageError),
    /// Known, unchanged and online: counts as a heartbeat, nothing written.
    Unchanged(PeerRecord),
    /// Written at sequence `seq`.
    Written {
        record: PeerRecord,
        fresh_address: bool,
        token: Option<TokenId>,
        seq: i64,
    },
}

impl ReplicaStorage {
    /// Catches the registry up inside a write transaction (the write lock is held, so
    /// nothing can commit in between).
    pub(super) fn catch_up_in(
        &self,
        tx: &mut postgres::Transaction<'_>,
        seq: &mut i64,
    ) -> Result<(), DbError> {
        let (changes, reached) = pg::changes_since(tx, *seq)?;
        self.apply_changes(changes, reached);
        *seq = reached;
        Ok(())
    }

    /// The registration transaction's decision: admission (redeeming the token in the same
    /// transaction), then the registry's preparation, then the write. `prepared` keeps
    /// what must be undone if the transaction fails after it.
    fn decide_registration(
        &self,
        tx: &mut postgres::Transaction<'_>,
        registration: &Registration,
        credential: Credential<'_>,
        now: SystemTime,
        prepared: &mut Option<Prepared>,
    ) -> Result<Decided, DbError> {
        let known = self.state.registry().knows(&registration.public_key);
        let mut tokens = match admission::spends_token(known, credential) {
            true => pg::load_tokens(tx)?,
            false => TokenStore::new(),
        };
        let admitted = match admission::admit(self.rules, known, credential, &mut tokens, now) {
            Ok(admitted) => admitted,
            Err(denied) => return Ok(Decided::Refused(StorageError::Denied(denied))),
        };
        if let Some(record) = &admitted.token {
            pg::put_token(tx, record)?;
        }
        let mut registration = registration.clone();
        if let Some(tags) = admitted.tags {
            registration.tags = tags;
        }
        registration.owner = admitted.owner;
        let made = match self.state.registry().prepare(&registration, now) {
            Ok(made) => made,
            Err(e) => return Ok(Decided::Refused(e.into())),
        };
        let made = {
            let (policy, _) = self.state.policy.current();
            subnet_routes::settle(made, &policy, &self.state.registry())
        };
        let (record, fresh_address) = match &made {
            Prepared::Unchanged(record) if record.online => {
                return Ok(Decided::Unchanged(record.clone()))
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
        *prepared = Some(made);
        let seq = pg::put_peer(tx, &record)?;
        Ok(Decided::Written {
            record,
            fresh_address,
            token: admitted.token.map(|t| t.id),
            seq,
        })
    }

    /// A registration: decided and written in one transaction, then applied here.
    pub(super) fn write_registration(
        &self,
        registration: Registration,
        credential: Credential<'_>,
        now: SystemTime,
    ) -> Result<Registered, StorageError> {
        let mut seq = lock(&self.seq);
        let mut prepared: Option<Prepared> = None;
        let result = self.db.write("peers", |tx| {
            if let Some(p) = prepared.take() {
                self.state.registry().abort(&p);
            }
            self.catch_up_in(tx, &mut seq)?;
            self.decide_registration(tx, &registration, credential, now, &mut prepared)
        });
        let decided = result.map_err(|e| {
            if let Some(p) = prepared.take() {
                self.state.registry().abort(&p);
            }
            log::error!("registration of {} failed: {e}", registration.public_key);
            db_failed(&e)
        })?;
        match decided {
            Decided::Refused(e) => Err(e),
            Decided::Unchanged(record) => {
                let source = registration.observed_ip;
                self.state
                    .change(|reg| reg.heartbeat(&record.id, None, source, now).is_some());
                lock(&self.pending).insert(record.public_key, now);
                Ok(Registered::Unchanged(record))
            }
            Decided::Written {
                record,
                fresh_address,
                token,
                seq: s,
            } => {
                self.state.change(|reg| {
                    reg.advance_to(at(s));
                    reg.commit(record.clone())
                });
                *seq = s;
                Ok(Registered::Written {
                    record,
                    fresh_address,
                    token,
                })
            }
        }
    }

    /// A heartbeat: in memory (batched to the database at the next sweep) unless others
    /// would see the change, which is written first.
    pub(super) fn write_heartbeat(
        &self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed: IpAddr,
        now: SystemTime,
    ) -> Result<bool, StorageError> {
        let preview = self
            .state
            .registry()
            .heartbeat_preview(id, endpoint, observed, now);
        let Some((record, mut visible)) = preview else {
            return Ok(false);
        };
        if !visible {
            // Decided again under the registry lock: a change applied since the preview (the
            // sweep taking the peer offline) makes this heartbeat visible, and visible changes
            // go through the database first, or replicas would disagree on what they show.
            visible = !self.state.change(|reg| {
                let quiet = reg
                    .heartbeat_preview(id, endpoint, observed, now)
                    .is_some_and(|(_, visible)| !visible);
                if quiet {
                    reg.heartbeat(id, endpoint, observed, now);
                }
                quiet
            });
            if !visible {
                lock(&self.pending).insert(record.public_key, now);
                return Ok(true);
            }
        }
        let mut seq = lock(&self.seq);
        let written = self.db.write("peers", |tx| {
            self.catch_up_in(tx, &mut seq)?;
            let current = self
                .state
                .registry()
                .heartbeat_preview(id, endpoint, observed, now);
            match current {
                Some((record, _)) => pg::put_peer(tx, &record).map(Some),
                None => Ok(None),
            }
        });
        match written.map_err(|e| db_failed(&e))? {
            Some(s) => {
                self.state.change(|reg| {
                    reg.advance_to(at(s));
                    reg.heartbeat(id, endpoint, observed, now).is_some()
                });
                *seq = s;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `POST /offline`: written to the database first (so every replica drops the peer and
    /// its long-polls wake), then applied here. A peer already offline writes nothing.
    pub(super) fn write_offline(&self, id: &PeerId) -> Result<WentOffline, StorageError> {
        let mut seq = lock(&self.seq);
        let written = self.db.write("peers", |tx| {
            self.catch_up_in(tx, &mut seq)?;
            let Some(mut record) = self.state.registry().by_id(id).cloned() else {
                return Ok(None);
            };
            if !record.online {
                return Ok(Some(None));
            }
            record.online = false;
            pg::put_peer(tx, &record).map(|s| Some(Some(s)))
        });
        match written.map_err(|e| db_failed(&e))? {
            None => Ok(WentOffline::Unknown),
            Some(None) => Ok(WentOffline::Already),
            Some(Some(s)) => {
                self.state.change(|reg| {
                    reg.advance_to(at(s));
                    reg.offline(id).is_some()
                });
                *seq = s;
                Ok(WentOffline::Now)
            }
        }
    }

    /// A device ([`crate::server::devices`]): decided on the caught-up registry and written
    /// in one transaction, then applied here at the sequence the database gave it.
    pub(super) fn write_device(
        &self,
        device: &crate::server::devices::NewDevice,
        now: SystemTime,
    ) -> Result<PeerRecord, StorageError> {
        let mut seq = lock(&self.seq);
        let mut taken: Option<std::net::Ipv4Addr> = None;
        let result = self.db.write("peers", |tx| {
            if let Some(ip) = taken.take() {
                self.state.registry().release(ip);
            }
            self.catch_up_in(tx, &mut seq)?;
            let prepared = crate::server::devices::prepare(&mut self.state.registry(), device, now);
            let record = match prepared {
                Ok(record) => record,
                Err(e) => return Ok(Err(e)),
            };
            taken = Some(record.virtual_ip);
            let s = pg::put_peer(tx, &record)?;
            Ok(Ok((record, s)))
        });
        let decided = result.map_err(|e| {
            if let Some(ip) = taken.take() {
                self.state.registry().release(ip);
            }
            db_failed(&e)
        })?;
        let (record, s) = decided?;
        self.state.change(|reg| {
            reg.advance_to(at(s));
            reg.commit(record.clone())
        });
        *seq = s;
        Ok(record)
    }

    /// Removes a peer in the database, then here.
    pub(super) fn write_deregistration(
        &self,
        id: &PeerId,
    ) -> Result<Option<PeerRecord>, StorageError> {
        let mut seq = lock(&self.seq);
        let result = self.db.write("peers", |tx| {
            self.catch_up_in(tx, &mut seq)?;
            let Some(record) = self.state.registry().by_id(id).cloned() else {
                return Ok(None);
            };
            let s = pg::delete_peer(tx, &record.public_key)?;
            Ok(Some((record, s)))
        });
        let Some((record, s)) = result.map_err(|e| db_failed(&e))? else {
            return Ok(None);
        };
        self.state.change(|reg| {
            reg.advance_to(at(s));
            reg.remove(id)
        });
        *seq = s;
        Ok(Some(record))
    }

    /// A change to the join tokens: one locked transaction, like a registration, so a
    /// token's uses are counted cluster-wide.
    pub(super) fn write_tokens(
        &self,
        change: TokenChange<'_>,
    ) -> Result<TokenRecord, StorageError> {
        let made = self.db.write("tokens", |tx| {
            let mut store = pg::load_tokens(tx)?;
            match change(&mut store) {
                Ok(record) => {
                    pg::put_token(tx, &record)?;
                    Ok(Ok(record))
                }
                Err(e) => Ok(Err(e)),
            }
        });
        Ok(made.map_err(|e| db_failed(&e))??)
    }

    /// Writes the heartbeats batched since the last sweep (also at shutdown, so a clean
    /// stop loses none); a failed write keeps them for the next try.
    pub(super) fn flush_heartbeats(&self) -> Result<(), DbError> {
        let batch: Vec<(PublicKey, SystemTime)> = lock(&self.pending).drain().collect();
        if let Err(e) = self.db.flush_last_seen(&batch) {
            let mut pending = lock(&self.pending);
            for (k, t) in batch {
                let slot = pending.entry(k).or_insert(t);
                *slot = (*slot).max(t);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The timeout check of a replica, every second: mark peers silent across the whole
    /// cluster offline, from the database's last-seen times so replicas agree (each
    /// replica's batch reaches the database every `--sweep-interval`, well within the
    /// timeout). Announced only when it took someone offline; every replica (this one
    /// included) then catches up and wakes its long-polls.
    pub(super) fn mark_silent_offline(&self, timeout: Duration) -> u64 {
        let cutoff = SystemTime::now()
            .checked_sub(timeout)
            .unwrap_or(std::time::UNIX_EPOCH);
        match self
            .db
            .write_if("peers", |tx| pg::mark_offline(tx, cutoff), |n| *n > 0)
        {
            Ok(n) if n > 0 => {
                log::warn!("{n} peer(s) timed out: no heartbeat on any replica, marked offline");
                n
            }
            Ok(_) => 0,
            Err(e) => {
                log::warn!("sweep could not reach the database: {e}");
                0
            }
        }
    }
}
