//! The coordination server's STUN responder: a few threads sharing one UDP socket that tell
//! each agent which public address and port its datagrams arrive from.
//!
//! An open UDP responder is a reflection target, so every answer is rate limited per source IP
//! (a GCRA token bucket kept in a fixed-size, set-associative table, so a flood of spoofed
//! sources can neither grow memory nor make lookups slow) and nothing is ever sent for a
//! datagram that is not a well-formed Binding Request. The per-datagram path uses two fixed
//! stack buffers and no allocation; counters are atomics, exported in Prometheus text format.
//!
//! (This module is meant to become `server::udp`; it lives at the crate root until the server
//! module exists.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use crate::proto::stun::{self, BindingRequest, Dialect, ResponseOptions, StunError};
use crate::proto::wg_wire;
use crate::server::relay::service::RelayService;
use crate::server::relay::Verdict;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod rate_limit;
mod stats;

pub use rate_limit::RateLimit;
use rate_limit::RateTable;
use stats::bump;
pub use stats::{StunCounters, StunStats};

/// Largest datagram we consider; anything that fills the receive buffer completely may have
/// been truncated by the kernel, so it is dropped as malformed rather than half-parsed.
pub const MAX_DATAGRAM: usize = 1500;

/// How often idle worker threads wake to check for shutdown: the upper bound on how long
/// [`StunHandle::shutdown`] waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Behaviour knobs beyond rate limiting, for [`StunService::spawn_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// SOFTWARE attribute for RFC 5389 answers (at most [`stun::MAX_SOFTWARE_LEN`] bytes);
    /// `None` keeps answers as small as possible.
    pub software: Option<String>,
    /// Also send MAPPED-ADDRESS to RFC 5389 clients, for middleboxes and old libraries that
    /// check for it; off by default since modern clients ignore it.
    pub mapped_address_for_modern_clients: bool,
    /// Answer RFC 3489 ("classic", no magic cookie) requests with MAPPED-ADDRESS. On by default
    /// so old tools such as Debian's `stun` client work; off counts them as malformed.
    pub accept_rfc3489: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            software: Some("wgmesh".to_owned()),
            mapped_address_for_modern_clients: false,
            accept_rfc3489: true,
        }
    }
}

/// Everything a worker thread reads; shared by `Arc`.
struct Shared {
    stats: Arc<StunStats>,
    /// The WireGuard relay sharing this port, if any: WireGuard-shaped datagrams go to it.
    relay: Option<Arc<RelayService>>,
    stop: AtomicBool,
    limiter: Option<RateTable>,
    options: ServiceOptions,
}

/// The responder's entry point; a unit type because all state lives in the returned
/// [`StunHandle`], which owns the threads, so there is nothing to keep besides the handle.
pub struct StunService;

impl StunService {
    /// Starts `threads` workers (at least 1) answering STUN Binding Requests on `socket` with
    /// the default [`ServiceOptions`]. See [`StunService::spawn_with`].
    pub fn spawn(socket: UdpSocket, threads: usize, limits: RateLimit) -> io::Result<StunHandle> {
        Self::spawn_with(socket, threads, limits, ServiceOptions::default())
    }

    /// Starts `threads` workers (at least 1) that share `socket` through `try_clone` and
    /// answer Binding Requests until [`StunHandle::shutdown`] or drop.
    ///
    /// Fails only for local reasons: the socket cannot be cloned or given a read timeout (out
    /// of file descriptors), a thread cannot be started, or the SOFTWARE value is too long.
    /// The socket's read timeout is set to [`POLL_INTERVAL`].
    pub fn spawn_with(
        socket: UdpSocket,
        threads: usize,
        limits: RateLimit,
        options: ServiceOptions,
    ) -> io::Result<StunHandle> {
        Self::spawn_with_relay(socket, threads, limits, options, None)
    }

    /// Like [`StunService::spawn_with`], and hands WireGuard datagrams arriving on the same
    /// socket to `relay`, which forwards them from this socket: one UDP port for both.
    pub fn spawn_with_relay(
        socket: UdpSocket,
        threads: usize,
        limits: RateLimit,
        options: ServiceOptions,
        relay: Option<Arc<RelayService>>,
    ) -> io::Result<StunHandle> {
        if options
            .software
            .as_ref()
            .is_some_and(|s| s.len() > stun::MAX_SOFTWARE_LEN)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "STUN SOFTWARE value is longer than {} bytes",
                    stun::MAX_SOFTWARE_LEN
                ),
            ));
        }
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let local_addr = socket.local_addr()?;
        if let Some(relay) = &relay {
            relay.add_socket(&socket)?;
        }
        let shared = Arc::new(Shared {
            stats: Arc::new(StunStats::default()),
            relay,
            stop: AtomicBool::new(false),
            limiter: RateTable::new(&limits),
            options,
        });
        let mut handle = StunHandle {
            shared: Arc::clone(&shared),
            workers: Vec::new(),
            local_addr,
        };
        let threads = threads.max(1);
        for n in 0..threads {
            // Clones are new descriptors for the same kernel socket; the original closes when
            // this function returns and the last clone when the last worker exits.
            let sock = socket.try_clone()?;
            let shared = Arc::clone(&shared);
            // On error, `handle` drops here and stops the workers already started.
            handle.workers.push(
                std::thread::Builder::new()
                    .name(format!("wgmesh-stun-{n}"))
                    .spawn(move || serve(&sock, &shared))?,
            );
        }
        log::info!("STUN responder on {local_addr} with {threads} thread(s), rate limit {limits}");
        Ok(handle)
    }
}

/// Owns the worker threads: stop them with [`StunHandle::shutdown`] (dropping does the same).
pub struct StunHandle {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl StunHandle {
    /// The counters, to render on the metrics page or keep after shutdown.
    pub fn stats(&self) -> Arc<StunStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Where the responder listens (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the workers and waits for them: each notices within [`POLL_INTERVAL`]. The socket
    /// closes when the last worker exits.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                log::error!("a STUN worker thread panicked");
            }
        }
    }
}

impl Drop for StunHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A worker's loop: receive, classify, maybe answer; until the stop flag is set.
fn serve(socket: &UdpSocket, shared: &Shared) {
    // Room for any UDP datagram: WireGuard packets for the relay may exceed STUN's limit
    // (STUN still refuses anything over MAX_DATAGRAM).
    let mut buf = vec![0u8; 65_536];
    let mut out = [0u8; stun::MAX_RESPONSE_LEN];
    let opts = ResponseOptions {
        mapped_address_for_modern_clients: shared.options.mapped_address_for_modern_clients,
        software: shared.options.software.as_deref(),
        fingerprint: false,
    };
    let local = socket.local_addr();
    while !shared.stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                if let Some(relay) = shared
                    .relay
                    .as_ref()
                    .filter(|_| wg_wire::is_wireguard(&buf[..len]))
                {
                    if let Verdict::Forward(targets) =
                        relay.handle(&buf[..len], from, Instant::now())
                    {
                        for to in targets.iter() {
                            let sent = match &local {
                                Ok(local) => relay.send(socket, *local, &buf[..len], to),
                                Err(_) => socket.send_to(&buf[..len], to),
                            };
                            if sent.is_err() {
                                bump(&shared.stats.send_errors);
                            }
                        }
                    }
                    continue;
                }
                if let Some(reply) = handle_datagram(&buf[..len], from, shared, &opts, &mut out) {
                    if socket.send_to(&out[..reply], from).is_err() {
                        bump(&shared.stats.send_errors);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if let Some(relay) = &shared.relay {
                    relay.tick(Instant::now());
                }
            }
            Err(e) => {
                // E.g. ECONNREFUSED reported for an earlier send: keep serving, but do not
                // spin if the socket is persistently broken.
                bump(&shared.stats.recv_errors);
                log::debug!("STUN recv error: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Decides what to do with one datagram and counts it; returns the reply length in `out`,
/// if any. Separate from the socket loop so it can be unit-tested.
fn handle_datagram(
    datagram: &[u8],
    from: SocketAddr,
    shared: &Shared,
    opts: &ResponseOptions<'_>,
    out: &mut [u8],
) -> Option<usize> {
    let stats = &shared.stats;
    if datagram.len() > MAX_DATAGRAM {
        bump(&stats.malformed);
        return None;
    }
    let req: BindingRequest = match stun::parse_binding_request(datagram) {
        Ok(req) if req.dialect == Dialect::Rfc3489 && !shared.options.accept_rfc3489 => {
            bump(&stats.malformed);
            return None;
        }
        Ok(req) => req,
        Err(e) => {
            bump(if e.is_malformed() {
                &stats.malformed
            } else {
                &stats.ignored
            });
            return None;
        }
    };
    if let Some(limiter) = &shared.limiter {
        let (allowed, evicted) = limiter.allow(from.ip());
        if evicted {
            bump(&stats.evictions);
        }
        if !allowed {
            bump(&stats.rate_limited);
            return None;
        }
    }
    let result = if req.wants_address_change() || !req.unknown_attributes().is_empty() {
        // We have one address and port, so CHANGE-REQUEST cannot be honoured: RFC 5780
        // section 6.1 says answer 420 listing it, never a success from the same address
        // that would make the client misjudge its NAT.
        let mut unknown = [0u16; stun::MAX_UNKNOWN_ATTRIBUTES + 1];
        let mut n = 0;
        if req.wants_address_change() {
            unknown[0] = stun::attr::CHANGE_REQUEST;
            n = 1;
        }
        for &t in req.unknown_attributes() {
            unknown[n] = t;
            n += 1;
        }
        bump(&stats.refused);
        stun::encode_binding_error(out, &req, 420, "Unknown Attribute", &unknown[..n], opts)
    } else {
        bump(&stats.answered);
        stun::encode_binding_success(out, &req, from, opts)
    };
    match result {
        Ok(len) => Some(len),
        Err(e @ StunError::BufferTooSmall { .. }) | Err(e @ StunError::InvalidArgument(_)) => {
            // Unreachable with MAX_RESPONSE_LEN and a validated SOFTWARE; never panic on it.
            log::error!("could not build a STUN answer: {e}");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(limit: RateLimit) -> Shared {
        Shared {
            stats: Arc::new(StunStats::default()),
            relay: None,
            stop: AtomicBool::new(false),
            limiter: RateTable::new(&limit),
            options: ServiceOptions::default(),
        }
    }

    #[test]
    fn handle_datagram_answers_counts_and_refuses() {
        let s = shared(RateLimit::default());
        let opts = ResponseOptions {
            software: Some("wgmesh"),
            ..Default::default()
        };
        let mut out = [0u8; stun::MAX_RESPONSE_LEN];
        let from: SocketAddr = "198.51.100.9:41641".parse().unwrap();
        let id = stun::TransactionId::random();
        let n = handle_datagram(&stun::binding_request(&id), from, &s, &opts, &mut out).unwrap();
        assert_eq!(
            stun::parse_binding_response(&out[..n]).unwrap(),
            stun::BindingResponse::Success {
                transaction_id: id,
                mapped: from
            }
        );
        assert!(handle_datagram(b"GET / HTTP/1.1\r\n\r\n!!", from, &s, &opts, &mut out).is_none());
        assert!(handle_datagram(&[0u8; MAX_DATAGRAM + 1], from, &s, &opts, &mut out).is_none());
        let mut indication = stun::binding_request(&id);
        indication[1] = 0x11;
        assert!(handle_datagram(&indication, from, &s, &opts, &mut out).is_none());
        // CHANGE-REQUEST asking for another port: 420.
        let mut change = stun::binding_request(&id).to_vec();
        change[3] = 8;
        change.extend_from_slice(&[0, 3, 0, 4, 0, 0, 0, 2]);
        let n = handle_datagram(&change, from, &s, &opts, &mut out).unwrap();
        assert_eq!(
            stun::parse_binding_response(&out[..n]).unwrap(),
            stun::BindingResponse::Error {
                transaction_id: id,
                code: 420
            }
        );
        assert_eq!(
            s.stats.snapshot(),
            StunCounters {
                answered: 1,
                refused: 1,
                malformed: 2,
                ignored: 1,
                ..Default::default()
            }
        );
    }
}
