//! `just bench`: registrations/s and heartbeats/s on the JSON store, on one replica over
//! PostgreSQL, and on two replicas sharing it, in one run on the same machine so the ratios
//! mean something. PostgreSQL is a throwaway cluster (tests/common/postgres.rs: needs
//! Debian's `postgresql` package, run as root). Loopback only; each figure is a bounded
//! run of SECONDS with THREADS signing clients spread round-robin over the replicas.

#[path = "../tests/common/postgres.rs"]
mod pg;

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

fn main() {
    if std::env::args().any(|a| a == "--list") {
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
}
