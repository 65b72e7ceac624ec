//! End to end in network namespaces (issue 12): every node running `wgmesh up` answers
//! `NAME.mesh` on its own mesh addresses, asked with real `dig` and used by real `ping`
//! through a namespace resolv.conf. Collisions get the same `-2` on every node, names follow
//! a node that re-registers, a peer hidden by the policy does not resolve, and stopping `up`
//! leaves nothing behind (no listener, no hosts block, no interface).
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, ping and dig; fails (never skips)
//! without.

mod common;

use common::netns::{run, Lab, MeshNode as Node, NetnsEtc, FAST_AGENT};
use common::wgmesh_bin;
use std::time::Duration;

const SERVER_IP: &str = "198.18.0.1";

fn config_of(n: &Node) -> serde_json::Value {
    std::fs::read_to_string(&n.config)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// `wgmesh up` for `n` with `extra` flags; returns the child's index.
fn up(lab: &mut Lab, n: &Node, hostname: &str, token: &str, extra: &[&str], log: &str) -> usize {
    let server = format!("http://{SERVER_IP}:8080");
    let mut flags = FAST_AGENT.to_vec();
    flags.extend_from_slice(extra);
    lab.spawn_up(
        n,
        &server,
        hostname,
        &[format!("WGMESH_TOKEN={token}")],
        &flags,
        log,
    )
}

/// What `dig @server name qtype` says: the status and the answer records' data.
fn dig(lab: &Lab, ns: &str, server: &str, name: &str, qtype: &str) -> (String, Vec<String>) {
    dig_with(lab, ns, server, (name, qtype), &[])
}

/// `dig` with extra flags (`+dnssec`).
fn dig_with(
    lab: &Lab,
    ns: &str,
    server: &str,
    (name, qtype): (&str, &str),
    flags: &[&str],
) -> (String, Vec<String>) {
    let at = format!("@{server}");
    let mut args = vec!["dig", &at, "+time=2", "+tries=1", name, qtype];
    args.extend_from_slice(flags);
    let out = lab.exec(ns, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dig(&text, qtype)
}

/// The status and the `qtype` records' data in dig's output.
fn parse_dig(text: &str, qtype: &str) -> (String, Vec<String>) {
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| format!("no answer ({})", text.trim()));
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 5 && fields[3] == qtype).then(|| fields[4].to_owned())
        })
        .collect();
    (status, answers)
}

/// Waits until `dig` from `ns` gives `status` and `answers`.
fn expect_dig(
    lab: &Lab,
    ns: &str,
    server: &str,
    (name, qtype): (&str, &str),
    status: &str,
    answers: &[&str],
) {
    let mut last = (String::new(), Vec::new());
    let what = format!("dig @{server} {name} {qtype} gives {status} {answers:?}");
    lab.eventually(Duration::from_secs(20), &what, || {
        last = dig(lab, ns, server, name, qtype);
        last.0 == status && last.1 == answers
    });
}

/// UDP listeners on port 53 in a namespace.
fn dns_listeners(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ss", "-H", "-l", "-n", "-u", "sport", "= :53"])
}

fn links(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "-o", "link", "show"])
}

fn routes(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "-4", "route", "show", "table", "all"])
        + &lab.exec_ok(ns, &["ip", "-4", "rule"])
}

#[test]
fn mesh_names_resolve_on_every_node_follow_peers_and_leave_nothing_behind() {
    let found = run(&["sh", "-c", "command -v dig"]).status.success();
    assert!(found, "dig is missing: apt-get install dnsutils");
    let mut lab = Lab::new("dns");
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    // dev machines see each other; the one tagged secret sees (and is seen by) nobody.
    let policy = lab.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:dev"]}]}"#,
    )
    .unwrap();
    let policy = policy.display().to_string();
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
            "--policy",
            &policy,
            "--heartbeat-timeout",
            "3",
            "--sweep-interval",
            "1",
        ],
        "server.log",
    );
    let dev = lab.create_token(
        &server_ns,
        &format!("http://{SERVER_IP}:8080"),
        &["--uses", "5", "--tag", "tag:dev"],
    );
    let secret = lab.create_token(
        &server_ns,
        &format!("http://{SERVER_IP}:8080"),
        &["--uses", "5", "--tag", "tag:secret"],
    );
    let a = lab.mesh_node("da", "198.18.0.41/24");
    let b = lab.mesh_node("db", "198.18.0.42/24");
    // c asks for b's name too: the server makes it host-b-2 for everyone.
    let c = lab.mesh_node("dc", "198.18.0.43/24");
    let h = lab.mesh_node("dh", "198.18.0.44/24");
    let pristine = (links(&lab, &a.ns), routes(&lab, &a.ns));
    // c keeps the names in a hosts file of its own (--dns-hosts): the namespace has no
    // systemd-resolved, and the machine's /etc/hosts is not ours to touch in a test.
    let c_hosts = lab.dir.path().join("dc.hosts");
    let c_hosts_original = "127.0.0.1\tlocalhost\n# the test's own line\n";
    std::fs::write(&c_hosts, c_hosts_original).unwrap();
    let c_hosts_arg = c_hosts.display().to_string();
    let c_flags = ["--dns-hosts", "--hosts-file", c_hosts_arg.as_str()];

    let agent_a = up(&mut lab, &a, "host-a", &dev, &[], "da.log");
    let agent_b = up(&mut lab, &b, "host-b", &dev, &[], "db.log");
    // c registers after b, so b keeps the plain name.
    lab.eventually(Duration::from_secs(30), "b is registered", || {
        b.mesh_ip().is_some()
    });
    let agent_c = up(&mut lab, &c, "host-b", &dev, &c_flags, "dc.log");
    let _agent_h = up(&mut lab, &h, "host-h", &secret, &[], "dh.log");
    for n in [&a, &b, &c, &h] {
        lab.eventually(Duration::from_secs(30), "every node is registered", || {
            n.mesh_ip().is_some()
        });
    }
    let (ip_a, ip_b, ip_c, ip_h) = (
        a.mesh_ip().unwrap_or_default(),
        b.mesh_ip().unwrap_or_default(),
        c.mesh_ip().unwrap_or_default(),
        h.mesh_ip().unwrap_or_default(),
    );
    let server_key = std::fs::read_to_string(lab.dir.path().join("server.key")).unwrap();
    let prefix6 = wgmesh::proto::mesh6::prefix(
        &wgmesh::keys::PrivateKey::from_base64(&server_key)
            .unwrap()
            .public_key(),
    );
    let v6 = |ip: &str| wgmesh::proto::mesh6::address(prefix6, ip.parse().unwrap()).to_string();

    // A and AAAA of a peer, on the resolver's IPv4 and IPv6 addresses; itself too.
    expect_dig(
        &lab,
        &a.ns,
        &ip_a,
        ("host-b.mesh", "A"),
        "NOERROR",
        &[&ip_b],
    );
    expect_dig(
        &lab,
        &a.ns,
        &ip_a,
        ("host-b.mesh", "AAAA"),
        "NOERROR",
        &[&v6(&ip_b)],
    );
    expect_dig(
        &lab,
        &a.ns,
        &v6(&ip_a),
        ("HOST-B.mesh", "A"),
        "NOERROR",
        &[&ip_b],
    );
    expect_dig(
        &lab,
        &a.ns,
        &ip_a,
        ("host-a.mesh", "A"),
        "NOERROR",
        &[&ip_a],
    );
    // Unknown mesh names are NXDOMAIN; the rest of the world is refused.
    expect_dig(&lab, &a.ns, &ip_a, ("nobody.mesh", "A"), "NXDOMAIN", &[]);
    expect_dig(&lab, &a.ns, &ip_a, ("example.com", "A"), "REFUSED", &[]);
    // The same with the DO bit (a stub resolver such as systemd-resolved may set it), asked
    // from a peer through the tunnel.
    for (name, status, answers) in [
        ("host-a.mesh", "NOERROR", vec![ip_a.as_str()]),
        ("nobody.mesh", "NXDOMAIN", vec![]),
        ("example.com", "REFUSED", vec![]),
    ] {
        let got = dig_with(&lab, &b.ns, &ip_a, (name, "A"), &["+dnssec"]);
        assert_eq!(
            (got.0.as_str(), got.1),
            (status, answers.iter().map(|s| s.to_string()).collect()),
            "dig +dnssec {name} from b"
        );
    }
    // A LAN neighbour that is no peer, routing to a's mesh address via a's LAN address: its
    // packets reach a (ping answers), its DNS queries get no answer.
    let stranger = lab.host("dn", "198.18.0.45/24");
    lab.exec_ok(
        &stranger,
        &[
            "ip",
            "route",
            "add",
            &format!("{ip_a}/32"),
            "via",
            "198.18.0.41",
        ],
    );
    assert!(
        lab.ping(&stranger, &ip_a),
        "the neighbour reaches a's mesh address"
    );
    let (status, answers) = dig(&lab, &stranger, &ip_a, "host-b.mesh", "A");
    assert!(
        status.starts_with("no answer"),
        "a non-peer got {status} {answers:?}"
    );
    assert!(answers.is_empty());
    expect_dig(
        &lab,
        &b.ns,
        &ip_a,
        ("host-b.mesh", "A"),
        "NOERROR",
        &[&ip_b],
    );
    // The collision gives -2 on every node alike, c included.
    for (n, ip) in [(&a, &ip_a), (&b, &ip_b), (&c, &ip_c)] {
        expect_dig(&lab, &n.ns, ip, ("host-b-2.mesh", "A"), "NOERROR", &[&ip_c]);
    }
    // The policy hides h from a: h's name does not resolve there, though h itself knows it.
    expect_dig(
        &lab,
        &h.ns,
        &ip_h,
        ("host-h.mesh", "A"),
        "NOERROR",
        &[&ip_h],
    );
    expect_dig(&lab, &a.ns, &ip_a, ("host-h.mesh", "A"), "NXDOMAIN", &[]);
    expect_dig(&lab, &h.ns, &ip_h, ("host-a.mesh", "A"), "NXDOMAIN", &[]);

    // With the namespace's resolv.conf pointing at its resolver, plain tools use the names.
    {
        let _etc = NetnsEtc::resolv_conf(&a.ns, &ip_a);
        lab.eventually(Duration::from_secs(20), "a pings host-b.mesh", || {
            lab.exec(&a.ns, &["ping", "-c", "1", "-W", "1", "host-b.mesh"])
                .status
                .success()
        });
    }

    // status shows the names and how they reach the resolver.
    let status: serde_json::Value = serde_json::from_str(&lab.exec_ok(
        &a.ns,
        &[wgmesh_bin(), "status", "--config", &a.config, "--json"],
    ))
    .unwrap();
    assert_eq!(status["dns_name"], "host-a", "{status}");
    let mut names: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dns_name"].as_str().unwrap_or("?"))
        .collect();
    names.sort();
    assert_eq!(names, ["host-b", "host-b-2"], "{status}");
    // Structured for scripts: no systemd-resolved in the lab, so nothing sends .mesh.
    assert_eq!(status["dns"]["method"], "manual", "{status}");
    assert_eq!(status["dns"]["servers"][0], ip_a.as_str(), "{status}");
    // export names each peer in a comment.
    let exported = lab.exec_ok(
        &a.ns,
        &[wgmesh_bin(), "export", "--config", &a.config, "--names"],
    );
    assert!(
        exported.contains("# host-b-2.mesh (host-b)\n[Peer]"),
        "{exported}"
    );

    // c's hosts file carries every name it can see, itself included.
    lab.eventually(
        Duration::from_secs(20),
        "c's hosts block lists the mesh",
        || {
            let text = std::fs::read_to_string(&c_hosts).unwrap();
            text.starts_with(c_hosts_original)
                && text.contains(&format!("{ip_a}\thost-a.mesh\n"))
                && text.contains(&format!("{ip_b}\thost-b.mesh\n"))
                && text.contains(&format!("{ip_c}\thost-b-2.mesh\n"))
                && !text.contains("host-h")
        },
    );

    // b comes back as another hostname, with DNS off: its name follows it on a, and b itself
    // no longer answers.
    assert_eq!(
        lab.signal(agent_b, "TERM"),
        Some(0),
        "{}",
        lab.log("db.log")
    );
    let agent_b = up(&mut lab, &b, "host-bee", &dev, &["--dns", "off"], "db2.log");
    expect_dig(
        &lab,
        &a.ns,
        &ip_a,
        ("host-bee.mesh", "A"),
        "NOERROR",
        &[&ip_b],
    );
    expect_dig(&lab, &a.ns, &ip_a, ("host-b.mesh", "A"), "NXDOMAIN", &[]);
    assert_eq!(
        dns_listeners(&lab, &b.ns).trim(),
        "",
        "--dns off serves nothing"
    );

    // c stops: its hosts file is exactly as before. It comes back under the same hostname and
    // keeps host-b-2, although host-b is free now: names are stable.
    assert_eq!(
        lab.signal(agent_c, "TERM"),
        Some(0),
        "{}",
        lab.log("dc.log")
    );
    assert_eq!(std::fs::read_to_string(&c_hosts).unwrap(), c_hosts_original);
    assert_eq!(dns_listeners(&lab, &c.ns).trim(), "");
    let agent_c = up(&mut lab, &c, "host-b", &dev, &c_flags, "dc2.log");
    expect_dig(
        &lab,
        &a.ns,
        &ip_a,
        ("host-b-2.mesh", "A"),
        "NOERROR",
        &[&ip_c],
    );
    expect_dig(
        &lab,
        &c.ns,
        &ip_c,
        ("host-b-2.mesh", "A"),
        "NOERROR",
        &[&ip_c],
    );
    expect_dig(
        &lab,
        &c.ns,
        &ip_c,
        ("host-bee.mesh", "A"),
        "NOERROR",
        &[&ip_b],
    );

    // a stops: no listener, no interface, routes as before, nothing recorded as applied.
    assert_eq!(
        lab.signal(agent_a, "TERM"),
        Some(0),
        "{}",
        lab.log("da.log")
    );
    assert_eq!(dns_listeners(&lab, &a.ns).trim(), "");
    assert_eq!(links(&lab, &a.ns), pristine.0);
    assert_eq!(routes(&lab, &a.ns), pristine.1);
    assert!(config_of(&a)["applied"].is_null(), "{}", config_of(&a));
    assert_eq!(lab.signal(agent_b, "TERM"), Some(0));

    // c dies hard: its hosts block stays behind until `wgmesh down` removes exactly that.
    lab.child(agent_c).kill().unwrap();
    lab.child(agent_c).wait().unwrap();
    assert!(std::fs::read_to_string(&c_hosts)
        .unwrap()
        .contains("# BEGIN wgmesh"));
    lab.exec_ok(&c.ns, &[wgmesh_bin(), "down", "--config", &c.config]);
    assert_eq!(std::fs::read_to_string(&c_hosts).unwrap(), c_hosts_original);
    assert!(!links(&lab, &c.ns).contains(&c.iface));
}

/// Real `dig` with EDNS flags against the resolver on loopback (no namespaces needed): the
/// DO bit gets the record and the DO bit back (no `MBZ`), NXDOMAIN and REFUSED stay what
/// they are without EDNS, and EDNS version 1 gets BADVERS with version 0.
#[test]
fn dig_with_edns_flags_gets_rfc_6891_answers_on_loopback() {
    use wgmesh::agent::dns::resolver::{Addresses, Resolver, Table};
    let found = run(&["sh", "-c", "command -v dig"]).status.success();
    assert!(found, "dig is missing: apt-get install dnsutils");
    let mut table = Table::default();
    table.insert(
        &"web".parse().unwrap(),
        Addresses {
            v4: "10.100.0.2".parse().unwrap(),
            v6: None,
        },
    );
    let mut resolver = Resolver::new();
    resolver.set_table(table);
    assert!(resolver
        .serve_on(&["127.0.0.1:0".parse().unwrap()])
        .is_empty());
    let port = resolver.local_addrs()[0].port().to_string();
    let dig = |name: &str, flags: &[&str]| {
        let mut args = vec![
            "dig",
            "@127.0.0.1",
            "-p",
            &port,
            "+time=2",
            "+tries=1",
            name,
            "A",
        ];
        args.extend_from_slice(flags);
        let text = String::from_utf8_lossy(&run(&args).stdout).into_owned();
        (parse_dig(&text, "A"), text)
    };
    for (name, status, answers) in [
        ("web.mesh", "NOERROR", vec!["10.100.0.2".to_owned()]),
        ("nosuch.mesh", "NXDOMAIN", vec![]),
        ("example.com", "REFUSED", vec![]),
    ] {
        let ((got, records), text) = dig(name, &["+dnssec"]);
        assert_eq!((got.as_str(), records), (status, answers), "{text}");
        assert!(
            text.contains("; EDNS: version: 0, flags: do; udp: 1232"),
            "{text}"
        );
        assert!(!text.contains("MBZ"), "{text}");
    }
    let ((got, records), text) = dig("web.mesh", &["+edns=1", "+noednsnegotiation"]);
    assert_eq!((got.as_str(), records.len()), ("BADVERS", 0), "{text}");
    assert!(
        text.contains("; EDNS: version: 0, flags:; udp: 1232"),
        "{text}"
    );
}
