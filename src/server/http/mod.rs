//! The coordination server's HTTP/1.1 connection layer, parsing with `httparse` and
//! answering through a [`Handler`].
//!
//! Design (for 10,000 agents, each with an idle keep-alive connection and a parked
//! long-poll): a connection costs a thread only while it has something to do.
//! - one accept thread hands every new socket to the readiness loop (`accept.rs`);
//! - one readiness loop thread (`poller.rs`) owns every *waiting* connection: idle between
//!   requests, parked on a long-poll ([`Park`]), or draining before close. It watches them
//!   with epoll/kqueue (`mio`), enforces their deadlines (idle timeout, park deadline), wakes
//!   parked requests when their [`Notifier`] moves, and hands a readable connection to a
//!   worker;
//! - an elastic worker pool (`pool.rs`) reads the request with blocking reads bounded by the
//!   request timeout, runs the handler (at most `--threads` at once), writes the answer, and
//!   gives the connection back to the loop. Workers start when every one is busy (so slow
//!   clients cannot stall others) and exit after a few idle seconds.
//!
//! Why not tiny_http's own loop: it hands each connection to a task pool whose spawn races
//! with idle workers (a keep-alive connection can starve behind ones that never close), has
//! no idle timeout, no header limit, and pins an old rustls.
//!
//! HTTPS ([`HttpServer::start_tls`]): the handshake runs on a worker when the first bytes
//! arrive, bounded by the request timeout; the session then travels with the connection.

mod accept;
mod conn;
mod handler;
mod message;
mod park;
mod parse;
mod poller;
mod pool;
mod readiness;
mod tls;
mod transport;

pub use handler::Handler;
pub use message::{Body, Limits, Request, Response, DEFAULT_MAX_CONNECTIONS};
pub use park::{Notifier, Park, Reply, Wake};
pub use parse::parse_requests;
pub use tls::{load_tls_config, TlsFiles};

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Connection counts, for figures and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections open (accepted and not yet closed).
    pub open: usize,
    /// Of those, waiting idle between requests in the readiness loop.
    pub idle: usize,
    /// Of those, parked on a long-poll in the readiness loop.
    pub parked: usize,
    /// Worker threads alive.
    pub workers: usize,
}

impl ConnStats {
    /// Appends the counts as Prometheus gauges (`wgmesh_http_connections{state=...}`,
    /// `wgmesh_http_workers`), so an operator sees parked long-polls and idle agents.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP wgmesh_http_connections Open HTTP connections: all, idle between requests, parked on a long-poll."
        );
        let _ = writeln!(out, "# TYPE wgmesh_http_connections gauge");
        for (state, n) in [
            ("open", self.open),
            ("idle", self.idle),
            ("parked", self.parked),
        ] {
            let _ = writeln!(out, "wgmesh_http_connections{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP wgmesh_http_workers HTTP worker threads alive (they exit when idle)."
        );
        let _ = writeln!(out, "# TYPE wgmesh_http_workers gauge");
        let _ = writeln!(out, "wgmesh_http_workers {}", self.workers);
    }
}

/// Reads a server's [`ConnStats`] without keeping the server alive (the handler holds one
/// for `/metrics`, and the server holds the handler).
#[derive(Clone)]
pub struct StatsHandle(std::sync::Weak<poller::Shared>);

impl StatsHandle {
    /// The counts now, or None once the server is gone.
    pub fn get(&self) -> Option<ConnStats> {
        self.0.upgrade().map(|shared| stats_of(&shared))
    }
}

fn stats_of(shared: &poller::Shared) -> ConnStats {
    ConnStats {
        open: shared.open.load(Ordering::SeqCst),
        idle: shared.counts.idle.load(Ordering::Relaxed),
        parked: shared.counts.parked.load(Ordering::Relaxed),
        workers: shared.pool.threads(),
    }
}

/// A running HTTP server: the accept thread, the readiness loop and its workers.
pub struct HttpServer {
    local_addr: SocketAddr,
    shared: Arc<poller::Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Starts accepting plain HTTP on `listener`, answering with `handler` under `limits`.
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
    ) -> io::Result<HttpServer> {
        Self::start_inner(listener, limits, handler, None)
    }

    /// Like [`HttpServer::start`], but every connection speaks HTTPS with `tls` (see
    /// [`load_tls_config`]). A client that sends plain HTTP to this port gets a plain-HTTP
    /// 400 naming the problem rather than a silent close, so the mistake is obvious.
    pub fn start_tls(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<HttpServer> {
        Self::start_inner(listener, limits, handler, Some(tls))
    }

    fn start_inner(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<HttpServer> {
        if let Some(nofile) = accept::raise_nofile_limit() {
            if (nofile as usize) < limits.max_connections + 64 {
                log::warn!(
                    "the open-file limit ({nofile}) is below --max-connections ({}): past it, idle connections are closed and new ones answered 503; raise the hard limit (`ulimit -Hn`, LimitNOFILE=) to serve that many",
                    limits.max_connections
                );
            }
        }
        let local_addr = listener.local_addr()?;
        let (handle, readiness, rx, notified) = poller::channel()?;
        let shared = Arc::new(poller::Shared {
            pool: pool::Pool::new(
                limits.handler_threads.saturating_mul(2).max(8),
                limits.max_connections,
            ),
            limits,
            handler,
            gate: conn::Gate::default(),
            handle,
            open: Arc::new(AtomicUsize::new(0)),
            counts: poller::Counts::default(),
            stop: AtomicBool::new(false),
        });
        let event_loop = poller::Loop::new(shared.clone(), readiness, rx, notified);
        let loop_thread = std::thread::Builder::new()
            .name("http-loop".into())
            .spawn(move || event_loop.run())?;
        let accept_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept::accept_loop(listener, shared, tls))?
        };
        Ok(HttpServer {
            local_addr,
            shared,
            threads: vec![accept_thread, loop_thread],
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections are open, waiting or parked, and how many workers run.
    pub fn stats(&self) -> ConnStats {
        stats_of(&self.shared)
    }

    /// A handle for reading [`HttpServer::stats`] from elsewhere (e.g. `/metrics`).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::downgrade(&self.shared))
    }

    /// Stops accepting new connections and closes waiting ones; requests being handled
    /// finish, parked ones are dropped.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.handle.wake();
        // The accept thread polls the stop flag (accept::STOP_POLL): no throwaway connection,
        // which needs a descriptor the server may not have.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.shared.pool.stop();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    use std::time::Instant;

    struct Hello;
    impl Handler for Hello {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }
    }

    fn tls_server(request_timeout: Duration) -> HttpServer {
        tls_server_and_cert(request_timeout).0
    }

    fn tls_server_and_cert(
        request_timeout: Duration,
    ) -> (HttpServer, rustls::pki_types::CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "wgmesh-http-tls-{}-{}",
            std::process::id(),
            request_timeout.as_millis()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let config = load_tls_config(&files).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let limits = Limits {
            request_timeout,
            idle_timeout: request_timeout,
            ..Limits::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = HttpServer::start_tls(listener, limits, Arc::new(Hello), config).unwrap();
        (server, cert.der().clone())
    }

    /// Two requests in one TLS record: rustls decrypts both at once, so the second may never
    /// makes the socket readable again; it must be served before the connection goes back
    /// to the readiness loop. Then a third request after a pause goes through the loop.
    #[test]
    fn pipelined_requests_over_tls_are_all_answered() {
        let (server, cert) = tls_server_and_cert(Duration::from_secs(5));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let tcp = TcpStream::connect(server.local_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n";
        let read_answers = |tls: &mut rustls::StreamOwned<_, TcpStream>, n: usize| {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while String::from_utf8_lossy(&got)
                .matches("HTTP/1.1 200")
                .count()
                < n
                || !got.ends_with(b"{}")
            {
                let read = tls.read(&mut chunk).expect("answer before the timeout");
                assert!(read > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..read]);
            }
            String::from_utf8_lossy(&got)
                .matches("HTTP/1.1 200")
                .count()
        };
        // The first request exactly fills one 8 KiB read, so the second stays in rustls.
        let mut first = b"GET /a HTTP/1.1\r\nHost: t\r\nX-Pad: ".to_vec();
        let pad = 8192 - first.len() - 4;
        first.extend(std::iter::repeat_n(b'p', pad));
        first.extend_from_slice(b"\r\n\r\n");
        assert_eq!(first.len(), 8192);
        tls.write_all(&[&first[..], &request[..]].concat()).unwrap();
        assert_eq!(read_answers(&mut tls, 2), 2);
        std::thread::sleep(Duration::from_millis(300));
        tls.write_all(request).unwrap();
        assert_eq!(read_answers(&mut tls, 1), 1);
        assert_eq!(server.stats().open, 1);
    }

    /// Seconds until the server closes a connection that trickles `bytes` one at a time.
    fn seconds_until_closed(server: &HttpServer, bytes: &[u8], gap: Duration) -> f64 {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let start = Instant::now();
        let mut sink = [0u8; 256];
        for byte in bytes.iter().cycle() {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            match stream.read(&mut sink) {
                Ok(0) => break,
                Err(e) if !parse::is_timeout(&e) => break,
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never closed");
            std::thread::sleep(gap);
        }
        start.elapsed().as_secs_f64()
    }

    #[test]
    fn a_stalled_or_trickled_tls_handshake_is_cut_at_the_request_timeout() {
        let server = tls_server(Duration::from_millis(400));
        // A ClientHello record header, then nothing more.
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // One byte of a long record every 50 ms: each socket read succeeds well within the
        // timeout, so only a deadline re-armed per read cuts it.
        let mut hello = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        hello.extend(std::iter::repeat_n(0x01, 0x4000));
        let secs = seconds_until_closed(&server, &hello, Duration::from_millis(50));
        assert!(secs < 2.0, "trickled handshake lasted {secs} s");
    }

    #[test]
    fn plain_http_on_the_tls_port_gets_a_plain_answer() {
        let server = tls_server(Duration::from_secs(5));
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("HTTPS only"), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
    }
}

/// Real-socket tests of the loop: parking, conformance on the wire, graceful close.
#[cfg(test)]
mod loop_tests;
