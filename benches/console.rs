//! `just bench`: the operator's console at 10,000 peers. The peers page (page 1, and a
//! search) rendered by the server, next to one full signed `GET /peers` answer of the same
//! registry, in the same run; and what live updates cost: 200 console tabs parked on
//! `/console/events` (threads and memory of this process before and while they wait), then
//! one change answering all of them.
//!
//! The server runs in this process on loopback; the clients are plain HTTP from here.

#[path = "support/peer_record.rs"]
mod peer_record;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};
use wgmesh::keys::PrivateKey;
use wgmesh::server::{RunningServer, ServerConfig};

const PEERS: u32 = 10_000;
const TABS: usize = 200;
const ROUNDS: usize = 30;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Median and worst of `rounds` timings of `f`, in milliseconds.
fn time(rounds: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut all = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        bytes = f();
        all.push(t.elapsed().as_secs_f64() * 1e3);
    }
    all.sort_by(f64::total_cmp);
    (all[all.len() / 2], all[all.len() - 1], bytes)
}

/// Threads and resident memory (KiB) of this process.
fn threads_and_rss() -> (usize, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Threads:") as usize, field("VmRSS:"))
}

fn main() {
    let dir = std::env::temp_dir().join(format!("wgmesh-bench-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let state = dir.join("peers.json");
    let keys = peer_record::write_registry(&state, PEERS);
    let mut config = ServerConfig::with_state(state);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.key_file = dir.join("server.key");
    config.open = true;
    config.register_per_minute = 0;
    let server = RunningServer::start(&config).unwrap();
    let addr = server.local_addr();
    println!("wgmesh console bench: {cores} cores, {PEERS} peers, loopback, in-process server");

    // Log in once; every page below reuses the session.
    let secret = std::fs::read_to_string(dir.join("admin.secret")).unwrap();
    let answer = agent()
        .post(format!("http://{addr}/console/login"))
        .header("Origin", format!("http://{addr}"))
        .send_form([("secret", secret.trim())])
        .unwrap();
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = |path: &str| {
        let mut r = agent()
            .get(format!("http://{addr}{path}"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        r.body_mut().read_to_vec().unwrap().len()
    };
    let (p50, max, size) = time(ROUNDS, || page("/console/peers"));
    println!("console peers page 1 of {PEERS}: p50 {p50:.2} ms, max {max:.2} ms, {size} bytes");
    let (s50, smax, ssize) = time(ROUNDS, || page("/console/peers?q=host-99&sort=last_seen"));
    println!("console search (q=host-99): p50 {s50:.2} ms, max {smax:.2} ms, {ssize} bytes");

    // One full signed /peers of the same registry, as an agent gets it.
    let caller = &keys[0];
    let id = wgmesh::types::PeerId::for_key(&caller.public_key());
    let path = format!("/peers?peer_id={id}");
    let full = || {
        let mut req = agent().get(format!("http://{addr}{path}"));
        for (name, value) in wgmesh::proto::auth::sign_request(
            caller,
            &server.public_key(),
            "GET",
            &path,
            b"",
            SystemTime::now(),
        ) {
            req = req.header(name, value);
        }
        let mut r = req.call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap()
            .len()
    };
    let (f50, fmax, fsize) = time(ROUNDS, full);
    println!("full GET /peers (signed): p50 {f50:.2} ms, max {fmax:.2} ms, {fsize} bytes");
    println!(
        "ratio console page / full list: {:.2} (p50)",
        p50 / f50.max(f64::MIN_POSITIVE)
    );

    // Live updates: TABS browser tabs parked on /console/events.
    let version: u64 = {
        let mut r = agent()
            .get(format!("http://{addr}/console/events"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        v["version"].as_u64().unwrap()
    };
    let (threads_before, rss_before) = threads_and_rss();
    let mut tabs: Vec<TcpStream> = (0..TABS).map(|_| park(addr, &cookie, version)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (threads_parked, rss_parked) = threads_and_rss();
    println!(
        "{TABS} tabs parked on /console/events: threads {threads_before} -> {threads_parked}, RSS {rss_before} -> {rss_parked} KiB"
    );
    let started = Instant::now();
    let newcomer = PrivateKey::generate();
    register(&server, &newcomer);
    for tab in &mut tabs {
        let mut buf = [0u8; 4096];
        let n = tab.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    println!(
        "one registration answered all {TABS} parked tabs in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(tabs);
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens one tab's long-poll and leaves it waiting.
fn park(addr: SocketAddr, cookie: &str, version: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /console/events?since={version}&wait=60 HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    s
}

/// Registers a new key (the change that wakes every tab).
fn register(server: &RunningServer, private: &PrivateKey) {
    let key = private.public_key();
    let body = format!("{{\"public_key\":\"{key}\",\"hostname\":\"newcomer\"}}");
    let mut req = agent()
        .post(format!("http://{}/register", server.local_addr()))
        .header("Content-Type", "application/json");
    for (name, value) in wgmesh::proto::auth::sign_request(
        private,
        &server.public_key(),
        "POST",
        "/register",
        body.as_bytes(),
        SystemTime::now(),
    ) {
        req = req.header(name, value);
    }
    assert_eq!(req.send(body.as_str()).unwrap().status().as_u16(), 200);
}
