//! Subnet routes end to end in network namespaces (issue 24), with real wireguard-go tunnels:
//! a LAN of two hosts (198.18.10.0/24) behind subnet routers on the mesh, and a BGP
//! upstream speaking to BIRD 2 on a subnet router. Addresses in 198.18.0.0/15, traffic only
//! inside the lab's own namespaces.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, nftables, socat, ping and (for the
//! BGP test) bird2; fails (never skips) without them.

mod common;

use common::device_conf::{device, field, load_config};
use common::netns::{must, Lab, MeshNode, Router, FAST_AGENT};
use common::wgmesh_bin;
use std::time::Duration;

const SERVER: &str = "198.18.0.1";
const LAN: &str = "198.18.10.0/24";
const LAN1: &str = "198.18.10.11";
const LAN2: &str = "198.18.10.12";
/// How long the mesh may take to settle after a change (syncs run every second here).
const SETTLE: Duration = Duration::from_secs(25);

fn server_url() -> String {
    format!("http://{SERVER}:8080")
}

/// A LAN segment: a bare namespace holding a bridge; [`lan_port`] plugs hosts into it.
fn lan_segment(lab: &mut Lab) -> String {
    let ns = lab.bare("lan");
    lab.exec_ok(&ns, &["ip", "link", "add", "br0", "type", "bridge"]);
    lab.exec_ok(&ns, &["ip", "link", "set", "br0", "up"]);
    ns
}

/// Plugs `host` into the LAN segment as `dev` with `cidr`.
fn lan_port(lab: &Lab, lan: &str, host: &str, name: &str, dev: &str, cidr: &str) {
    let outside = lab.ifname("l", name);
    must(&[
        "ip", "link", "add", &outside, "type", "veth", "peer", "name", dev, "netns", host,
    ]);
    must(&["ip", "link", "set", &outside, "netns", lan]);
    lab.exec_ok(lan, &["ip", "link", "set", &outside, "master", "br0", "up"]);
    lab.exec_ok(host, &["ip", "addr", "add", cidr, "dev", dev]);
    lab.exec_ok(host, &["ip", "link", "set", dev, "up"]);
}

/// `wgmesh routes ARGS` run on the server's host with the server's admin secret.
fn routes(lab: &Lab, srv: &str, args: &[&str]) -> String {
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let url = server_url();
    let mut full = vec![wgmesh_bin(), "routes"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--server", &url, "--admin-secret-file", &secret]);
    lab.exec_ok(srv, &full)
}

/// Starts the server on `srv` with `policy` (JSON) and short timeouts (a heartbeat timeout
/// of 3 s unless `extra` sets one).
fn start_server(lab: &mut Lab, srv: &str, policy: &str, extra: &[&str]) {
    let timeout = match extra.iter().position(|a| *a == "--heartbeat-timeout") {
        Some(i) => extra[i + 1],
        None => "3",
    };
    let dir = lab.dir.path().to_owned();
    let policy_file = dir.join("policy.json");
    std::fs::write(&policy_file, policy).unwrap();
    let state = dir.join("peers.json").display().to_string();
    let policy_arg = policy_file.display().to_string();
    let mut args = vec![
        wgmesh_bin(),
        "server",
        "--listen",
        "198.18.0.1:8080",
        "--state",
        &state,
        "--policy",
        &policy_arg,
        "--heartbeat-timeout",
        timeout,
        "--sweep-interval",
        "1",
    ];
    let mut rest = extra.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--heartbeat-timeout" => drop(rest.next()),
            other => args.push(other),
        }
    }
    lab.spawn(srv, &args, "server.log");
}

/// Starts `wgmesh up` on `node` with a join token for `tag` and `flags`.
fn up(lab: &mut Lab, srv: &str, node: &MeshNode, tag: &str, flags: &[&str]) -> usize {
    let token = lab.create_token(srv, &server_url(), &["--tag", tag]);
    let mut all: Vec<&str> = FAST_AGENT.to_vec();
    all.extend_from_slice(flags);
    let name = node.name.clone();
    lab.spawn_up(
        node,
        &server_url(),
        &name,
        &[format!("WGMESH_TOKEN={token}")],
        &all,
        &format!("{name}.log"),
    )
}

/// What the TCP service on a LAN host says the connection came from, asked from `ns`.
fn seen_by(lab: &Lab, ns: &str, host: &str) -> Option<String> {
    let out = lab.exec(
        ns,
        &[
            "socat",
            "-T",
            "2",
            "-",
            &format!("TCP:{host}:7000,connect-timeout=2"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// A TCP service on `ns` that answers with the address each connection comes from.
fn who_am_i_service(lab: &mut Lab, ns: &str, log: &str) {
    lab.spawn(
        ns,
        &[
            "socat",
            "TCP-LISTEN:7000,reuseaddr,fork",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
        log,
    );
}

fn mesh_routes(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "route", "show"])
}

/// What `up` leaves on a router while it runs, and must leave nowhere after it stopped.
fn router_traces(lab: &Lab, ns: &str) -> String {
    let tables = lab.exec_ok(ns, &["nft", "list", "tables"]);
    let routes = lab.exec_ok(ns, &["ip", "route", "show", "table", "all"]);
    tables
        .lines()
        .filter(|l| l.contains("wgmesh"))
        .chain(
            routes
                .lines()
                .filter(|l| l.contains("wg") || l.contains("10.100.")),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_lan_behind_subnet_routers_after_approval_with_failover_snat_and_policy() {
    let mut lab = Lab::new("sr");
    let srv = lab.host("srv", &format!("{SERVER}/24"));
    let gw_a = lab.mesh_node("gwa", "198.18.0.2/24");
    let gw_b = lab.mesh_node("gwb", "198.18.0.3/24");
    let remote = lab.mesh_node("remote", "198.18.0.4/24");
    let plain = lab.mesh_node("plain", "198.18.0.5/24");
    let guest = lab.mesh_node("guest", "198.18.0.6/24");
    let lan = lan_segment(&mut lab);
    let lan1 = lab.bare("lan1");
    let lan2 = lab.bare("lan2");
    lan_port(&lab, &lan, &gw_a.ns, "gwa", "eth1", "198.18.10.1/24");
    lan_port(&lab, &lan, &gw_b.ns, "gwb", "eth1", "198.18.10.2/24");
    lan_port(&lab, &lan, &lan1, "lan1", "eth0", &format!("{LAN1}/24"));
    lan_port(&lab, &lan, &lan2, "lan2", "eth0", &format!("{LAN2}/24"));
    who_am_i_service(&mut lab, &lan1, "lan1.log");
    who_am_i_service(&mut lab, &lan2, "lan2.log");

    // Developers see the routers and may use the LAN behind them (seeing a router by tag
    // alone grants none of its routes); guests see only each other.
    start_server(
        &mut lab,
        &srv,
        r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:router", "198.18.10.0/24"]},
                      {"from": ["tag:guest"], "to": ["tag:guest"]}]}"#,
        &[],
    );
    let lan_flag = ["--advertise-routes", LAN];
    let a = up(&mut lab, &srv, &gw_a, "tag:router", &lan_flag);
    lab.eventually(SETTLE, "gw-a registers", || {
        common::netns::assigned_ip(&gw_a.config).is_some()
    });
    let r = up(&mut lab, &srv, &remote, "tag:dev", &["--accept-routes"]);
    up(&mut lab, &srv, &plain, "tag:dev", &[]);
    up(&mut lab, &srv, &guest, "tag:guest", &["--accept-routes"]);
    lab.eventually(SETTLE, "the remote node reaches gw-a over the mesh", || {
        lab.ping(&remote.ns, &lab.mesh_ip("gwa"))
    });

    // Advertised but not approved: nobody routes the LAN.
    let listed = routes(&lab, &srv, &["list"]);
    assert!(listed.contains(LAN) && listed.contains(" no "), "{listed}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!mesh_routes(&lab, &remote.ns).contains("198.18.10.0/24"));
    assert!(!lab.ping(&remote.ns, LAN1));

    // Approved: the node with --accept-routes reaches both LAN hosts, which see gw-a's LAN
    // address (SNAT), and need no route back.
    routes(&lab, &srv, &["approve", "gwa", LAN]);
    lab.eventually(SETTLE, "the remote node reaches both LAN hosts", || {
        lab.ping(&remote.ns, LAN1) && lab.ping(&remote.ns, LAN2)
    });
    assert_eq!(
        seen_by(&lab, &remote.ns, LAN1).as_deref(),
        Some("198.18.10.1")
    );
    let status = lab.exec_ok(
        &remote.ns,
        &[wgmesh_bin(), "status", "--config", &remote.config],
    );
    assert!(status.contains(&format!("route {LAN} via gwa")), "{status}");
    // Without --accept-routes, and for a node the policy keeps from the router: nothing.
    assert!(!mesh_routes(&lab, &plain.ns).contains("198.18.10.0/24"));
    assert!(!lab.ping(&plain.ns, LAN1));
    assert!(!lab.ping(&guest.ns, LAN1));
    assert!(!mesh_routes(&lab, &guest.ns).contains("198.18.10.0/24"));

    // A second router for the same LAN stands by; when gw-a stops answering the server
    // (its agent frozen: no heartbeat), gw-b takes over within the heartbeat timeout.
    let b = up(&mut lab, &srv, &gw_b, "tag:router", &lan_flag);
    lab.eventually(SETTLE, "gw-b registers", || {
        common::netns::assigned_ip(&gw_b.config).is_some()
    });
    routes(&lab, &srv, &["approve", "gwb", LAN]);
    lab.eventually(SETTLE, "status names gw-b as standby", || {
        let status = lab.exec_ok(
            &remote.ns,
            &[wgmesh_bin(), "status", "--config", &remote.config],
        );
        status.contains("standby gwb")
    });
    let pid = lab.child(a).id().to_string();
    must(&["kill", "-STOP", &pid]);
    // A functional deadline with margin: the server's 3 s heartbeat timeout, its 1 s sweep,
    // then one long-poll answer and sync on the remote node.
    let failover = Duration::from_secs(3 + 1 + 6);
    lab.eventually(failover, "traffic to the LAN goes through gw-b", || {
        seen_by(&lab, &remote.ns, LAN1).as_deref() == Some("198.18.10.2")
    });
    must(&["kill", "-CONT", &pid]);
    assert_eq!(lab.signal(a, "TERM"), Some(0), "{}", lab.log("gwa.log"));
    // gw-a stopped: nothing it set up is left.
    assert_eq!(router_traces(&lab, &gw_a.ns), "");

    // Without SNAT the LAN sees the mesh address; a LAN host with a route back answers,
    // one without does not. (The setting is remembered: `up` runs again without it.)
    assert_eq!(lab.signal(b, "TERM"), Some(0), "{}", lab.log("gwb.log"));
    let b = lab.spawn_up(
        &gw_b,
        &server_url(),
        "gwb",
        &[],
        &[&FAST_AGENT[..], &["--snat-subnet-routes", "off"]].concat(),
        "gwb-nosnat.log",
    );
    lab.exec_ok(
        &lan1,
        &["ip", "route", "add", "10.100.0.0/16", "via", "198.18.10.2"],
    );
    let remote_ip = lab.mesh_ip("remote");
    lab.eventually(SETTLE, "LAN host 1 sees the mesh address", || {
        seen_by(&lab, &remote.ns, LAN1).as_deref() == Some(remote_ip.as_str())
    });
    assert!(!lab.ping(&remote.ns, LAN2), "LAN host 2 has no route back");
    let config = common::netns::config_json(&gw_b.config).unwrap();
    assert_eq!(config["subnet_routes"]["snat"], false, "{config}");
    assert_eq!(config["subnet_routes"]["advertise"][0], LAN, "{config}");

    // Stopping removes every route, rule and NAT entry: on the remote node the LAN route,
    // on the router its nftables table.
    assert_eq!(lab.signal(r, "TERM"), Some(0), "{}", lab.log("remote.log"));
    assert!(!mesh_routes(&lab, &remote.ns).contains("198.18.10.0/24"));
    assert_eq!(
        lab.signal(b, "TERM"),
        Some(0),
        "{}",
        lab.log("gwb-nosnat.log")
    );
    assert_eq!(router_traces(&lab, &gw_b.ns), "");

    // The same with one-shot `sync` and `down`: `down` removes what `sync` set up.
    lab.exec_ok(&gw_b.ns, &[wgmesh_bin(), "sync", "--config", &gw_b.config]);
    let tables = lab.exec_ok(&gw_b.ns, &["nft", "list", "tables"]);
    assert!(tables.contains("wgmesh-sr-"), "{tables}");
    lab.exec_ok(&gw_b.ns, &[wgmesh_bin(), "down", "--config", &gw_b.config]);
    assert_eq!(router_traces(&lab, &gw_b.ns), "");
}

/// `wgmesh policy reload` run on the server's host with the server's admin secret.
fn policy_reload(lab: &Lab, srv: &str) -> String {
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let url = server_url();
    lab.exec_ok(
        srv,
        &[
            wgmesh_bin(),
            "policy",
            "reload",
            "--server",
            &url,
            "--admin-secret-file",
            &secret,
        ],
    )
}

/// `wgmesh status` of `node`, human or `--json`.
fn status(lab: &Lab, node: &MeshNode, json: bool) -> String {
    let mut args = vec![wgmesh_bin(), "status", "--config", &node.config];
    if json {
        args.push("--json");
    }
    lab.exec_ok(&node.ns, &args)
}

const OFFICE: &str = "198.18.20.0/24";
const OFFICE_10: &str = "198.18.20.10";
const OFFICE_20: &str = "198.18.20.20";

/// Per-prefix access (issue 24): the policy grants node A the whole office LAN, node B one
/// host of it and node C only the router itself; the router's filter enforces it even
/// against a node that routes the LAN through it by hand. The route is advertised before
/// the policy approves it: the reload that brings the `routes` rule approves it.
#[test]
fn the_policy_grants_each_node_its_part_of_the_lan_and_the_router_enforces_it() {
    let mut lab = Lab::new("sp");
    let srv = lab.host("srv", &format!("{SERVER}/24"));
    let gw = lab.mesh_node("gw", "198.18.0.2/24");
    let node_a = lab.mesh_node("na", "198.18.0.3/24");
    let node_b = lab.mesh_node("nb", "198.18.0.4/24");
    let node_c = lab.mesh_node("nc", "198.18.0.5/24");
    let lan = lan_segment(&mut lab);
    let h10 = lab.bare("h10");
    let h20 = lab.bare("h20");
    lan_port(&lab, &lan, &gw.ns, "gw", "eth1", "198.18.20.1/24");
    lan_port(&lab, &lan, &h10, "h10", "eth0", &format!("{OFFICE_10}/24"));
    lan_port(&lab, &lan, &h20, "h20", "eth0", &format!("{OFFICE_20}/24"));

    let grants = r#"{"allow": [
        {"from": ["tag:a"], "to": ["198.18.20.0/24"]},
        {"from": ["tag:b"], "to": ["198.18.20.10"]},
        {"from": ["tag:c"], "to": ["tag:router"]}]"#;
    // A long heartbeat timeout: node B's agent is paused below while it routes by hand.
    start_server(
        &mut lab,
        &srv,
        &format!("{grants}}}"),
        &["--heartbeat-timeout", "60"],
    );
    up(
        &mut lab,
        &srv,
        &gw,
        "tag:router",
        &["--advertise-routes", OFFICE],
    );
    lab.eventually(SETTLE, "the router registers", || {
        common::netns::assigned_ip(&gw.config).is_some()
    });
    up(&mut lab, &srv, &node_a, "tag:a", &["--accept-routes"]);
    let b = up(&mut lab, &srv, &node_b, "tag:b", &["--accept-routes"]);
    let c = up(&mut lab, &srv, &node_c, "tag:c", &["--accept-routes"]);
    let gw_ip = lab.mesh_ip("gw");
    lab.eventually(SETTLE, "node C reaches the router it may see", || {
        lab.ping(&node_c.ns, &gw_ip)
    });
    // Not approved yet: the route is nobody's, and A and B do not even see the router.
    let listed = routes(&lab, &srv, &["list"]);
    assert!(
        listed.contains(OFFICE) && listed.contains(" no "),
        "{listed}"
    );
    assert!(!lab.ping(&node_a.ns, &gw_ip));

    // A reload that brings a `routes` rule approves the route already advertised.
    let with_rule = format!(
        r#"{grants}, "routes": [{{"advertisers": ["tag:router"], "prefixes": ["{OFFICE}"]}}]}}"#
    );
    std::fs::write(lab.dir.path().join("policy.json"), with_rule).unwrap();
    let reloaded = policy_reload(&lab, &srv);
    assert!(reloaded.contains("policy changed"), "{reloaded}");
    let listed = routes(&lab, &srv, &["list"]);
    assert!(
        listed.contains(OFFICE) && listed.contains(" yes "),
        "{listed}"
    );

    // A reaches both hosts; B reaches .10 only; C neither.
    lab.eventually(SETTLE, "node A reaches both office hosts", || {
        lab.ping(&node_a.ns, OFFICE_10) && lab.ping(&node_a.ns, OFFICE_20)
    });
    lab.eventually(
        SETTLE,
        "node B reaches the office host it is granted",
        || lab.ping(&node_b.ns, OFFICE_10),
    );
    assert!(!lab.ping(&node_b.ns, OFFICE_20));
    assert!(!lab.ping(&node_c.ns, OFFICE_10));
    assert!(!lab.ping(&node_c.ns, OFFICE_20));
    // Each installs only what it may use.
    assert!(mesh_routes(&lab, &node_a.ns).contains(OFFICE));
    let b_routes = mesh_routes(&lab, &node_b.ns);
    assert!(b_routes.contains("198.18.20.10 dev"), "{b_routes}");
    assert!(!b_routes.contains(OFFICE), "{b_routes}");
    assert!(!mesh_routes(&lab, &node_c.ns).contains("198.18.20."));
    // B's status says what it accepts, for people and for programs.
    let human = status(&lab, &node_b, false);
    assert!(human.contains("route 198.18.20.10/32 via gw"), "{human}");
    let json: serde_json::Value = serde_json::from_str(&status(&lab, &node_b, true)).unwrap();
    let accepted = &json["subnet_routes"]["accepted"];
    assert_eq!(accepted.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(accepted[0]["prefix"], "198.18.20.10/32", "{json}");
    assert_eq!(accepted[0]["router"], "gw", "{json}");
    // The router's filter names B's mesh address with exactly its host.
    let b_ip = lab.mesh_ip("nb");
    let filter = lab.exec_ok(&gw.ns, &["nft", "list", "ruleset"]);
    assert!(
        filter.contains(&format!("ip saddr {b_ip} ip daddr 198.18.20.10 accept")),
        "{filter}"
    );

    // Enforced at the router: B routing the whole LAN through it by hand (its agent paused
    // so it does not put its own configuration back) still reaches only .10.
    let pids = [lab.child(b).id().to_string(), lab.child(c).id().to_string()];
    for pid in &pids {
        must(&["kill", "-STOP", pid]);
    }
    let gw_key = lab.key_of("gw").to_string();
    lab.exec_ok(
        &node_b.ns,
        &[
            "wg",
            "set",
            &node_b.iface,
            "peer",
            &gw_key,
            "allowed-ips",
            &format!("{gw_ip}/32,{OFFICE}"),
        ],
    );
    lab.exec_ok(
        &node_b.ns,
        &["ip", "route", "replace", OFFICE, "dev", &node_b.iface],
    );
    let by_hand = lab.ping(&node_b.ns, OFFICE_10);
    let forbidden = lab.ping(&node_b.ns, OFFICE_20);
    // C, which sees the router, tries the same.
    lab.exec_ok(
        &node_c.ns,
        &[
            "wg",
            "set",
            &node_c.iface,
            "peer",
            &gw_key,
            "allowed-ips",
            &format!("{gw_ip}/32,{OFFICE}"),
        ],
    );
    lab.exec_ok(
        &node_c.ns,
        &["ip", "route", "replace", OFFICE, "dev", &node_c.iface],
    );
    let c_by_hand = lab.ping(&node_c.ns, OFFICE_10);
    for pid in &pids {
        must(&["kill", "-CONT", pid]);
    }
    assert!(by_hand, "the hand-made route works for what B is granted");
    assert!(
        !forbidden,
        "the router forwarded B to a host it is not granted"
    );
    assert!(
        !c_by_hand,
        "the router forwarded C, granted nothing behind it"
    );
}

/// BIRD on the upstream router: announces 198.18.40.0/24 (its own 198.18.40.1 lives on
/// `lo`) to the subnet router over eBGP, and learns what the subnet router announces.
const UPSTREAM_BIRD: &str = r#"log stderr all;
router id 198.18.20.2;
protocol device { scan time 1; }
protocol static announced {
    ipv4;
    route 198.18.40.0/24 blackhole;
}
protocol bgp subnet_router {
    local 198.18.20.2 as 65001;
    neighbor 198.18.20.1 as 65002;
    ipv4 { import all; export where proto = "announced"; };
}
"#;

/// BIRD on the subnet router: what BGP learns goes into kernel table 100 (which wgmesh
/// advertises from, `--routes-from-table 100`), and what wgmesh writes into table 200
/// (`--routes-to-table 200`: the mesh and its accepted routes) is announced upstream. The
/// README's "Subnet routes and BGP" shows this file.
const ROUTER_BIRD: &str = r#"log stderr all;
router id 198.18.20.1;
ipv4 table mesh;
protocol device { scan time 1; }
protocol kernel bgp_to_table100 {
    kernel table 100;
    ipv4 { import none; export where source = RTS_BGP; };
}
protocol kernel mesh_from_table200 {
    kernel table 200;
    learn;
    scan time 1;
    ipv4 { table mesh; import all; export none; };
}
protocol pipe mesh_to_master {
    table mesh;
    peer table master4;
    import none;
    export all;
}
protocol bgp upstream {
    local 198.18.20.1 as 65002;
    neighbor 198.18.20.2 as 65001;
    ipv4 { import all; export where source = RTS_INHERIT; };
}
"#;

/// Starts BIRD in the foreground on `ns` with `conf`, its own control socket and pid file
/// in the lab's folder (never the system's); returns the socket for `birdc -s`.
fn bird(lab: &mut Lab, ns: &str, name: &str, conf: &str) -> String {
    let dir = lab.dir.path().to_owned();
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let sock = dir.join(format!("{name}.ctl")).display().to_string();
    let pid = dir.join(format!("{name}.pid")).display().to_string();
    let conf_arg = conf_path.display().to_string();
    lab.spawn(
        ns,
        &["bird", "-f", "-c", &conf_arg, "-s", &sock, "-P", &pid],
        &format!("{name}.log"),
    );
    sock
}

fn birdc(lab: &Lab, ns: &str, sock: &str, args: &[&str]) -> String {
    let mut full = vec!["birdc", "-s", sock];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&lab.exec(ns, &full).stdout).into_owned()
}

#[test]
fn bgp_routes_from_a_routing_daemon_reach_the_mesh_and_the_mesh_reaches_bgp() {
    for tool in ["bird", "birdc", "socat"] {
        assert!(
            common::netns::run(&["sh", "-c", &format!("command -v {tool}")])
                .status
                .success(),
            "{tool} is missing: apt-get install bird2 socat"
        );
    }
    let mut lab = Lab::new("srbgp");
    let srv = lab.host("srv", &format!("{SERVER}/24"));
    let gw = lab.mesh_node("gw", "198.18.0.2/24");
    let remote = lab.mesh_node("remote", "198.18.0.4/24");
    let upstream = lab.bare("upstream");
    let link = lab.ifname("u", "gw");
    must(&[
        "ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &upstream,
    ]);
    must(&["ip", "link", "set", &link, "netns", &gw.ns]);
    lab.exec_ok(&gw.ns, &["ip", "link", "set", &link, "name", "eth1"]);
    lab.exec_ok(
        &gw.ns,
        &["ip", "addr", "add", "198.18.20.1/24", "dev", "eth1"],
    );
    lab.exec_ok(&gw.ns, &["ip", "link", "set", "eth1", "up"]);
    lab.exec_ok(
        &upstream,
        &["ip", "addr", "add", "198.18.20.2/24", "dev", "eth0"],
    );
    lab.exec_ok(&upstream, &["ip", "link", "set", "eth0", "up"]);
    lab.exec_ok(
        &upstream,
        &["ip", "addr", "add", "198.18.40.1/32", "dev", "lo"],
    );
    // The subnet router forwards by what BGP put in table 100.
    lab.exec_ok(
        &gw.ns,
        &["ip", "rule", "add", "pref", "1000", "lookup", "100"],
    );
    let up_sock = bird(&mut lab, &upstream, "bird-upstream", UPSTREAM_BIRD);
    let gw_sock = bird(&mut lab, &gw.ns, "bird-gw", ROUTER_BIRD);

    // Routers may advertise what lies in 198.18.32.0/19 without an operator, and
    // developers may reach it.
    start_server(
        &mut lab,
        &srv,
        r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:router", "198.18.32.0/19"]}],
            "routes": [{"advertisers": ["tag:router"], "prefixes": ["198.18.32.0/19"]}]}"#,
        &[],
    );
    let g = up(
        &mut lab,
        &srv,
        &gw,
        "tag:router",
        &[
            "--routes-from-table",
            "100",
            "--routes-from-table-allow",
            "198.18.32.0/19",
            "--routes-to-table",
            "200",
        ],
    );
    up(&mut lab, &srv, &remote, "tag:dev", &["--accept-routes"]);
    lab.eventually(SETTLE, "BGP brings 198.18.40.0/24 into table 100", || {
        String::from_utf8_lossy(
            &lab.exec(&gw.ns, &["ip", "route", "show", "table", "100"])
                .stdout,
        )
        .contains("198.18.40.0/24")
    });
    lab.eventually(
        SETTLE,
        "the remote node reaches the upstream's network",
        || lab.ping(&remote.ns, "198.18.40.1"),
    );
    // The mesh network, written into table 200, is in the upstream's BGP table.
    lab.eventually(SETTLE, "the upstream learns the mesh over BGP", || {
        birdc(&lab, &upstream, &up_sock, &["show", "route"]).contains("10.100.0.0/16")
    });

    // Withdrawn upstream: gone from the mesh.
    birdc(&lab, &upstream, &up_sock, &["disable", "announced"]);
    lab.eventually(
        SETTLE,
        "the withdrawn prefix leaves the remote node",
        || !mesh_routes(&lab, &remote.ns).contains("198.18.40.0/24"),
    );
    assert!(!lab.ping(&remote.ns, "198.18.40.1"));

    // Stopping removes the routes it wrote into table 200 and its NAT table.
    assert_eq!(lab.signal(g, "TERM"), Some(0), "{}", lab.log("gw.log"));
    let table200 = lab.exec(&gw.ns, &["ip", "route", "show", "table", "200"]);
    let table200 = String::from_utf8_lossy(&table200.stdout);
    assert_eq!(table200.trim(), "", "{table200}");
    assert_eq!(router_traces(&lab, &gw.ns), "");
    let _ = gw_sock;
}

const HOME_LAN: &str = "198.18.30.0/24";
const HOME_11: &str = "198.18.30.11";
const HOME_12: &str = "198.18.30.12";

/// A phone behind a gateway reaches the part of a subnet route its tag is granted (issues
/// 23 and 24): its configuration lists that part, the gateway carries only the devices'
/// traffic there (it runs without `--accept-routes`, and strict `rp_filter`), the router
/// admits the phone to exactly that host, and neither a hand-made route on the phone nor
/// the gateway opening its own filter gets it further; a mesh node without a grant reaches
/// nothing behind the router; when the router stops, the standby carries the phone.
/// Stopping the gateway removes its rules and table.
#[test]
fn a_phone_behind_a_gateway_reaches_only_its_granted_part_of_a_subnet_route() {
    let mut lab = Lab::new("dr");
    let srv = lab.host("srv", &format!("{SERVER}/24"));
    let gw = lab.mesh_node("gw", "198.18.0.2/24");
    let rt = lab.mesh_node("rt", "198.18.0.3/24");
    let node = lab.mesh_node("nd", "198.18.0.4/24");
    let rt2 = lab.mesh_node("rt2", "198.18.0.5/24");
    let lan = lan_segment(&mut lab);
    let h11 = lab.bare("h11");
    let h12 = lab.bare("h12");
    lan_port(&lab, &lan, &rt.ns, "rt", "eth1", "198.18.30.1/24");
    lan_port(&lab, &lan, &rt2.ns, "rt2", "eth1", "198.18.30.2/24");
    lan_port(&lab, &lan, &h11, "h11", "eth0", &format!("{HOME_11}/24"));
    lan_port(&lab, &lan, &h12, "h12", "eth0", &format!("{HOME_12}/24"));
    who_am_i_service(&mut lab, &h11, "h11.log");
    who_am_i_service(&mut lab, &h12, "h12.log");
    // Strict reverse-path filtering on the gateway: replies from the LAN come in on the
    // mesh interface and must still pass.
    lab.exec_ok(&gw.ns, &["sysctl", "-q", "net.ipv4.conf.all.rp_filter=1"]);
    lab.exec_ok(
        &gw.ns,
        &["sysctl", "-q", "net.ipv4.conf.default.rp_filter=1"],
    );

    start_server(
        &mut lab,
        &srv,
        &format!(
            r#"{{"allow": [{{"from": ["tag:phone"], "to": ["{HOME_11}"]}},
                          {{"from": ["tag:gw", "tag:node"], "to": ["tag:router"]}}],
                "routes": [{{"advertisers": ["tag:router"], "prefixes": ["{HOME_LAN}"]}}]}}"#
        ),
        &[],
    );
    let rt_agent = up(
        &mut lab,
        &srv,
        &rt,
        "tag:router",
        &["--advertise-routes", HOME_LAN],
    );
    let gw_if = lab.ifname("gd", "gw");
    let gw_agent = up(
        &mut lab,
        &srv,
        &gw,
        "tag:gw",
        &[
            "--gateway",
            "--gateway-port",
            "51821",
            "--gateway-interface",
            &gw_if,
        ],
    );
    up(&mut lab, &srv, &node, "tag:node", &["--accept-routes"]);
    lab.eventually(SETTLE, "every node registers", || {
        [&gw, &rt, &node]
            .iter()
            .all(|n| common::netns::assigned_ip(&n.config).is_some())
    });
    let rt_ip = lab.mesh_ip("rt");
    lab.eventually(SETTLE, "the gateway and the node reach the router", || {
        lab.ping(&gw.ns, &rt_ip) && lab.ping(&node.ns, &rt_ip)
    });

    // The phone's configuration lists its granted host; `device show` too.
    let mut config = String::new();
    lab.eventually(SETTLE, "the phone is added", || {
        let (code, out, _) = device(
            &lab,
            &srv,
            &server_url(),
            &["add", "phone", "--via", "gw", "--tag", "tag:phone"],
        );
        config = out;
        code == 0
    });
    let granted = format!("{HOME_11}/32");
    assert!(field(&config, "AllowedIPs").contains(&granted), "{config}");
    assert!(!config.contains(HOME_LAN), "{config}");
    let (code, shown, _) = device(&lab, &srv, &server_url(), &["show", "phone"]);
    assert_eq!(code, 0, "{shown}");
    assert_eq!(field(&shown, "AllowedIPs"), field(&config, "AllowedIPs"));

    // The phone, behind a home NAT, loads it and reaches its host (masqueraded by the
    // router), not the other one.
    let (_home, phone_ns) = lab.home("ph", "198.18.0.20", 41, Router::MasqueradeFirewall, None);
    let phone_if = lab.ifname("wg", "ph");
    load_config(&lab, &phone_ns, &phone_if, &config, lab.dir.path());
    lab.eventually(SETTLE, "the phone reaches its granted host", || {
        seen_by(&lab, &phone_ns, HOME_11).as_deref() == Some("198.18.30.1")
    });
    assert_eq!(seen_by(&lab, &phone_ns, HOME_12), None);
    // The gateway routes only its devices there: its own traffic has no route.
    assert_eq!(seen_by(&lab, &gw.ns, HOME_11), None);
    assert!(!mesh_routes(&lab, &gw.ns).contains("198.18.30."));
    // The router's filter names the phone's mesh address with exactly its host.
    let phone_ip = field(&config, "Address")
        .split(", ")
        .next()
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_owned();
    let filter = lab.exec_ok(&rt.ns, &["nft", "list", "ruleset"]);
    assert!(
        filter.contains(&format!("ip saddr {phone_ip} ip daddr {HOME_11} accept")),
        "{filter}"
    );
    // A mesh node without a grant reaches neither host, and is not even given the route.
    assert!(!mesh_routes(&lab, &node.ns).contains("198.18.30."));
    assert_eq!(seen_by(&lab, &node.ns, HOME_11), None);
    assert_eq!(seen_by(&lab, &node.ns, HOME_12), None);

    // Failover: a second router of the LAN (a higher mesh address: the standby) takes over
    // when the first stops; the gateway follows and the phone keeps its host.
    up(
        &mut lab,
        &srv,
        &rt2,
        "tag:router",
        &["--advertise-routes", HOME_LAN],
    );
    lab.eventually(SETTLE, "the second router is approved and online", || {
        routes(&lab, &srv, &["list"]).matches(" yes ").count() == 2
    });
    lab.eventually(SETTLE, "the second router registers", || {
        common::netns::assigned_ip(&rt2.config).is_some()
    });
    let rt2_ip = lab.mesh_ip("rt2");
    lab.eventually(SETTLE, "the gateway reaches the second router", || {
        lab.ping(&gw.ns, &rt2_ip)
    });
    assert_eq!(
        seen_by(&lab, &phone_ns, HOME_11).as_deref(),
        Some("198.18.30.1"),
        "the first router stays primary"
    );
    lab.signal(rt_agent, "TERM");
    lab.eventually(
        SETTLE,
        "the phone reaches its host through the standby",
        || seen_by(&lab, &phone_ns, HOME_11).as_deref() == Some("198.18.30.2"),
    );
    assert_eq!(seen_by(&lab, &phone_ns, HOME_12), None);

    // The phone routing the whole LAN into its tunnel by hand: the gateway drops it.
    let gw_key = lab.key_of("gw").to_string();
    let allowed = field(&config, "AllowedIPs").replace(", ", ",");
    lab.exec_ok(
        &phone_ns,
        &[
            "wg",
            "set",
            &phone_if,
            "peer",
            &gw_key,
            "allowed-ips",
            &format!("{allowed},{HOME_LAN}"),
        ],
    );
    lab.exec_ok(
        &phone_ns,
        &["ip", "route", "replace", HOME_LAN, "dev", &phone_if],
    );
    assert_eq!(seen_by(&lab, &phone_ns, HOME_12), None);
    // And the router drops it too: with the gateway's agent paused, its filter gone and the
    // whole LAN routed to the router by hand, the phone still reaches only its host.
    let pid = lab.child(gw_agent).id().to_string();
    must(&["kill", "-STOP", &pid]);
    let rt_key = lab.key_of("rt2").to_string();
    lab.exec_ok(
        &gw.ns,
        &[
            "nft",
            "delete",
            "table",
            "inet",
            &format!("wgmesh-gw-{gw_if}"),
        ],
    );
    lab.exec_ok(
        &gw.ns,
        &[
            "wg",
            "set",
            &gw.iface,
            "peer",
            &rt_key,
            "allowed-ips",
            &format!("{rt2_ip}/32,{phone_ip}/32,{HOME_LAN}"),
        ],
    );
    lab.exec_ok(
        &gw.ns,
        &[
            "ip", "route", "replace", HOME_LAN, "dev", &gw.iface, "table", "51821",
        ],
    );
    let still = seen_by(&lab, &phone_ns, HOME_11);
    let forbidden = seen_by(&lab, &phone_ns, HOME_12);
    must(&["kill", "-CONT", &pid]);
    assert_eq!(still.as_deref(), Some("198.18.30.2"));
    assert_eq!(
        forbidden, None,
        "the router forwarded the phone to a host it is not granted"
    );

    // Stopping the gateway removes its rules and its table.
    assert!(lab
        .exec_ok(&gw.ns, &["ip", "rule", "show"])
        .contains("lookup 51821"));
    lab.signal(gw_agent, "TERM");
    let rules = lab.exec_ok(&gw.ns, &["ip", "rule", "show"]);
    assert!(!rules.contains("51821"), "{rules}");
    let table = lab.exec(&gw.ns, &["ip", "route", "show", "table", "51821"]);
    assert!(String::from_utf8_lossy(&table.stdout).trim().is_empty());
}
