//! One connection's turn on a worker: read requests (blocking, under deadlines), run the
//! handler, write answers, and say where the connection goes next: back to the readiness
//! loop to wait (idle, or parked with a long-poll), into a graceful close, or away.
//!
//! Why blocking I/O on a worker rather than a state machine: a worker only gets a connection
//! once bytes have arrived, and the request and write timeouts bound how long one client can
//! hold it; waiting, the part that lasts, is the loop's job.

use super::handler::Handler;
use super::message::{Limits, Response};
use super::park::{Park, Reply, Wake};
use super::parse::{is_timeout, read_request, read_some, write_response, ReadOutcome};
use super::tls::{self, TlsStream};
use super::transport::Transport;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The connection's stream in its current state.
pub(super) enum Stream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// An HTTPS connection whose handshake has not started yet.
    Handshake(TcpStream, Arc<rustls::ServerConfig>),
    /// An HTTPS session.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The socket underneath, for the readiness loop.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) | Stream::Handshake(tcp, _) => tcp,
            Stream::Tls(tls) => &tls.sock.tcp,
        }
    }

    /// Moves bytes already received and decrypted (but not yet read) into `buf`.
    fn take_buffered(&mut self, buf: &mut Vec<u8>) {
        if let Stream::Tls(tls) = self {
            tls::take_buffered(tls, buf);
        }
    }

    fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Plain(tcp) | Stream::Handshake(tcp, _) => tcp,
            Stream::Tls(tls) => tls.sock.tcp,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Handshake(..) => Err(io::ErrorKind::NotConnected.into()),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Handshake(..) => Err(io::ErrorKind::NotConnected.into()),
            Stream::Tls(tls) => tls.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Handshake(..) => Ok(()),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl Transport for Stream {
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.read_deadline(deadline),
            Stream::Handshake(..) => Ok(()),
            Stream::Tls(tls) => tls.read_deadline(deadline),
        }
    }
    fn close(&mut self) {
        if let Stream::Tls(tls) = self {
            tls.close();
        }
    }
}

/// Counts a connection as open from accept until its socket closes.
pub(super) struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    /// Counts one more open connection in `open`; returns it with the count before.
    pub(super) fn take(open: &Arc<AtomicUsize>) -> (Ticket, usize) {
        let before = open.fetch_add(1, Ordering::SeqCst);
        (Ticket(open.clone()), before)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection between requests: its stream, bytes read but not yet used, and its peer.
pub(super) struct Conn {
    pub(super) stream: Stream,
    pub(super) buf: Vec<u8>,
    pub(super) remote: SocketAddr,
    pub(super) ticket: Ticket,
    /// When the connection last went back to the loop after an answer: a client that comes
    /// back within [`BUSY`] is busy, and its worker lingers for its next request.
    pub(super) answered_at: Option<Instant>,
}

/// How to answer a parked request once it is resumed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) keep_alive: bool,
    pub(super) head_only: bool,
}

/// Where a connection goes after its turn on a worker.
pub(super) enum After {
    /// Wait in the readiness loop for the next request.
    Idle(Conn),
    /// Wait in the readiness loop until the park resolves.
    Park(Conn, Park, Pending),
    /// Answered and half-closed: read and discard what the client still sends, then close.
    Drain(TcpStream, Ticket),
    /// Closed.
    Close,
}

/// Bounds concurrent handler work (`--threads`).
#[derive(Debug, Default)]
pub(super) struct Gate {
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn run<T>(&self, max: usize, work: impl FnOnce() -> T) -> std::thread::Result<T> {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            while *busy >= max {
                busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
            }
            *busy += 1;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
        result
    }
}

/// What a worker needs to serve a connection.
pub(super) struct Serving<'a> {
    pub(super) limits: &'a Limits,
    pub(super) handler: &'a dyn Handler,
    pub(super) gate: &'a Gate,
}

fn internal_error() -> Response {
    Response::error(500, "internal error: see the server log")
}

/// Serves `conn`, which the loop found readable (or, with `first`, whose parked request has
/// an answer to write first).
pub(super) fn serve(
    mut conn: Conn,
    ctx: &Serving<'_>,
    first: Option<(Response, Pending)>,
) -> After {
    if matches!(conn.stream, Stream::Handshake(..)) {
        let Stream::Handshake(tcp, config) = conn.stream else {
            unreachable!()
        };
        match tls::handshake(tcp, config, ctx.limits, ctx.handler, conn.remote) {
            Ok(Some(tls)) => conn.stream = Stream::Tls(Box::new(tls)),
            Ok(None) => return After::Close,
            Err(e) => {
                log::debug!("TLS connection ended: {e}");
                return After::Close;
            }
        }
    }
    let Conn {
        stream,
        mut buf,
        remote,
        ticket,
        answered_at,
    } = conn;
    let mut linger = answered_at.is_some_and(|t| t.elapsed() < BUSY);
    if let Stream::Plain(tcp) = &stream {
        let _ = tcp.set_write_timeout(Some(ctx.limits.request_timeout));
    }
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    match serve_requests(&mut out, &mut buf, remote, ctx, first, &mut linger) {
        Ok(Next::Idle) => match out.into_inner() {
            Ok(stream) if buf.is_empty() => After::Idle(Conn {
                stream,
                // Nothing is buffered: give the memory back while the connection waits, so
                // 10,000 idle agents do not hold 10,000 read buffers.
                buf: Vec::new(),
                remote,
                ticket,
                answered_at: Some(Instant::now()),
            }),
            Ok(stream) => After::Idle(Conn {
                stream,
                buf,
                remote,
                ticket,
                answered_at: Some(Instant::now()),
            }),
            Err(_) => After::Close,
        },
        Ok(Next::Park(park, pending)) => match out.into_inner() {
            Ok(stream) => After::Park(
                Conn {
                    stream,
                    buf,
                    remote,
                    ticket,
                    answered_at: None,
                },
                park,
                pending,
            ),
            Err(_) => After::Close,
        },
        Ok(Next::Close) => match out.into_inner() {
            Ok(stream) => close_gracefully(stream, ticket),
            Err(_) => After::Close,
        },
        Ok(Next::Gone) => {
            if let Ok(mut stream) = out.into_inner() {
                stream.close();
            }
            After::Close
        }
        Err(e) => {
            log::debug!("connection from {remote} ended: {e}");
            After::Close
        }
    }
}

/// Runs a parked request's resume closure, then carries on serving the connection.
pub(super) fn resume(
    conn: Conn,
    park: Park,
    wake: Wake,
    pending: Pending,
    ctx: &Serving<'_>,
) -> After {
    let reply = ctx
        .gate
        .run(ctx.limits.handler_threads, move || (park.resume)(wake))
        .unwrap_or_else(|_| Reply::Now(internal_error()));
    match reply {
        Reply::Park(park) => After::Park(conn, park, pending),
        Reply::Now(response) => serve(conn, ctx, Some((response, pending))),
    }
}

enum Next {
    Idle,
    Park(Park, Pending),
    /// Answered the last request: close gracefully.
    Close,
    /// The peer closed or never sent a request.
    Gone,
}

fn serve_requests(
    out: &mut BufWriter<Stream>,
    buf: &mut Vec<u8>,
    remote: SocketAddr,
    ctx: &Serving<'_>,
    first: Option<(Response, Pending)>,
    linger: &mut bool,
) -> io::Result<Next> {
    if let Some((response, pending)) = first {
        write_response(out, &response, pending.keep_alive, pending.head_only)?;
        if let Some(next) = after_answer(out, buf, pending.keep_alive, linger)? {
            return Ok(next);
        }
    }
    loop {
        match read_request(out, buf, ctx.limits, remote)? {
            ReadOutcome::Closed => return Ok(Next::Gone),
            ReadOutcome::Refused(status, message) => {
                ctx.handler.rejected(status);
                write_response(out, &Response::error(status, &message), false, false)?;
                out.flush()?;
                return Ok(Next::Close);
            }
            ReadOutcome::Request(request, keep_alive) => {
                let pending = Pending {
                    keep_alive,
                    head_only: request.method == "HEAD",
                };
                let reply = ctx
                    .gate
                    .run(ctx.limits.handler_threads, || {
                        ctx.handler.handle_or_park(&request)
                    })
                    .unwrap_or_else(|_| Reply::Now(internal_error()));
                match reply {
                    Reply::Park(park) => {
                        out.flush()?;
                        return Ok(Next::Park(park, pending));
                    }
                    Reply::Now(response) => {
                        write_response(out, &response, keep_alive, pending.head_only)?;
                        if let Some(next) = after_answer(out, buf, keep_alive, linger)? {
                            return Ok(next);
                        }
                    }
                }
            }
        }
    }
}

/// After an answer: close, go idle, or (with more bytes already here) serve the next one.
fn after_answer(
    out: &mut BufWriter<Stream>,
    buf: &mut Vec<u8>,
    keep_alive: bool,
    linger: &mut bool,
) -> io::Result<Option<Next>> {
    if !keep_alive {
        out.flush()?;
        return Ok(Some(Next::Close));
    }
    if buf.is_empty() {
        out.get_mut().take_buffered(buf);
    }
    if buf.is_empty() {
        out.flush()?;
        if !*linger {
            return Ok(Some(Next::Idle));
        }
        // A busy client sends its next request right after reading this answer: serving it
        // here saves the trip through the readiness loop (two epoll changes and two thread
        // hand-offs); a quiet one goes back to the loop after LINGER. Connections that are
        // not busy (an agent's heartbeat every 30 s) go straight back: no wasted wake-up.
        match read_some(out, buf, Instant::now() + LINGER) {
            Ok(0) => return Ok(Some(Next::Gone)),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(Some(Next::Idle)),
            Err(_) => return Ok(Some(Next::Gone)),
        }
    }
    Ok(None)
}

/// How long a worker waits for the next request on a busy connection it just answered.
const LINGER: Duration = Duration::from_millis(2);

/// A connection whose next request came within this time of the previous answer is busy.
const BUSY: Duration = Duration::from_millis(50);

/// How long a closing connection is drained, and how much of it is read, at most.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(1);
/// See [`DRAIN_TIME`].
pub(super) const DRAIN_BYTES: usize = 1 << 20;

/// Closes after a final answer the way RFC 9112 9.6 asks: TLS close_notify, shut down the
/// sending side, then read and discard what the client still sends (in the readiness loop,
/// for at most [`DRAIN_TIME`]), so unread request bytes cannot turn the close into a reset
/// that destroys the answer in flight.
pub(super) fn close_gracefully(mut stream: Stream, ticket: Ticket) -> After {
    stream.close();
    let tcp = stream.into_tcp();
    if tcp.shutdown(Shutdown::Write).is_err() || tcp.set_nonblocking(true).is_err() {
        return After::Close;
    }
    After::Drain(tcp, ticket)
}

/// Reads and discards whatever a draining socket has; true once it is done (closed by the
/// peer, broken, or past `budget` bytes in total).
pub(super) fn drain(tcp: &mut TcpStream, read: &mut usize) -> bool {
    let mut sink = [0u8; 16 * 1024];
    loop {
        match tcp.read(&mut sink) {
            Ok(0) => return true,
            Ok(n) => {
                *read += n;
                if *read > DRAIN_BYTES {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
