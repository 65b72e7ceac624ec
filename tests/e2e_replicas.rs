//! End to end with replicas (issue 11): two `wgmesh server` replicas sharing one PostgreSQL
//! cluster in a server namespace, nodes in their own namespaces running `wgmesh up` with
//! both servers and real userspace WireGuard (wireguard-go). The replica the agents use is
//! killed with SIGKILL: they keep pinging each other, and a node that joins afterwards
//! (naming the dead replica first) reaches them all.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, ping and PostgreSQL 15; fails (never
//! skips) without.

mod common;

use common::netns::Lab;
use common::postgres::PgCluster;
use common::wgmesh_bin;
use std::time::Duration;

const A_IP: &str = "198.18.0.1";
const B_IP: &str = "198.18.0.2";

fn mesh_ip(lab: &Lab, node: &str) -> String {
    let text = std::fs::read_to_string(lab.dir.path().join(format!("{node}.json"))).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["assignment"]["assigned_ip"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn up(lab: &mut Lab, name: &str, ns: &str) -> usize {
    let config = lab.dir.path().join(format!("{name}.json"));
    let iface = lab.ifname("wg", name);
    let (a, b) = (format!("http://{A_IP}:8080"), format!("http://{B_IP}:8080"));
    lab.spawn(
        ns,
        &[
            wgmesh_bin(),
            "up",
            "--server",
            &a,
            "--server",
            &b,
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &iface,
            "--hostname",
            name,
            "--heartbeat-interval",
            "1",
            "--sync-interval",
            "1",
            "--log-level",
            "debug",
        ],
        &format!("{name}.log"),
    )
}

#[test]
fn agents_given_both_replicas_keep_their_mesh_and_admit_a_new_node_after_one_dies() {
    let mut lab = Lab::new("repl");
    let srv = lab.host("srv", &format!("{A_IP}/24"));
    lab.exec_ok(
        &srv,
        &["ip", "addr", "add", &format!("{B_IP}/24"), "dev", "eth0"],
    );
    // Declared after the lab, so it is stopped before the lab's namespaces go away.
    let pg = PgCluster::start_in_netns(&srv);
    let url = pg.url();
    let mut replicas = Vec::new();
    for (name, ip) in [("a", A_IP), ("b", B_IP)] {
        let state = lab.dir.path().join(name).join("peers.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        let listen = format!("{ip}:8080");
        replicas.push(lab.spawn(
            &srv,
            &[
                "env",
                &format!("WGMESH_STORE={url}"),
                wgmesh_bin(),
                "server",
                "--open",
                "--listen",
                &listen,
                "--udp-listen",
                "off",
                "--state",
                state.to_str().unwrap(),
                "--heartbeat-timeout",
                "5",
                "--sweep-interval",
                "1",
            ],
            &format!("replica-{name}.log"),
        ));
    }
    for name in ["a", "b"] {
        lab.eventually(Duration::from_secs(20), "the replica listens", || {
            lab.log(&format!("replica-{name}.log"))
                .contains("listening on")
        });
    }
    let n1 = lab.host("n1", "198.18.0.11/24");
    let n2 = lab.host("n2", "198.18.0.12/24");
    up(&mut lab, "n1", &n1);
    up(&mut lab, "n2", &n2);
    let mut ips = Vec::new();
    for name in ["n1", "n2"] {
        lab.eventually(
            Duration::from_secs(30),
            &format!("{name} registers"),
            || {
                std::fs::read_to_string(lab.dir.path().join(format!("{name}.json")))
                    .is_ok_and(|t| t.contains("assigned_ip"))
            },
        );
        ips.push(mesh_ip(&lab, name));
    }
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
    let ip3 = mesh_ip(&lab, "n3");
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
