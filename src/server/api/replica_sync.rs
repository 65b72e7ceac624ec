//! How a replica's cache follows the shared database: catching up by sequence number (peer
//! changes and the policies replicas publish, each recorded in the change log at its
//! sequence number, so `/peers` versions agree across replicas), the replica list, and the
//! LISTEN thread that does it all within milliseconds of a change.

use super::error::{ok_json, Refusal};
use super::replica::{db_refusal, Replica, UNKNOWN_PEER_CATCH_UP};
use super::{lock, Api};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::Response;
use crate::server::pg::pool::DbError;
use crate::server::pg::Change;
use crate::server::policy::Policy;
use crate::types::PeerId;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

impl Api {
    /// Applies changes read from the database to this replica's cache, each at its sequence
    /// number, up to `reached`. Every change another replica commits arrives here (via
    /// `catch_up`, woken by NOTIFY), so this records them in the change log (through the
    /// registry) at the version every replica gives them, and wakes the long-polls parked
    /// on this replica: a change made through any replica reaches every replica's waiting
    /// agents. Call with the replica's `seq` lock held (changes must arrive in order).
    pub(super) fn apply_changes(&self, changes: Vec<(i64, Change)>, reached: i64) {
        let mut policy_changed = false;
        self.change_registry(|registry| {
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
                            let (replaced, _) = self.trust.policy.current();
                            if self.trust.policy.replace(fresh) {
                                registry.policy_changed(replaced);
                                policy_changed = true;
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
        if policy_changed {
            log::info!("access policy changed (published by a replica)");
            self.cache.clear();
        }
    }

    /// Brings the cache up to date with the database.
    pub fn catch_up(&self) -> Result<(), DbError> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        let mut seq = lock(&r.seq);
        let (changes, reached) = r.db.changes_since(*seq)?;
        self.apply_changes(changes, reached);
        *seq = reached;
        Ok(())
    }

    /// A caller holds `since`, a version ahead of this replica's: another replica answered
    /// it after a change this one has not applied yet (NOTIFY is a few milliseconds away).
    /// Catch up now so it is answered as a delta, not the full list. A version still ahead
    /// afterwards was never given out by this cluster (another server, an older database)
    /// and gets the full list.
    pub(super) fn catch_up_to(&self, since: u64) {
        if self.replica.is_none() || since <= lock(&self.registry).generation() {
            return;
        }
        if let Err(e) = self.catch_up() {
            log::debug!("cannot catch up with the database: {e}");
        }
    }

    /// Catches up before answering "unknown peer" (it may have registered through another
    /// replica a moment ago), at most once per [`UNKNOWN_PEER_CATCH_UP`].
    pub(super) fn catch_up_for_unknown(&self) {
        let Some(r) = &self.replica else { return };
        let now = std::time::Instant::now();
        {
            let mut last = lock(&r.last_lookup);
            if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_PEER_CATCH_UP) {
                return;
            }
            *last = Some(now);
        }
        if let Err(e) = self.catch_up() {
            log::debug!("cannot catch up with the database: {e}");
        }
    }

    /// `reload_policy` on a replica: the file is published to the database, so every
    /// replica (this one included, by catching up) puts it in force at the same version.
    pub(super) fn reload_policy_replica(
        &self,
        r: &Replica,
        source: Option<std::net::SocketAddr>,
    ) -> Result<(bool, String), String> {
        let Some(path) = self.trust.policy.path() else {
            self.catch_up()
                .map_err(|e| format!("cannot read the policy from the database: {e}"))?;
            let (policy, _) = self.trust.policy.current();
            return Ok((false, policy.to_string()));
        };
        let fresh = Policy::load(path).map_err(|e| e.to_string())?;
        // Decided before publishing: this replica's own LISTEN thread may put the published
        // policy in force before the line below does, and the reload still changed it.
        let changed = *self.trust.policy.current().0 != fresh;
        r.db.set_policy(&fresh.to_json_pretty())
            .map_err(|e| format!("cannot publish the policy to the other replicas: {e}"))?;
        let text = fresh.to_string();
        if let Err(e) = self.catch_up() {
            // Published: the LISTEN thread puts it in force here once the database answers.
            log::warn!("policy published, but not yet in force on this replica: {e}");
        }
        if changed {
            log::info!("access policy reloaded and published to every replica: {text}");
            let mut event = AuditEvent::new(AuditKind::PolicyChange, SystemTime::now())
                .detail(format!("policy reloaded: {text}"));
            if let Some(addr) = source {
                event = event.source(addr);
            }
            self.trust.audit(event);
        }
        Ok((changed, text))
    }

    /// Publishes where agents reach this replica (once, when the socket is bound) and
    /// announces it at once.
    pub fn advertise(&self, url: String) {
        if let Some(r) = &self.replica {
            log::info!("announcing this replica as {url}");
            let _ = r.advertise.set(url);
            r.announce();
        }
    }

    /// `GET /replicas`: the replicas that announced themselves lately, for agents that must
    /// agree on one of them (see `crate::proto::replicas`); empty on the JSON store.
    pub(super) fn replicas_answer(&self) -> Result<Response, Refusal> {
        let list = match &self.replica {
            None => Vec::new(),
            Some(r) => {
                // Agents with relayed peers ask every 10 s: one query a second at most.
                let mut listed = lock(&r.listed);
                match &*listed {
                    Some((at, list)) if at.elapsed() < REPLICA_LIST_FRESH => list.clone(),
                    _ => {
                        let since = SystemTime::now()
                            .checked_sub(r.ttl)
                            .unwrap_or(std::time::UNIX_EPOCH);
                        let list = r.db.replicas(since).map_err(|e| db_refusal(&e))?;
                        *listed = Some((std::time::Instant::now(), list.clone()));
                        list
                    }
                }
            }
        };
        Ok(ok_json(
            &serde_json::json!({"success": true, "replicas": list}),
        ))
    }
}

/// How long a replica answers `GET /replicas` from its last query.
const REPLICA_LIST_FRESH: Duration = Duration::from_secs(1);

/// A database sequence number as a `/peers` version (they are never negative).
pub(super) fn version_of(seq: i64) -> u64 {
    seq.max(0) as u64
}

/// Keeps one connection LISTENing and catches the cache up whenever another replica (or
/// this one) commits a change, and at least every few seconds; reconnects after an outage
/// and then catches up in full.
pub fn listen_loop(api: &Api, stop: &AtomicBool) {
    let Some(r) = &api.replica else { return };
    while !stop.load(Ordering::Relaxed) {
        let mut client = match r.db.listen_connection() {
            Ok(c) => c,
            Err(e) => {
                let _ = r.db.note::<()>(Err(e));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let _ = r.db.note(api.catch_up());
        let mut idle_rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut broken = false;
            // Peers and policies alike arrive by sequence number: any notification means
            // catching up.
            let changed = {
                // Wait for the first notification, then take whatever else is queued without
                // waiting: a steady stream of changes must not postpone catching up.
                let mut notes = client.notifications();
                let first = notes.timeout_iter(Duration::from_millis(250)).next();
                let mut seen = Vec::new();
                match first {
                    Ok(Some(n)) => {
                        seen.push(n);
                        let mut queued = notes.iter();
                        loop {
                            match queued.next() {
                                Ok(Some(n)) => seen.push(n),
                                Ok(None) => break,
                                Err(_) => {
                                    broken = true;
                                    break;
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => broken = true,
                }
                !seen.is_empty()
            };
            if broken || client.is_closed() {
                break;
            }
            idle_rounds += 1;
            if changed || idle_rounds >= 20 {
                idle_rounds = 0;
                if let Err(e) = r.db.note(api.catch_up()) {
                    log::warn!("cannot catch up with the database: {e}");
                }
            }
        }
    }
}
