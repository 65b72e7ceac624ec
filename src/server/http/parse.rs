//! Request framing (RFC 9112): the head through `httparse`, then the checks that keep
//! framing unambiguous (one Content-Length, digits only; exactly one Host on HTTP/1.1;
//! no chunked bodies), the absolute form of the target, keep-alive, `Expect: 100-continue`,
//! and the body. Also how responses are written.

use super::message::{Body, Limits, Request, Response};
use super::transport::Transport;
use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// Why reading a request stopped.
pub(super) enum ReadOutcome {
    /// A whole request, and whether the connection stays open after its answer.
    Request(Request, bool),
    /// The peer closed (or never started a request before the idle deadline).
    Closed,
    /// The request is refused with this status and message; the connection then closes.
    Refused(u16, String),
}

/// Reads into `buf` with a deadline; Ok(0) means the peer closed. Reads go straight to the
/// stream under the write buffer, which is always flushed before a read.
pub(super) fn read_some<S: Transport>(
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

/// Whether an I/O error is a timeout.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The head of a request, before framing checks.
struct Head {
    len: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
}

/// The `HTTP/x.y` at the end of a complete request line, when it has that shape.
fn request_line_version(buf: &[u8]) -> Option<(u8, u8, usize)> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let at = line.iter().rposition(|&b| b == b' ')? + 1;
    match &line[at..] {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Some((major - b'0', minor - b'0', at + 7))
        }
        _ => None,
    }
}

fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, (u16, String)> {
    match parse_head_as_sent(buf, limits) {
        // httparse knows HTTP/1.0 and HTTP/1.1 only. A later HTTP/1.x is read as HTTP/1.1
        // (RFC 9110 6.2: same major version, the highest minor we implement); another major
        // version (`HTTP/2.0` on a request line, which HTTP/2 never sends) is 505.
        Err((400, _)) => match request_line_version(buf) {
            Some((1, minor, at)) if minor > 1 => {
                let mut as_11 = buf.to_vec();
                as_11[at] = b'1';
                parse_head_as_sent(&as_11, limits)
            }
            Some((major, minor, _)) if major != 1 => Err((
                505,
                format!("HTTP/{major}.{minor} is not supported: send HTTP/1.1 requests"),
            )),
            _ => parse_head_as_sent(buf, limits),
        },
        other => other,
    }
}

fn parse_head_as_sent(buf: &[u8], limits: &Limits) -> Result<Option<Head>, (u16, String)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            len,
            version: parsed.version.unwrap_or(1),
            method: parsed.method.unwrap_or("").to_owned(),
            target: parsed.path.unwrap_or("").to_owned(),
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        })),
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => Err((
            431,
            format!("request headers exceed {} bytes", limits.max_header_bytes),
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err((431, "more than 64 request headers".into())),
        Err(e) => Err((400, format!("malformed HTTP request: {e}"))),
    }
}

/// The body length a request announces (RFC 9112 6.3): none means 0; every Content-Length
/// value (across repeated headers and comma lists) must be plain digits and all the same.
fn content_length(headers: &[(String, String)], limits: &Limits) -> Result<usize, (u16, String)> {
    let mut length: Option<&str> = None;
    let values = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim);
    for value in values {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                400,
                format!("invalid Content-Length {value:?}: send the body length as plain digits"),
            ));
        }
        let value = value.trim_start_matches('0');
        match length {
            Some(seen) if seen != value => {
                return Err((
                    400,
                    "conflicting Content-Length headers: send exactly one".into(),
                ))
            }
            _ => length = Some(value),
        }
    }
    let Some(digits) = length else { return Ok(0) };
    if digits.is_empty() {
        return Ok(0);
    }
    match digits.parse::<usize>() {
        Ok(n) if n <= limits.max_body_bytes => Ok(n),
        _ => Err((
            413,
            format!(
                "request body of {digits} bytes exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        )),
    }
}

/// The origin form of a request target: `http://host/path?q` becomes `/path?q`
/// (RFC 9112 3.2.2: servers must accept the absolute form).
fn origin_form(target: String) -> String {
    let lower = target.get(..8).unwrap_or(&target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].to_owned(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_owned(),
    }
}

/// Whether `value` is a valid Host field value (RFC 9112 3.2, RFC 3986 3.2.2): `uri-host
/// [":" port]`, the host a reg-name (unreserved, percent-encoded and sub-delims characters),
/// an IPv4 address (a reg-name too) or a bracketed IP literal. Empty is valid (an empty
/// authority). `a, b` is not: a space never appears in a host.
fn valid_host(value: &str) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.%-_~".contains(&b));
        if !ok {
            return false;
        }
        match &rest[end + 1..] {
            "" => return true,
            after => ("", after.strip_prefix(':').unwrap_or("x")),
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, port),
            None => (value, ""),
        }
    };
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    port.bytes().all(|b| b.is_ascii_digit())
}

/// Checks the Transfer-Encoding of a request, if it has one: chunked alone is 411 (we read
/// only Content-Length bodies), any other coding 501 (RFC 9112 6.1: a coding the server
/// does not understand).
fn check_transfer_encoding(headers: &[(String, String)]) -> Result<(), (u16, String)> {
    let codings: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    if codings.is_empty() {
        return Ok(());
    }
    if let Some(other) = codings.iter().find(|c| *c != "chunked") {
        return Err((
            501,
            format!(
                "transfer coding {other:?} is not supported: send the body as is, with \
                 Content-Length"
            ),
        ));
    }
    Err((
        411,
        "chunked request bodies are not supported: send Content-Length".into(),
    ))
}

/// Checks the framing of a parsed head; returns the body length and keep-alive.
fn check_head(head: &Head, limits: &Limits) -> Result<(usize, bool), (u16, String)> {
    let find = |name: &str| {
        head.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let hosts = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 {
        return Err((400, "more than one Host header: send exactly one".into()));
    }
    if hosts == 0 && head.version >= 1 {
        return Err((
            400,
            "missing Host header: HTTP/1.1 requests must name the server's host".into(),
        ));
    }
    if let Some((_, host)) = head
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        if !valid_host(host.trim()) {
            return Err((
                400,
                format!("invalid Host header {host:?}: send one host name or address, optionally with :port"),
            ));
        }
    }
    check_transfer_encoding(&head.headers)?;
    let length = content_length(&head.headers, limits)?;
    let connection = find("connection");
    let has_token = |token: &str| {
        connection
            .as_deref()
            .is_some_and(|c| c.split(',').any(|t| t.trim() == token))
    };
    // HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0 only when asked.
    let keep_alive = if head.version == 0 {
        has_token("keep-alive")
    } else {
        !has_token("close")
    };
    Ok((length, keep_alive))
}

/// Reads one request from `conn`, starting with whatever `buf` already holds. The first byte
/// must come within the idle timeout, the rest within the request timeout.
pub(super) fn read_request<S: Transport>(
    conn: &mut BufWriter<S>,
    buf: &mut Vec<u8>,
    limits: &Limits,
    remote: SocketAddr,
) -> io::Result<ReadOutcome> {
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
    let head = loop {
        match parse_head(buf, limits) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err((status, message)) => return Ok(ReadOutcome::Refused(status, message)),
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
    if head.len > limits.max_header_bytes {
        return Ok(ReadOutcome::Refused(
            431,
            format!("request headers exceed {} bytes", limits.max_header_bytes),
        ));
    }
    let (content_length, keep_alive) = match check_head(&head, limits) {
        Ok(framing) => framing,
        Err((status, message)) => return Ok(ReadOutcome::Refused(status, message)),
    };
    let head_len = head.len;
    let expects_continue = head.headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("expect") && v.trim().eq_ignore_ascii_case("100-continue")
    });
    // 100 Continue is an HTTP/1.1 mechanism: an HTTP/1.0 client would take it for the answer.
    if content_length > 0
        && buf.len() < head_len + content_length
        && expects_continue
        && head.version >= 1
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
            method: head.method,
            target: origin_form(head.target),
            headers: head.headers,
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
        303 => "See Other",
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
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a whole response; `head_only` (for HEAD) leaves the body out but keeps its length.
pub(super) fn write_response<W: Write>(
    out: &mut W,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    write_head(out, response, keep_alive)?;
    if head_only {
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(bytes: &[u8]) -> Option<(u16, String)> {
        parse_requests(bytes, &Limits::default()).1
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        let two =
            b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(refusal(two).unwrap().0, 400);
        let plus = b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: +3\r\n\r\nabc";
        assert_eq!(refusal(plus).unwrap().0, 400);
        let list = b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: 3, 4\r\n\r\nabcd";
        assert_eq!(refusal(list).unwrap().0, 400);
        // The same value twice is one length (RFC 9112 6.3 allows accepting it).
        let same =
            b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc";
        let (requests, refused) = parse_requests(same, &Limits::default());
        assert_eq!((requests.len(), refused), (1, None));
        assert_eq!(requests[0].body, b"abc");
        let huge =
            b"POST /x HTTP/1.1\r\nHost: s\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(refusal(huge).unwrap().0, 413);
    }

    #[test]
    fn host_is_required_once_on_http_1_1_only() {
        assert_eq!(refusal(b"GET / HTTP/1.1\r\n\r\n").unwrap().0, 400);
        let two = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert!(refusal(two).unwrap().1.contains("more than one Host"));
        let old = parse_requests(b"GET / HTTP/1.0\r\n\r\n", &Limits::default());
        assert_eq!((old.0.len(), old.1), (1, None));
    }

    #[test]
    fn host_values_must_be_one_valid_authority() {
        for bad in [
            "a, b",
            "a b",
            "exa mple.com",
            "[::1",
            "[::1]x",
            "h:80x",
            "h/p",
            "a@b",
            "\"q\"",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            let (status, message) = refusal(request.as_bytes()).expect(bad);
            assert_eq!(status, 400, "{bad}");
            assert!(message.contains("invalid Host header"), "{bad}: {message}");
        }
        for good in [
            "",
            "a",
            "server.example:8080",
            "198.18.0.1:80",
            "[::1]:8080",
            "[fd00::1]",
            "xn--bcher-kva.example",
            "a%41b",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert_eq!(refusal(request.as_bytes()), None, "{good}");
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_501_and_other_http_versions_505() {
        let gzip = b"POST /x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip\r\n\r\n";
        let (status, message) = refusal(gzip).unwrap();
        assert_eq!(status, 501);
        assert!(message.contains("\"gzip\""), "{message}");
        let both = b"POST /x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(refusal(both).unwrap().0, 501);
        let chunked = b"POST /x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refusal(chunked).unwrap().0, 411);
        let two = refusal(b"GET / HTTP/2.0\r\nHost: s\r\n\r\n").unwrap();
        assert_eq!(two.0, 505);
        assert!(two.1.contains("HTTP/2.0"), "{}", two.1);
        // A later HTTP/1.x is served as HTTP/1.1.
        let later = parse_requests(b"GET /h HTTP/1.2\r\nHost: s\r\n\r\n", &Limits::default());
        assert_eq!((later.0.len(), later.1), (1, None));
        // Garbage stays 400.
        assert_eq!(refusal(b"GET / HTTX/1.1\r\n\r\n").unwrap().0, 400);
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(origin_form("http://h:8080/healthz".into()), "/healthz");
        assert_eq!(
            origin_form("HTTPS://h/peers?peer_id=x".into()),
            "/peers?peer_id=x"
        );
        assert_eq!(origin_form("http://h".into()), "/");
        assert_eq!(origin_form("http://h?x=1".into()), "/?x=1");
        assert_eq!(origin_form("/plain".into()), "/plain");
    }
}
