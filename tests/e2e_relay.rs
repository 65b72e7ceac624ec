//! The relay in a small internet of network namespaces (addresses in 198.18.0.0/15): real
//! wireguard-go peers behind real NAT routers talk through the coordination server's UDP port,
//! strangers get nothing, and the server can be killed and restarted under relayed pairs.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, iptables, ping, curl and socat; fails
//! (never skips) without them.

mod common;

use common::internet::{Internet, Node, SERVER};
use common::netns::{assigned_ip, public_key_of, Lab, Router};
use common::wgmesh_bin;
use std::time::Duration;

const PUBLIC: &str = "198.18.0.5";
const STRANGER: &str = "198.18.0.66";

/// Every agent here: heartbeats and syncs every 2 s.
const FAST: &[&str] = &["--heartbeat-interval", "2", "--sync-interval", "2"];

/// Pings both ways, each side every time (so each keeps sending, as real traffic would).
fn both_ping(lab: &Lab, a: &str, b_ip: &str, b: &str, a_ip: &str) -> bool {
    let there = lab.ping(a, b_ip);
    let back = lab.ping(b, a_ip);
    there && back
}

/// Sends `datagram` from namespace `ns` to the relay and returns whatever came back in 2 s.
fn send_from(lab: &Lab, ns: &str, datagram: &[u8], file: &str) -> Vec<u8> {
    let path = lab.dir.path().join(file);
    std::fs::write(&path, datagram).unwrap();
    let out = lab.exec(
        ns,
        &[
            "socat",
            "-T",
            "2",
            "-t",
            "2",
            &format!("OPEN:{},rdonly!!STDOUT", path.display()),
            &format!("UDP:{SERVER}:3478"),
        ],
    );
    out.stdout
}

#[test]
fn wireguard_go_peers_behind_nats_talk_through_the_relay_with_endpoints_set_by_hand() {
    let mut net = Internet::new("rly", FAST);
    let stranger = net.public_host("x", STRANGER);
    let (_ra, a) = net.home("a", "198.18.0.11", 1, Router::RandomPorts);
    let (_rb, b) = net.home("b", "198.18.0.12", 2, Router::Masquerade);
    let (server, _) = net.start_server("server.log", &[]);
    let (a_cfg, b_cfg) = (net.path("a.json"), net.path("b.json"));
    let a_if = net.lab.ifname("wg", "a");
    let b_if = net.lab.ifname("wg", "b");
    let url = format!("http://{SERVER}:8080");
    let sync = |lab: &Lab, ns: &str, cfg: &str, iface: &str, name: &str| {
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
    sync(&net.lab, &a, &a_cfg, &a_if, "a");
    sync(&net.lab, &b, &b_cfg, &b_if, "b");
    sync(&net.lab, &a, &a_cfg, &a_if, "a");
    let relay = format!("{SERVER}:3478");
    let point_at_relay = |lab: &Lab| {
        lab.exec_ok(
            &a,
            &[
                "wg",
                "set",
                &a_if,
                "peer",
                &public_key_of(&b_cfg).unwrap().to_base64(),
                "endpoint",
                &relay,
            ],
        );
        lab.exec_ok(
            &b,
            &[
                "wg",
                "set",
                &b_if,
                "peer",
                &public_key_of(&a_cfg).unwrap().to_base64(),
                "endpoint",
                &relay,
            ],
        );
    };
    point_at_relay(&net.lab);
    let (a_ip, b_ip) = (assigned_ip(&a_cfg).unwrap(), assigned_ip(&b_cfg).unwrap());
    net.lab.eventually(
        Duration::from_secs(40),
        "a and b ping through the relay",
        || both_ping(&net.lab, &a, &b_ip, &b, &a_ip),
    );
    // Full-size packets too (1392 bytes of ICMP payload fill the 1420-byte tunnel MTU, and
    // their WireGuard messages are no multiple of 16 bytes).
    net.lab.eventually(
        Duration::from_secs(10),
        "a full-MTU ping through the relay",
        || {
            net.lab
                .exec(
                    &a,
                    &[
                        "ping", "-c", "1", "-W", "1", "-s", "1392", "-M", "do", &b_ip,
                    ],
                )
                .status
                .success()
        },
    );
    // The pings went through the relay: nothing else could carry them (a's NAT picks a new
    // random port for every destination), and the relay counted them.
    assert!(net.metric("wgmesh_relay_packets_total{kind=\"data\"}") >= 4);
    assert!(net.metric("wgmesh_relay_packets_total{kind=\"handshake\"}") >= 2);
    // The gauges are recounted once a second.
    net.lab.eventually(
        Duration::from_secs(5),
        "one relayed pair in /metrics",
        || net.metric("wgmesh_relay_pairs") == 1,
    );
    let endpoints = net.lab.exec_ok(&a, &["wg", "show", &a_if, "endpoints"]);
    assert!(endpoints.contains(&relay), "{endpoints}");

    // A stranger's junk and handshake-shaped datagrams (a valid MAC1 for b, a guessable
    // index) get nothing back and reach nobody.
    let forwarded_before = net.metric("wgmesh_relay_packets_total{kind=\"handshake\"}");
    let b_mac1 = wgmesh::proto::wg_wire::Mac1Key::new(&public_key_of(&b_cfg).unwrap());
    let junk: Vec<Vec<u8>> = vec![
        b"\x01\x00\x00\x00 hello relay".to_vec(),
        wgmesh::proto::wg_wire::fake_initiation(&b_mac1, 7, 1).to_vec(),
        wgmesh::proto::wg_wire::fake_transport(1, 4),
        vec![4, 0, 0, 0],
    ];
    for (i, datagram) in junk.iter().enumerate() {
        let back = send_from(&net.lab, &stranger, datagram, &format!("junk{i}.bin"));
        assert!(back.is_empty(), "the relay answered a stranger: {back:?}");
    }
    assert_eq!(
        net.metric("wgmesh_relay_packets_total{kind=\"handshake\"}"),
        forwarded_before
    );
    assert!(net.metric("wgmesh_relay_dropped_total{reason=\"stranger\"}") >= 2);

    // kill -9 and restart: the relay rebuilds its tables from what the peers send.
    net.lab.signal(server, "KILL");
    net.start_server("server2.log", &["--log-level", "debug"]);
    // Both sides have traffic, so both retry their handshake after WireGuard's 15 s.
    net.lab.eventually(
        Duration::from_secs(60),
        "a and b ping through the restarted relay",
        || both_ping(&net.lab, &a, &b_ip, &b, &a_ip),
    );
}

/// Waits until every pair pings both ways.
fn all_ping(net: &Internet, nodes: &[&Node], limit: Duration) {
    let ips: Vec<String> = nodes
        .iter()
        .map(|n| {
            let mut ip = None;
            net.lab
                .eventually(limit, &format!("{} is registered", n.name), || {
                    ip = std::fs::read_to_string(&n.cfg)
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                        .and_then(|j| j["assignment"]["assigned_ip"].as_str().map(str::to_owned));
                    ip.is_some()
                });
            ip.unwrap()
        })
        .collect();
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                net.lab
                    .eventually(limit, &format!("{} pings {}", a.name, b.name), || {
                        net.lab.ping(&a.ns, &ips[j])
                    });
            }
        }
    }
}

/// Asserts the path both ends report for a pair, and that the one that says relay sends
/// to the relay.
fn expect_path(net: &Internet, a: &Node, b: &Node, path: &str, limit: Duration) {
    net.expect_path(a, b, path, limit);
    let relay = format!("{SERVER}:3478");
    // A probe of the direct path (0.3 s) points the endpoint there while the relay
    // carries the traffic: look again after it.
    net.lab.eventually(
        Duration::from_secs(5),
        &format!(
            "{} sends to {} at the relay iff the path is relay",
            a.name, b.name
        ),
        || {
            let (_, endpoint) = net.path_of(a, b);
            (endpoint == relay.as_str()) == (path == "relay")
        },
    );
}

#[test]
fn every_pair_connects_whatever_the_nat_and_status_tells_the_path() {
    let mut net = Internet::new("mix", FAST);
    net.start_server("server.log", &[]);
    let p_ns = net.public_host("p", PUBLIC);
    let (_, m1_ns) = net.home("m1", "198.18.0.21", 21, Router::Masquerade);
    let (_, m2_ns) = net.home("m2", "198.18.0.22", 22, Router::Masquerade);
    let (_, r_ns) = net.home("r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, u_ns) = net.home("u", "198.18.0.24", 24, Router::UdpOnlyTo(SERVER));
    let (_, f_ns) = net.home("f", "198.18.0.25", 25, Router::MasqueradeFirewall);
    let p = net.agent("p", &p_ns, &[]);
    let m1 = net.agent("m1", &m1_ns, &[]);
    let m2 = net.agent("m2", &m2_ns, &[]);
    let r = net.agent("r", &r_ns, &[]);
    let u = net.agent("u", &u_ns, &[]);
    let f = net.agent("f", &f_ns, &[]);
    let all = [&p, &m1, &m2, &r, &u, &f];
    all_ping(&net, &all, Duration::from_secs(90));
    let limit = Duration::from_secs(30);
    // Relayed where no direct path can exist: UDP only to the server, or a NAT that picks a
    // new port per destination on both sides of a pair.
    for other in [&p, &m1, &m2, &r, &f] {
        expect_path(&net, &u, other, "relay", limit);
    }
    for other in [&m1, &m2, &f] {
        expect_path(&net, &r, other, "relay", limit);
    }
    // Direct where one can exist: to a public node, and through a port-preserving NAT.
    for other in [&m1, &m2, &r, &f] {
        expect_path(&net, &p, other, "direct", limit);
    }
    // netcheck says the relay answers, even where only UDP to the server gets out.
    let out = net.lab.exec_ok(
        &u.ns,
        &[wgmesh_bin(), "netcheck", "--config", &u.cfg, "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["relay"]["address"],
        format!("{SERVER}:3478"),
        "{report}"
    );
    assert_eq!(report["relay"]["answers"], true, "{report}");
}

#[test]
fn a_direct_path_that_opens_later_is_taken_and_relayed_pairs_survive_a_server_kill() {
    let mut net = Internet::new("later", FAST);
    let (server, _) = net.start_server("server.log", &[]);
    let p_ns = net.public_host("p", PUBLIC);
    let (u_router, u_ns) = net.home("u", "198.18.0.24", 24, Router::UdpOnlyTo(SERVER));
    let (_, r_ns) = net.home("r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, m_ns) = net.home("m", "198.18.0.21", 21, Router::Masquerade);
    let probe = ["--direct-probe-interval", "20"];
    let p = net.agent("p", &p_ns, &probe);
    let u = net.agent("u", &u_ns, &probe);
    let r = net.agent("r", &r_ns, &probe);
    let m = net.agent("m", &m_ns, &probe);
    all_ping(&net, &[&p, &u, &r, &m], Duration::from_secs(90));
    expect_path(&net, &u, &p, "relay", Duration::from_secs(30));
    expect_path(&net, &r, &m, "relay", Duration::from_secs(30));

    // kill -9: the relay's tables are gone; the agents keep their interfaces, and the
    // restarted relay learns the pairs again from their handshakes.
    net.lab.signal(server, "KILL");
    net.start_server("server2.log", &[]);
    all_ping(&net, &[&p, &u, &r, &m], Duration::from_secs(90));
    expect_path(&net, &r, &m, "relay", Duration::from_secs(30));

    // u's network opens UDP: within a probe interval (20 s) both ends go direct.
    net.lab.exec_ok(&u_router, &["iptables", "-F", "FORWARD"]);
    expect_path(&net, &u, &p, "direct", Duration::from_secs(60));
    all_ping(&net, &[&p, &u], Duration::from_secs(30));
    for n in [&p, &u, &r, &m] {
        assert!(
            net.lab.child(n.agent).try_wait().unwrap().is_none(),
            "{} exited",
            n.name
        );
    }
}

#[test]
fn a_policy_denied_pair_is_not_relayed() {
    let mut net = Internet::new("deny", FAST);
    let policy = net.path("policy.json");
    std::fs::write(&policy, r#"{"allow": []}"#).unwrap();
    net.start_server("server.log", &["--policy", &policy]);
    let (_, a) = net.home("a", "198.18.0.11", 1, Router::RandomPorts);
    let (_, b) = net.home("b", "198.18.0.12", 2, Router::RandomPorts);
    let (a_cfg, b_cfg) = (net.path("a.json"), net.path("b.json"));
    let (a_if, b_if) = (net.lab.ifname("wg", "a"), net.lab.ifname("wg", "b"));
    let url = format!("http://{SERVER}:8080");
    for (ns, cfg, iface, name) in [(&a, &a_cfg, &a_if, "a"), (&b, &b_cfg, &b_if, "b")] {
        net.lab.exec_ok(
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
    }
    // The policy hides them from each other; configure each as the other's peer by hand,
    // through the relay, as a member trying to get around the policy would.
    let relay = format!("{SERVER}:3478");
    for (ns, iface, other_cfg) in [(&a, &a_if, &b_cfg), (&b, &b_if, &a_cfg)] {
        let ip = format!("{}/32", assigned_ip(other_cfg).unwrap());
        net.lab.exec_ok(
            ns,
            &[
                "wg",
                "set",
                iface,
                "peer",
                &public_key_of(other_cfg).unwrap().to_base64(),
                "endpoint",
                &relay,
                "allowed-ips",
                &ip,
                "persistent-keepalive",
                "1",
            ],
        );
    }
    let (a_ip, b_ip) = (assigned_ip(&a_cfg).unwrap(), assigned_ip(&b_cfg).unwrap());
    for _ in 0..12 {
        assert!(
            !both_ping(&net.lab, &a, &b_ip, &b, &a_ip),
            "a policy-denied pair talked"
        );
    }
    let handshakes = net
        .lab
        .exec_ok(&a, &["wg", "show", &a_if, "latest-handshakes"]);
    assert!(handshakes.trim_end().ends_with("\t0"), "{handshakes}");
    assert!(net.metric("wgmesh_relay_dropped_total{reason=\"policy\"}") >= 1);
    assert_eq!(net.metric("wgmesh_relay_packets_total{kind=\"data\"}"), 0);
}
