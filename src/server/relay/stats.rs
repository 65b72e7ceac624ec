//! The relay's counters and the reasons it drops datagrams, for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram was not forwarded; each has its own counter in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a WireGuard message (wrong type, size or reserved bytes).
    Malformed,
    /// From an IP that is no online member's.
    Stranger,
    /// A handshake whose MAC1 matches no online member.
    NotForMember,
    /// No session or address known for its destination (yet).
    NoRoute,
    /// Transport data or a cookie reply on a known index but from an address that is not
    /// the session's other end.
    WrongSource,
    /// The access policy does not let the two members see each other.
    Policy,
    /// A response whose ends are not at their members' IPs.
    Unauthenticated,
    /// The destination has not sent us enough to be owed this datagram.
    NoCredit,
    /// The source IP sent handshakes faster than its rate limit.
    RateLimited,
    /// A table is full.
    TableFull,
}

impl Drop {
    pub(super) const ALL: [Drop; 10] = [
        Drop::Malformed,
        Drop::Stranger,
        Drop::NotForMember,
        Drop::NoRoute,
        Drop::WrongSource,
        Drop::Policy,
        Drop::Unauthenticated,
        Drop::NoCredit,
        Drop::RateLimited,
        Drop::TableFull,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Stranger => "stranger",
            Drop::NotForMember => "not_for_member",
            Drop::NoRoute => "no_route",
            Drop::WrongSource => "wrong_source",
            Drop::Policy => "policy",
            Drop::Unauthenticated => "unauthenticated",
            Drop::NoCredit => "no_credit",
            Drop::RateLimited => "rate_limited",
            Drop::TableFull => "table_full",
        }
    }
}

/// A pair whose relayed session forwarded nothing for this long is not counted in
/// `wgmesh_relay_active_pairs`: a relayed pair sends at least a 25 s keepalive, so a pair
/// silent longer went direct (or away), though its session lingers until it expires.
pub const ACTIVE_PAIR: std::time::Duration = std::time::Duration::from_secs(35);

/// Relay counters: relaxed atomics, read only for `/metrics`.
#[derive(Debug, Default)]
pub struct RelayStats {
    handshake_packets: AtomicU64,
    data_packets: AtomicU64,
    bytes: AtomicU64,
    drops: [AtomicU64; 10],
    pub(super) sessions: AtomicU64,
    pub(super) pairs: AtomicU64,
    pub(super) active_pairs: AtomicU64,
    pub(super) bound: AtomicU64,
}

impl RelayStats {
    pub(super) fn forwarded(&self, handshake: bool, bytes: usize, copies: usize) {
        let counter = if handshake {
            &self.handshake_packets
        } else {
            &self.data_packets
        };
        counter.fetch_add(copies as u64, Ordering::Relaxed);
        self.bytes
            .fetch_add((bytes * copies) as u64, Ordering::Relaxed);
    }

    /// Counts a dropped datagram.
    pub fn dropped(&self, why: Drop) {
        let i = Drop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams dropped for `why` so far.
    pub fn drops(&self, why: Drop) -> u64 {
        let i = Drop::ALL.iter().position(|d| *d == why).unwrap_or(0);
        self.drops[i].load(Ordering::Relaxed)
    }

    /// Datagrams forwarded so far (handshake-class, transport).
    pub fn forwarded_packets(&self) -> (u64, u64) {
        (
            self.handshake_packets.load(Ordering::Relaxed),
            self.data_packets.load(Ordering::Relaxed),
        )
    }

    /// What the console shows: (handshake packets, data packets, bytes, relayed pairs).
    pub fn summary(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            get(&self.handshake_packets),
            get(&self.data_packets),
            get(&self.bytes),
            get(&self.pairs),
        )
    }

    /// Appends the counters in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP wgmesh_relay_packets_total WireGuard datagrams the relay forwarded, by message class.\n\
             # TYPE wgmesh_relay_packets_total counter\n\
             wgmesh_relay_packets_total{{kind=\"handshake\"}} {}\n\
             wgmesh_relay_packets_total{{kind=\"data\"}} {}\n\
             # HELP wgmesh_relay_bytes_total UDP payload bytes the relay forwarded.\n\
             # TYPE wgmesh_relay_bytes_total counter\n\
             wgmesh_relay_bytes_total {}\n\
             # HELP wgmesh_relay_sessions Relayed WireGuard session indexes in use.\n\
             # TYPE wgmesh_relay_sessions gauge\n\
             wgmesh_relay_sessions {}\n\
             # HELP wgmesh_relay_pairs Member pairs with a relayed session.\n\
             # TYPE wgmesh_relay_pairs gauge\n\
             wgmesh_relay_pairs {}\n\
             # HELP wgmesh_relay_active_pairs Member pairs whose relayed session forwarded a datagram in the last 35 s.\n\
             # TYPE wgmesh_relay_active_pairs gauge\n\
             wgmesh_relay_active_pairs {}\n\
             # HELP wgmesh_relay_bound_members Members whose relay address is known.\n\
             # TYPE wgmesh_relay_bound_members gauge\n\
             wgmesh_relay_bound_members {}\n\
             # HELP wgmesh_relay_dropped_total Datagrams the relay did not forward, by reason.\n\
             # TYPE wgmesh_relay_dropped_total counter\n",
            get(&self.handshake_packets),
            get(&self.data_packets),
            get(&self.bytes),
            get(&self.sessions),
            get(&self.pairs),
            get(&self.active_pairs),
            get(&self.bound),
        );
        for (d, c) in Drop::ALL.iter().zip(&self.drops) {
            let _ = writeln!(
                out,
                "wgmesh_relay_dropped_total{{reason=\"{}\"}} {}",
                d.label(),
                get(c)
            );
        }
    }
}
