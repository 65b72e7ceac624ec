//! Thousands of agents' long-polls from one process, for the live-sync benches: each agent's
//! signed `GET /peers?since=N&wait=60` parked on a server (or a replica), then the time until
//! every one of them has its answer after one change. One readiness loop (mio) reads them all.

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};
use wgmesh::keys::{PrivateKey, PublicKey};
use wgmesh::proto::auth::RequestSigner;
use wgmesh::types::PeerId;

/// How a server is started to hold every agent's long-poll at once: room for 12,000
/// connections, registrations unthrottled, two worker threads.
pub const SERVER_FLAGS: [&str; 7] = [
    "--open",
    "--max-connections",
    "12000",
    "--register-limit",
    "0",
    "--threads",
    "2",
];

/// Simulated agents: 10,000 (`WGMESH_BENCH_AGENTS` overrides, e.g. for a quick check).
pub fn agents() -> u32 {
    std::env::var("WGMESH_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// One agent's outstanding long-poll: its socket and what it has read so far.
pub struct Poller {
    stream: TcpStream,
    /// The answer's bytes so far (head and body).
    pub read: Vec<u8>,
    /// When the whole answer had arrived.
    pub done: Option<Instant>,
}

impl Poller {
    /// Whether a whole answer (head plus Content-Length bytes) has arrived.
    pub fn complete(&self) -> bool {
        let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&self.read[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        self.read.len() >= end + 4 + length
    }

    /// The answer's JSON body (once complete).
    pub fn json(&self) -> serde_json::Value {
        let at = self.read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        serde_json::from_slice(&self.read[at..]).unwrap()
    }
}

/// Each agent's request signer (towards `server`) and peer id, from its key.
pub fn agents_of(keys: &[PrivateKey], server: &PublicKey) -> (Vec<RequestSigner>, Vec<PeerId>) {
    keys.iter()
        .map(|k| {
            (
                RequestSigner::new(k, server),
                PeerId::for_key(&k.public_key()),
            )
        })
        .unzip()
}

/// A signed GET request's bytes.
pub fn signed_get(signer: &RequestSigner, path: &str) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n");
    for (name, value) in signer.sign("GET", path, b"", SystemTime::now()) {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// One whole answer to `request` sent to `addr`, read to its end.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Poller {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Poller {
        stream: stream.try_clone().unwrap(),
        read: Vec::new(),
        done: None,
    };
    let mut buf = vec![0u8; 1 << 16];
    while !answer.complete() {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed before answering");
        answer.read.extend_from_slice(&buf[..n]);
    }
    answer
}

/// A signed `POST /register` of a new peer called `hostname`, ready to send.
pub fn register_request(newcomer: &PrivateKey, server: &PublicKey, hostname: &str) -> Vec<u8> {
    let body = format!(
        "{{\"public_key\":\"{}\",\"hostname\":\"{hostname}\",\"listen_port\":51820}}",
        newcomer.public_key()
    );
    let mut req = format!(
        "POST /register HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in RequestSigner::new(newcomer, server).sign(
        "POST",
        "/register",
        body.as_bytes(),
        SystemTime::now(),
    ) {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

/// Long-polls parked on one or more servers, read by one readiness loop.
pub struct Parked {
    poll: Poll,
    /// One per agent, in the order parked.
    pub pollers: Vec<Poller>,
    /// How long parking them all took.
    pub parking: Duration,
}

impl Parked {
    /// Parks one long-poll `since` version `since` per agent: agent `i` (`signers[i]`, peer
    /// `ids[i]`) at `addrs[i % addrs.len()]`. Then waits 3 s for every request to reach its
    /// server, and returns how many were answered in that time (none should be).
    pub fn park(
        addrs: &[SocketAddr],
        signers: &[RequestSigner],
        ids: &[PeerId],
        since: u64,
    ) -> (Parked, usize) {
        let poll = Poll::new().unwrap();
        let mut pollers = Vec::with_capacity(signers.len());
        let started = Instant::now();
        for (i, (signer, id)) in signers.iter().zip(ids).enumerate() {
            let path = format!("/peers?peer_id={id}&since={since}&wait=60");
            let addr = addrs[i % addrs.len()];
            let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("agent {i}: {e}"));
            stream.write_all(&signed_get(signer, &path)).unwrap();
            stream.set_nonblocking(true).unwrap();
            poll.registry()
                .register(
                    &mut SourceFd(&stream.as_raw_fd()),
                    Token(i),
                    Interest::READABLE,
                )
                .unwrap();
            pollers.push(Poller {
                stream,
                read: Vec::new(),
                done: None,
            });
        }
        let parking = started.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        let mut parked = Parked {
            poll,
            pollers,
            parking,
        };
        let mut events = Events::with_capacity(4096);
        parked.poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        let early = events.iter().count();
        (parked, early)
    }

    /// Reads answers until every agent has a whole one or `limit` passes; returns each
    /// answered agent's time after `changed_at`, sorted.
    pub fn wait_all(&mut self, changed_at: Instant, limit: Duration) -> Vec<Duration> {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 1 << 16];
        let mut left = self.pollers.iter().filter(|p| p.done.is_none()).count();
        let deadline = changed_at + limit;
        while left > 0 && Instant::now() < deadline {
            self.poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for event in events.iter() {
                let p = &mut self.pollers[event.token().0];
                loop {
                    match p.stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => p.read.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("agent read: {e}"),
                    }
                }
                if p.done.is_none() && p.complete() {
                    p.done = Some(Instant::now());
                    left -= 1;
                }
            }
        }
        let mut times: Vec<Duration> = self
            .pollers
            .iter()
            .filter_map(|p| p.done.map(|t| t.duration_since(changed_at)))
            .collect();
        times.sort();
        times
    }

    /// Bytes all agents downloaded.
    pub fn bytes(&self) -> usize {
        self.pollers.iter().map(|p| p.read.len()).sum()
    }
}

/// "first X ms, median Y ms, last Z ms" of sorted `times`.
pub fn spread(times: &[Duration]) -> String {
    let ms = |t: Option<&Duration>| t.map_or(0.0, |t| t.as_secs_f64() * 1e3);
    format!(
        "first {:.0} ms, median {:.0} ms, last {:.0} ms",
        ms(times.first()),
        ms(times.get(times.len() / 2)),
        ms(times.last())
    )
}
