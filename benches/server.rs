//! `just bench`: server throughput and latency next to a bare tiny_http hello-world, measured
//! in the same run on the same machine, so the ratios mean something on a noisy shared box.
//!
//! Load comes from `wrk` (Debian package) on loopback only, keep-alive for every target, except
//! for the signed peer endpoints: every request there needs a fresh nonce and MAC, which wrk
//! cannot make, so they get a small keep-alive load generator of the same shape (16
//! connections, 4 s) that signs each request with the key agreement done once.
//! Prints requests/s, p50/p99 latency, non-2xx/3xx responses and socket errors/timeouts.

#[path = "support/peer_record.rs"]
mod peer_record;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use wgmesh::keys::PrivateKey;
use wgmesh::server::store::{PeerRecord, Snapshot, FORMAT_VERSION};
use wgmesh::server::{RunningServer, ServerConfig};
use wgmesh::types::PeerId;

const THREADS: &str = "2";
const CONNECTIONS: &str = "16";
const DURATION: &str = "4s";

struct WrkResult {
    rps: f64,
    p50: String,
    p99: String,
    bad_status: u64,
    socket_errors: String,
}

fn wrk(url: &str, script: Option<&Path>, headers: &[&str]) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        THREADS,
        "-c",
        CONNECTIONS,
        "-d",
        DURATION,
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    WrkResult {
        rps: find("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50: find("50%").unwrap_or_default(),
        p99: find("99%").unwrap_or_default(),
        bad_status: find("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        socket_errors: find("Socket errors:").unwrap_or_else(|| "none".into()),
    }
}

fn report(name: &str, r: &WrkResult, ceiling: f64) {
    println!(
        "{name:<34} {:>10.0} req/s  {:>6.1}% of bare  p50 {:>8}  p99 {:>8}  non-2xx/3xx {:>5}  socket errors: {}",
        r.rps,
        100.0 * r.rps / ceiling,
        r.p50,
        r.p99,
        r.bad_status,
        r.socket_errors
    );
}

fn bare_tiny_http() -> SocketAddr {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let body = format!("{{\"success\":true,\"padding\":\"{}\"}}", "x".repeat(170));
    for _ in 0..2 {
        let (server, body) = (server.clone(), body.clone());
        std::thread::spawn(move || loop {
            let Ok(req) = server.recv() else { return };
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
            let _ = req.respond(tiny_http::Response::from_string(body.clone()).with_header(header));
        });
    }
    addr
}

/// Drives one endpoint from `CONNECTIONS` keep-alive connections for `DURATION`, signing
/// each request when given a signer (wrk cannot: every request needs a fresh nonce and MAC).
/// Pointed at the bare tiny_http server it measures the ceiling with this same generator,
/// so signed endpoints are compared like with like.
fn signed_load(
    addr: SocketAddr,
    signer: Option<(&wgmesh::keys::PublicKey, &PrivateKey)>,
    method: &'static str,
    path: &str,
    body: &str,
    if_none_match: Option<&str>,
) -> WrkResult {
    let signer = signer.map(|(server_key, private)| {
        Arc::new(wgmesh::proto::auth::RequestSigner::new(private, server_key))
    });
    let connections: usize = CONNECTIONS.parse().unwrap();
    let secs: u64 = DURATION.trim_end_matches('s').parse().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let signer = signer.clone();
            let (path, body) = (path.to_owned(), body.to_owned());
            let etag = if_none_match.map(str::to_owned);
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("http://{addr}{path}");
                let (mut latencies, mut bad, mut errors) = (Vec::new(), 0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut req = ureq::http::Request::builder().method(method).uri(&url);
                    if let Some(signer) = &signer {
                        for (name, value) in
                            signer.sign(method, &path, body.as_bytes(), SystemTime::now())
                        {
                            req = req.header(name, value);
                        }
                    }
                    if let Some(tag) = &etag {
                        req = req.header("If-None-Match", tag.as_str());
                    }
                    let sent = if body.is_empty() {
                        agent.run(req.body(()).unwrap())
                    } else {
                        agent.run(
                            req.header("Content-Type", "application/json")
                                .body(body.clone())
                                .unwrap(),
                        )
                    };
                    match sent {
                        Ok(mut resp) => {
                            let _ = resp.body_mut().with_config().limit(64 << 20).read_to_vec();
                            if resp.status().as_u16() >= 400 {
                                bad += 1;
                            }
                            latencies.push(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, bad, errors)
            })
        })
        .collect();
    let (mut all, mut bad, mut errors) = (Vec::new(), 0, 0);
    for w in workers {
        let (l, b, e) = w.join().unwrap();
        all.extend(l);
        bad += b;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> String {
        let Some(v) = all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
        else {
            return "-".into();
        };
        if *v >= 1000 {
            format!("{:.2}ms", *v as f64 / 1000.0)
        } else {
            format!("{v}us")
        }
    };
    WrkResult {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        bad_status: bad,
        socket_errors: if errors == 0 {
            "none".into()
        } else {
            format!("{errors}")
        },
    }
}

fn record(i: u32) -> PeerRecord {
    record_with(i, &PrivateKey::generate())
}

fn record_with(i: u32, private: &PrivateKey) -> PeerRecord {
    peer_record::peer_record(i, private)
}

/// A server whose registry already holds `peers` peers (written as a snapshot, as a server
/// restarted on a big registry would find it).
fn server_with(dir: &Path, peers: u32) -> (RunningServer, PeerId, PrivateKey) {
    let state = dir.join(format!("peers-{peers}.json"));
    let caller_key = PrivateKey::generate();
    let records: Vec<PeerRecord> = std::iter::once(record_with(1, &caller_key))
        .chain((2..=peers).map(record))
        .collect();
    let caller = records[0].id.clone();
    let snap = Snapshot {
        version: FORMAT_VERSION,
        network_cidr: "10.100.0.0/16".parse().unwrap(),
        peers: records,
    };
    std::fs::write(&state, serde_json::to_vec(&snap).unwrap()).unwrap();
    let mut config = ServerConfig::with_state(state);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.key_file = dir.join("server.key");
    config.limits.handler_threads = 2;
    // Measure the API, not the abuse limits: registrations come from one address here.
    config.open = true;
    config.register_per_minute = 0;
    (RunningServer::start(&config).unwrap(), caller, caller_key)
}

fn etag_of(server: &RunningServer, private: &PrivateKey, path: &str) -> String {
    let addr = server.local_addr();
    let mut req = ureq::get(format!("http://{addr}{path}"));
    for (name, value) in wgmesh::proto::auth::sign_request(
        private,
        &server.public_key(),
        "GET",
        path,
        b"",
        SystemTime::now(),
    ) {
        req = req.header(name, value);
    }
    let resp = req.call().unwrap();
    resp.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned()
}

/// Mean time of `n` registrations of new keys, in microseconds.
fn registration_micros(server: &RunningServer, n: usize) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let url = format!("http://{}/register", server.local_addr());
    let requests: Vec<(String, Vec<(&'static str, String)>)> = (0..n)
        .map(|_| {
            let private = PrivateKey::generate();
            let key = private.public_key();
            let body = format!("{{\"public_key\":\"{key}\",\"hostname\":\"bench\"}}");
            let headers = wgmesh::proto::auth::sign_request(
                &private,
                &server.public_key(),
                "POST",
                "/register",
                body.as_bytes(),
                SystemTime::now(),
            );
            (body, headers)
        })
        .collect();
    let started = Instant::now();
    for (body, headers) in &requests {
        let mut req = agent.post(&url).header("Content-Type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let resp = req.send(body.as_str());
        assert_eq!(resp.unwrap().status().as_u16(), 200);
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let dir = std::env::temp_dir().join(format!("wgmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("wgmesh server bench: {cores} cores, wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}, keep-alive, loopback");

    let bare = bare_tiny_http();
    let ceiling = wrk(&format!("http://{bare}/"), None, &[]);
    report("bare tiny_http hello-world (wrk)", &ceiling, ceiling.rps);
    // The same bare server under the Rust generator used for the signed endpoints below,
    // signing every request as they do (tiny_http ignores the headers), so client-side work
    // is the same on both sides of the ratio.
    let (throwaway_server, throwaway_peer) =
        (PrivateKey::generate().public_key(), PrivateKey::generate());
    let gen_ceiling = signed_load(
        bare,
        Some((&throwaway_server, &throwaway_peer)),
        "GET",
        "/",
        "",
        None,
    );
    report(
        "bare tiny_http hello-world (gen)",
        &gen_ceiling,
        gen_ceiling.rps,
    );

    for peers in [1_000u32, 10_000] {
        let (server, caller, private) = server_with(&dir, peers);
        let addr = server.local_addr();
        let server_key = server.public_key();
        if peers == 1_000 {
            // The connection layer alone, like with like against the wrk ceiling.
            report(
                "GET /healthz (wrk)",
                &wrk(&format!("http://{addr}/healthz"), None, &[]),
                ceiling.rps,
            );
        }
        let signer = Some((&server_key, &private));
        report(
            &format!("heartbeat ({peers} peers)"),
            &signed_load(
                addr,
                signer,
                "POST",
                "/heartbeat",
                &format!("{{\"peer_id\":\"{caller}\"}}"),
                None,
            ),
            gen_ceiling.rps,
        );
        let path = format!("/peers?peer_id={caller}");
        report(
            &format!("GET /peers full ({peers} peers)"),
            &signed_load(addr, signer, "GET", &path, "", None),
            gen_ceiling.rps,
        );
        let etag = etag_of(&server, &private, &path);
        report(
            &format!("GET /peers 304 ({peers} peers)"),
            &signed_load(addr, signer, "GET", &path, "", Some(&etag)),
            gen_ceiling.rps,
        );
        server.shutdown().unwrap();
    }

    // Registration cost must not grow with the registry: compare the first peers with peer 60,000.
    let (small, _, _) = server_with(&dir, 1);
    let first = registration_micros(&small, 200);
    small.shutdown().unwrap();
    let (big, _, _) = server_with(&dir, 59_999);
    let at_60k = registration_micros(&big, 200);
    big.shutdown().unwrap();
    println!(
        "registration: {first:.0} us each near peer 1, {at_60k:.0} us each near peer 60,000 (ratio {:.2}; target <= 2)",
        at_60k / first
    );
    let _ = std::fs::remove_dir_all(&dir);
}
