//! The relay's bounds and timings, in one place every part of it reads.

use std::time::Duration;

/// Bounds and timings; the defaults suit a few thousand members.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Source ports remembered per member IP (many members can share one NAT address).
    pub ports_per_ip: usize,
    /// Session indexes remembered in all (two per relayed session, plus pending handshakes).
    pub max_indexes: usize,
    /// Handshake messages per second per source IP, and the burst allowed after idling.
    pub handshakes_per_second: u32,
    /// See `handshakes_per_second`.
    pub handshake_burst: u32,
    /// Cap on the packets an address may bank as credit.
    pub credit_packets: u32,
    /// Cap on the bytes an address may bank as credit.
    pub credit_bytes: u32,
    /// An address that sent nothing for this long is no longer a place to send handshakes.
    pub live: Duration,
    /// Idle time after which a source address is forgotten.
    pub port_idle: Duration,
    /// A handshake unanswered for this long is forgotten (WireGuard retries after 5 s).
    pub pending_idle: Duration,
    /// Idle time after which a session index is forgotten (WireGuard rejects keys after
    /// 180 s and rekeys every 120 s, so an index idle this long is dead).
    pub session_idle: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            ports_per_ip: 64,
            max_indexes: 1 << 17,
            handshakes_per_second: 20,
            handshake_burst: 50,
            credit_packets: 64,
            credit_bytes: 64 * 1024,
            live: Duration::from_secs(60),
            port_idle: Duration::from_secs(200),
            pending_idle: Duration::from_secs(15),
            session_idle: Duration::from_secs(200),
        }
    }
}
