//! How a replica's cache follows the shared database: catching up by sequence number, the
//! policy other replicas publish, the replica list, and the LISTEN thread that does it all
//! within milliseconds of a change.

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
    /// Applies changes read from the database to this replica's cache. Every change another
    /// replica commits arrives here (via `catch_up`, woken by NOTIFY), so this records them in
    /// the change log (through the registry) and wakes the long-polls parked on this replica:
    /// a change made through any replica reaches every replica's waiting agents.
    pub(super) fn apply_changes(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.change_registry(|registry| {
            for change in changes {
                match change {
                    Change::Put(record) => registry.apply_remote(*record),
                    Change::Delete(key) => {
                        registry.remove(&PeerId::for_key(&key));
                    }
                }
            }
        });
    }

    /// Brings the cache up to date with the database.
    pub fn catch_up(&self) -> Result<(), DbError> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        let mut seq = lock(&r.seq);
        let (changes, reached) = r.db.changes_since(*seq)?;
        self.apply_changes(changes);
        *seq = reached;
        Ok(())
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

    /// Loads the cluster's policy from the database and puts it in force here.
    pub fn policy_from_db(&self) {
        let Some(r) = &self.replica else { return };
        match r.db.policy() {
            Ok(Some(text)) => match Policy::from_json(&text) {
                Ok(policy) => {
                    if self.put_policy(policy) {
                        log::info!("access policy changed by another replica");
                    }
                }
                Err(e) => log::error!("the database holds an unusable policy: {e}"),
            },
            Ok(None) => {}
            Err(e) => log::warn!("cannot read the policy from the database: {e}"),
        }
    }

    /// Puts a policy in force the way `reload_policy` does: swapped under the registry lock
    /// and recorded in the change log (with the policy it replaced), so deltas across it
    /// are right, then the cached lists dropped and parked long-polls woken.
    fn put_policy(&self, fresh: Policy) -> bool {
        let changed = {
            let mut registry = lock(&self.registry);
            let (replaced, _) = self.trust.policy.current();
            let changed = self.trust.policy.replace(fresh);
            if changed {
                registry.policy_changed(replaced);
            }
            changed
        };
        if changed {
            self.cache.clear();
            self.changes.notify();
        }
        changed
    }

    /// `reload_policy` on a replica: the file is published to the database, so every
    /// replica puts it in force.
    pub(super) fn reload_policy_replica(
        &self,
        r: &Replica,
        source: Option<std::net::SocketAddr>,
    ) -> Result<(bool, String), String> {
        let Some(path) = self.trust.policy.path() else {
            self.policy_from_db();
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
        self.put_policy(fresh);
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
                let since = SystemTime::now()
                    .checked_sub(r.ttl)
                    .unwrap_or(std::time::UNIX_EPOCH);
                r.db.replicas(since).map_err(|e| db_refusal(&e))?
            }
        };
        Ok(ok_json(
            &serde_json::json!({"success": true, "replicas": list}),
        ))
    }
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
        api.policy_from_db();
        let mut idle_rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let (mut peers, mut policy, mut broken) = (false, false, false);
            {
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
                for n in &seen {
                    match n.payload() {
                        "policy" => policy = true,
                        _ => peers = true,
                    }
                }
            }
            if broken || client.is_closed() {
                break;
            }
            idle_rounds += 1;
            if peers || idle_rounds >= 20 {
                idle_rounds = 0;
                if let Err(e) = r.db.note(api.catch_up()) {
                    log::warn!("cannot catch up with the database: {e}");
                }
            }
            if policy {
                api.policy_from_db();
            }
        }
    }
}
