//! The relay as the UDP workers share it: its tables behind one mutex, its counters, and
//! the member view, refreshed at most once a second off the hot path.

use super::{MemberView, Relay, RelayLimits, RelayStats, Verdict};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the relay gets the current members: called at most once a second, off the hot path;
/// it returns the same `Arc` while nothing changed.
pub type ViewSource = Box<dyn Fn() -> Arc<MemberView> + Send + Sync>;

/// How soon the view is looked at again when a datagram comes from an IP no member has:
/// often enough that a new member's first handshake is not lost, rarely enough that
/// strangers cannot make the relay read the registry more than ten times a second.
pub const NEWCOMER_LOOK: Duration = Duration::from_millis(100);

/// The relay as the UDP workers share it: the tables behind one mutex, the counters, and the
/// member view source.
pub struct RelayService {
    relay: std::sync::Mutex<Relay>,
    stats: Arc<RelayStats>,
    source: ViewSource,
    refreshed: std::sync::Mutex<Instant>,
}

impl RelayService {
    /// A relay fed by `source`, with these bounds.
    pub fn new(source: ViewSource, limits: RelayLimits) -> Arc<RelayService> {
        let stats = Arc::new(RelayStats::default());
        let view = source();
        Arc::new(RelayService {
            relay: std::sync::Mutex::new(Relay::new(view, limits, Arc::clone(&stats))),
            stats,
            source,
            refreshed: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// The counters, for `/metrics`.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Decides one datagram (see [`Relay::handle`]), first taking a new member view if a
    /// second has passed since the last look, or [`NEWCOMER_LOOK`] when the sender is at no
    /// member's IP in the view: a node that just registered sends its first handshake
    /// within milliseconds, and dropping it as a stranger costs its pair WireGuard's 5 s
    /// retry (every pair of four nodes started together took 5.3 s to ping, not 0.5 s).
    pub fn handle(&self, datagram: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        let known = self
            .relay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .view()
            .at_member_ip(from.ip());
        let every = if known {
            Duration::from_secs(1)
        } else {
            NEWCOMER_LOOK
        };
        let due = self.refreshed.try_lock().is_ok_and(|mut at| {
            let due = now.saturating_duration_since(*at) >= every;
            if due {
                *at = now;
            }
            due
        });
        let fresh = due.then(|| (self.source)());
        let mut relay = self
            .relay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(view) = fresh.filter(|v| !Arc::ptr_eq(v, relay.view())) {
            relay.set_view(view);
        }
        relay.handle(datagram, from, now)
    }

    /// Expires idle entries and recounts the gauges when a second has passed, for the quiet
    /// moments when no datagram arrives to do it (the workers call this on their poll
    /// timeout).
    pub fn tick(&self, now: Instant) {
        if let Ok(mut relay) = self.relay.try_lock() {
            relay.tick(now);
        }
    }
}
