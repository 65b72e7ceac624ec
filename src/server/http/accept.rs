//! Accepting connections, and what to do when the process runs out of file descriptors.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (ten thousand agents need
//! more than the usual 1024). If `accept()` still fails for lack of descriptors, the pending
//! client must not hang: first the longest-idle keep-alive connection is closed to make room
//! (its agent reconnects on its next request; only a connection that was answered and has no
//! new request bytes waiting counts as idle, never one whose first request is in flight); if
//! none is idle, a spare descriptor held for this moment is released, the client accepted,
//! answered 503 with `Retry-After`, and closed gracefully (drained in the readiness loop, so
//! the rest of its request cannot turn the close into a reset that destroys the answer). The
//! shortage is logged when it starts, and then once per [`LOG_EVERY`] with what it cost in
//! exactly that window.
//!
//! The listener is non-blocking and waited on with `poll` for at most [`STOP_POLL`], so a
//! stop is noticed without a new connection arriving: the old way (connecting to ourselves
//! to wake a blocking `accept`) needs a descriptor, and found none during a shortage.

use super::conn::{close_gracefully, Conn, Stream, Ticket};
use super::message::Response;
use super::parse::write_response;
use super::poller::{Msg, Shared};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often running out of descriptors is logged at most.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Longest the accept thread waits for a connection before looking at the stop flag.
pub(super) const STOP_POLL: Duration = Duration::from_millis(200);

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

/// The soft open-file limit now (it may have been lowered since the start, e.g. by
/// `prlimit --pid`).
fn current_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid pointer to a struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)]
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Waits until `listener` has a connection to accept, or [`STOP_POLL`] passes.
#[cfg(unix)]
fn wait_for_connection(listener: &TcpListener) {
    use std::os::unix::io::AsRawFd;
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, for the length given.
    let _ = unsafe { libc::poll(&mut fds, 1, STOP_POLL.as_millis() as libc::c_int) };
}

/// Elsewhere: a short sleep (at most [`STOP_POLL`]) between non-blocking accepts.
#[cfg(not(unix))]
fn wait_for_connection(_listener: &TcpListener) {
    std::thread::sleep(STOP_POLL.min(Duration::from_millis(20)));
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

/// Counts what running out of descriptors cost in the current window: it starts at the
/// first shortage, and its counts are logged once it is [`LOG_EVERY`] old, for exactly the
/// time it covered. Pure over the times given, so the window arithmetic is tested.
#[derive(Debug, Default)]
struct Shortage {
    since: Option<Instant>,
    evicted: u64,
    shed: u64,
}

impl Shortage {
    /// A shortage was met at `now`: the warning to log if this starts a window.
    fn begin(&mut self, now: Instant, e: &io::Error) -> Option<String> {
        if self.since.is_some() {
            return None;
        }
        self.since = Some(now);
        Some(format!(
            "out of file descriptors ({e}; open-file limit {}): closing idle keep-alive connections and answering new ones 503 until descriptors free up; raise `ulimit -n` or lower --max-connections",
            current_nofile_limit().map_or("unknown".into(), |n| n.to_string()),
        ))
    }

    /// The summary to log at `now` if the window is [`LOG_EVERY`] old: what it cost since
    /// it started; the window then closes (the next shortage opens another).
    fn summary(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        let elapsed = now.saturating_duration_since(since);
        if elapsed < LOG_EVERY {
            return None;
        }
        let line = format!(
            "file descriptor shortage: in the last {} s closed {} idle connections and answered {} new ones 503",
            elapsed.as_secs(),
            self.evicted,
            self.shed
        );
        *self = Shortage::default();
        Some(line)
    }
}

/// Answers 503 with `Retry-After` on a connection accepted with the spare descriptor, then
/// closes it gracefully: the readiness loop drains what the client still sends before the
/// descriptor is closed, so the close cannot reset the answer away.
fn shed(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false); // inherited from the listener on BSDs and macOS
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let response = Response::error(503, "the server is out of file descriptors: retry shortly")
        .with_header("Retry-After", "1".into());
    let mut out = Vec::new();
    let _ = write_response(&mut out, &response, false, false);
    if stream.write_all(&out).is_err() {
        return;
    }
    let (ticket, _) = Ticket::take(&shared.open);
    if let super::conn::After::Drain(tcp, ticket) = close_gracefully(Stream::Plain(stream), ticket)
    {
        shared.handle.send(Msg::Drain(tcp, ticket));
    }
}

/// The accept loop: hands every new connection to the readiness loop.
pub(super) fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut spare = reserve();
    let mut shortage = Shortage::default();
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!(
            "cannot make the listener non-blocking ({e}): a stop may wait for a connection"
        );
    }
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let accepted = listener.accept();
        if let Some(line) = shortage.summary(Instant::now()) {
            log::warn!("{line}");
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_for_connection(&listener);
                continue;
            }
            Err(e) if out_of_descriptors(&e) => {
                if let Some(line) = shortage.begin(Instant::now(), &e) {
                    log::warn!("{line}");
                }
                if shared.handle.evict_idle() {
                    shortage.evicted += 1;
                    continue;
                }
                match spare.take() {
                    Some(file) => {
                        drop(file);
                        if let Ok((stream, _)) = listener.accept() {
                            shared.handler.rejected(503);
                            shed(stream, &shared);
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
        // Accepted sockets inherit O_NONBLOCK from the listener on BSDs and macOS; workers
        // read with deadlines and need blocking sockets.
        let _ = stream.set_nonblocking(false);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first line says the shortage started (no counts yet); the summary comes once the
    /// window is 10 s old and counts exactly what happened in it.
    #[test]
    fn the_shortage_log_counts_the_window_it_names() {
        let emfile = io::Error::from_raw_os_error(24);
        let start = Instant::now();
        let mut s = Shortage::default();
        assert!(s.summary(start).is_none(), "no shortage, nothing to say");
        let first = s.begin(start, &emfile).expect("the start is logged");
        assert!(!first.contains("closed 0"), "{first}");
        s.evicted += 47;
        assert!(s.begin(start + Duration::from_secs(1), &emfile).is_none());
        s.shed += 3;
        assert!(s.summary(start + Duration::from_secs(9)).is_none());
        let summary = s.summary(start + Duration::from_secs(12)).unwrap();
        assert!(
            summary.contains(
                "in the last 12 s closed 47 idle connections and answered 3 new ones 503"
            ),
            "{summary}"
        );
        // The window closed: the next shortage starts (and logs) a new one.
        assert!(s.summary(start + Duration::from_secs(30)).is_none());
        assert!(s.begin(start + Duration::from_secs(31), &emfile).is_some());
    }
}
