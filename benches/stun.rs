//! `cargo bench --bench stun`: how many Binding Requests the responder answers per second for
//! one client thread doing send-then-receive on loopback, with latency percentiles.
//!
//! Bounded: at most `REQUESTS` requests or `MAX_TIME`, whichever comes first, all to
//! 127.0.0.1. The rate limiter stays on (with limits no single client reaches) so its lookup
//! cost is part of the figure, as it is in production.

use std::net::UdpSocket;
use std::time::{Duration, Instant};
use wgmesh::proto::stun::{self, BindingResponse, TransactionId};
use wgmesh::server::stun_service::{RateLimit, StunService};

const REQUESTS: usize = 200_000;
const WARMUP: usize = 2_000;
const MAX_TIME: Duration = Duration::from_secs(5);
/// Server workers, overridable with `STUN_BENCH_THREADS` to compare.
const SERVER_THREADS: usize = 2;

fn main() {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the service socket");
    let limits = RateLimit {
        per_second: 1_000_000_000,
        burst: 1_000_000,
        max_sources: 16_384,
    };
    let threads = std::env::var("STUN_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(SERVER_THREADS);
    let service = StunService::spawn(socket, threads, limits).expect("start the service");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind the client socket");
    client.connect(service.local_addr()).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("set a read timeout");
    let expected = client.local_addr().expect("client address");

    let mut latencies_ns: Vec<u64> = Vec::with_capacity(REQUESTS);
    let mut buf = [0u8; 1500];
    let mut lost = 0usize;
    let base = TransactionId::random();
    let mut started = None;
    for i in 0..WARMUP + REQUESTS {
        if i == WARMUP {
            started = Some(Instant::now());
        }
        if started.is_some_and(|s| s.elapsed() > MAX_TIME) {
            break;
        }
        // Cheap unique ids: the random base with a counter in the last 8 bytes.
        let mut id = base;
        id.0[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let request = stun::binding_request(&id);
        let sent = Instant::now();
        client.send(&request).expect("send");
        let n = match client.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                lost += 1;
                continue;
            }
        };
        let rtt = sent.elapsed();
        match stun::parse_binding_response(&buf[..n]) {
            Ok(BindingResponse::Success {
                transaction_id,
                mapped,
            }) if transaction_id == id && mapped == expected => {}
            other => panic!("bad answer to request {i}: {other:?}"),
        }
        if i >= WARMUP {
            latencies_ns.push(rtt.as_nanos() as u64);
        }
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    let stats = service.stats();
    service.shutdown();

    let answered = latencies_ns.len();
    assert!(answered > 0, "no answers measured");
    latencies_ns.sort_unstable();
    let pct =
        |p: f64| latencies_ns[((answered as f64 * p) as usize).min(answered - 1)] as f64 / 1000.0;
    let rate = answered as f64 / elapsed.as_secs_f64();
    println!(
        "stun: {rate:.0} answers/s from 1 client thread (p50 {:.1} us, p99 {:.1} us)",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "      {answered} answers in {:.2} s, {lost} lost, {threads} server threads, server counters {:?}",
        elapsed.as_secs_f64(),
        stats.snapshot()
    );

    codec_cost();
}

/// The server's per-datagram codec work alone (parse the request, build the answer), to show
/// how little of the round trip above is ours rather than the kernel's.
fn codec_cost() {
    const ROUNDS: u32 = 2_000_000;
    let request = stun::binding_request(&TransactionId::random());
    let mapped = "203.0.113.9:41641".parse().expect("address");
    let opts = stun::ResponseOptions {
        software: Some("wgmesh"),
        ..Default::default()
    };
    let mut out = [0u8; stun::MAX_RESPONSE_LEN];
    let mut total = 0usize;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let req = stun::parse_binding_request(std::hint::black_box(&request)).expect("parse");
        total += stun::encode_binding_success(&mut out, &req, mapped, &opts).expect("encode");
        std::hint::black_box(&out);
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!(
        "stun codec: {per:.0} ns per parse + encode ({} bytes per answer)",
        total / ROUNDS as usize
    );
}
