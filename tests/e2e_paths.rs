//! Relay first, direct when proven (issue 25), in a small internet of network namespaces
//! (addresses in 198.18.0.0/15) with real wireguard-go and `wgmesh up`: how soon every pair
//! pings whatever the NATs, which pairs end up direct, how much a switch between relay and
//! direct costs, that relayed pairs come back within seconds of a server restart (issue 18),
//! and that a restarted `up` on a flat LAN does not flap (issue 19).
//!
//! Times are printed (`cargo test --test e2e_paths -- --nocapture`) for the README; only the
//! issue's functional deadlines are asserted, with margin.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, iptables, ping and curl; fails (never
//! skips) without them.

mod common;

use common::internet::{Internet, Node, GATEWAY, SERVER};
use common::netns::{Lab, Router};
use std::time::{Duration, Instant};

/// What every agent and server here logs: the path decisions, for a failing run's report.
const DEBUG: &[&str] = &["--log-level", "debug"];

/// The issue's deadline for every pair's first ping after the last `up` (5 s), with margin
/// for this shared machine.
const FIRST_PING: Duration = Duration::from_secs(8);

/// A node's mesh address, once it registered.
fn mesh_ip(lab: &Lab, node: &Node) -> String {
    let mut ip = None;
    lab.eventually(
        Duration::from_secs(30),
        &format!("{} registers", node.name),
        || {
            ip = std::fs::read_to_string(&node.cfg)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|j| j["assignment"]["assigned_ip"].as_str().map(str::to_owned));
            ip.is_some()
        },
    );
    ip.unwrap()
}

/// Pings `ip` from `ns` every 100 ms until the first answer or `limit`; returns how long
/// after `since` the answer came. (`ping` exits at once while there is no route yet, before
/// the agent made its interface: it is started again.)
fn first_ping(ns: &str, ip: &str, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let out = common::netns::run(&[
            "ip", "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.1", "-c", "1", "-w", "1", ip,
        ]);
        if out.status.success() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// For every pair (both directions), the time from `since` until it first pinged, pinging
/// all pairs at once.
fn time_to_first_ping(
    nodes: &[(&Node, String)],
    since: Instant,
    limit: Duration,
) -> Vec<(String, Option<Duration>)> {
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, (a, _)) in nodes.iter().enumerate() {
            for (j, (b, b_ip)) in nodes.iter().enumerate() {
                if i != j {
                    let label = format!("{} -> {}", a.name, b.name);
                    let ns = a.ns.clone();
                    let ip = b_ip.clone();
                    handles.push(scope.spawn(move || (label, first_ping(&ns, &ip, since, limit))));
                }
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Pings `ip` from `ns` every 100 ms for `secs` seconds: (answers, the longest run of
/// unanswered pings between the first and the last answer).
fn ping_gaps(ns: &str, ip: &str, secs: u64) -> (usize, usize) {
    let out = common::netns::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-i",
        "0.1",
        "-w",
        &secs.to_string(),
        ip,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let longest = seqs
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0] + 1) as usize)
        .max()
        .unwrap_or(0);
    (seqs.len(), longest)
}

#[test]
fn four_nats_every_pair_pings_within_seconds_and_working_direct_paths_take_over() {
    let mut net = Internet::new("first", DEBUG);
    net.start_server("server.log", DEBUG);
    let p_ns = net.public_host("p", "198.18.0.5");
    let (_, m_ns) = net.home("m", "198.18.0.21", 21, Router::Masquerade);
    let (_, r_ns) = net.home("r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, u_ns) = net.home("u", "198.18.0.24", 24, Router::UdpOnlyTo(SERVER));
    let p = net.agent("p", &p_ns, &[]);
    let m = net.agent("m", &m_ns, &[]);
    let r = net.agent("r", &r_ns, &[]);
    let u = net.agent("u", &u_ns, &[]);
    let last_up = Instant::now();
    let nodes: Vec<(&Node, String)> = [&p, &m, &r, &u]
        .into_iter()
        .map(|n| (n, mesh_ip(&net.lab, n)))
        .collect();
    // A ping every 100 ms from p to m through the switch from relay to direct.
    let m_ip = nodes[1].1.clone();
    let p_ns2 = p.ns.clone();
    let gaps = std::thread::spawn(move || {
        // From the first answer on (before it, `ping` may find no route yet and exit).
        first_ping(&p_ns2, &m_ip, Instant::now(), Duration::from_secs(30));
        ping_gaps(&p_ns2, &m_ip, 30)
    });
    // And from u to p, whose direct path never works, through all six early probes.
    let p_ip = nodes[0].1.clone();
    let u_ns2 = u.ns.clone();
    let relayed_gaps = std::thread::spawn(move || {
        first_ping(&u_ns2, &p_ip, Instant::now(), Duration::from_secs(30));
        ping_gaps(&u_ns2, &p_ip, 30)
    });
    let firsts = time_to_first_ping(&nodes, last_up, Duration::from_secs(30));
    for (pair, took) in &firsts {
        println!("time to first ping after the last `up`: {pair}: {took:?}");
    }
    for (pair, took) in &firsts {
        assert!(
            took.is_some_and(|t| t <= FIRST_PING),
            "{pair} pinged after {took:?}, more than {FIRST_PING:?} after the last `up`"
        );
    }
    // Direct where a direct path works: to the public node, from behind a port-clashing
    // MASQUERADE and a random-port NAT. Within 30 s (the issue's deadline) plus margin.
    let direct_by = Duration::from_secs(40);
    net.expect_path(&p, &m, "direct", direct_by);
    net.expect_path(&p, &r, "direct", direct_by);
    println!(
        "p-m and p-r direct {:?} after the last `up`",
        last_up.elapsed()
    );
    // The relay where none can: UDP only to the server, or random ports facing a NAT.
    for other in [&p, &m, &r] {
        net.expect_path(&u, other, "relay", Duration::from_secs(10));
    }
    net.expect_path(&m, &r, "relay", Duration::from_secs(10));
    let (relayed_answers, relayed_longest) = relayed_gaps.join().unwrap();
    println!(
        "u -> p (relayed, probed and failing) every 100 ms for 30 s: {relayed_answers} answers, longest gap {relayed_longest} pings"
    );
    assert!(
        relayed_longest <= 10,
        "a failed probe cost {relayed_longest} pings in a row (100 ms apart), not under a second"
    );
    let (answers, longest) = gaps.join().unwrap();
    println!("p -> m every 100 ms for 30 s through the switch: {answers} answers, longest gap {longest} pings");
    assert!(answers > 0, "p never reached m");
    assert!(
        longest <= 10,
        "{longest} pings in a row (100 ms apart) were lost switching p-m from relay to direct"
    );
    // Stays direct.
    std::thread::sleep(Duration::from_secs(10));
    for (a, b) in [(&p, &m), (&p, &r)] {
        assert_eq!(net.path_of(a, b).0, "direct", "{} - {}", a.name, b.name);
        assert_eq!(net.path_of(b, a).0, "direct", "{} - {}", b.name, a.name);
    }
    // The pairs that went direct leave the relay: four relayed pairs stay active there.
    net.lab.eventually(
        Duration::from_secs(60),
        "the relay counts 4 active pairs",
        || net.metric("wgmesh_relay_active_pairs") == 4,
    );
    for n in [&p, &m, &r, &u] {
        assert!(
            net.lab.child(n.agent).try_wait().unwrap().is_none(),
            "{} exited",
            n.name
        );
    }
}

#[test]
fn relayed_pairs_ping_again_within_seconds_of_a_server_restart_idle_or_one_way() {
    let mut net = Internet::new("rst", DEBUG);
    let (mut server, _) = net.start_server("server.log", DEBUG);
    let p_ns = net.public_host("p", "198.18.0.5");
    let (_, r_ns) = net.home("r", "198.18.0.23", 23, Router::RandomPorts);
    let (_, u_ns) = net.home("u", "198.18.0.24", 24, Router::UdpOnlyTo(SERVER));
    let p = net.agent("p", &p_ns, &[]);
    let r = net.agent("r", &r_ns, &[]);
    let u = net.agent("u", &u_ns, &[]);
    let nodes: Vec<(&Node, String)> = [&p, &r, &u]
        .into_iter()
        .map(|n| (n, mesh_ip(&net.lab, n)))
        .collect();
    let firsts = time_to_first_ping(&nodes, Instant::now(), Duration::from_secs(30));
    assert!(firsts.iter().all(|(_, t)| t.is_some()), "{firsts:?}");
    net.expect_path(&u, &p, "relay", Duration::from_secs(20));
    net.expect_path(&u, &r, "relay", Duration::from_secs(20));
    let relayed: Vec<(&Node, String)> = vec![(&u, nodes[2].1.clone()), (&p, nodes[0].1.clone())];
    let relayed_r: Vec<(&Node, String)> = vec![(&u, nodes[2].1.clone()), (&r, nodes[1].1.clone())];

    for round in ["idle", "one-way"] {
        // Idle: nothing sent for a while. One way: u streams datagrams to p's discard port.
        let stream = (round == "one-way").then(|| {
            let script = format!(
                "while true; do echo x > /dev/udp/{}/9; sleep 0.2; done",
                nodes[0].1
            );
            let u_ns = u.ns.clone();
            net.lab.spawn(&u_ns, &["bash", "-c", &script], "stream.log")
        });
        std::thread::sleep(Duration::from_secs(if stream.is_some() { 5 } else { 30 }));
        net.lab.signal(server, "KILL");
        std::thread::sleep(Duration::from_secs(2));
        let (again, back) = net.start_server(&format!("server-{round}.log"), DEBUG);
        server = again;
        let mut took = time_to_first_ping(&relayed, back, Duration::from_secs(30));
        took.extend(time_to_first_ping(
            &relayed_r,
            back,
            Duration::from_secs(30),
        ));
        for (pair, t) in &took {
            println!("{round}: {pair} pings {t:?} after the restarted server listened");
        }
        for (pair, t) in &took {
            assert!(
                t.is_some_and(|t| t <= Duration::from_secs(10)),
                "{round}: {pair} pinged after {t:?}, more than 10 s after the server came back"
            );
        }
        if let Some(stream) = stream {
            net.lab.signal(stream, "KILL");
        }
    }
}

#[test]
fn a_restarted_up_on_a_flat_lan_goes_direct_and_stays_there() {
    let mut net = Internet::new("flat", DEBUG);
    net.start_server("server.log", DEBUG);
    let a_ns = net.public_host("a", "198.18.0.11");
    let b_ns = net.public_host("b", "198.18.0.12");
    let a = net.agent("a", &a_ns, &[]);
    let mut b = net.agent("b", &b_ns, &[]);
    let nodes: Vec<(&Node, String)> = [&a, &b]
        .into_iter()
        .map(|n| (n, mesh_ip(&net.lab, n)))
        .collect();
    let a_ip = nodes[0].1.clone();
    let firsts = time_to_first_ping(&nodes, Instant::now(), Duration::from_secs(30));
    assert!(firsts.iter().all(|(_, t)| t.is_some()), "{firsts:?}");
    net.expect_path(&a, &b, "direct", Duration::from_secs(30));
    // `up` stops (its interface goes) and starts again: a new interface, counters at 0.
    net.lab.signal(b.agent, "TERM");
    let restarted = Instant::now();
    net.restart_agent(&mut b, &[]);
    let b_node = (&b, mesh_ip(&net.lab, &b));
    let took = time_to_first_ping(
        &[(&a, a_ip.clone()), b_node],
        restarted,
        Duration::from_secs(30),
    );
    println!("flat LAN, after the restart: {took:?}");
    net.expect_path(&a, &b, "direct", Duration::from_secs(30));
    let settled = Instant::now();
    // Idle for 75 s (three 25 s keepalives, five times --relay-after): never relayed.
    while settled.elapsed() < Duration::from_secs(75) {
        assert_eq!(
            net.path_of(&a, &b).0,
            "direct",
            "a's view of b after {:?}",
            settled.elapsed()
        );
        assert_eq!(
            net.path_of(&b, &a).0,
            "direct",
            "b's view of a after {:?}",
            settled.elapsed()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let relayed = |log: &str| {
        net.lab
            .log(log)
            .lines()
            .filter(|l| l.contains("through the relay at"))
            .count()
    };
    // Each end went through the relay at most once per start (relay first), never again.
    assert!(
        relayed("a.log") <= 3,
        "a flapped:\n{}",
        net.lab.log("a.log")
    );
    assert!(
        relayed("b.log") <= 3,
        "b flapped:\n{}",
        net.lab.log("b.log")
    );
}

#[test]
fn a_node_whose_network_moves_pings_again_within_seconds_and_goes_direct_again() {
    let mut net = Internet::new("move", DEBUG);
    net.start_server("server.log", DEBUG);
    let p_ns = net.public_host("p", "198.18.0.5");
    let (m_router, m_ns) = net.home("m", "198.18.0.21", 21, Router::Masquerade);
    let (_, u_ns) = net.home("u", "198.18.0.24", 24, Router::UdpOnlyTo(SERVER));
    // Heartbeats every second: the server (and with it the relay) learns a moved node's new
    // address at its next heartbeat.
    let fast = ["--heartbeat-interval", "1"];
    let p = net.agent("p", &p_ns, &fast);
    let m = net.agent("m", &m_ns, &fast);
    let u = net.agent("u", &u_ns, &fast);
    let nodes: Vec<(&Node, String)> = [&p, &m, &u]
        .into_iter()
        .map(|n| (n, mesh_ip(&net.lab, n)))
        .collect();
    let firsts = time_to_first_ping(&nodes, Instant::now(), Duration::from_secs(30));
    assert!(firsts.iter().all(|(_, t)| t.is_some()), "{firsts:?}");
    net.expect_path(&p, &m, "direct", Duration::from_secs(30));
    // m's network moves: its router gets another public address (its NAT mappings go).
    let moved = Instant::now();
    for args in [
        &["ip", "addr", "del", "198.18.0.21/24", "dev", "eth0"][..],
        &["ip", "addr", "add", "198.18.0.31/24", "dev", "eth0"],
        &["ip", "route", "replace", "default", "via", GATEWAY],
    ] {
        net.lab.exec_ok(&m_router, args);
    }
    let took = time_to_first_ping(&nodes, moved, Duration::from_secs(30));
    for (pair, t) in &took {
        println!("after m moved: {pair} pings {t:?} after the move");
    }
    for (pair, t) in &took {
        assert!(
            t.is_some_and(|t| t <= FIRST_PING),
            "{pair} pinged {t:?} after m moved, more than {FIRST_PING:?}"
        );
    }
    net.expect_path(&p, &m, "direct", Duration::from_secs(40));
    let (_, endpoint) = net.path_of(&p, &m);
    assert!(
        endpoint.starts_with("198.18.0.31:"),
        "p sends to m at {endpoint}"
    );
    println!("p-m direct again {:?} after the move", moved.elapsed());
}

/// How long a ping stream may go unanswered when a working direct path dies (a NAT
/// mapping flushed, a middlebox dropping the UDP): the issue asks for about a second
/// without a working path; 5 s is the functional bound, with margin for this machine.
const DIRECT_DEATH_GAP: Duration = Duration::from_secs(5);

#[test]
fn a_direct_path_that_dies_falls_back_to_the_relay_within_seconds_and_returns_when_it_heals() {
    let mut net = Internet::new("death", DEBUG);
    net.start_server("server.log", DEBUG);
    let p_ns = net.public_host("p", "198.18.0.5");
    let (m_router, m_ns) = net.home("m", "198.18.0.21", 21, Router::Masquerade);
    // Probes every 10 s after the early ones: the healed path is found soon after.
    let every = ["--direct-probe-interval", "10"];
    let p = net.agent("p", &p_ns, &every);
    let m = net.agent("m", &m_ns, &every);
    let nodes: Vec<(&Node, String)> = [&p, &m]
        .into_iter()
        .map(|n| (n, mesh_ip(&net.lab, n)))
        .collect();
    let firsts = time_to_first_ping(&nodes, Instant::now(), Duration::from_secs(30));
    assert!(firsts.iter().all(|(_, t)| t.is_some()), "{firsts:?}");
    net.expect_path(&p, &m, "direct", Duration::from_secs(40));
    // A ping every 100 ms each way (so both ends check and fall back at about the same
    // time, their restarted sessions crossing in the relay); 4 s in, m's router starts
    // dropping every UDP datagram between the two public addresses (the relay's path,
    // through the server, is untouched).
    let streams: Vec<_> = [(&p, &m, nodes[1].1.clone()), (&m, &p, nodes[0].1.clone())]
        .into_iter()
        .map(|(from, to, to_ip)| {
            let label = format!("{} -> {}", from.name, to.name);
            let (ns, to) = (from.ns.clone(), to_ip);
            std::thread::spawn(move || (label, ping_gaps(&ns, &to, 30)))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let drops: [[&str; 8]; 2] = [
        ["FORWARD", "-p", "udp", "-s", "198.18.0.5", "-j", "DROP", ""],
        ["FORWARD", "-p", "udp", "-d", "198.18.0.5", "-j", "DROP", ""],
    ];
    for rule in &drops {
        let mut args = vec!["-I"];
        args.extend(rule.iter().copied().filter(|a| !a.is_empty()));
        net.lab.iptables(&m_router, &args);
    }
    net.expect_path(&p, &m, "relay", Duration::from_secs(25));
    for stream in streams {
        let (label, (answers, longest)) = stream.join().unwrap();
        let gap = Duration::from_millis(100 * (longest as u64 + 1));
        println!(
            "direct path dropped, {label} every 100 ms: {answers} answers in 30 s, longest gap {longest} pings (about {gap:?} without a working path)"
        );
        assert!(answers > 0, "{label}: never answered");
        assert!(
            gap < DIRECT_DEATH_GAP,
            "{label}: {longest} pings in a row (100 ms apart) were lost when the direct path died"
        );
    }
    // Relayed now, and pinging.
    assert!(
        net.lab.ping(&p.ns, &nodes[1].1),
        "p cannot ping m on the relay"
    );
    // The path heals: the next probe finds it and the pair goes direct again.
    for rule in &drops {
        let mut args = vec!["-D"];
        args.extend(rule.iter().copied().filter(|a| !a.is_empty()));
        net.lab.iptables(&m_router, &args);
    }
    let healed = Instant::now();
    net.expect_path(&p, &m, "direct", Duration::from_secs(40));
    println!(
        "p-m direct again {:?} after the path healed",
        healed.elapsed()
    );
}
