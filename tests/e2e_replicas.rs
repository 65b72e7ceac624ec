//! End to end with replicas (issue 11): two `wgmesh server` replicas sharing one PostgreSQL
//! cluster in a server namespace, nodes in their own namespaces running `wgmesh up` with
//! both servers and real userspace WireGuard (wireguard-go). The replica the agents use is
//! killed with SIGKILL: they keep pinging each other, and a node that joins afterwards
//! (naming the dead replica first) reaches them all.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, ping and PostgreSQL 15; fails (never
//! skips) without.

mod common;

use common::netns::{Lab, Router, FAST_AGENT};
use common::postgres::PgCluster;
use common::wgmesh_bin;
use std::time::Duration;

const A_IP: &str = "198.18.0.1";
const B_IP: &str = "198.18.0.2";

/// Waits until each of `nodes` has registered; returns their mesh addresses.
fn registered(lab: &Lab, nodes: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .map(|name| {
            lab.eventually(
                Duration::from_secs(30),
                &format!("{name} registers"),
                || {
                    std::fs::read_to_string(lab.dir.path().join(format!("{name}.json")))
                        .is_ok_and(|t| t.contains("assigned_ip"))
                },
            );
            lab.mesh_ip(name)
        })
        .collect()
}

fn up(lab: &mut Lab, name: &str, ns: &str) -> usize {
    up_with(lab, name, ns, [A_IP, B_IP], &[])
}

/// `wgmesh up` naming the replicas in `order` (the first is the one it uses), with `extra`
/// flags.
fn up_with(lab: &mut Lab, name: &str, ns: &str, order: [&str; 2], extra: &[&str]) -> usize {
    let config = lab.dir.path().join(format!("{name}.json"));
    let iface = lab.ifname("wg", name);
    let (a, b) = (
        format!("http://{}:8080", order[0]),
        format!("http://{}:8080", order[1]),
    );
    let config = config.to_str().unwrap();
    let mut args = vec![
        wgmesh_bin(),
        "up",
        "--server",
        &a,
        "--server",
        &b,
        "--config",
        config,
        "--interface",
        &iface,
        "--hostname",
        name,
    ];
    args.extend(FAST_AGENT);
    args.extend_from_slice(extra);
    lab.spawn(ns, &args, &format!("{name}.log"))
}

/// Starts replica `name` on `ip` (already an address of `srv`) on the cluster at `url`,
/// with a one-second sweep and `heartbeat_timeout` (which is also how long a dead replica
/// stays in `GET /replicas`), relaying on its own UDP port 3478 when `relay`; waits until it
/// listens and returns its lab process index.
fn start_replica(
    lab: &mut Lab,
    srv: &str,
    url: &str,
    (name, ip): (&str, &str),
    relay: bool,
    heartbeat_timeout: &str,
) -> usize {
    let state = lab.dir.path().join(name).join("peers.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let listen = format!("{ip}:8080");
    let udp = if relay {
        format!("{ip}:3478")
    } else {
        "off".to_owned()
    };
    let index = lab.spawn(
        srv,
        &[
            "env",
            &format!("WGMESH_STORE={url}"),
            wgmesh_bin(),
            "server",
            "--open",
            "--listen",
            &listen,
            "--udp-listen",
            &udp,
            "--state",
            state.to_str().unwrap(),
            "--heartbeat-timeout",
            heartbeat_timeout,
            "--sweep-interval",
            "1",
        ],
        &format!("replica-{name}.log"),
    );
    lab.eventually(Duration::from_secs(20), "the replica listens", || {
        lab.log(&format!("replica-{name}.log"))
            .contains("listening on")
    });
    index
}

/// Replicas `a` (on A_IP) and `b` (on B_IP), as [`start_replica`] starts them.
fn start_replicas(
    lab: &mut Lab,
    srv: &str,
    url: &str,
    relay: bool,
    heartbeat_timeout: &str,
) -> Vec<usize> {
    [("a", A_IP), ("b", B_IP)]
        .into_iter()
        .map(|replica| start_replica(lab, srv, url, replica, relay, heartbeat_timeout))
        .collect()
}

/// The server namespace, holding both replicas' addresses (A_IP and B_IP).
fn server_host(lab: &mut Lab) -> String {
    let srv = lab.host("srv", &format!("{A_IP}/24"));
    lab.exec_ok(
        &srv,
        &["ip", "addr", "add", &format!("{B_IP}/24"), "dev", "eth0"],
    );
    srv
}

#[test]
fn agents_given_both_replicas_keep_their_mesh_and_admit_a_new_node_after_one_dies() {
    let mut lab = Lab::new("repl");
    let srv = server_host(&mut lab);
    // Declared after the lab, so it is stopped before the lab's namespaces go away.
    let pg = PgCluster::start_in_netns(&srv);
    let url = pg.url();
    let replicas = start_replicas(&mut lab, &srv, &url, false, "5");
    let n1 = lab.host("n1", "198.18.0.11/24");
    let n2 = lab.host("n2", "198.18.0.12/24");
    up(&mut lab, "n1", &n1);
    up(&mut lab, "n2", &n2);
    let ips = registered(&lab, &["n1", "n2"]);
    lab.eventually(Duration::from_secs(30), "n1 pings n2", || {
        lab.ping(&n1, &ips[1])
    });
    lab.eventually(Duration::from_secs(30), "n2 pings n1", || {
        lab.ping(&n2, &ips[0])
    });

    // The replica both agents use dies without a word.
    lab.signal(replicas[0], "KILL");
    std::thread::sleep(Duration::from_secs(3));
    assert!(lab.ping(&n1, &ips[1]), "the mesh survives the replica");

    // A node joins afterwards, naming the dead replica first: it fails over, registers
    // through B, and the others learn of it from B.
    let n3 = lab.host("n3", "198.18.0.13/24");
    up(&mut lab, "n3", &n3);
    lab.eventually(Duration::from_secs(30), "n3 registers", || {
        std::fs::read_to_string(lab.dir.path().join("n3.json"))
            .is_ok_and(|t| t.contains("assigned_ip"))
    });
    let ip3 = lab.mesh_ip("n3");
    assert!(!ips.contains(&ip3), "a fresh address");
    for (ns, name) in [(&n1, "n1"), (&n2, "n2")] {
        lab.eventually(Duration::from_secs(30), &format!("{name} pings n3"), || {
            lab.ping(ns, &ip3)
        });
    }
    lab.eventually(Duration::from_secs(30), "n3 pings n1", || {
        lab.ping(&n3, &ips[0])
    });
    assert!(lab.ping(&n1, &ips[1]) && lab.ping(&n2, &ips[0]));
    assert!(lab.log("n1.log").contains("trying"), "n1 failed over");
    drop(pg);
}

/// `status --json` of `node`'s view of the peer `to`: (path, endpoint).
fn path_of(lab: &Lab, ns: &str, node: &str, to: &str) -> (serde_json::Value, serde_json::Value) {
    let config = lab.dir.path().join(format!("{node}.json"));
    let out = lab.exec(
        ns,
        &[
            wgmesh_bin(),
            "status",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
    );
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["hostname"] == to))
        .map(|p| (p["path"].clone(), p["endpoint"].clone()))
        .unwrap_or((serde_json::Value::Null, serde_json::Value::Null))
}

/// Whether n1 and n2 (in `ns`) both report the path to the other as relayed at `relay`.
fn both_relayed_at(lab: &Lab, ns: [&str; 2], relay: &str) -> bool {
    let a = path_of(lab, ns[0], "n1", "n2");
    let b = path_of(lab, ns[1], "n2", "n1");
    a.0 == "relay" && b.0 == "relay" && a.1 == relay && b.1 == relay
}

/// Issue 11 with the relay (issue 9): two nodes behind carrier-grade NATs, each using
/// another replica for HTTP, are relayed through one replica's relay, the one
/// `meeting_replica` picks for the pair; when that replica dies, both move to the other's.
#[test]
fn a_relayed_pair_meets_at_one_replica_and_moves_when_it_dies() {
    let mut lab = Lab::new("rrel");
    let srv = server_host(&mut lab);
    let pg = PgCluster::start_in_netns(&srv);
    let url = pg.url();
    let replicas = start_replicas(&mut lab, &srv, &url, true, "60");
    // Both nodes behind carrier-grade NATs (a random port per mapping): no direct path can
    // open between them, only a relay joins them, and every replica's relay must recognise
    // each node by the public address its NAT gives it.
    let (_r1, n1) = lab.home("n1", "198.18.0.11", 1, Router::RandomPorts, None);
    let (_r2, n2) = lab.home("n2", "198.18.0.12", 2, Router::RandomPorts, None);
    let fast = ["--relay-after", "5"];
    up_with(&mut lab, "n1", &n1, [A_IP, B_IP], &fast);
    up_with(&mut lab, "n2", &n2, [B_IP, A_IP], &fast);
    let last_up = std::time::Instant::now();
    let ips = registered(&lab, &["n1", "n2"]);
    let urls = vec![format!("http://{A_IP}:8080"), format!("http://{B_IP}:8080")];
    let (k1, k2) = (lab.key_of("n1"), lab.key_of("n2"));
    let meet = wgmesh::proto::replicas::meeting_replica(&k1, &k2, &urls).unwrap();
    let (dead, survivor) = if meet == urls[0] {
        (0, B_IP)
    } else {
        (1, A_IP)
    };
    let meet_relay = format!("{}:3478", [A_IP, B_IP][dead]);

    // Relay first: the pair talks through the meeting replica's relay from its first packet
    // (issue 25: within 5 s of the last `up`; 10 s allowed on this shared machine).
    lab.eventually(Duration::from_secs(10), "n1 pings n2", || {
        lab.ping(&n1, &ips[1])
    });
    lab.eventually(Duration::from_secs(10), "n2 pings n1", || {
        lab.ping(&n2, &ips[0])
    });
    println!(
        "two replicas, both ends behind random-port NATs: pinging both ways {:?} after the last `up`",
        last_up.elapsed()
    );
    lab.eventually(
        Duration::from_secs(30),
        &format!("both ends relayed at the meeting replica's relay {meet_relay}"),
        || both_relayed_at(&lab, [&n1, &n2], &meet_relay),
    );

    // The meeting replica dies. It stays in GET /replicas for the heartbeat timeout (60 s),
    // so only the agents' own watch can see it go: both ends stop getting STUN answers from
    // its relay, leave it, and move to the survivor's relay together within the relay's
    // switch time (15 s by default), restarting the session there.
    lab.signal(replicas[dead], "KILL");
    let killed = std::time::Instant::now();
    let next_relay = format!("{survivor}:3478");
    lab.eventually(
        Duration::from_secs(15),
        &format!("both ends move to {next_relay} within the relay's switch time"),
        || both_relayed_at(&lab, [&n1, &n2], &next_relay),
    );
    let moved = killed.elapsed();
    lab.eventually(Duration::from_secs(30), "n1 and n2 ping again", || {
        lab.ping(&n1, &ips[1]) && lab.ping(&n2, &ips[0])
    });
    eprintln!(
        "relay switch after replica death: both ends moved in {moved:?}, pinging again in {:?}",
        killed.elapsed()
    );
    for node in ["n1", "n2"] {
        let log = lab.log(&format!("{node}.log"));
        assert!(
            log.contains(&format!("the relay at {meet_relay} stopped answering")),
            "{node} says why it moved:\n{log}"
        );
    }
    // `status` says so too, in the table and in JSON.
    let config = lab.dir.path().join("n1.json");
    let config = config.to_str().unwrap();
    let table = lab.exec_ok(&n1, &[wgmesh_bin(), "status", "--config", config]);
    assert!(
        table.contains(&format!("{meet_relay} (down)"))
            && table.contains(&format!("{next_relay} (in use)")),
        "{table}"
    );
    let json = lab.exec(&n1, &[wgmesh_bin(), "status", "--config", config, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let dead_relay = json["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == meet_relay[..])
        .cloned()
        .unwrap_or_default();
    assert_eq!(dead_relay["down"], true, "{json}");

    // A replica joins, at an address the pair prefers to the survivor: both ends read the
    // replica list every 10 s while relayed, so both move to the newcomer and talk again.
    let survivor_url = format!("http://{survivor}:8080");
    let newcomer = (3..=40)
        .filter(|i| ![11, 12].contains(i)) // the nodes'
        .map(|i| format!("198.18.0.{i}"))
        .find(|ip| {
            let urls = vec![survivor_url.clone(), format!("http://{ip}:8080")];
            wgmesh::proto::replicas::meeting_replica(&k1, &k2, &urls) == Some(&urls[1][..])
        })
        .expect("one of 36 addresses wins the pair's rendezvous");
    lab.exec_ok(
        &srv,
        &[
            "ip",
            "addr",
            "add",
            &format!("{newcomer}/24"),
            "dev",
            "eth0",
        ],
    );
    start_replica(&mut lab, &srv, &url, ("c", &newcomer), true, "60");
    let joined = std::time::Instant::now();
    let newcomer_relay = format!("{newcomer}:3478");
    lab.eventually(
        Duration::from_secs(30),
        &format!("both ends move to the newcomer's relay {newcomer_relay}"),
        || both_relayed_at(&lab, [&n1, &n2], &newcomer_relay),
    );
    lab.eventually(Duration::from_secs(30), "n1 and n2 ping through it", || {
        lab.ping(&n1, &ips[1]) && lab.ping(&n2, &ips[0])
    });
    eprintln!(
        "a replica joining: both ends moved to it and pinged in {:?}",
        joined.elapsed()
    );
    drop(pg);
}
