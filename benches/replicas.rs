//! `just bench`: registrations/s and heartbeats/s on the JSON store, on one replica over
//! PostgreSQL, and on two replicas sharing it, in one run on the same machine so the ratios
//! mean something. PostgreSQL is a throwaway cluster (tests/common/postgres.rs: needs
//! Debian's `postgresql` package, run as root). Loopback only; each figure is a bounded
//! run of SECONDS with THREADS signing clients spread round-robin over the replicas.
//!
//! Then live sync across replicas: 10,000 imported peers, each agent's long-poll parked on
//! one of two replicas (alternating, as a plain load balancer would spread them) holding the
//! version the first replica gave out, and one peer registering through the first replica:
//! the time until the last agent on either replica has the change, and the bytes they
//! downloaded (deltas, since versions mean the same on every replica).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fanout.rs"]
mod fanout;
#[path = "support/peer_record.rs"]
mod peer_record;

use common::postgres as pg;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wgmesh::keys::{PrivateKey, PublicKey};
use wgmesh::proto::auth::RequestSigner;
use wgmesh::server::{RunningServer, ServerConfig};

const THREADS: usize = 8;
const SECONDS: u64 = 4;
const HEARTBEAT_PEERS: usize = 64;

fn start(dir: &std::path::Path, name: &str, store: Option<&str>) -> RunningServer {
    let mut config = ServerConfig::with_state(dir.join(name).join("peers.json"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.open = true;
    config.register_per_minute = 0;
    config.store = store.map(str::to_owned);
    RunningServer::start(&config).expect("server starts")
}

fn register_one(
    agent: &ureq::Agent,
    addr: SocketAddr,
    server: &PublicKey,
    private: &PrivateKey,
) -> String {
    let key = private.public_key();
    let body = format!("{{\"public_key\":\"{key}\",\"hostname\":\"bench\",\"os\":\"linux\"}}");
    let headers = RequestSigner::new(private, server).sign(
        "POST",
        "/register",
        body.as_bytes(),
        SystemTime::now(),
    );
    let mut req = agent
        .post(format!("http://{addr}/register"))
        .header("Content-Type", "application/json");
    for (name, value) in &headers {
        req = req.header(*name, value.as_str());
    }
    let mut resp = req.send(body.as_str()).expect("register");
    assert_eq!(resp.status().as_u16(), 200);
    let json: serde_json::Value = resp.body_mut().read_json().unwrap();
    json["peer_id"].as_str().unwrap().to_owned()
}

/// Registrations/s: every thread registers fresh keys for SECONDS.
fn registrations(addrs: &[SocketAddr], server: PublicKey) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addrs, done) = (addrs.to_vec(), done.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                let mut i = t;
                while Instant::now() < deadline {
                    let private = PrivateKey::generate();
                    register_one(&agent, addrs[i % addrs.len()], &server, &private);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

/// Heartbeats/s: HEARTBEAT_PEERS registered peers heartbeat as fast as THREADS clients can.
fn heartbeats(addrs: &[SocketAddr], server: PublicKey) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let peers: Vec<(PrivateKey, String)> = (0..HEARTBEAT_PEERS)
        .map(|i| {
            let private = PrivateKey::generate();
            let id = register_one(&agent, addrs[i % addrs.len()], &server, &private);
            (private, id)
        })
        .collect();
    let peers = Arc::new(peers);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addrs, done, peers) = (addrs.to_vec(), done.clone(), peers.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                let signers: Vec<(RequestSigner, String)> = peers
                    .iter()
                    .skip(t)
                    .step_by(THREADS)
                    .map(|(k, id)| (RequestSigner::new(k, &server), id.clone()))
                    .collect();
                let mut i = 0;
                while Instant::now() < deadline {
                    let (signer, id) = &signers[i % signers.len()];
                    let body = format!("{{\"peer_id\":\"{id}\"}}");
                    let headers =
                        signer.sign("POST", "/heartbeat", body.as_bytes(), SystemTime::now());
                    let addr = addrs[(t + i) % addrs.len()];
                    let mut req = agent
                        .post(format!("http://{addr}/heartbeat"))
                        .header("Content-Type", "application/json");
                    for (name, value) in &headers {
                        req = req.header(*name, value.as_str());
                    }
                    let resp = req.send(body.as_str()).expect("heartbeat");
                    assert_eq!(resp.status().as_u16(), 200);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

/// Live sync over two replicas (see the module docs); `agents` from `WGMESH_BENCH_AGENTS`.
fn fanout_over_replicas() {
    use fanout::{exchange, register_request, signed_get, spread, Parked};
    use std::io::Write;

    let agents = fanout::agents();
    let cluster = pg::PgCluster::start();
    let url = cluster.url();
    let dir = common::TempDir::new("bench-replica-fanout");
    let state = dir.path().join("import.json");
    let keys = peer_record::write_registry(&state, agents);
    // As a user moves over: the single server ran (making its key and secret), then stops.
    drop(common::ServerProcess::start(&state, &["--open"]));
    let imported = std::process::Command::new(common::wgmesh_bin())
        .args(["server", "--state"])
        .arg(&state)
        .args(["--import-to", &url])
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    eprintln!("bench: {agents} peers imported; starting two replicas");
    let replicas: Vec<common::ServerProcess> = ["a", "b"]
        .iter()
        .map(|name| {
            let state = dir.path().join(name).join("peers.json");
            std::fs::create_dir_all(state.parent().unwrap()).unwrap();
            common::ServerProcess::try_start_with(&state, &fanout::SERVER_FLAGS, |c| {
                c.env("WGMESH_STORE", &url);
            })
            .unwrap_or_else(|(code, log)| panic!("replica {name} (exit {code:?}):\n{log:?}"))
        })
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let server_key = replicas[0].public_key();
    let (signers, ids) = fanout::agents_of(&keys, &server_key);
    let first = format!("/peers?peer_id={}", ids[0]);
    let full = exchange(addrs[0], &signed_get(&signers[0], &first));
    let version = full.json()["version"].as_u64().expect("a version");
    let full_bytes = full.read.len();
    let (mut parked, early) = Parked::park(&addrs, &signers, &ids, version);
    eprintln!("bench: parked on both replicas ({early} answered early); one peer registers");
    let newcomer = PrivateKey::generate();
    let request = register_request(&newcomer, &server_key, "newcomer");
    let changed_at = Instant::now();
    let mut register = std::net::TcpStream::connect(addrs[0]).unwrap();
    register.write_all(&request).unwrap();
    let times = parked.wait_all(changed_at, Duration::from_secs(30));
    // Agent 1 was parked on the second replica with the first one's version.
    let delta = parked.pollers[1].json();
    assert_eq!(delta["full"], false, "a delta, not the whole list: {delta}");
    assert_eq!(delta["changed"][0]["hostname"], "newcomer", "{delta}");
    let split = |on: usize| -> Vec<Duration> {
        let mut t: Vec<Duration> = parked
            .pollers
            .iter()
            .skip(on)
            .step_by(2)
            .filter_map(|p| p.done.map(|d| d.duration_since(changed_at)))
            .collect();
        t.sort();
        t
    };
    let bytes = parked.bytes();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "live sync over two replicas, one change through the first, {agents} agents ({cores} cores):"
    );
    println!(
        "  {agents} long-polls parked in {:.2} s, alternating replicas, all at the first's version; answered early: {early}",
        parked.parking.as_secs_f64()
    );
    println!(
        "  answered: {} of {agents}; {}",
        times.len(),
        spread(&times)
    );
    println!("  on the first replica: {}", spread(&split(0)));
    println!("  on the second replica: {}", spread(&split(1)));
    println!(
        "  bytes all agents downloaded: {:.2} MB ({} B each); whole lists would be {:.1} GB",
        bytes as f64 / 1e6,
        bytes / parked.pollers.len(),
        full_bytes as f64 * agents as f64 / 1e9,
    );
    drop(parked);
    drop(replicas);
    drop(cluster);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `WGMESH_BENCH_ONLY=fanout` runs only live sync over replicas.
    if std::env::var("WGMESH_BENCH_ONLY").as_deref() == Ok("fanout") {
        fanout_over_replicas();
        return;
    }
    let dir = std::env::temp_dir().join(format!("wgmesh-bench-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = pg::PgCluster::start();
    let url = cluster.url();
    println!(
        "registrations/s and heartbeats/s, {THREADS} signing clients, {SECONDS} s each, loopback"
    );
    let mut rows = Vec::new();
    for (label, stores) in [
        ("JSON store, one server", vec![None]),
        ("PostgreSQL, one replica", vec![Some(url.as_str())]),
        ("PostgreSQL, two replicas", vec![Some(url.as_str()); 2]),
    ] {
        let servers: Vec<RunningServer> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| start(&dir, &format!("{label}-{i}"), *s))
            .collect();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.local_addr()).collect();
        let key = servers[0].public_key();
        let reg = registrations(&addrs, key);
        let hb = heartbeats(&addrs, key);
        println!("{label:<28} {reg:>9.0} registrations/s  {hb:>9.0} heartbeats/s");
        rows.push((reg, hb));
        for s in servers {
            let _ = s.shutdown();
        }
    }
    let (json_reg, json_hb) = rows[0];
    for (label, (reg, hb)) in ["one replica", "two replicas"].iter().zip(&rows[1..]) {
        println!(
            "{label:<28} {:>8.2}x registrations  {:>8.2}x heartbeats (vs the JSON store)",
            reg / json_reg,
            hb / json_hb
        );
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    fanout_over_replicas();
}
