//! The relay in a small internet of network namespaces (addresses in 198.18.0.0/15): real
//! wireguard-go peers behind real NAT routers talk through the coordination server's UDP port,
//! strangers get nothing, and the server can be killed and restarted under relayed pairs.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, iptables, ping, curl and socat; fails
//! (never skips) without them.

mod common;

use common::netns::{assigned_ip, public_key_of, Lab, Router};
use common::wgmesh_bin;
use std::time::Duration;

const SERVER: &str = "198.18.0.1";
const PUBLIC: &str = "198.18.0.5";
const STRANGER: &str = "198.18.0.66";
const GATEWAY: &str = "198.18.0.254";

/// A home router of this internet (default route via its gateway) with one node behind it.
fn home(lab: &mut Lab, name: &str, public: &str, lan: u8, kind: Router) -> (String, String) {
    lab.home(name, public, lan, kind, Some(GATEWAY))
}

/// The public segment: a gateway, the coordination server's host and a stranger's host.
struct Internet {
    lab: Lab,
    srv: String,
    stranger: String,
}

impl Internet {
    fn new(label: &str) -> Internet {
        let mut lab = Lab::new(label);
        let gw = lab.host("gw", &format!("{GATEWAY}/24"));
        lab.exec_ok(&gw, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let srv = lab.host("srv", &format!("{SERVER}/24"));
        lab.exec_ok(&srv, &["ip", "route", "add", "default", "via", GATEWAY]);
        let stranger = lab.host("x", &format!("{STRANGER}/24"));
        lab.exec_ok(
            &stranger,
            &["ip", "route", "add", "default", "via", GATEWAY],
        );
        Internet { lab, srv, stranger }
    }

    fn path(&self, name: &str) -> String {
        self.lab.dir.path().join(name).display().to_string()
    }

    fn start_server(&mut self, log: &str, extra: &[&str]) -> usize {
        let state = self.path("peers.json");
        let listen = format!("{SERVER}:8080");
        let mut args = vec![
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--state",
            &state,
            "--open",
            "--sweep-interval",
            "1",
        ];
        args.extend_from_slice(extra);
        let srv = self.srv.clone();
        let child = self.lab.spawn(&srv, &args, log);
        self.lab
            .eventually(Duration::from_secs(20), "the server listens", || {
                self.lab.log(log).contains("listening on")
            });
        child
    }

    fn metrics(&self) -> String {
        self.lab.exec_ok(
            &self.srv,
            &["curl", "-sf", &format!("http://{SERVER}:8080/metrics")],
        )
    }

    fn metric(&self, line_start: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
    }
}

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
    let mut net = Internet::new("rly");
    let (_ra, a) = home(&mut net.lab, "a", "198.18.0.11", 1, Router::RandomPorts);
    let (_rb, b) = home(&mut net.lab, "b", "198.18.0.12", 2, Router::Masquerade);
    let server = net.start_server("server.log", &[]);
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
        let back = send_from(&net.lab, &net.stranger, datagram, &format!("junk{i}.bin"));
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

/// A node running `wgmesh up` in namespace `ns`.
struct Node {
    name: &'static str,
    ns: String,
    cfg: String,
    agent: usize,
}

impl Internet {
    /// A node on the public segment itself, with no NAT in front of it.
    fn public_host(&mut self, name: &str, ip: &str) -> String {
        let ns = self.lab.host(name, &format!("{ip}/24"));
        self.lab
            .exec_ok(&ns, &["ip", "route", "add", "default", "via", GATEWAY]);
        ns
    }

    /// Starts `wgmesh up` for `name` in `ns`.
    fn agent(&mut self, name: &'static str, ns: &str, extra: &[&str]) -> Node {
        let cfg = self.path(&format!("{name}.json"));
        let iface = self.lab.ifname("wg", name);
        let url = format!("http://{SERVER}:8080");
        let mut args = vec![
            wgmesh_bin(),
            "up",
            "--server",
            &url,
            "--config",
            &cfg,
            "--interface",
            &iface,
            "--hostname",
            name,
            "--heartbeat-interval",
            "2",
            "--sync-interval",
            "2",
        ];
        args.extend_from_slice(extra);
        let agent = self.lab.spawn(ns, &args, &format!("{name}.log"));
        Node {
            name,
            ns: ns.to_owned(),
            cfg,
            agent,
        }
    }

    /// `status --json` of `from`'s view of `to`: (path, endpoint).
    fn path_of(&self, from: &Node, to: &Node) -> (serde_json::Value, serde_json::Value) {
        let out = self.lab.exec(
            &from.ns,
            &[wgmesh_bin(), "status", "--config", &from.cfg, "--json"],
        );
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["hostname"] == to.name))
            .map(|p| (p["path"].clone(), p["endpoint"].clone()))
            .unwrap_or((serde_json::Value::Null, serde_json::Value::Null))
    }

    /// Waits until every pair pings both ways.
    fn all_ping(&self, nodes: &[&Node], limit: Duration) {
        let ips: Vec<String> = nodes
            .iter()
            .map(|n| {
                let mut ip = None;
                self.lab
                    .eventually(limit, &format!("{} is registered", n.name), || {
                        ip = std::fs::read_to_string(&n.cfg)
                            .ok()
                            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                            .and_then(|j| {
                                j["assignment"]["assigned_ip"].as_str().map(str::to_owned)
                            });
                        ip.is_some()
                    });
                ip.unwrap()
            })
            .collect();
        for (i, a) in nodes.iter().enumerate() {
            for (j, b) in nodes.iter().enumerate() {
                if i != j {
                    self.lab
                        .eventually(limit, &format!("{} pings {}", a.name, b.name), || {
                            self.lab.ping(&a.ns, &ips[j])
                        });
                }
            }
        }
    }

    /// Asserts the path both ends report for a pair.
    fn expect_path(&self, a: &Node, b: &Node, path: &str, limit: Duration) {
        self.lab.eventually(
            limit,
            &format!("{} and {} both report path {path}", a.name, b.name),
            || self.path_of(a, b).0 == path && self.path_of(b, a).0 == path,
        );
        let relay = format!("{SERVER}:3478");
        // A probe of the direct path (0.3 s) points the endpoint there while the relay
        // carries the traffic: look again after it.
        self.lab.eventually(
            Duration::from_secs(5),
            &format!(
                "{} sends to {} at the relay iff the path is relay",
                a.name, b.name
            ),
            || {
                let (_, endpoint) = self.path_of(a, b);
                (endpoint == relay.as_str()) == (path == "relay")
            },
        );
    }
}

#[test]
fn every_pair_connects_whatever_the_nat_and_status_tells_the_path() {
    let mut net = Internet::new("mix");
    net.start_server("server.log", &[]);
    let p_ns = net.public_host("p", PUBLIC);
    let (_, m1_ns) = home(&mut net.lab, "m1", "198.18.0.21", 21, Router::Masquerade);
    let (_, m2_ns) = home(&mut net.lab, "m2", "198.18.0.22", 22, Router::Masquerade);
    let (_, r_ns) = home(&mut net.lab, "r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, u_ns) = home(
        &mut net.lab,
        "u",
        "198.18.0.24",
        24,
        Router::UdpOnlyTo(SERVER),
    );
    let (_, f_ns) = home(
        &mut net.lab,
        "f",
        "198.18.0.25",
        25,
        Router::MasqueradeFirewall,
    );
    let p = net.agent("p", &p_ns, &[]);
    let m1 = net.agent("m1", &m1_ns, &[]);
    let m2 = net.agent("m2", &m2_ns, &[]);
    let r = net.agent("r", &r_ns, &[]);
    let u = net.agent("u", &u_ns, &[]);
    let f = net.agent("f", &f_ns, &[]);
    let all = [&p, &m1, &m2, &r, &u, &f];
    net.all_ping(&all, Duration::from_secs(90));
    let limit = Duration::from_secs(30);
    // Relayed where no direct path can exist: UDP only to the server, or a NAT that picks a
    // new port per destination on both sides of a pair.
    for other in [&p, &m1, &m2, &r, &f] {
        net.expect_path(&u, other, "relay", limit);
    }
    for other in [&m1, &m2, &f] {
        net.expect_path(&r, other, "relay", limit);
    }
    // Direct where one can exist: to a public node, and through a port-preserving NAT.
    for other in [&m1, &m2, &r, &f] {
        net.expect_path(&p, other, "direct", limit);
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
    let mut net = Internet::new("later");
    let server = net.start_server("server.log", &[]);
    let p_ns = net.public_host("p", PUBLIC);
    let (u_router, u_ns) = home(
        &mut net.lab,
        "u",
        "198.18.0.24",
        24,
        Router::UdpOnlyTo(SERVER),
    );
    let (_, r_ns) = home(&mut net.lab, "r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, m_ns) = home(&mut net.lab, "m", "198.18.0.21", 21, Router::Masquerade);
    let probe = ["--direct-probe-interval", "20"];
    let p = net.agent("p", &p_ns, &probe);
    let u = net.agent("u", &u_ns, &probe);
    let r = net.agent("r", &r_ns, &probe);
    let m = net.agent("m", &m_ns, &probe);
    net.all_ping(&[&p, &u, &r, &m], Duration::from_secs(90));
    net.expect_path(&u, &p, "relay", Duration::from_secs(30));
    net.expect_path(&r, &m, "relay", Duration::from_secs(30));

    // kill -9: the relay's tables are gone; the agents keep their interfaces, and the
    // restarted relay learns the pairs again from their handshakes.
    net.lab.signal(server, "KILL");
    net.start_server("server2.log", &[]);
    net.all_ping(&[&p, &u, &r, &m], Duration::from_secs(90));
    net.expect_path(&r, &m, "relay", Duration::from_secs(30));

    // u's network opens UDP: within a probe interval (20 s) both ends go direct.
    net.lab.exec_ok(&u_router, &["iptables", "-F", "FORWARD"]);
    net.expect_path(&u, &p, "direct", Duration::from_secs(60));
    net.all_ping(&[&p, &u], Duration::from_secs(30));
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
    let mut net = Internet::new("deny");
    let policy = net.path("policy.json");
    std::fs::write(&policy, r#"{"allow": []}"#).unwrap();
    net.start_server("server.log", &["--policy", &policy]);
    let (_, a) = home(&mut net.lab, "a", "198.18.0.11", 1, Router::RandomPorts);
    let (_, b) = home(&mut net.lab, "b", "198.18.0.12", 2, Router::RandomPorts);
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
