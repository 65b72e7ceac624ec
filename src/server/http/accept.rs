//! Accepting connections, and what to do when the process runs out of file descriptors.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (ten thousand agents need
//! more than the usual 1024). If `accept()` still fails for lack of descriptors, the pending
//! client must not hang: first the longest-idle keep-alive connection is closed to make room
//! (its agent reconnects on its next request); if none is idle, a spare descriptor held for
//! this moment is released, the client accepted, answered 503 and closed. Either way the
//! condition is logged once per [`LOG_EVERY`], with counts, rather than on every attempt.

use super::conn::{close_gracefully, Conn, Stream, Ticket};
use super::parse::write_response;
use super::poller::{Msg, Shared};
use super::Response;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often running out of descriptors is logged at most.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit to the hard limit (once per process); returns the new
/// soft limit where there is such a thing.
pub(super) fn raise_nofile_limit() -> Option<u64> {
    static RAISED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *RAISED.get_or_init(raise_once)
}

#[cfg(unix)]
fn raise_once() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let mut wanted = limit;
        wanted.rlim_cur = limit.rlim_max;
        // macOS refuses "unlimited" (and anything above kern.maxfilesperproc) for the soft
        // limit: fall back to a value it takes.
        for candidate in [limit.rlim_max, 1 << 20, 1 << 16, 10240] {
            wanted.rlim_cur = candidate.min(limit.rlim_max);
            // SAFETY: as above.
            if wanted.rlim_cur > before
                && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0
            {
                limit.rlim_cur = wanted.rlim_cur;
                log::info!(
                    "raised the open-file limit from {before} to {}",
                    limit.rlim_cur
                );
                break;
            }
        }
    }
    // rlim_t is not u64 on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_once() -> Option<u64> {
    None
}

/// Whether an accept error means "no descriptor (or memory) for a new socket".
fn out_of_descriptors(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// A descriptor kept in reserve so a client can be accepted and told 503 when none is left.
fn reserve() -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        std::fs::File::open("/dev/null").ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Counts what running out of descriptors cost, logged once per [`LOG_EVERY`].
struct Shortage {
    since: Option<Instant>,
    evicted: u64,
    shed: u64,
}

impl Shortage {
    fn note(&mut self, e: &io::Error) {
        let now = Instant::now();
        match self.since {
            Some(t) if now.duration_since(t) < LOG_EVERY => {}
            _ => {
                log::warn!(
                    "out of file descriptors ({e}; open-file limit {}): in the last {} s closed {} idle keep-alive connections and answered {} new ones 503; raise `ulimit -n` or lower --max-connections",
                    raise_nofile_limit().map_or("unknown".into(), |n| n.to_string()),
                    LOG_EVERY.as_secs(),
                    self.evicted,
                    self.shed
                );
                self.since = Some(now);
                self.evicted = 0;
                self.shed = 0;
            }
        }
    }
}

/// Answers 503 on a connection accepted with the spare descriptor and closes it at once,
/// reading what already arrived first so the close does not reset the answer away.
fn shed(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 16 * 1024];
    let _ = stream.read(&mut sink);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let response = Response::error(503, "the server is out of file descriptors: retry shortly")
        .with_header("Retry-After", "1".into());
    let mut out = Vec::new();
    let _ = write_response(&mut out, &response, false, false);
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(Shutdown::Write);
}

/// The accept loop: hands every new connection to the readiness loop.
pub(super) fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut spare = reserve();
    let mut shortage = Shortage {
        since: None,
        evicted: 0,
        shed: 0,
    };
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) if out_of_descriptors(&e) => {
                shortage.note(&e);
                if shared.handle.evict_idle() {
                    shortage.evicted += 1;
                    continue;
                }
                match spare.take() {
                    Some(file) => {
                        drop(file);
                        if let Ok((stream, _)) = listener.accept() {
                            shared.handler.rejected(503);
                            shed(stream);
                            shortage.shed += 1;
                        }
                        spare = reserve();
                    }
                    None => {
                        spare = reserve();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                continue;
            }
            Err(e) => {
                log::debug!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ticket, open_before) = Ticket::take(&shared.open);
        if open_before >= shared.limits.max_connections {
            shared.handler.rejected(503);
            let mut stream = Stream::Plain(stream);
            let response = Response::error(503, "too many open connections: retry shortly");
            let _ = stream_write(&mut stream, &response);
            if let super::conn::After::Drain(tcp, ticket) = close_gracefully(stream, ticket) {
                shared.handle.send(Msg::Drain(tcp, ticket));
            }
            continue;
        }
        let stream = match &tls {
            None => Stream::Plain(stream),
            Some(config) => Stream::Handshake(stream, config.clone()),
        };
        shared.handle.send(Msg::Idle(Conn {
            stream,
            buf: Vec::new(),
            remote,
            ticket,
            answered_at: None,
        }));
    }
}

fn stream_write(stream: &mut Stream, response: &Response) -> io::Result<()> {
    if let Stream::Plain(tcp) = stream {
        tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
    }
    let mut out = Vec::new();
    write_response(&mut out, response, false, false)?;
    stream.write_all(&out)
}
