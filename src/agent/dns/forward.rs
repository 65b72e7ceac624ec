//! Forwarding for a gateway's devices (`up --gateway`): a phone's WireGuard app sends every
//! DNS query to the resolver its configuration names (this node's), so names outside
//! `.mesh`, which the resolver refuses to everyone else, are passed on to this node's own
//! upstream resolver (the first `nameserver` of `/etc/resolv.conf`) and the answer relayed
//! back. Only datagrams that arrived on the devices' interface are forwarded, so the mesh
//! and the LAN never get an open recursive resolver; at most [`MAX_IN_FLIGHT`] queries wait
//! at once, each at most [`UPSTREAM_TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long one forwarded query waits for the upstream answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Forwarded queries waiting at once; more are answered REFUSED (a phone retries).
pub const MAX_IN_FLIGHT: usize = 64;

/// Largest answer relayed (EDNS answers over UDP rarely pass 1232 bytes).
const MAX_ANSWER: usize = 4096;

/// The upstream resolver and the count of queries waiting for it.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstream: SocketAddr,
    in_flight: Arc<AtomicUsize>,
}

/// The first `nameserver` of a resolv.conf text.
pub fn upstream_of(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => addr.split('%').next()?.parse().ok(),
            _ => None,
        }
    })
}

/// Whether a reply says REFUSED (RCODE 5 in the header's low four bits).
pub fn is_refused(reply: &[u8]) -> bool {
    reply.len() >= 4 && reply[3] & 0x0f == 5
}

impl Forwarder {
    /// A forwarder to this host's resolver, or None when `/etc/resolv.conf` names none.
    pub fn from_system() -> Option<Forwarder> {
        let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
        let ip = upstream_of(&text)?;
        Some(Forwarder {
            upstream: SocketAddr::new(ip, 53),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sends `query` upstream on a thread of its own and relays the answer to `client`
    /// through `socket`; returns false (the caller answers itself) when too many wait.
    pub fn forward(&self, socket: &UdpSocket, query: &[u8], client: SocketAddr) -> bool {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let Ok(reply_socket) = socket.try_clone() else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        };
        let (query, upstream, in_flight) = (query.to_vec(), self.upstream, self.in_flight.clone());
        let spawned = std::thread::Builder::new()
            .name("dns forward".into())
            .spawn(move || {
                match ask(upstream, &query) {
                    Ok(answer) => {
                        if let Err(e) = reply_socket.send_to(&answer, client) {
                            log::debug!("DNS: cannot relay an answer to {client}: {e}");
                        }
                    }
                    Err(e) => log::debug!("DNS: upstream {upstream} did not answer: {e}"),
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// One query to the upstream resolver from a fresh port; the answer must come from it and
/// carry the query's id.
fn ask(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(upstream)?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    socket.send(query)?;
    let mut buf = vec![0u8; MAX_ANSWER];
    loop {
        let len = socket.recv(&mut buf)?;
        if len >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nameserver_is_the_upstream() {
        let text = "# generated\nsearch lan\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\n";
        assert_eq!(upstream_of(text), Some("fe80::1".parse().unwrap()));
        assert_eq!(upstream_of("search lan\n"), None);
        assert_eq!(
            upstream_of("nameserver 127.0.0.53\n"),
            Some("127.0.0.53".parse().unwrap())
        );
    }

    #[test]
    fn refused_replies_are_recognised_by_their_rcode() {
        assert!(is_refused(&[0x12, 0x34, 0x81, 0x85]));
        assert!(!is_refused(&[0x12, 0x34, 0x81, 0x83]));
        assert!(!is_refused(&[0x12]));
    }

    #[test]
    fn a_query_is_relayed_to_the_client_with_the_upstream_answer() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let forwarder = Forwarder {
            upstream: upstream.local_addr().unwrap(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        assert!(forwarder.forward(&server, b"\x12\x34query", client.local_addr().unwrap()));
        let mut buf = [0u8; 64];
        let (len, asker) = upstream.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"\x12\x34query");
        upstream.send_to(b"\x99\x99wrong id", asker).unwrap();
        upstream.send_to(b"\x12\x34answer", asker).unwrap();
        let len = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"\x12\x34answer");
    }
}
