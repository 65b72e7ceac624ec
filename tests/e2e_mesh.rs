//! End to end in network namespaces with real userspace WireGuard (wireguard-go): a server
//! and nodes brought up with `wgmesh up`, pinging each other over mesh addresses; failure and
//! recovery; `down` leaving nothing behind; `sync` from a timer-like loop; join tokens whose
//! tags meet an access policy that is reloaded without restarting anything.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools and ping; fails (never skips) without.

mod common;

use common::netns::{Lab, MeshNode as Node, FAST_AGENT};
use common::wgmesh_bin;
use std::time::Duration;

const SERVER_IP: &str = "198.18.0.1";

fn wg_peers(lab: &Lab, ns: &str, iface: &str) -> Vec<String> {
    let out = lab.exec(ns, &["wg", "show", iface, "peers"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn up(lab: &mut Lab, n: &Node, token: &str) -> usize {
    let server = format!("http://{SERVER_IP}:8080");
    let flags = FAST_AGENT;
    let env = [format!("WGMESH_TOKEN={token}")];
    lab.spawn_up(
        n,
        &server,
        &n.name,
        &env,
        &flags,
        &format!("{}.log", n.name),
    )
}

/// Starts a coordination server in `ns` on SERVER_IP:8080 with `extra` flags.
fn start_server_with(lab: &mut Lab, ns: &str, state: &str, log: &str, extra: &[&str]) -> usize {
    let listen = format!("{SERVER_IP}:8080");
    let mut args = vec![
        wgmesh_bin(),
        "server",
        "--listen",
        &listen,
        "--state",
        state,
    ];
    args.extend_from_slice(extra);
    lab.spawn(ns, &args, log)
}

/// A server that notices a silent peer within a few seconds.
fn start_server(lab: &mut Lab, ns: &str, state: &str, log: &str) -> usize {
    start_server_with(
        lab,
        ns,
        state,
        log,
        &["--heartbeat-timeout", "3", "--sweep-interval", "1"],
    )
}

fn links(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "-o", "link", "show"])
}

/// IPv4 routes of every table plus the policy rules (IPv6 link-local routes come and go
/// with address autoconfiguration, independently of wgmesh).
fn routes(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "-4", "route", "show", "table", "all"])
        + &lab.exec_ok(ns, &["ip", "-4", "rule"])
}

#[test]
fn nodes_brought_up_with_wgmesh_up_form_a_full_mesh_and_recover() {
    let mut lab = Lab::new("mesh");
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let server = start_server(&mut lab, &server_ns, &state, "server.log");
    // One token for exactly three machines: n3's restart re-registers a known key, which
    // needs no token and must not use one up.
    let token = lab.create_token(
        &server_ns,
        &format!("http://{SERVER_IP}:8080"),
        &["--uses", "3"],
    );
    let nodes = [
        lab.mesh_node("n1", "198.18.0.11/24"),
        lab.mesh_node("n2", "198.18.0.12/24"),
        lab.mesh_node("n3", "198.18.0.13/24"),
    ];
    // Record each node's pristine network state to compare after `down`.
    let pristine: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (links(&lab, &n.ns), routes(&lab, &n.ns)))
        .collect();
    let agents: Vec<usize> = nodes.iter().map(|n| up(&mut lab, n, &token)).collect();

    // Every node ends up with the other two as WireGuard peers.
    for n in &nodes {
        lab.eventually(
            Duration::from_secs(30),
            &format!("{} has 2 peers", n.name),
            || wg_peers(&lab, &n.ns, &n.iface).len() == 2,
        );
    }
    // Every pair pings over mesh addresses.
    let ips: Vec<String> = nodes.iter().map(|n| lab.mesh_ip(&n.name)).collect();
    for (i, a) in nodes.iter().enumerate() {
        for (j, _) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            lab.eventually(
                Duration::from_secs(15),
                &format!("{} pings {}", a.name, ips[j]),
                || lab.ping(&a.ns, &ips[j]),
            );
        }
    }
    // The coordination server dies: the mesh keeps working, agents warn and retry, and carry
    // on when it comes back on the same state.
    lab.child(server).kill().unwrap();
    lab.child(server).wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.ping(&nodes[0].ns, &ips[1]),
        "the mesh survives the server"
    );
    assert!(
        lab.log("n1.log").contains("retrying"),
        "{}",
        lab.log("n1.log")
    );
    let server = start_server(&mut lab, &server_ns, &state, "server2.log");
    lab.eventually(
        Duration::from_secs(15),
        "agents talk to the restarted server",
        || {
            lab.log("server2.log").contains("listening on")
                && wg_peers(&lab, &nodes[0].ns, &nodes[0].iface).len() == 2
        },
    );
    let _ = server;

    // The peers' endpoints are their underlay addresses, as the server observed them.
    let n3_key = lab.key_of("n3").to_base64();
    let endpoints = lab.exec_ok(&nodes[0].ns, &["wg", "show", &nodes[0].iface, "endpoints"]);
    assert!(
        endpoints.contains(&format!("{n3_key}\t198.18.0.13:51820")),
        "{endpoints}"
    );

    // Kill n3's agent hard: no teardown, no heartbeats. It goes offline and leaves the others.
    lab.child(agents[2]).kill().unwrap();
    lab.child(agents[2]).wait().unwrap();
    for n in &nodes[..2] {
        lab.eventually(
            Duration::from_secs(20),
            &format!("{} drops n3", n.name),
            || !wg_peers(&lab, &n.ns, &n.iface).contains(&n3_key),
        );
    }
    assert!(
        lab.log("server2.log").contains("timed out"),
        "{}",
        lab.log("server2.log")
    );

    // Restarted, n3 keeps its address and is reachable again.
    let n3_again = up(&mut lab, &nodes[2], &token);
    lab.eventually(Duration::from_secs(20), "n1 re-adds n3", || {
        wg_peers(&lab, &nodes[0].ns, &nodes[0].iface).contains(&n3_key)
    });
    assert_eq!(lab.mesh_ip("n3"), ips[2], "same address after restart");
    lab.eventually(Duration::from_secs(15), "n1 pings n3 again", || {
        lab.ping(&nodes[0].ns, &ips[2])
    });
    lab.eventually(Duration::from_secs(15), "n3 pings n2 again", || {
        lab.ping(&nodes[2].ns, &ips[1])
    });

    // SIGTERM: `up` removes what it set up and exits 0.
    assert_eq!(
        lab.signal(agents[0], "TERM"),
        Some(0),
        "{}",
        lab.log("n1.log")
    );
    assert_eq!(
        links(&lab, &nodes[0].ns),
        pristine[0].0,
        "n1's links after SIGTERM"
    );
    assert_eq!(
        routes(&lab, &nodes[0].ns),
        pristine[0].1,
        "n1's routes after SIGTERM"
    );

    // `wgmesh down` after a hard kill removes the interface the dead agent left.
    lab.child(n3_again).kill().unwrap();
    lab.child(n3_again).wait().unwrap();
    assert!(
        links(&lab, &nodes[2].ns).contains(&nodes[2].iface),
        "kill -9 leaves the interface"
    );
    lab.exec_ok(
        &nodes[2].ns,
        &[wgmesh_bin(), "down", "--config", &nodes[2].config],
    );
    lab.eventually(Duration::from_secs(5), "n3 is pristine after down", || {
        links(&lab, &nodes[2].ns) == pristine[2].0 && routes(&lab, &nodes[2].ns) == pristine[2].1
    });
    let sock = format!("/var/run/wireguard/{}.sock", nodes[2].iface);
    lab.eventually(Duration::from_secs(5), "wireguard-go exits", || {
        !std::path::Path::new(&sock).exists()
    });
    assert_eq!(lab.signal(agents[1], "TERM"), Some(0));
}

#[test]
fn sync_from_a_timer_loop_converges_the_same_mesh() {
    let mut lab = Lab::new("sync");
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    start_server_with(&mut lab, &server_ns, &state, "server.log", &["--open"]);
    let nodes = [
        lab.mesh_node("s1", "198.18.0.21/24"),
        lab.mesh_node("s2", "198.18.0.22/24"),
        lab.mesh_node("s3", "198.18.0.23/24"),
    ];
    let server = format!("http://{SERVER_IP}:8080");
    // A one-shot sync does not retry, so start only once the server listens.
    lab.eventually(Duration::from_secs(20), "the server listens", || {
        lab.log("server.log").contains("listening on")
    });
    // Like a systemd timer: run `wgmesh sync` on every node, round after round, until a
    // whole round has nothing to do (and the next one neither). A new peer starts on the
    // relay, the first run that sees its session makes a direct attempt, and on this flat
    // LAN that attempt is proven: a few rounds.
    let sync = |n: &Node| -> serde_json::Value {
        let out = lab.exec(
            &n.ns,
            &[
                wgmesh_bin(),
                "sync",
                "--server",
                &server,
                "--config",
                &n.config,
                "--interface",
                &n.iface,
                "--hostname",
                &n.name,
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sync --json prints JSON")
    };
    let quiet = |summary: &serde_json::Value| {
        summary["created_interface"] == false
            && summary["peers"] == 2
            && ["added", "removed", "updated"]
                .iter()
                .all(|k| summary[k] == serde_json::json!([]))
    };
    let mut rounds: Vec<Vec<serde_json::Value>> = Vec::new();
    while rounds.last().is_none_or(|r| !r.iter().all(quiet)) {
        assert!(
            rounds.len() < 8,
            "8 rounds of sync and still changing: {:#?}",
            rounds.last()
        );
        rounds.push(nodes.iter().map(sync).collect());
    }
    // First round: s1 created its interface and saw nobody yet.
    assert_eq!(rounds[0][0]["created_interface"], true);
    assert_eq!(rounds[0][0]["peers"], 0);
    let again: Vec<serde_json::Value> = nodes.iter().map(sync).collect();
    assert!(
        again.iter().all(quiet),
        "a converged mesh stays put: {again:#?}"
    );
    eprintln!("a timer-driven mesh converged in {} rounds", rounds.len());
    let ips: Vec<String> = nodes.iter().map(|n| lab.mesh_ip(&n.name)).collect();
    for (i, a) in nodes.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate().filter(|(j, _)| *j != i) {
            lab.eventually(
                Duration::from_secs(15),
                &format!("{} pings node {j}", a.name),
                || lab.ping(&a.ns, ip),
            );
        }
    }
    // The mesh carries IPv6 too: each node's IPv6 mesh address derives from the server's key
    // and its IPv4 mesh address.
    let server_key = std::fs::read_to_string(lab.dir.path().join("server.key")).unwrap();
    let prefix6 = wgmesh::proto::mesh6::prefix(
        &wgmesh::keys::PrivateKey::from_base64(&server_key)
            .unwrap()
            .public_key(),
    );
    let s2_v6 = wgmesh::proto::mesh6::address(prefix6, ips[1].parse().unwrap()).to_string();
    lab.eventually(Duration::from_secs(15), "s1 pings s2 over IPv6", || {
        lab.ping(&nodes[0].ns, &s2_v6)
    });
    // status shows the peers with their hostnames, handshakes and traffic.
    let out = lab.exec_ok(
        &nodes[0].ns,
        &[
            wgmesh_bin(),
            "status",
            "--config",
            &nodes[0].config,
            "--json",
        ],
    );
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["up"], true);
    assert_eq!(status["address"].as_str(), Some(ips[0].as_str()));
    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert!(
            ["s2", "s3"].contains(&p["hostname"].as_str().unwrap()),
            "{p}"
        );
        assert_eq!(p["online"], true, "{p}");
        assert!(p["rx_bytes"].as_u64().unwrap() > 0, "{p}");
    }
    // export gives a wg-quick config that real wg-quick accepts and brings up: s1 leaves
    // wgmesh and keeps reaching s2 through the exported configuration alone.
    let quick_if = lab.ifname("wq", "s1");
    let conf = lab.dir.path().join(format!("{quick_if}.conf"));
    let exported = lab.exec_ok(
        &nodes[0].ns,
        &[wgmesh_bin(), "export", "--config", &nodes[0].config],
    );
    assert!(
        exported.contains("[Interface]") && exported.contains(&format!("Address = {}/32", ips[0])),
        "{exported}"
    );
    assert_eq!(exported.matches("[Peer]").count(), 2, "{exported}");
    std::fs::write(&conf, &exported).unwrap();
    std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let conf = conf.display().to_string();
    let stripped = lab.exec_ok(&nodes[0].ns, &["wg-quick", "strip", &conf]);
    assert!(
        stripped.contains("PrivateKey") && !stripped.contains("Address"),
        "{stripped}"
    );
    lab.exec_ok(
        &nodes[0].ns,
        &[wgmesh_bin(), "down", "--config", &nodes[0].config],
    );
    lab.exec_ok(&nodes[0].ns, &["wg-quick", "up", &conf]);
    lab.eventually(
        Duration::from_secs(15),
        "s1 pings s2 through the wg-quick interface",
        || lab.ping(&nodes[0].ns, &ips[1]),
    );
    lab.exec_ok(&nodes[0].ns, &["wg-quick", "down", &conf]);

    for n in &nodes {
        lab.exec_ok(&n.ns, &[wgmesh_bin(), "down", "--config", &n.config]);
        assert!(!links(&lab, &n.ns).contains(&n.iface));
    }
}

#[test]
fn a_policy_denying_a_b_keeps_them_apart_until_a_reload_allows_it() {
    let mut lab = Lab::new("policy");
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let policy = lab.dir.path().join("policy.json");
    let deny_ab = r#"{"allow": [{"from": ["tag:a", "tag:b"], "to": ["tag:c"]}]}"#;
    std::fs::write(&policy, deny_ab).unwrap();
    let policy_arg = policy.display().to_string();
    start_server_with(
        &mut lab,
        &server_ns,
        &state,
        "server.log",
        &["--policy", &policy_arg],
    );
    let tokens: Vec<String> = ["tag:a", "tag:b", "tag:c"]
        .iter()
        .map(|tag| {
            lab.create_token(
                &server_ns,
                &format!("http://{SERVER_IP}:8080"),
                &["--uses", "1", "--tag", tag],
            )
        })
        .collect();
    let nodes = [
        lab.mesh_node("pa", "198.18.0.31/24"),
        lab.mesh_node("pb", "198.18.0.32/24"),
        lab.mesh_node("pc", "198.18.0.33/24"),
    ];
    let agents: Vec<usize> = nodes
        .iter()
        .zip(&tokens)
        .map(|(n, t)| up(&mut lab, n, t))
        .collect();
    // C sees both; A and B see only C.
    lab.eventually(Duration::from_secs(30), "pc has 2 peers", || {
        wg_peers(&lab, &nodes[2].ns, &nodes[2].iface).len() == 2
    });
    for n in &nodes[..2] {
        lab.eventually(
            Duration::from_secs(30),
            &format!("{} has 1 peer", n.name),
            || wg_peers(&lab, &n.ns, &n.iface).len() == 1,
        );
    }
    let ips: Vec<String> = nodes.iter().map(|n| lab.mesh_ip(&n.name)).collect();
    for (from, to) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        lab.eventually(
            Duration::from_secs(30),
            &format!("{} pings {}", nodes[from].name, nodes[to].name),
            || lab.ping(&nodes[from].ns, &ips[to]),
        );
    }
    let b_key = lab.key_of("pb").to_base64();
    assert!(!wg_peers(&lab, &nodes[0].ns, &nodes[0].iface).contains(&b_key));
    assert!(
        !lab.ping(&nodes[0].ns, &ips[1]),
        "pa reached pb despite the policy"
    );
    assert!(
        !lab.ping(&nodes[1].ns, &ips[0]),
        "pb reached pa despite the policy"
    );

    // A broken policy file is refused and the old policy stays in force.
    std::fs::write(&policy, "{\"allow\": [").unwrap();
    let server = format!("http://{SERVER_IP}:8080");
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let reload = [
        wgmesh_bin(),
        "policy",
        "reload",
        "--server",
        &server,
        "--admin-secret-file",
        &secret,
    ];
    let out = lab.exec(&server_ns, &reload);
    assert_eq!(out.status.code(), Some(3), "a bad policy must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("old policy"), "{stderr}");

    // Allow A-B and reload: without restarting the server or the agents, A and B meet.
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a", "tag:b"], "to": ["tag:c"]},
                     {"from": ["tag:a"], "to": ["tag:b"]}]}"#,
    )
    .unwrap();
    let out = lab.exec_ok(&server_ns, &reload);
    assert!(out.contains("policy changed"), "{out}");
    lab.eventually(Duration::from_secs(30), "pa pings pb", || {
        lab.ping(&nodes[0].ns, &ips[1])
    });
    lab.eventually(Duration::from_secs(30), "pb pings pa", || {
        lab.ping(&nodes[1].ns, &ips[0])
    });
    let audit = std::fs::read_to_string(lab.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"policy_change\""), "{audit}");
    for agent in agents {
        assert_eq!(lab.signal(agent, "TERM"), Some(0));
    }
}
