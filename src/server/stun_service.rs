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
use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest datagram we consider; anything that fills the receive buffer completely may have
/// been truncated by the kernel, so it is dropped as malformed rather than half-parsed.
pub const MAX_DATAGRAM: usize = 1500;

/// How often idle worker threads wake to check for shutdown: the upper bound on how long
/// [`StunHandle::shutdown`] waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

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

/// Counters shared by all worker threads. Relaxed atomics: each is an independent tally read
/// only for metrics, so no ordering between them is needed.
#[derive(Debug, Default)]
pub struct StunStats {
    answered: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    rate_limited: AtomicU64,
    evictions: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
}

/// A plain copy of [`StunStats`] at one moment, for tests, logs and JSON status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StunCounters {
    /// Binding Requests answered with a success response.
    pub answered: u64,
    /// Binding Requests answered with an error response (420: CHANGE-REQUEST or another
    /// attribute we do not support).
    pub refused: u64,
    /// Datagrams dropped because they were not a well-formed STUN message (or were too big).
    pub malformed: u64,
    /// Well-formed STUN messages dropped because they are not Binding Requests (indications,
    /// responses, other methods): RFC 8489 gives them no answer.
    pub ignored: u64,
    /// Binding Requests dropped because their source was over its rate limit.
    pub rate_limited: u64,
    /// Rate-limit table entries replaced by a new source because the table was full.
    pub rate_limit_evictions: u64,
    /// Answers the kernel refused to send.
    pub send_errors: u64,
    /// Receive errors other than the shutdown poll's timeouts.
    pub recv_errors: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl StunStats {
    /// Reads every counter once.
    pub fn snapshot(&self) -> StunCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StunCounters {
            answered: get(&self.answered),
            refused: get(&self.refused),
            malformed: get(&self.malformed),
            ignored: get(&self.ignored),
            rate_limited: get(&self.rate_limited),
            rate_limit_evictions: get(&self.evictions),
            send_errors: get(&self.send_errors),
            recv_errors: get(&self.recv_errors),
        }
    }

    /// Appends the counters to `out` in Prometheus text exposition format, so the server's
    /// `/metrics` page can concatenate every subsystem into one buffer.
    pub fn render_prometheus(&self, out: &mut String) {
        self.snapshot().render_prometheus(out);
    }
}

impl StunCounters {
    /// Adds another service's counters, so a server listening on two STUN ports (for the
    /// mapping-behaviour check) exports one set of metrics.
    pub fn merge(mut self, other: StunCounters) -> StunCounters {
        self.answered += other.answered;
        self.refused += other.refused;
        self.malformed += other.malformed;
        self.ignored += other.ignored;
        self.rate_limited += other.rate_limited;
        self.rate_limit_evictions += other.rate_limit_evictions;
        self.send_errors += other.send_errors;
        self.recv_errors += other.recv_errors;
        self
    }

    /// Appends these counters to `out` in Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let c = self;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP wgmesh_stun_responses_total STUN Binding responses sent, by outcome.\n\
             # TYPE wgmesh_stun_responses_total counter\n\
             wgmesh_stun_responses_total{{result=\"success\"}} {}\n\
             wgmesh_stun_responses_total{{result=\"error\"}} {}\n\
             # HELP wgmesh_stun_dropped_total Datagrams received on the STUN port and not answered, by reason.\n\
             # TYPE wgmesh_stun_dropped_total counter\n\
             wgmesh_stun_dropped_total{{reason=\"malformed\"}} {}\n\
             wgmesh_stun_dropped_total{{reason=\"not_binding_request\"}} {}\n\
             wgmesh_stun_dropped_total{{reason=\"rate_limited\"}} {}\n\
             # HELP wgmesh_stun_rate_limit_evictions_total Sources forgotten by the full per-source rate-limit table.\n\
             # TYPE wgmesh_stun_rate_limit_evictions_total counter\n\
             wgmesh_stun_rate_limit_evictions_total {}\n\
             # HELP wgmesh_stun_socket_errors_total STUN socket errors, by direction.\n\
             # TYPE wgmesh_stun_socket_errors_total counter\n\
             wgmesh_stun_socket_errors_total{{op=\"send\"}} {}\n\
             wgmesh_stun_socket_errors_total{{op=\"recv\"}} {}\n",
            c.answered,
            c.refused,
            c.malformed,
            c.ignored,
            c.rate_limited,
            c.rate_limit_evictions,
            c.send_errors,
            c.recv_errors,
        );
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
struct RateTable {
    /// Nanoseconds between answers at the sustained rate.
    interval: u64,
    /// How far ahead of now a source's TAT may run before it is throttled (burst - 1 intervals).
    tolerance: u64,
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    hasher: RandomState,
    start: Instant,
}

impl RateTable {
    fn new(limit: &RateLimit) -> Option<Self> {
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
    fn allow(&self, ip: IpAddr) -> (bool, bool) {
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

/// Everything a worker thread reads; shared by `Arc`.
struct Shared {
    stats: Arc<StunStats>,
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
        let shared = Arc::new(Shared {
            stats: Arc::new(StunStats::default()),
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
        log::info!(
            "STUN responder on {local_addr} with {threads} thread(s), rate limit {limits:?}"
        );
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
    // One byte more than we accept, so a datagram that fills it is known to be oversized.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut out = [0u8; stun::MAX_RESPONSE_LEN];
    let opts = ResponseOptions {
        mapped_address_for_modern_clients: shared.options.mapped_address_for_modern_clients,
        software: shared.options.software.as_deref(),
        fingerprint: false,
    };
    while !shared.stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
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
                ) => {}
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
            stop: AtomicBool::new(false),
            limiter: RateTable::new(&limit),
            options: ServiceOptions::default(),
        }
    }

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

    #[test]
    fn prometheus_text_names_every_counter() {
        let stats = StunStats::default();
        bump(&stats.answered);
        bump(&stats.rate_limited);
        bump(&stats.rate_limited);
        let mut out = String::from("# earlier metrics\n");
        stats.render_prometheus(&mut out);
        assert!(out.starts_with("# earlier metrics\n"));
        assert!(out.contains("\nwgmesh_stun_responses_total{result=\"success\"} 1\n"));
        assert!(out.contains("\nwgmesh_stun_dropped_total{reason=\"rate_limited\"} 2\n"));
        assert!(out.contains("\nwgmesh_stun_dropped_total{reason=\"malformed\"} 0\n"));
        for line in out.lines().skip(1) {
            assert!(
                line.starts_with("# HELP wgmesh_stun_")
                    || line.starts_with("# TYPE wgmesh_stun_")
                    || line.starts_with("wgmesh_stun_"),
                "{line}"
            );
        }
        assert!(out.ends_with('\n'));
    }
}
