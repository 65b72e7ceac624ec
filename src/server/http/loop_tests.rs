//! The connection layer over real loopback sockets: long-polls parked without threads and
//! woken by a notifier or their deadline, RFC 9112 conformance on the wire, and graceful
//! closes after refusals.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

/// `GET /wait?ms=N` parks until the notifier moves (answers "changed") or N ms pass
/// ("deadline"); everything else answers `{}` at once.
struct Waiter {
    changes: Notifier,
    dropped: Arc<AtomicUsize>,
}

/// Counts closures dropped without running (client gone).
struct DropCount(Arc<AtomicUsize>, bool);
impl Drop for DropCount {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Handler for Waiter {
    fn handle(&self, _: &Request) -> Response {
        Response::json(200, b"{}".to_vec())
    }

    fn handle_or_park(&self, request: &Request) -> Reply {
        if request.path() != "/wait" {
            return self.handle(request).into();
        }
        let ms: u64 = request.query_param("ms").unwrap_or("5000").parse().unwrap();
        let seen = self.changes.version();
        let guard = DropCount(self.dropped.clone(), false);
        Reply::Park(Park::new(
            &self.changes,
            seen,
            Instant::now() + Duration::from_millis(ms),
            move |wake| {
                let mut guard = guard;
                guard.1 = true;
                let text = match wake {
                    Wake::Changed => "changed",
                    Wake::Deadline => "deadline",
                };
                Response::json(200, format!("{{\"wake\":\"{text}\"}}").into_bytes()).into()
            },
        ))
    }
}

fn waiter_server(limits: Limits) -> (HttpServer, Notifier, Arc<AtomicUsize>) {
    let changes = Notifier::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(Waiter {
        changes: changes.clone(),
        dropped: dropped.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        HttpServer::start(listener, limits, handler).unwrap(),
        changes,
        dropped,
    )
}

fn connect(server: &HttpServer) -> TcpStream {
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one response (head and Content-Length body) from `reader`.
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("connection closed mid-response: {head:?}");
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn parked_long_polls_cost_no_thread_and_wake_on_notify_or_deadline() {
    let (server, changes, dropped) = waiter_server(Limits::default());
    // 200 long-polls parked at once.
    let mut parked: Vec<BufReader<TcpStream>> = (0..200)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"GET /wait?ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            BufReader::new(s)
        })
        .collect();
    wait_until("200 parked", || server.stats().parked == 200);
    // Workers exit once idle: parked requests hold none.
    wait_until("workers idle out", || server.stats().workers == 0);
    // Other requests are still served meanwhile.
    let mut other = BufReader::new(connect(&server));
    other
        .get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut other).0, 200);
    // One notify answers them all, promptly, and the connections stay usable.
    let start = Instant::now();
    changes.notify();
    for reader in &mut parked {
        let (status, _, body) = read_response(reader);
        assert_eq!((status, body.as_str()), (200, "{\"wake\":\"changed\"}"));
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let reader = &mut parked[0];
    reader
        .get_mut()
        .write_all(b"GET /wait?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (_, _, body) = read_response(reader);
    assert_eq!(body, "{\"wake\":\"deadline\"}");
    // A client that goes away while parked frees its slot; the closure is dropped unrun.
    let mut gone = connect(&server);
    gone.write_all(b"GET /wait?ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until("parked again", || server.stats().parked == 1);
    drop(gone);
    wait_until("client gone noticed", || server.stats().parked == 0);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(changes.version(), 1, "the layer never notifies by itself");
}

#[test]
fn a_change_between_deciding_and_parking_is_not_lost() {
    let changes = Notifier::new();
    struct Racy(Notifier);
    impl Handler for Racy {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }
        fn handle_or_park(&self, _: &Request) -> Reply {
            let seen = self.0.version();
            // The change lands after the handler looked, before the layer parks.
            self.0.notify();
            Reply::Park(Park::new(
                &self.0,
                seen,
                Instant::now() + Duration::from_secs(30),
                |wake| Response::json(200, format!("{wake:?}").into_bytes()).into(),
            ))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = HttpServer::start(listener, Limits::default(), Arc::new(Racy(changes))).unwrap();
    let mut reader = BufReader::new(connect(&server));
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (_, _, body) = read_response(&mut reader);
    assert_eq!(body, "Changed");
}

fn exchange(server: &HttpServer, request: &[u8]) -> String {
    let mut stream = connect(server);
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn framing_that_could_smuggle_is_refused_with_400_and_close() {
    let (server, _, _) = waiter_server(Limits::default());
    for request in [
        &b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let answer = exchange(&server, request);
        assert!(
            answer.starts_with("HTTP/1.1 400 ") && answer.contains("Connection: close"),
            "{:?} -> {answer}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(
            answer.matches("HTTP/1.1 4").count(),
            1,
            "nothing after: {answer}"
        );
    }
}

#[test]
fn absolute_form_is_accepted_and_expect_is_ignored_on_http_1_0() {
    let (server, _, _) = waiter_server(Limits::default());
    let answer = exchange(
        &server,
        b"GET http://t/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // HTTP/1.0 with Expect: the body comes without waiting for 100 Continue, and none is sent.
    let answer = exchange(
        &server,
        b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // HTTP/1.1 with Expect and no body yet: 100 Continue comes first.
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// A refusal that leaves request bytes unread must still reach the client: the server
/// half-closes and drains instead of closing with unread data (which sends a reset).
#[test]
fn refusals_with_unread_data_close_gracefully_not_with_a_reset() {
    let limits = Limits {
        max_body_bytes: 1024,
        max_header_bytes: 2048,
        ..Limits::default()
    };
    let (server, _, _) = waiter_server(limits);
    let big_body = vec![b'x'; 512 * 1024];
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (413, {
            let mut r = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 524288\r\n\r\n".to_vec();
            r.extend_from_slice(&big_body);
            r
        }),
        (431, {
            let mut r = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
            r.extend(std::iter::repeat_n(b'a', 256 * 1024));
            r
        }),
        (411, {
            let mut r =
                b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(&big_body);
            r
        }),
    ];
    for (status, request) in cases {
        let mut stream = connect(&server);
        // Write from another thread: the server answers before reading it all.
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&request);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            read.is_ok(),
            "{status}: read failed ({read:?}) after {answer:?}"
        );
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer}"
        );
        sender.join().unwrap();
    }
}

#[test]
fn head_answers_get_headers_without_a_body() {
    let (server, _, _) = waiter_server(Limits::default());
    let answer = exchange(
        &server,
        b"HEAD /anything HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("Content-Length: 2\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer:?}");
}

#[test]
fn over_the_connection_limit_the_503_arrives_despite_unread_data() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (server, _, _) = waiter_server(limits);
    let mut first = connect(&server);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(first.try_clone().unwrap());
    assert_eq!(read_response(&mut reader).0, 200);
    // The first connection stays open; the second sends a large body the server never reads.
    let mut second = connect(&server);
    let mut writer = second.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 262144\r\n\r\n".to_vec();
        request.extend(std::iter::repeat_n(b'x', 262_144));
        let _ = writer.write_all(&request);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut answer = Vec::new();
    let read = second.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "read failed ({read:?}) after {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    sender.join().unwrap();
    drop(first);
}
