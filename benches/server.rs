//! `just bench`: server throughput and latency next to a bare tiny_http hello-world, measured
//! in the same run on the same machine, so the ratios mean something on a noisy shared box.
//!
//! Load comes from `wrk` (Debian package) on loopback only, keep-alive for every target.
//! Prints requests/s, p50/p99 latency, non-2xx/3xx responses and socket errors/timeouts.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use wgmesh::keys::PrivateKey;
use wgmesh::server::{RunningServer, ServerConfig};
use wgmesh::store::{PeerRecord, Snapshot, FORMAT_VERSION};
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

fn record(i: u32) -> PeerRecord {
    let key = PrivateKey::generate().public_key();
    let now = SystemTime::now();
    PeerRecord {
        id: PeerId::for_key(&key),
        public_key: key,
        virtual_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i),
        endpoint: Some(
            format!("198.18.{}.{}:51820", (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
        ),
        observed_ip: None,
        listen_port: Some(51820),
        hostname: format!("host-{i}").parse().unwrap(),
        os: "linux".parse().unwrap(),
        allowed_ips: vec![],
        exit_node: false,
        registered_at: now,
        last_heartbeat: now,
        online: true,
        tags: Vec::new(),
    }
}

/// A server whose registry already holds `peers` peers (written as a snapshot, as a server
/// restarted on a big registry would find it).
fn server_with(dir: &Path, peers: u32) -> (RunningServer, PeerId) {
    let state = dir.join(format!("peers-{peers}.json"));
    let records: Vec<PeerRecord> = (1..=peers).map(record).collect();
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
    (RunningServer::start(&config).unwrap(), caller)
}

fn lua(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "wrk.method = \"POST\"").unwrap();
    writeln!(f, "wrk.body = '{body}'").unwrap();
    writeln!(f, "wrk.headers[\"Content-Type\"] = \"application/json\"").unwrap();
    path
}

fn etag_of(url: &str) -> String {
    let resp = ureq::get(url).call().unwrap();
    resp.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned()
}

/// Mean time of `n` registrations of new keys, in microseconds.
fn registration_micros(addr: SocketAddr, n: usize) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let url = format!("http://{addr}/register");
    let bodies: Vec<String> = (0..n)
        .map(|_| {
            let key = PrivateKey::generate().public_key();
            format!("{{\"public_key\":\"{key}\",\"hostname\":\"bench\"}}")
        })
        .collect();
    let started = Instant::now();
    for body in &bodies {
        let resp = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.as_str());
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
    report("bare tiny_http hello-world", &ceiling, ceiling.rps);

    for peers in [1_000u32, 10_000] {
        let (server, caller) = server_with(&dir, peers);
        let addr = server.local_addr();
        let hb = lua(
            &dir,
            "heartbeat.lua",
            &format!("{{\"peer_id\":\"{caller}\"}}"),
        );
        report(
            &format!("heartbeat ({peers} peers)"),
            &wrk(&format!("http://{addr}/heartbeat"), Some(&hb), &[]),
            ceiling.rps,
        );
        let url = format!("http://{addr}/peers?peer_id={caller}");
        report(
            &format!("GET /peers full ({peers} peers)"),
            &wrk(&url, None, &[]),
            ceiling.rps,
        );
        let etag = etag_of(&url);
        let header = format!("If-None-Match: {etag}");
        report(
            &format!("GET /peers 304 ({peers} peers)"),
            &wrk(&url, None, &[&header]),
            ceiling.rps,
        );
        server.shutdown().unwrap();
    }

    // Registration cost must not grow with the registry: compare the first peers with peer 60,000.
    let (small, _) = server_with(&dir, 1);
    let first = registration_micros(small.local_addr(), 200);
    small.shutdown().unwrap();
    let (big, _) = server_with(&dir, 59_999);
    let at_60k = registration_micros(big.local_addr(), 200);
    big.shutdown().unwrap();
    println!(
        "registration: {first:.0} us each near peer 1, {at_60k:.0} us each near peer 60,000 (ratio {:.2}; target <= 2)",
        at_60k / first
    );
    let _ = std::fs::remove_dir_all(&dir);
}
