//! The coordination server's HTTP/1.1 connection layer: one light std thread per open
//! connection, parsing with `httparse`, answering through a [`Handler`].
//!
//! Why not tiny_http's own loop: tiny_http 0.12 hands each connection to a task pool whose
//! spawn races with idle workers, so during a burst a keep-alive connection can sit in the
//! pool's queue behind connections that never close, and get no answer at all; it also has
//! no idle timeout, no header limit and pins an old rustls. Owning the accept loop fixes all
//! of that in a few hundred lines: every accepted connection gets its own thread at once (up
//! to `max_connections`, past which new ones get a 503 instead of silence), idle and slow
//! connections are closed on timeouts, and `--threads` bounds how many requests run handler
//! code at the same moment.
//!
//! TLS: with [`HttpServer::start_tls`] every connection is wrapped in a current rustls
//! session (ring provider) on its own thread, the handshake bounded by the request timeout.
//! The connection code is generic over the stream (a private `Transport` trait), so the
//! plain-HTTP path compiles to exactly what it was, with no TLS branch per read or write.

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Limits that keep one client from taking the server down.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413 without being read.
    pub max_body_bytes: usize,
    /// How long a keep-alive connection may sit without starting a request.
    pub idle_timeout: Duration,
    /// How long a client may take to send one whole request once it started it.
    pub request_timeout: Duration,
    /// Most connections open at once; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// Most requests running handler code at once (`--threads`).
    pub handler_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_connections: 4096,
            handler_threads: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
        }
    }
}

/// A parsed request, handed to the handler with its body fully read.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, e.g. "GET".
    pub method: String,
    /// The request target: path plus query.
    pub target: String,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// Who sent it, for endpoint discovery and rate limits.
    pub remote: SocketAddr,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The raw value of one query parameter (no percent-decoding: wgmesh ids need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a response body is made of.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body (e.g. 304).
    Empty,
    /// A body built for this response.
    Owned(Vec<u8>),
    /// Up to two slices of a shared, cached buffer: how `/peers` sends the cached list minus
    /// the caller's own entry without copying it.
    Shared(Arc<Vec<u8>>, [Range<usize>; 2]),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Owned(v) => v.len(),
            Body::Shared(_, parts) => parts.iter().map(|r| r.len()).sum(),
        }
    }
}

/// A response to write back.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (Content-Length and Connection are added by the layer).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A JSON response with an owned body.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: Body::Owned(body),
        }
    }

    /// The API's uniform error: `{"success": false, "error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::to_vec(&crate::proto::model::ErrorResponse {
            success: false,
            error: message.to_owned(),
        })
        .expect("serializing a string cannot fail");
        Response::json(status, body)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// The application behind the connection layer.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Runs on the connection's thread, within a handler slot.
    fn handle(&self, request: &Request) -> Response;

    /// Told about every request the layer itself refused (malformed, too large, too slow,
    /// too many connections), so they can be counted.
    fn rejected(&self, status: u16) {
        let _ = status;
    }
}

/// Counts open connections and bounds concurrent handler work.
#[derive(Debug, Default)]
struct Gate {
    open: AtomicUsize,
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn acquire(&self, max: usize) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= max {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
    }

    fn release(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy -= 1;
        drop(busy);
        self.freed.notify_one();
    }
}

/// A running HTTP server: the accept loop on its own thread.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
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
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let limits = Arc::new(limits);
        let accept_thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept_loop(listener, limits, handler, gate, stop, tls))?
        };
        Ok(HttpServer {
            local_addr,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting new connections; open ones finish their current request.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a throwaway connection.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if self.accept_thread.is_some() {
            self.stop();
        }
    }
}

/// Stack size of connection threads: they parse small requests, so 256 KiB is plenty and
/// keeps thousands of idle keep-alive connections cheap.
const CONNECTION_STACK: usize = 256 * 1024;

fn accept_loop(
    listener: TcpListener,
    limits: Arc<Limits>,
    handler: Arc<dyn Handler>,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if gate.open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            gate.open.fetch_sub(1, Ordering::SeqCst);
            handler.rejected(503);
            let _ = refuse(stream, 503, "too many open connections: retry shortly");
            continue;
        }
        let (limits, handler, gate2) = (limits.clone(), handler.clone(), gate.clone());
        let tls = tls.clone();
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                match tls {
                    None => {
                        let _ = serve_plain(stream, &limits, &*handler, &gate2);
                    }
                    Some(config) => {
                        if let Err(e) = serve_tls(stream, config, &limits, &*handler, &gate2) {
                            log::debug!("TLS connection ended: {e}");
                        }
                    }
                }
                gate2.open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            gate.open.fetch_sub(1, Ordering::SeqCst);
            log::error!("cannot start a connection thread: {e}");
        }
    }
}

fn refuse(mut stream: TcpStream, status: u16, message: &str) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = BufWriter::new(&mut stream);
    write_response(&mut out, &Response::error(status, message), false)?;
    out.flush()
}

/// Why reading a request stopped.
enum ReadOutcome {
    Request(Request, bool),
    Closed,
    Refused(u16, String),
}

/// A byte stream a connection is served over: plain TCP or a TLS session on top of it.
///
/// Why a trait rather than `Box<dyn Read + Write>`: the connection code is monomorphized per
/// transport, so the plain path pays nothing for TLS existing.
trait Transport: Read + Write {
    /// Makes reads fail with `TimedOut` once `deadline` has passed. Called before every
    /// read, so a peer trickling bytes cannot stretch one request past its deadline.
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()>;

    /// Ends the session politely (TLS close_notify); plain TCP has nothing to say.
    fn close(&mut self) {}
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

impl Transport for TcpStream {
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        self.set_read_timeout(Some(remaining(deadline)?))
    }
}

/// The TCP socket under a TLS session. rustls may read the socket several times to produce
/// one plaintext chunk (records split across segments), so the deadline is re-armed before
/// each socket read here, not once per plaintext read.
struct DeadlineSocket {
    tcp: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(remaining(self.deadline)?))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, DeadlineSocket>;

impl Transport for TlsStream {
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        remaining(deadline)?;
        self.sock.deadline = deadline;
        Ok(())
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

fn serve_plain(
    stream: TcpStream,
    limits: &Limits,
    handler: &dyn Handler,
    gate: &Gate,
) -> io::Result<()> {
    let remote = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(limits.request_timeout))?;
    serve_connection(stream, remote, limits, handler, gate)
}

/// The first byte of a TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn serve_tls(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limits: &Limits,
    handler: &dyn Handler,
    gate: &Gate,
) -> io::Result<()> {
    let remote = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    tcp.set_write_timeout(Some(limits.request_timeout))?;
    // The handshake, like a request, must complete within the request timeout.
    let deadline = Instant::now() + limits.request_timeout;
    tcp.set_read_timeout(Some(limits.request_timeout))?;
    let mut first = [0u8; 1];
    match tcp.peek(&mut first) {
        Ok(0) => return Ok(()),
        Ok(_) => {}
        Err(e) if is_timeout(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Looks like "GET /..." or "POST /...": say so in plain HTTP.
            handler.rejected(400);
            refuse_plain_on_tls_port(tcp);
        }
        return Ok(());
    }
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream::new(conn, DeadlineSocket { tcp, deadline });
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {remote}: {e}")))?;
    }
    serve_connection(stream, remote, limits, handler, gate)
}

/// Answers a plain-HTTP request sent to the HTTPS port, then closes. The request is read
/// first and the socket half-closed before closing, so the client sees the answer rather
/// than a reset caused by unread data.
fn refuse_plain_on_tls_port(mut tcp: TcpStream) {
    let mut sink = [0u8; 16 * 1024];
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = tcp.read(&mut sink);
    let response = Response::error(
        400,
        "this server speaks HTTPS only: use an https:// server URL",
    );
    let mut out = BufWriter::new(&mut tcp);
    if write_response(&mut out, &response, false)
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    drop(out);
    let _ = tcp.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(left) = remaining(until) {
        let _ = tcp.set_read_timeout(Some(left));
        match tcp.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

fn serve_connection<S: Transport>(
    stream: S,
    remote: SocketAddr,
    limits: &Limits,
    handler: &dyn Handler,
    gate: &Gate,
) -> io::Result<()> {
    let mut conn = BufWriter::with_capacity(64 * 1024, stream);
    let result = serve_requests(&mut conn, remote, limits, handler, gate);
    if result.is_ok() {
        let _ = conn.flush();
        conn.get_mut().close();
    }
    result
}

fn serve_requests<S: Transport>(
    conn: &mut BufWriter<S>,
    remote: SocketAddr,
    limits: &Limits,
    handler: &dyn Handler,
    gate: &Gate,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        match read_request(conn, &mut buf, limits, remote)? {
            ReadOutcome::Closed => return Ok(()),
            ReadOutcome::Refused(status, message) => {
                handler.rejected(status);
                write_response(conn, &Response::error(status, &message), false)?;
                conn.flush()?;
                return Ok(());
            }
            ReadOutcome::Request(request, keep_alive) => {
                gate.acquire(limits.handler_threads);
                let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.handle(&request)
                }))
                .unwrap_or_else(|_| Response::error(500, "internal error: see the server log"));
                gate.release();
                // A HEAD answer carries the headers, Content-Length included, but no body.
                if request.method == "HEAD" {
                    write_head(conn, &response, keep_alive)?;
                } else {
                    write_response(conn, &response, keep_alive)?;
                }
                conn.flush()?;
                if !keep_alive {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads into `buf` with a deadline; Ok(0) means the peer closed. Reads go straight to the
/// stream under the write buffer, which is always flushed before a read.
fn read_some<S: Transport>(
    conn: &mut BufWriter<S>,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<usize> {
    let stream = conn.get_mut();
    stream.read_deadline(deadline)?;
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn read_request<S: Transport>(
    conn: &mut BufWriter<S>,
    buf: &mut Vec<u8>,
    limits: &Limits,
    remote: SocketAddr,
) -> io::Result<ReadOutcome> {
    // Wait for the first byte of a request under the idle timeout.
    if buf.is_empty() {
        match read_some(conn, buf, Instant::now() + limits.idle_timeout) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(ReadOutcome::Closed),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(ReadOutcome::Closed)
            }
            Err(e) => return Err(e),
        }
    }
    let deadline = Instant::now() + limits.request_timeout;
    // Read the head.
    let (head_len, method, target, headers, version) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let version = parsed.version.unwrap_or(1);
                let method = parsed.method.unwrap_or("").to_owned();
                let target = parsed.path.unwrap_or("").to_owned();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (len, method, target, headers, version);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > limits.max_header_bytes {
                    return Ok(ReadOutcome::Refused(
                        431,
                        format!("request headers exceed {} bytes", limits.max_header_bytes),
                    ));
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(ReadOutcome::Refused(
                    431,
                    "more than 64 request headers".into(),
                ))
            }
            Err(e) => {
                return Ok(ReadOutcome::Refused(
                    400,
                    format!("malformed HTTP request: {e}"),
                ))
            }
        }
        match read_some(conn, buf, deadline) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                return Ok(ReadOutcome::Refused(
                    408,
                    "request not received in time".into(),
                ))
            }
            Err(e) => return Err(e),
        }
    };
    if head_len > limits.max_header_bytes {
        return Ok(ReadOutcome::Refused(
            431,
            format!("request headers exceed {} bytes", limits.max_header_bytes),
        ));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if find("transfer-encoding").is_some() {
        return Ok(ReadOutcome::Refused(
            411,
            "chunked request bodies are not supported: send Content-Length".into(),
        ));
    }
    let content_length = match find("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Ok(ReadOutcome::Refused(400, "invalid Content-Length".into())),
        },
    };
    if content_length > limits.max_body_bytes {
        return Ok(ReadOutcome::Refused(
            413,
            format!(
                "request body of {content_length} bytes exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    let connection = find("connection");
    let has_token = |token: &str| {
        connection
            .as_deref()
            .is_some_and(|c| c.split(',').any(|t| t.trim() == token))
    };
    // HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0 only when asked.
    let keep_alive = if version == 0 {
        has_token("keep-alive")
    } else {
        !has_token("close")
    };
    if content_length > 0
        && buf.len() < head_len + content_length
        && find("expect").as_deref() == Some("100-continue")
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        conn.flush()?;
    }
    while buf.len() < head_len + content_length {
        match read_some(conn, buf, deadline) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                return Ok(ReadOutcome::Refused(
                    408,
                    "request body not received in time".into(),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    let body = buf[head_len..head_len + content_length].to_vec();
    buf.drain(..head_len + content_length);
    Ok(ReadOutcome::Request(
        Request {
            method,
            target,
            headers,
            body,
            remote,
        },
        keep_alive,
    ))
}

/// An in-memory `Transport`: the bytes a client sent, and nowhere to write.
struct Replay<'a> {
    input: &'a [u8],
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Replay<'_> {
    fn read_deadline(&mut self, _: Instant) -> io::Result<()> {
        Ok(())
    }
}

/// What the connection layer makes of `bytes` arriving on a fresh connection: every request
/// it would hand the handler, in order, and the refusal (status and message) that would end
/// the connection, if any.
///
/// Why it exists: fuzzing and corpus replay reach the real request-head and body framing
/// code (`read_request`, the same generic function live connections run) without sockets.
pub fn parse_requests(bytes: &[u8], limits: &Limits) -> (Vec<Request>, Option<(u16, String)>) {
    let remote: SocketAddr = ([127, 0, 0, 1], 9).into();
    let mut conn = BufWriter::new(Replay { input: bytes });
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    loop {
        match read_request(&mut conn, &mut buf, limits, remote) {
            Ok(ReadOutcome::Request(request, keep_alive)) => {
                requests.push(request);
                if !keep_alive {
                    return (requests, None);
                }
            }
            Ok(ReadOutcome::Refused(status, message)) => {
                return (requests, Some((status, message)))
            }
            Ok(ReadOutcome::Closed) | Err(_) => return (requests, None),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response<W: Write>(out: &mut W, response: &Response, keep_alive: bool) -> io::Result<()> {
    write_head(out, response, keep_alive)?;
    match &response.body {
        Body::Empty => {}
        Body::Owned(bytes) => out.write_all(bytes)?,
        Body::Shared(buf, parts) => {
            for part in parts {
                out.write_all(&buf[part.clone()])?;
            }
        }
    }
    Ok(())
}

/// Writes the status line and headers of `response` (with the Content-Length of its body).
fn write_head<W: Write>(out: &mut W, response: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.write_all(head.as_bytes())
}

/// Where the server's certificate chain and private key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Builds the rustls server configuration from PEM files.
///
/// Uses rustls 0.23 with the `ring` provider (no cmake or aws-lc build) and rustls' safe
/// defaults (TLS 1.2 and 1.3, no client certificates: peers authenticate with request MACs,
/// not certificates). Errors name the file and what is wrong with it, since a bad path or a
/// key that does not match the certificate is the usual first-run mistake.
pub fn load_tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error("--tls-cert", &files.cert, e))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} are not a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

fn pem_error(flag: &str, path: &Path, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("{flag} {}: {io}", path.display()),
        Error::NoItemsFound => {
            format!("{flag} {}: no usable PEM block in the file", path.display())
        }
        other => format!("{flag} {}: not valid PEM ({other:?})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Hello;
    impl Handler for Hello {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }
    }

    fn tls_server(request_timeout: Duration) -> HttpServer {
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
        HttpServer::start_tls(listener, limits, Arc::new(Hello), config).unwrap()
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
                Err(e) if !is_timeout(&e) => break,
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
