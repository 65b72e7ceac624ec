//! How a replica's registry follows the shared database: catching up by sequence number
//! (peer changes and the policies replicas publish, each recorded in the change log at its
//! sequence number, so `/peers` versions agree across replicas), publishing this replica's
//! policy file, and the LISTEN loop that catches up within milliseconds of any change.

use super::{db_failed, lock, ReplicaStorage};
use crate::server::pg::pool::DbError;
use crate::server::pg::Change;
use crate::server::policy::Policy;
use crate::server::storage::{PolicyReload, StorageError};
use crate::types::PeerId;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A database sequence number as a `/peers` version (they are never negative).
pub(super) fn version_of(seq: i64) -> u64 {
    seq.max(0) as u64
}

/// How long the LISTEN loop waits for a notification before checking `stop`.
const LISTEN_WAIT: Duration = Duration::from_millis(250);

/// Rounds of [`LISTEN_WAIT`] without a notification after which the loop catches up
/// anyway (a notification can be lost with a connection).
const IDLE_ROUNDS_BEFORE_CATCH_UP: u32 = 20;

impl ReplicaStorage {
    /// Applies changes read from the database to the registry, each at its sequence
    /// number, up to `reached`. Every change another replica commits arrives here (via
    /// `catch_up`, woken by NOTIFY), so this records them in the change log at the version
    /// every replica gives them, and wakes the long-polls parked on this replica: a change
    /// made through any replica reaches every replica's waiting agents. Call with the
    /// replica's `seq` lock held (changes must arrive in order).
    pub(super) fn apply_changes(&self, changes: Vec<(i64, Change)>, reached: i64) {
        let policy = &self.state.policy;
        self.state.change(|registry| {
            for (seq, change) in changes {
                registry.advance_to(version_of(seq));
                match change {
                    Change::Put(record) => registry.apply_remote(*record),
                    Change::Delete(key) => {
                        registry.remove(&PeerId::for_key(&key));
                    }
                    Change::Policy(text) => match Policy::from_json(&text) {
                        // Swapped under the registry lock, where deltas read it.
                        Ok(fresh) => {
                            let (replaced, _) = policy.current();
                            if policy.replace(fresh) {
                                registry.policy_changed(replaced);
                                log::info!("access policy changed (published by a replica)");
                            }
                        }
                        Err(e) => log::error!(
                            "the database holds an unusable policy (sequence {seq}), the \
                             one in force is kept: {e}"
                        ),
                    },
                }
            }
            // Nothing this replica shows may have changed with the last few numbers (its own
            // record was already current), but a caller holding them is current here too.
            registry.advance_to(version_of(reached));
        });
    }

    /// Brings the registry up to date with the database.
    pub(super) fn catch_up(&self) -> Result<(), DbError> {
        let mut seq = lock(&self.seq);
        let (changes, reached) = self.db.changes_since(*seq)?;
        self.apply_changes(changes, reached);
        *seq = reached;
        Ok(())
    }

    /// The policy reload of a replica: the file is published to the database, so every
    /// replica (this one included, by catching up) puts it in force at the same version.
    /// Without a policy file, the policy the cluster has in force is read back.
    pub(super) fn publish_policy(&self) -> Result<PolicyReload, StorageError> {
        let Some(path) = self.state.policy.path() else {
            self.catch_up().map_err(|e| db_failed(&e))?;
            let (policy, _) = self.state.policy.current();
            return Ok(PolicyReload {
                changed: false,
                text: policy.to_string(),
            });
        };
        let mesh = self.state.registry().mesh_nets();
        let fresh = crate::server::trust::checked(path, &mesh)
            .map_err(|e| StorageError::Refused(400, e.to_string()))?;
        // Decided before publishing: this replica's own LISTEN thread may put the published
        // policy in force before the line below does, and the reload still changed it.
        let changed = *self.state.policy.current().0 != fresh;
        self.db
            .set_policy(&fresh.to_json_pretty())
            .map_err(|e| db_failed(&e))?;
        if let Err(e) = self.catch_up() {
            // Published: the LISTEN thread puts it in force here once the database answers.
            log::warn!("policy published, but not yet in force on this replica: {e}");
        }
        if changed {
            // The policy is in force either way; a failure here leaves the routes for the
            // next reload or an operator.
            if let Err(e) = self.write_reload_approvals(&fresh) {
                log::error!("policy published, but its route approvals were not written: {e}");
            }
        }
        Ok(PolicyReload {
            changed,
            text: fresh.to_string(),
        })
    }

    /// Keeps one connection LISTENing and catches the registry up whenever another replica
    /// (or this one) commits a change, and at least every few seconds; reconnects after an
    /// outage and then catches up in full.
    pub(super) fn listen_loop(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut client = match self.db.listen_connection() {
                Ok(c) => c,
                Err(e) => {
                    let _ = self.db.note::<()>(Err(e));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let _ = self.db.note(self.catch_up());
            self.listen_on(&mut client, stop);
        }
    }

    /// Catches up on every notification of one LISTENing connection until it breaks or
    /// `stop`.
    fn listen_on(&self, client: &mut postgres::Client, stop: &AtomicBool) {
        let mut idle_rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(changed) = drain_notifications(client) else {
                return;
            };
            if client.is_closed() {
                return;
            }
            idle_rounds += 1;
            if changed || idle_rounds >= IDLE_ROUNDS_BEFORE_CATCH_UP {
                idle_rounds = 0;
                if let Err(e) = self.db.note(self.catch_up()) {
                    log::warn!("cannot catch up with the database: {e}");
                }
            }
        }
    }
}

/// Waits up to [`LISTEN_WAIT`] for a notification, then takes whatever else is queued
/// without waiting (a steady stream of changes must not postpone catching up). Peers and
/// policies alike arrive by sequence number, so any notification means catching up:
/// returns whether there was one, or None when the connection broke.
fn drain_notifications(client: &mut postgres::Client) -> Option<bool> {
    let mut notes = client.notifications();
    match notes.timeout_iter(LISTEN_WAIT).next() {
        Ok(Some(_)) => {}
        Ok(None) => return Some(false),
        Err(_) => return None,
    }
    let mut queued = notes.iter();
    loop {
        match queued.next() {
            Ok(Some(_)) => {}
            Ok(None) => return Some(true),
            Err(_) => return None,
        }
    }
}
