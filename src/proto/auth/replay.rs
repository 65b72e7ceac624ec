//! The replay cache: each signed request is accepted at most once.

use super::mac::{AuthError, DEFAULT_MAX_CLOCK_SKEW_SECS, DEFAULT_REPLAY_CAPACITY, NONCE_LEN};
use crate::keys::PublicKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Remembers the nonces of accepted requests, so each signed request is accepted at most once,
/// in memory proportional to the request rate over a short window rather than over the whole
/// clock-skew window.
///
/// Per key, the cache keeps the newest timestamp seen and the nonces of that key's requests
/// stamped within [`REPLAY_ORDER_WINDOW_SECS`] of it. A request stamped earlier than that is
/// refused as out of order: its nonce may have been forgotten. So a replay is refused either
/// because its nonce is remembered, or because its timestamp is too old for its key, or (once
/// its key is forgotten, `max_skew` after its newest request) because it is stale. Honest
/// agents never send a request that arrives after one they signed 30 s later.
///
/// Why not one set of every nonce for twice the skew window (what it was): at 10,000 signed
/// requests a second that is 2.4 million nonces, and a cache of 2^18 refused valid requests
/// above ~2,200 a second. Here 10,000 a second cost about 300,000 entries of 16 bytes, and
/// each key's own clock decides, so clock skew between agents costs nothing.
///
/// Nonces are stored as 64-bit fingerprints of (key, nonce) under a per-process random
/// SipHash key: a valid request can collide with another by chance (about one in 10^13 at
/// full load, and it would only be refused), never be made to. Memory is bounded by
/// `capacity` fingerprints in all; past it requests are refused with
/// [`AuthError::ReplayCacheFull`] (fail closed). Thread-safe: one `Mutex`, held for a
/// hash-set insert.
///
/// The cache lives in memory: after a server restart it starts empty. State-changing
/// requests are then also checked against each key's newest change accepted before the
/// restart (`server::write_floor` on the JSON store, the shared nonce table with replicas);
/// a replayed read or heartbeat can at most repeat what it said within `max_skew`.
pub struct ReplayCache {
    max_skew_secs: u64,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    inner: Mutex<ReplayInner>,
}

/// How far (in seconds) a request may be stamped before the newest request of its key and
/// still be accepted; see [`ReplayCache`].
pub const REPLAY_ORDER_WINDOW_SECS: u64 = 30;

/// One key's recent nonces.
#[derive(Default)]
struct KeyWindow {
    newest: u64,
    seen: HashSet<u64>,
    /// (timestamp, fingerprint) in arrival order, for pruning.
    order: VecDeque<(u64, u64)>,
}

#[derive(Default)]
struct ReplayInner {
    keys: HashMap<PublicKey, KeyWindow>,
    /// Fingerprints remembered across all keys.
    len: usize,
    /// When (unix seconds) keys silent for longer than the skew are next forgotten.
    next_sweep: u64,
    /// When they last were (a full cache sweeps at most once a second).
    swept_at: u64,
}

impl ReplayCache {
    /// Builds a cache accepting timestamps within `max_skew` of the server clock (rounded down
    /// to whole seconds) and remembering at most `capacity` nonces.
    pub fn new(max_skew: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            max_skew_secs: max_skew.as_secs(),
            capacity,
            hasher: std::collections::hash_map::RandomState::new(),
            inner: Mutex::new(ReplayInner::default()),
        }
    }

    /// The accepted clock skew in seconds, which [`super::verify_request`] applies.
    pub fn max_skew_secs(&self) -> u64 {
        self.max_skew_secs
    }

    /// How many nonces are remembered right now, for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether no nonce is remembered, for metrics and tests.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys have nonces remembered, for tests and figures.
    pub fn keys(&self) -> usize {
        self.lock().keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayInner> {
        // A panic while holding the lock leaves at worst a count off by one; refusing every
        // later request would be far worse.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn check_and_remember(
        &self,
        key: &PublicKey,
        nonce: [u8; NONCE_LEN],
        timestamp: u64,
        now: u64,
    ) -> Result<(), AuthError> {
        use std::hash::BuildHasher;
        let fingerprint = self.hasher.hash_one((key.as_bytes(), nonce));
        let mut guard = self.lock();
        let inner = &mut *guard;
        if now >= inner.next_sweep || (inner.len >= self.capacity && now > inner.swept_at) {
            // Forget keys whose every request is now refused as stale anyway.
            let skew = self.max_skew_secs;
            let mut forgotten = 0;
            inner.keys.retain(|_, w| {
                let keep = w.newest.saturating_add(skew) >= now;
                if !keep {
                    forgotten += w.seen.len();
                }
                keep
            });
            inner.len -= forgotten;
            inner.next_sweep = now + (skew / 8).max(1);
            inner.swept_at = now;
        }
        let window = inner.keys.entry(*key).or_default();
        if timestamp.saturating_add(REPLAY_ORDER_WINDOW_SECS) < window.newest {
            return Err(AuthError::OutOfOrder {
                behind_secs: window.newest - timestamp,
                window_secs: REPLAY_ORDER_WINDOW_SECS,
            });
        }
        if window.seen.contains(&fingerprint) {
            return Err(AuthError::Replayed);
        }
        if inner.len >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        window.seen.insert(fingerprint);
        window.order.push_back((timestamp, fingerprint));
        window.newest = window.newest.max(timestamp);
        inner.len += 1;
        let floor = window.newest.saturating_sub(REPLAY_ORDER_WINDOW_SECS);
        while let Some(&(ts, old)) = window.order.front() {
            if ts >= floor {
                break;
            }
            window.order.pop_front();
            window.seen.remove(&old);
            inner.len -= 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KEY_LEN;

    #[test]
    fn replay_cache_forgets_stale_keys_and_fails_closed_when_full() {
        let cache = ReplayCache::new(Duration::from_secs(10), 2);
        let (a, b, c) = (key(1), key(2), key(3));
        cache
            .check_and_remember(&a, [1; NONCE_LEN], 100, 100)
            .unwrap();
        cache
            .check_and_remember(&b, [2; NONCE_LEN], 105, 100)
            .unwrap();
        assert_eq!(
            cache.check_and_remember(&c, [3; NONCE_LEN], 100, 100),
            Err(AuthError::ReplayCacheFull)
        );
        assert_eq!(AuthError::ReplayCacheFull.http_status(), 503);
        // At 111, key a (newest 100, stale after 110) is forgotten, key b (105) stays.
        cache
            .check_and_remember(&c, [3; NONCE_LEN], 111, 111)
            .unwrap();
        assert_eq!((cache.len(), cache.keys()), (2, 2));
        assert_eq!(
            cache.check_and_remember(&b, [2; NONCE_LEN], 105, 111),
            Err(AuthError::Replayed)
        );
    }

    fn key(n: u32) -> PublicKey {
        let mut bytes = [0u8; KEY_LEN];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey::from_bytes(bytes)
    }

    /// 10,000 signed requests a second from 10,000 keys (and 2,000 more from one busy key)
    /// for longer than the old cache's 240 s memory: nothing valid is refused, memory stays
    /// near rate x window, and replays, recent or old, are still refused. The old cache
    /// (2^18 nonces for 240 s) refused valid requests from about 2,200 a second on.
    #[test]
    fn replay_cache_holds_10000_requests_a_second_without_refusing_valid_ones() {
        let cache = ReplayCache::default();
        let keys: Vec<PublicKey> = (0..10_000).map(key).collect();
        let busy = key(u32::MAX);
        let start = 1_800_000_000u64;
        let nonce = |second: u64, i: u64| {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&second.to_le_bytes());
            n[8..].copy_from_slice(&i.to_le_bytes());
            n
        };
        let mut most = 0;
        for second in 0..250u64 {
            let now = start + second;
            for (i, k) in keys.iter().enumerate() {
                // Each agent's clock is off by its own amount, up to a minute either way.
                let skew = (i as u64 % 121).wrapping_sub(60);
                let ts = now.wrapping_add(skew);
                cache
                    .check_and_remember(k, nonce(second, i as u64), ts, now)
                    .unwrap_or_else(|e| panic!("second {second}, key {i}: {e}"));
            }
            // The busy key: 2,000 more a second, some arriving 20 s late.
            for i in 0..2_000u64 {
                let ts = if i % 100 == 0 {
                    now.saturating_sub(20)
                } else {
                    now
                };
                cache
                    .check_and_remember(&busy, nonce(second, 1_000_000 + i), ts, now)
                    .unwrap_or_else(|e| panic!("second {second}, busy {i}: {e}"));
            }
            most = most.max(cache.len());
        }
        // 12,000 a second for a window of 30 s (plus the second in progress).
        assert!(most <= 12_000 * 32, "{most} nonces remembered");
        let now = start + 249;
        // A replay of this second's request, and of one long forgotten, are both refused.
        let recent = cache.check_and_remember(&keys[7], nonce(249, 7), now - 53, now);
        assert_eq!(recent, Err(AuthError::Replayed));
        let old = cache.check_and_remember(&busy, nonce(10, 1_000_005), start + 10, now);
        assert_eq!(
            old,
            Err(AuthError::OutOfOrder {
                behind_secs: 239,
                window_secs: REPLAY_ORDER_WINDOW_SECS
            })
        );
        assert!(old.unwrap_err().to_string().contains("239 s older"));
    }
}
