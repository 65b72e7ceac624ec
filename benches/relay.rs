//! The relay's throughput against the alternatives, in network namespaces on this machine:
//! iperf3 (TCP, 8 s) between two wireguard-go peers over the direct path, through the
//! coordination server's relay, and through a `socat` UDP forwarder on the same host as the
//! server; plus the forwarder's CPU time per GB carried. Prints a table; asserts nothing about
//! speed (the machine is shared), only that each path carried traffic.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, iperf3 and socat.

#[path = "../tests/common/mod.rs"]
mod common;

use common::netns::Lab;
use common::wgmesh_bin;
use std::time::Duration;

const SERVER: &str = "198.18.0.1";
const A: &str = "198.18.0.11";
const B: &str = "198.18.0.12";
const SOCAT_PORT: &str = "4000";
const SECONDS: &str = "8";

fn json_of(config: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap()
}

fn key_of(config: &str) -> String {
    wgmesh::keys::PrivateKey::from_base64(json_of(config)["private_key"].as_str().unwrap())
        .unwrap()
        .public_key()
        .to_base64()
}

/// User + system CPU seconds of one process.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// CPU seconds of every process named `comm` in namespace `ns`.
fn cpu_of(ns: &str, comm: &str) -> f64 {
    let pids = common::netns::must(&["ip", "netns", "pids", ns]);
    pids.split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(cpu_secs)
        .sum()
}

/// Runs iperf3 from `from` to `to_ip` and returns (bits/s, bytes received).
fn iperf(lab: &Lab, from: &str, to_ip: &str) -> (f64, f64) {
    let out = lab.exec_ok(from, &["iperf3", "-c", to_ip, "-t", SECONDS, "-J"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let sum = &json["end"]["sum_received"];
    if let Some(error) = json["error"].as_str() {
        eprintln!("iperf3 from {from} to {to_ip}: {error}");
    }
    (
        sum["bits_per_second"].as_f64().unwrap_or(0.0),
        sum["bytes"].as_f64().unwrap_or(0.0),
    )
}

/// Points `ns`'s WireGuard at `endpoint` for the peer of `peer_cfg`.
fn set_endpoint(lab: &Lab, ns: &str, iface: &str, peer_cfg: &str, endpoint: &str) {
    lab.exec_ok(
        ns,
        &[
            "wg",
            "set",
            iface,
            "peer",
            &key_of(peer_cfg),
            "endpoint",
            endpoint,
        ],
    );
}

/// The relay's cost per handshake message, addressed to the last of `members` online members,
/// with no rate limit: from a new source address each time (a MAC1 check against every
/// member), or from one that sent there before (its remembered recipient is tried first).
fn mac1_scan(members: usize, fresh_source: bool) -> f64 {
    use std::sync::Arc;
    use wgmesh::keys::PrivateKey;
    use wgmesh::proto::wg_wire::{fake_initiation, Mac1Key};
    use wgmesh::server::relay::{Member, MemberView, Relay, RelayLimits, RelayStats};
    let keys: Vec<_> = (0..members)
        .map(|_| PrivateKey::generate().public_key())
        .collect();
    let view = MemberView::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| Member {
                public_key: *k,
                ips: vec![std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8])],
                tags: Vec::new(),
                routes: Vec::new(),
            })
            .collect(),
        &wgmesh::server::policy::Policy::allow_all(),
    );
    let limits = RelayLimits {
        handshakes_per_second: 0,
        ..RelayLimits::default()
    };
    let mut relay = Relay::new(Arc::new(view), limits, Arc::new(RelayStats::default()));
    let last = Mac1Key::new(keys.last().unwrap());
    let from: std::net::SocketAddr = "10.1.0.0:40000".parse().unwrap();
    let rounds = 2000u32;
    let start = std::time::Instant::now();
    for i in 0..rounds {
        let message = fake_initiation(&last, i, 1);
        let source = if fresh_source {
            std::net::SocketAddr::new(from.ip(), 1 + i as u16)
        } else {
            from
        };
        std::hint::black_box(relay.handle(&message, source, std::time::Instant::now()));
    }
    start.elapsed().as_secs_f64() / f64::from(rounds)
}

fn main() {
    for members in [100, 1000] {
        let first = mac1_scan(members, true);
        let again = mac1_scan(members, false);
        println!(
            "relay handshake cost with {members} online members: {:.1} us from a new address \
             ({:.0} ns per member), {:.1} us from an address that sent there before",
            first * 1e6,
            first * 1e9 / members as f64,
            again * 1e6
        );
    }
    let mut lab = Lab::new("bench");
    let srv = lab.host("srv", &format!("{SERVER}/24"));
    let a = lab.host("a", &format!("{A}/24"));
    let b = lab.host("b", &format!("{B}/24"));
    let dir = lab.dir.path().to_owned();
    let path = |n: &str| dir.join(n).display().to_string();
    let state = path("peers.json");
    lab.spawn(
        &srv,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &format!("{SERVER}:8080"),
            "--state",
            &state,
            "--open",
            "--log-level",
            "warn",
        ],
        "server.log",
    );
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("http://{SERVER}:8080");
    let (a_cfg, b_cfg) = (path("a.json"), path("b.json"));
    let (a_if, b_if) = (lab.ifname("wg", "a"), lab.ifname("wg", "b"));
    let sync = |ns: &str, cfg: &str, iface: &str, name: &str| {
        lab.exec_ok(
            ns,
            &[
                wgmesh_bin(),
                "sync",
                "--server",
                &url,
                "--config",
                cfg,
                "--interface",
                iface,
                "--hostname",
                name,
            ],
        );
    };
    sync(&a, &a_cfg, &a_if, "a");
    sync(&b, &b_cfg, &b_if, "b");
    sync(&a, &a_cfg, &a_if, "a");
    let b_ip = json_of(&b_cfg)["assignment"]["assigned_ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let a_ip = json_of(&a_cfg)["assignment"]["assigned_ip"]
        .as_str()
        .unwrap()
        .to_owned();
    lab.spawn(&b, &["iperf3", "-s"], "iperf3.log");
    lab.eventually(Duration::from_secs(20), "a reaches b directly", || {
        lab.ping(&a, &b_ip)
    });
    let direct = iperf(&lab, &a, &b_ip);

    let relay_addr = format!("{SERVER}:3478");
    set_endpoint(&lab, &a, &a_if, &b_cfg, &relay_addr);
    set_endpoint(&lab, &b, &b_if, &a_cfg, &relay_addr);
    // Both ends send, so both retry their handshake through the relay (an idle end would
    // first have to earn the relay's credit with 25 s keepalives).
    lab.eventually(
        Duration::from_secs(60),
        "a reaches b through the relay",
        || {
            let back = lab.ping(&b, &a_ip);
            lab.ping(&a, &b_ip) && back
        },
    );
    let before = cpu_of(&srv, "wgmesh");
    let relay = iperf(&lab, &a, &b_ip);
    let relay_cpu = cpu_of(&srv, "wgmesh") - before;
    let endpoints = lab.exec_ok(&a, &["wg", "show", &a_if, "endpoints"]);
    assert!(endpoints.contains(&relay_addr), "not relayed: {endpoints}");

    // socat between the same namespaces: a sends to the forwarder, which sends to b from a
    // port of its own; b follows a's packets there (WireGuard roaming).
    lab.spawn(
        &srv,
        &[
            "socat",
            "-T",
            "60",
            &format!("UDP4-LISTEN:{SOCAT_PORT},reuseaddr,fork"),
            &format!("UDP4:{B}:51820"),
        ],
        "socat.log",
    );
    std::thread::sleep(Duration::from_millis(300));
    set_endpoint(&lab, &a, &a_if, &b_cfg, &format!("{SERVER}:{SOCAT_PORT}"));
    lab.eventually(Duration::from_secs(20), "a reaches b through socat", || {
        lab.ping(&a, &b_ip)
    });
    let before = cpu_of(&srv, "socat");
    let socat = iperf(&lab, &a, &b_ip);
    let socat_cpu = cpu_of(&srv, "socat") - before;
    let endpoints = lab.exec_ok(&b, &["wg", "show", &b_if, "endpoints"]);
    assert!(endpoints.contains(SERVER), "not through socat: {endpoints}");

    let mbit = |r: (f64, f64)| r.0 / 1e6;
    let per_gb = |cpu: f64, r: (f64, f64)| cpu / (r.1 / 1e9).max(1e-9);
    println!(
        "relay bench: iperf3 TCP {SECONDS} s through wireguard-go, one flow, same 2-core machine"
    );
    println!("| path | Mbit/s | vs socat | vs direct | forwarder CPU s per GB |");
    println!("|---|---|---|---|---|");
    println!(
        "| direct | {:.0} | {:.0}% | 100% | - |",
        mbit(direct),
        100.0 * direct.0 / socat.0
    );
    println!(
        "| wgmesh relay | {:.0} | {:.0}% | {:.0}% | {:.2} |",
        mbit(relay),
        100.0 * relay.0 / socat.0,
        100.0 * relay.0 / direct.0,
        per_gb(relay_cpu, relay)
    );
    println!(
        "| socat UDP forwarder | {:.0} | 100% | {:.0}% | {:.2} |",
        mbit(socat),
        100.0 * socat.0 / direct.0,
        per_gb(socat_cpu, socat)
    );
    assert!(
        direct.1 > 0.0 && relay.1 > 0.0 && socat.1 > 0.0,
        "a path carried nothing"
    );
}
