//! Live sync end to end in network namespaces with real tunnels (wireguard-go): agents with
//! the default 60 s sync timer see joins and departures within seconds,
//! through their long-poll, not their sync timer; a node stopping on purpose (SIGTERM to
//! `up`, or `down`) leaves every other node at once; a silent one at the heartbeat timeout.
//!
//! The bounds are generous for a shared machine and still far below the timers they prove
//! are not involved; `just bench` measures the real figures.
//! Needs root, iproute2, wireguard-go, wireguard-tools and ping; fails (never skips) without.

mod common;

use common::netns::{Lab, MeshNode as Node};
use common::wgmesh_bin;
use std::time::{Duration, Instant};

const SERVER_IP: &str = "198.18.0.1";

/// Well under the 60 s sync interval and the 120 s default heartbeat timeout.
const LIVE: Duration = Duration::from_secs(10);

fn up(lab: &mut Lab, n: &Node) -> usize {
    let server = format!("http://{SERVER_IP}:8080");
    // Heartbeats under the lab server's 4 s timeout; the sync timer keeps its 60 s.
    let flags = ["--heartbeat-interval", "1", "--log-level", "debug"];
    lab.spawn_up(n, &server, &n.name, &[], &flags, &format!("{}.log", n.name))
}

fn wg_peers(lab: &Lab, n: &Node) -> Vec<String> {
    let out = lab.exec(&n.ns, &["wg", "show", &n.iface, "peers"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn joins_and_departures_reach_every_node_within_seconds_not_at_the_sync_timer() {
    let mut lab = Lab::new("live");
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
            "--heartbeat-timeout",
            "4",
        ],
        "server.log",
    );
    lab.eventually(Duration::from_secs(20), "the server listens", || {
        lab.log("server.log").contains("listening on")
    });
    let nodes: Vec<Node> = (0..4)
        .map(|i| lab.mesh_node(&format!("l{i}"), &format!("198.18.0.{}/24", 11 + i)))
        .collect();
    let mut agents: Vec<usize> = nodes[..3].iter().map(|n| up(&mut lab, n)).collect();
    for n in &nodes[..3] {
        lab.eventually(
            Duration::from_secs(30),
            &format!("{} has 2 peers", n.name),
            || wg_peers(&lab, n).len() == 2,
        );
    }

    // A fourth node joins: everyone has it within seconds, long before any sync timer.
    let joined = Instant::now();
    agents.push(up(&mut lab, &nodes[3]));
    lab.eventually(LIVE, "l3 has a key", || nodes[3].public_key().is_some());
    let l3 = nodes[3].public_key().unwrap().to_base64();
    for n in &nodes[..3] {
        lab.eventually(LIVE, &format!("{} adds l3", n.name), || {
            wg_peers(&lab, n).contains(&l3)
        });
    }
    assert!(joined.elapsed() < LIVE, "join took {:?}", joined.elapsed());

    // SIGTERM to l0's `up`: it says it goes offline; the others drop it at once.
    let l0 = nodes[0].public_key().unwrap().to_base64();
    assert_eq!(
        lab.signal(agents[0], "TERM"),
        Some(0),
        "{}",
        lab.log("l0.log")
    );
    assert!(
        lab.log("l0.log").contains("going offline"),
        "{}",
        lab.log("l0.log")
    );
    for n in &nodes[1..] {
        lab.eventually(LIVE, &format!("{} drops l0", n.name), || {
            !wg_peers(&lab, n).contains(&l0)
        });
    }
    assert!(
        lab.log("server.log").contains("went offline on purpose"),
        "{}",
        lab.log("server.log")
    );

    // l1 dies hard; `wgmesh down` on it still tells the server, so the others drop it now.
    let l1 = nodes[1].public_key().unwrap().to_base64();
    lab.child(agents[1]).kill().unwrap();
    lab.child(agents[1]).wait().unwrap();
    lab.exec_ok(
        &nodes[1].ns,
        &[wgmesh_bin(), "down", "--config", &nodes[1].config],
    );
    for n in &nodes[2..] {
        lab.eventually(LIVE, &format!("{} drops l1", n.name), || {
            !wg_peers(&lab, n).contains(&l1)
        });
    }

    // l2 dies silently: dropped at the heartbeat timeout (4 s here) plus the sweep.
    let l2 = nodes[2].public_key().unwrap().to_base64();
    lab.child(agents[2]).kill().unwrap();
    lab.child(agents[2]).wait().unwrap();
    lab.eventually(LIVE, "l3 drops the silent l2", || {
        !wg_peers(&lab, &nodes[3]).contains(&l2)
    });

    // l0 comes back with the same address and everyone left sees it again.
    agents[0] = up(&mut lab, &nodes[0]);
    lab.eventually(LIVE, "l3 re-adds l0", || {
        wg_peers(&lab, &nodes[3]).contains(&l0)
    });
    assert_eq!(lab.signal(agents[0], "TERM"), Some(0));
    assert_eq!(lab.signal(agents[3], "TERM"), Some(0));
}
