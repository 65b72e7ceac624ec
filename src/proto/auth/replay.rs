//! The replay cache: each signed request is accepted at most once.

use super::mac::{AuthError, DEFAULT_MAX_CLOCK_SKEW_SECS, DEFAULT_REPLAY_CAPACITY, NONCE_LEN};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Remembers the nonces of accepted requests for as long as their timestamps stay acceptable,
/// so each signed request is accepted at most once.
///
/// The clock-skew window lives here too, because the two must agree: a nonce has to be
/// remembered until its timestamp would be refused as stale anyway (timestamp + skew), and no
/// longer. Memory is bounded by `capacity`; expired nonces are evicted on every insert. When
/// the cache is full of live nonces, requests are refused with [`AuthError::ReplayCacheFull`]
/// (fail closed). Thread-safe: one `Mutex`, held for a hash-set insert.
///
/// The cache lives in memory: after a server restart, a request captured in the last
/// `max_skew` seconds could be replayed once. Requests are idempotent (register, heartbeat,
/// list), which is why this is accepted rather than persisted.
pub struct ReplayCache {
    max_skew_secs: u64,
    capacity: usize,
    inner: Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    seen: HashSet<[u8; NONCE_LEN]>,
    expiry: BinaryHeap<Reverse<(u64, [u8; NONCE_LEN])>>,
}

impl ReplayCache {
    /// Builds a cache accepting timestamps within `max_skew` of the server clock (rounded down
    /// to whole seconds) and remembering at most `capacity` nonces.
    pub fn new(max_skew: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            max_skew_secs: max_skew.as_secs(),
            capacity,
            inner: Mutex::new(ReplayInner::default()),
        }
    }

    /// The accepted clock skew in seconds, which [`super::verify_request`] applies.
    pub fn max_skew_secs(&self) -> u64 {
        self.max_skew_secs
    }

    /// How many nonces are remembered right now (expired ones included until the next insert),
    /// for metrics.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether no nonce is remembered, for metrics and tests.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayInner> {
        // A panic while holding the lock leaves at worst one nonce without an expiry entry;
        // refusing every later request would be far worse.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn check_and_remember(
        &self,
        nonce: [u8; NONCE_LEN],
        timestamp: u64,
        now: u64,
    ) -> Result<(), AuthError> {
        let mut inner = self.lock();
        while let Some(Reverse((expires, old))) = inner.expiry.peek().copied() {
            if expires >= now {
                break;
            }
            inner.expiry.pop();
            inner.seen.remove(&old);
        }
        if inner.seen.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        inner.seen.insert(nonce);
        let expires = timestamp.saturating_add(self.max_skew_secs);
        inner.expiry.push(Reverse((expires, nonce)));
        Ok(())
    }
}

impl Default for ReplayCache {
    /// [`DEFAULT_MAX_CLOCK_SKEW_SECS`] and [`DEFAULT_REPLAY_CAPACITY`].
    fn default() -> Self {
        ReplayCache::new(
            Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS),
            DEFAULT_REPLAY_CAPACITY,
        )
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("max_skew_secs", &self.max_skew_secs)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}
