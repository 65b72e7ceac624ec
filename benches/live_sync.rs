//! `just bench`: live sync figures.
//!
//! 1. One change at 10,000 nodes: the real `wgmesh server` binary (its own process, so each
//!    side has its own descriptor limit) loaded with 10,000 peers, 10,000 signed long-polls
//!    (`/peers?since=N&wait=60`) parked on it from this process, then one new peer registers.
//!    Prints the bytes all 10,000 agents download and the time until the last has it, beside
//!    what the full-list refetch of before would have cost.
//! 2. A 10-node mesh of network namespaces with real tunnels (wireguard-go), every node
//!    brought up with `wgmesh up` and default timers: seconds from the last `up` until every
//!    pair pings, and from a SIGTERM to one `up` (or a `wgmesh down` after a node died hard)
//!    until every other node dropped it. Needs root, iproute2, wireguard-tools, wireguard-go.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fanout.rs"]
mod fanout;
#[path = "support/peer_record.rs"]
mod peer_record;

use common::netns::Lab;
use common::{wgmesh_bin, ServerProcess, TempDir};
use fanout::{
    agents, agents_of, exchange, register_request, signed_get, spread, Parked, SERVER_FLAGS,
};
use peer_record::write_registry;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wgmesh::keys::PrivateKey;

fn fanout_at_10k() {
    let agents = agents();
    let dir = TempDir::new("bench-live");
    let state = dir.path().join("peers.json");
    let keys = write_registry(&state, agents);
    eprintln!("bench: {agents} keys and a snapshot written; starting the server");
    let server = ServerProcess::start(&state, &SERVER_FLAGS);
    let addr = server.addr;
    let server_key = server.public_key();
    let (signers, ids) = agents_of(&keys, &server_key);

    // Everyone starts from the same version; one full list shows what a refetch costs.
    let first = format!("/peers?peer_id={}", ids[0]);
    let full = exchange(addr, &signed_get(&signers[0], &first));
    let version = full.json()["version"]
        .as_u64()
        .expect("a version in /peers");
    let full_bytes = full.read.len();

    eprintln!("bench: full list {full_bytes} B at version {version}; parking {agents} long-polls");
    let (mut parked, early) = Parked::park(&[addr], &signers, &ids, version);
    let parking = parked.parking;

    eprintln!("bench: parked; {early} answered early; one peer registers");
    let newcomer = PrivateKey::generate();
    let req = register_request(&newcomer, &server_key, "newcomer");
    let changed_at = Instant::now();
    let mut register = TcpStream::connect(addr).unwrap();
    register.write_all(&req).unwrap();
    let times = parked.wait_all(changed_at, Duration::from_secs(30));
    let bytes = parked.bytes();
    let pollers = &parked.pollers;
    let delta = pollers[1].json();
    assert_eq!(delta["changed"][0]["hostname"], "newcomer", "{delta}");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("live sync, one change at {agents} nodes ({cores} cores, server in its own process):");
    println!(
        "  {agents} signed long-polls parked in {:.2} s; answered early: {early}",
        parking.as_secs_f64()
    );
    println!(
        "  agents answered: {} of {agents}; {} after the change",
        times.len(),
        spread(&times)
    );
    println!(
        "  bytes all agents downloaded: {:.2} MB ({} B each, headers and MAC included); a full refetch: {:.1} GB ({full_bytes} B each)",
        bytes as f64 / 1e6,
        bytes / pollers.len(),
        full_bytes as f64 * agents as f64 / 1e9,
    );
    drop(parked);
    drop(server);
}

const SERVER_IP: &str = "198.18.0.1";
const NODES: usize = 10;

fn config_of(lab: &Lab, node: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(lab.dir.path().join(format!("{node}.json"))).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

fn public_key(lab: &Lab, node: &str) -> String {
    let config = config_of(lab, node);
    PrivateKey::from_base64(config["private_key"].as_str().unwrap())
        .unwrap()
        .public_key()
        .to_base64()
}

fn wg_peers(lab: &Lab, ns: &str, iface: &str) -> Vec<String> {
    let out = lab.exec(ns, &["wg", "show", iface, "peers"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `check` every 50 ms for up to `limit`; returns the time it took.
fn time_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

fn mesh_of_ten() {
    let mut lab = Lab::new("bench");
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let listen = format!("{SERVER_IP}:8080");
    lab.spawn(
        &server_ns,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--state",
            &state,
            "--open",
        ],
        "server.log",
    );
    let server = format!("http://{SERVER_IP}:8080");
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let nodes: Vec<(String, String, String)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ns = lab.host(name, &format!("198.18.0.{}/24", 11 + i));
            let iface = lab.ifname("wg", name);
            let config = lab
                .dir
                .path()
                .join(format!("{name}.json"))
                .display()
                .to_string();
            (ns, iface, config)
        })
        .collect();
    // The server answers before the clock starts.
    time_until(Duration::from_secs(20), "the server listens", || {
        lab.log("server.log").contains("listening on")
    });
    let verbose = std::env::var_os("WGMESH_BENCH_LOGS").is_some();
    let mut agents = Vec::new();
    for (name, (ns, iface, config)) in names.iter().zip(&nodes) {
        agents.push(lab.spawn(
            ns,
            &[
                wgmesh_bin(),
                "up",
                "--server",
                &server,
                "--config",
                config,
                "--interface",
                iface,
                "--hostname",
                name,
                "--log-level",
                if verbose { "debug" } else { "warn" },
            ],
            &format!("{name}.log"),
        ));
    }
    let last_up = Instant::now();
    let mut ips = Vec::new();
    time_until(Duration::from_secs(60), "every node registered", || {
        ips = names
            .iter()
            .filter_map(|n| {
                config_of(&lab, n)["assignment"]["assigned_ip"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        ips.len() == NODES
    });
    // Every pair pings on its own thread (a lost echo must not hold up the others), from one
    // side: the echo proves both directions, and pinging from both sides at the very moment
    // both learn of each other would make both initiate a handshake at once, which
    // WireGuard resolves only by its 5 s retry (each side drops its own pending one).
    let all_ping = std::thread::scope(|scope| {
        let (lab, nodes, ips) = (&lab, &nodes, &ips);
        if verbose {
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(3000));
                for (i, (ns, iface, _)) in nodes.iter().enumerate() {
                    let out = lab.exec(ns, &["wg", "show", iface, "dump"]);
                    eprintln!("n{i} at 3 s:\n{}", String::from_utf8_lossy(&out.stdout));
                }
            });
        }
        let pairs: Vec<_> = (0..NODES)
            .flat_map(|i| (i + 1..NODES).map(move |j| (i, j)))
            .map(|(i, j)| {
                scope.spawn(move || loop {
                    let ok = lab
                        .exec(
                            &nodes[i].0,
                            &["ping", "-c", "1", "-W", "0.3", "-n", "-q", &ips[j]],
                        )
                        .status
                        .success();
                    if ok {
                        return (last_up.elapsed(), i, j);
                    }
                    assert!(
                        last_up.elapsed() < Duration::from_secs(120),
                        "n{i} cannot ping n{j} after 120 s"
                    );
                })
            })
            .collect();
        let mut times: Vec<(Duration, usize, usize)> =
            pairs.into_iter().map(|p| p.join().unwrap()).collect();
        times.sort();
        if verbose {
            eprintln!("slowest pairs: {:?}", &times[times.len() - 6..]);
            eprintln!("fastest pairs: {:?}", &times[..4]);
        }
        times.last().unwrap().0
    });

    // A SIGTERM to n0's `up`: it tells the server, the others drop it.
    eprintln!("bench: all pairs ping after {all_ping:?}; stopping n0");
    if verbose {
        for (i, name) in names.iter().enumerate() {
            eprintln!("n{i} key {}", public_key(&lab, name));
        }
    }
    let n0_key = public_key(&lab, &names[0]);
    let pid = lab.child(agents[0]).id().to_string();
    let stopped = Instant::now();
    common::netns::run(&["kill", "-TERM", &pid]);
    time_until(Duration::from_secs(60), "everyone drops n0", || {
        nodes[1..]
            .iter()
            .all(|(ns, iface, _)| !wg_peers(&lab, ns, iface).contains(&n0_key))
    });
    let stop_seen = stopped.elapsed();
    lab.signal(agents[0], "TERM");

    // n1 dies hard, then `wgmesh down` on it: the others drop it at once.
    let n1_key = public_key(&lab, &names[1]);
    lab.child(agents[1]).kill().unwrap();
    lab.child(agents[1]).wait().unwrap();
    let downed = Instant::now();
    lab.exec_ok(
        &nodes[1].0,
        &[wgmesh_bin(), "down", "--config", &nodes[1].2],
    );
    time_until(Duration::from_secs(60), "everyone drops n1", || {
        nodes[2..]
            .iter()
            .all(|(ns, iface, _)| !wg_peers(&lab, ns, iface).contains(&n1_key))
    });
    let down_seen = downed.elapsed();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "live sync, {NODES}-node namespace mesh, wireguard-go, default timers ({cores} cores):"
    );
    println!(
        "  every pair pings {:.2} s after the last `wgmesh up` ({} pairs)",
        all_ping.as_secs_f64(),
        NODES * (NODES - 1) / 2
    );
    println!(
        "  SIGTERM to one `up` until all {} others dropped it: {:.2} s",
        NODES - 1,
        stop_seen.as_secs_f64()
    );
    println!(
        "  `wgmesh down` (after a hard kill) until all {} others dropped it: {:.2} s",
        NODES - 2,
        down_seen.as_secs_f64()
    );
    for agent in agents.iter().skip(2) {
        lab.signal(*agent, "TERM");
    }
}

fn main() {
    // `WGMESH_BENCH_ONLY=fanout` or `=mesh` runs one half.
    let only = std::env::var("WGMESH_BENCH_ONLY").unwrap_or_default();
    if only != "mesh" {
        fanout_at_10k();
    }
    if only != "fanout" {
        if only != "mesh" {
            // Let the kernel finish tearing down 20,000 loopback sockets first.
            std::thread::sleep(Duration::from_secs(10));
        }
        mesh_of_ten();
    }
}
