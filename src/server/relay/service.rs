//! The relay as the UDP workers share it: its tables behind one mutex, its counters, and
//! the member view, refreshed at most once a second off the hot path.

use super::limits::RelayLimits;
use super::stats::RelayStats;
use super::view::MemberView;
use super::{Relay, Verdict};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
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
    /// The sockets it receives on (IPv4 and IPv6 on the same port), so a datagram for an
    /// end of the other family leaves from that family's socket.
    sockets: RwLock<Vec<(SocketAddr, UdpSocket)>>,
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
            sockets: RwLock::new(Vec::new()),
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

    /// Adds a socket the relay receives on (a clone of it), to send from to its family.
    pub fn add_socket(&self, socket: &UdpSocket) -> io::Result<()> {
        let entry = (socket.local_addr()?, socket.try_clone()?);
        self.sockets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        Ok(())
    }

    /// Sends a forwarded datagram to `to`: from `arrived` (the socket it came in on) when the
    /// families match, else from the relay's socket of `to`'s family, else (a dual-stack
    /// IPv6 socket given `--udp-listen [::]:PORT`) from `arrived` to the IPv4-mapped address.
    pub fn send(
        &self,
        arrived: &UdpSocket,
        local: SocketAddr,
        bytes: &[u8],
        to: SocketAddr,
    ) -> io::Result<usize> {
        if local.is_ipv4() == to.is_ipv4() {
            return arrived.send_to(bytes, to);
        }
        let sockets = self.sockets.read().unwrap_or_else(|p| p.into_inner());
        if let Some((_, socket)) = sockets.iter().find(|(a, _)| a.is_ipv4() == to.is_ipv4()) {
            return socket.send_to(bytes, to);
        }
        match to {
            SocketAddr::V4(v4) if local.is_ipv6() => {
                let mapped = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
                arrived.send_to(bytes, mapped)
            }
            _ => arrived.send_to(bytes, to),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::policy::Policy;
    use crate::server::relay::{MemberView, RelayLimits};

    #[test]
    fn a_datagram_for_the_other_family_leaves_from_that_familys_socket() {
        let relay = RelayService::new(
            Box::new(|| Arc::new(MemberView::new(Vec::new(), &Policy::allow_all()))),
            RelayLimits::default(),
        );
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        relay.add_socket(&v4).unwrap();
        relay.add_socket(&v6).unwrap();
        let (v4_addr, v6_addr) = (v4.local_addr().unwrap(), v6.local_addr().unwrap());
        let end6 = UdpSocket::bind("[::1]:0").unwrap();
        let end4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        for end in [&end6, &end4] {
            end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        // Arrived on IPv4, for an IPv6 end: sent from the IPv6 socket, and the other way.
        relay
            .send(&v4, v4_addr, b"to six", end6.local_addr().unwrap())
            .unwrap();
        relay
            .send(&v6, v6_addr, b"to four", end4.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = end6.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"to six"[..], v6_addr));
        let (n, from) = end4.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"to four"[..], v4_addr));
    }
}
