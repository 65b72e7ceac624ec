//! The per-source answer limit that keeps the STUN responder from being a reflection
//! amplifier: a GCRA token bucket per source IP, kept in a fixed-size, set-associative table
//! so a flood of spoofed sources can neither grow memory nor make lookups slow.

use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Entries per set in the rate-limit table: a new source evicts the idlest of these.
const WAYS: usize = 4;

/// Per-source-IP answer rate limit: each source may burst `burst` answers, then gets
/// `per_second` more each second. Dropped requests get no answer, so a spoofed flood cannot
/// turn the server into an amplifier aimed at a victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained answers per second per source IP; 0 disables rate limiting entirely.
    pub per_second: u32,
    /// Answers a source may get back to back after being idle (at least 1).
    pub burst: u32,
    /// Bound on sources tracked at once (rounded up to a power of two). When the table is full
    /// the idlest source in a slot's set is forgotten; one forgotten while still throttled
    /// starts over with a full burst, which is why this should exceed the expected number of
    /// simultaneously active sources.
    pub max_sources: usize,
}

impl std::fmt::Display for RateLimit {
    /// As the startup log says it: `20/s per source, bursts of 40` or `off`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.per_second == 0 {
            return f.write_str("off");
        }
        write!(
            f,
            "{}/s per source, bursts of {}",
            self.per_second, self.burst
        )
    }
}

impl RateLimit {
    /// No rate limit: for tests and benchmarks on loopback only.
    pub fn unlimited() -> Self {
        RateLimit {
            per_second: 0,
            burst: 1,
            max_sources: WAYS,
        }
    }
}

impl Default for RateLimit {
    /// 20 answers/s with bursts of 50, 16,384 sources: an agent probes a few times a minute,
    /// so this covers hundreds of agents behind one carrier-grade NAT while capping what one
    /// spoofed victim address can receive at roughly 1 kB/s.
    fn default() -> Self {
        RateLimit {
            per_second: 20,
            burst: 50,
            max_sources: 16_384,
        }
    }
}

/// One tracked source: its IP (IPv4 as IPv4-mapped IPv6) and GCRA "theoretical arrival time"
/// in nanoseconds since the service started; `tat == 0` marks a free slot.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u128,
    tat: u64,
}

/// Per-source GCRA limiter in a fixed table of small sets, each behind its own mutex, so
/// worker threads rarely contend and memory is fixed at start.
pub(super) struct RateTable {
    /// Nanoseconds between answers at the sustained rate.
    interval: u64,
    /// How far ahead of now a source's TAT may run before it is throttled (burst - 1 intervals).
    tolerance: u64,
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    hasher: RandomState,
    start: Instant,
}

impl RateTable {
    pub(super) fn new(limit: &RateLimit) -> Option<Self> {
        if limit.per_second == 0 {
            return None;
        }
        let interval = (1_000_000_000 / u64::from(limit.per_second)).max(1);
        let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1) - 1));
        let sets = (limit.max_sources.clamp(WAYS, 1 << 24).next_power_of_two() / WAYS).max(1);
        Some(RateTable {
            interval,
            tolerance,
            sets: (0..sets)
                .map(|_| Mutex::new([Slot::default(); WAYS]))
                .collect(),
            hasher: RandomState::new(),
            start: Instant::now(),
        })
    }

    /// Charges one answer to `ip`; false when it is over its limit. Also reports whether a
    /// tracked source had to be evicted to make room.
    pub(super) fn allow(&self, ip: IpAddr) -> (bool, bool) {
        let key = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        // Keyed hash: an attacker cannot aim many sources at one set to evict a victim.
        let index = (self.hasher.hash_one(key) as usize) & (self.sets.len() - 1);
        // +1 so a real TAT is never 0, the free-slot marker.
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        // A poisoned lock only means another worker panicked mid-update of plain integers.
        let mut set = self.sets[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut evicted = false;
        let slot = match set.iter().position(|s| s.tat != 0 && s.key == key) {
            Some(i) => &mut set[i],
            None => {
                // Replace the slot with the smallest TAT: a free one, else the source whose
                // bucket is fullest, whose forgetting changes least.
                let i = (0..WAYS).min_by_key(|&i| set[i].tat).unwrap_or(0);
                evicted = set[i].tat != 0;
                set[i] = Slot { key, tat: 0 };
                &mut set[i]
            }
        };
        let tat = slot.tat.max(now);
        if tat - now > self.tolerance {
            return (false, evicted);
        }
        slot.tat = tat.saturating_add(self.interval);
        (true, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_refuses() {
        let table = RateTable::new(&RateLimit {
            per_second: 1,
            burst: 3,
            max_sources: 16,
        })
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| table.allow(ip).0).count();
        assert_eq!(allowed, 3);
        // The same address seen through a dual-stack socket shares the bucket.
        assert!(!table.allow("::ffff:192.0.2.1".parse().unwrap()).0);
        assert!(table.allow("192.0.2.2".parse().unwrap()).0);
    }

    #[test]
    fn table_stays_bounded_and_counts_evictions() {
        let table = RateTable::new(&RateLimit {
            per_second: 1,
            burst: 1,
            max_sources: 8,
        })
        .unwrap();
        assert_eq!(table.sets.len() * WAYS, 8);
        let evictions = (0..100u32)
            .filter(|i| table.allow(IpAddr::from(i.to_be_bytes())).1)
            .count();
        assert_eq!(evictions, 100 - 8);
    }
}
