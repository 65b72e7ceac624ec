//! A small internet in network namespaces (addresses in 198.18.0.0/15): a public segment with
//! a router, the coordination server, an exit node and a "web" host; two home routers doing
//! MASQUERADE, each with one node behind it. Proves NAT traversal (direct paths between two
//! NATed nodes), exit-node routing and NAT, the fail-closed and fall-back policies, restoring
//! routing exactly, and `netcheck` / a standard STUN client against the server.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, nftables, iptables, ping and
//! stun-client; fails (never skips) without them.

mod common;

use common::netns::{assigned_ip, public_key_of, Lab, Router};
use common::wgmesh_bin;
use std::time::Duration;

const SERVER: &str = "198.18.0.1";
const EXIT: &str = "198.18.0.2";
const WEB: &str = "198.18.0.3";
const HOME1: &str = "198.18.0.11";
const HOME2: &str = "198.18.0.12";
const GATEWAY: &str = "198.18.0.254";
/// IPv6 on the public segment (unique local addresses, only inside this lab's namespaces):
/// the exit node and the web host have it, the homes behind NAT do not.
const EXIT6: &str = "fd00:198:18::2";
const WEB6: &str = "fd00:198:18::3";
const GATEWAY6: &str = "fd00:198:18::254";

fn public_host(lab: &mut Lab, name: &str, ip: &str) -> String {
    let ns = lab.host(name, &format!("{ip}/24"));
    lab.exec_ok(&ns, &["ip", "route", "add", "default", "via", GATEWAY]);
    ns
}

/// IPv4 rules and every IPv4 table, plus the IPv6 rules and table 51820 (IPv6 defaults are
/// blocked while an exit node is in use); IPv6 link-local routes come and go on their own.
fn rules_and_routes(lab: &Lab, ns: &str) -> String {
    lab.exec_ok(ns, &["ip", "-4", "rule"])
        + &lab.exec_ok(ns, &["ip", "-4", "route", "show", "table", "all"])
        + &lab.exec_ok(ns, &["ip", "-6", "rule"])
        + &String::from_utf8_lossy(
            &lab.exec(ns, &["ip", "-6", "route", "show", "table", "51820"])
                .stdout,
        )
}

/// The address a STUN server at `server` sees `ns` from (None: no answer).
fn seen_from(lab: &Lab, ns: &str, config: &str, server: &str) -> Option<String> {
    let out = lab.exec(
        ns,
        &[
            wgmesh_bin(),
            "netcheck",
            "--config",
            config,
            "--server",
            server,
            "--timeout-ms",
            "800",
            "--json",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["mapped"]
        .as_str()
        .and_then(|m| m.parse::<std::net::SocketAddr>().ok())
        .map(|m| m.ip().to_string())
}

fn wg_endpoints(lab: &Lab, ns: &str, iface: &str) -> String {
    String::from_utf8_lossy(&lab.exec(ns, &["wg", "show", iface, "endpoints"]).stdout).into_owned()
}

#[test]
fn nat_traversal_exit_nodes_and_netcheck_in_a_small_internet() {
    let mut lab = Lab::new("inet");
    let router = lab.host("gw", &format!("{GATEWAY}/24"));
    lab.exec_ok(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let srv = public_host(&mut lab, "srv", SERVER);
    let exit = public_host(&mut lab, "exit", EXIT);
    let web = public_host(&mut lab, "web", WEB);
    for (ns, addr) in [(&router, GATEWAY6), (&exit, EXIT6), (&web, WEB6)] {
        lab.exec_ok(
            ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
    }
    lab.exec_ok(
        &exit,
        &["ip", "-6", "route", "add", "default", "via", GATEWAY6],
    );
    // Home routers masquerade their LANs and, like every home router, drop unsolicited
    // traffic from the internet.
    let (h1_ns, a) = lab.home("a", HOME1, 1, Router::MasqueradeFirewall, Some(GATEWAY));
    let (_h2, b) = lab.home("b", HOME2, 2, Router::MasqueradeFirewall, Some(GATEWAY));
    let dir = lab.dir.path().to_owned();
    let path = |name: &str| dir.join(name).display().to_string();

    // The coordination server (with STUN on 3478 and 3479), and a STUN "what is my address"
    // service on the web host to see what source address the internet sees.
    lab.spawn(
        &srv,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &format!("{SERVER}:8080"),
            "--state",
            &path("peers.json"),
            "--open",
            "--heartbeat-timeout",
            "4",
            "--sweep-interval",
            "1",
        ],
        "server.log",
    );
    lab.spawn(
        &web,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &format!("{WEB}:8080"),
            "--state",
            &path("web.json"),
            "--udp-listen",
            &format!("{WEB}:3478"),
        ],
        "web.log",
    );
    // A second STUN service on the web host's IPv6 address.
    lab.spawn(
        &web,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &format!("[{WEB6}]:8080"),
            "--state",
            &path("web6.json"),
            "--udp-listen",
            &format!("[{WEB6}]:3478"),
            "--udp-alt-port",
            "0",
        ],
        "web6.log",
    );
    let server_url = format!("http://{SERVER}:8080");
    let web_stun = format!("{WEB}:3478");
    let web6_stun = format!("[{WEB6}]:3478");
    let nft_before = lab.exec_ok(&exit, &["nft", "list", "ruleset"]);
    let a_pristine = rules_and_routes(&lab, &a);

    let exit_if = lab.ifname("wg", "exit");
    let b_if = lab.ifname("wg", "b");
    let a_if = lab.ifname("wg", "a");
    let (exit_cfg, a_cfg, b_cfg) = (path("exit.json"), path("a.json"), path("b.json"));
    let up = |name: &'static str, iface: &str, cfg: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            wgmesh_bin(),
            "up",
            "--server",
            &server_url,
            "--config",
            cfg,
            "--interface",
            iface,
            "--hostname",
            name,
            "--heartbeat-interval",
            "1",
            "--sync-interval",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let exit_args = up("exit", &exit_if, &exit_cfg, &["--exit-node"]);
    let exit_agent = lab.spawn(
        &exit,
        &exit_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "exit.log",
    );
    let b_args = up("b", &b_if, &b_cfg, &[]);
    lab.spawn(
        &b,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "b.log",
    );

    // Node a is driven by `wgmesh sync`, like a timer would, so the test controls each change.
    let sync_a = |lab: &Lab, extra: &[&str]| {
        let mut args = vec![
            wgmesh_bin(),
            "sync",
            "--server",
            &server_url,
            "--config",
            &a_cfg,
            "--interface",
            &a_if,
            "--hostname",
            "a",
        ];
        args.extend_from_slice(extra);
        let out = lab.exec(&a, &args);
        if !out.status.success() {
            eprintln!("a rules/routes:\n{}", rules_and_routes(lab, &a));
            eprintln!(
                "h1 filter:\n{}",
                String::from_utf8_lossy(&lab.exec(&h1_ns, &["iptables-save", "-c"]).stdout)
            );
            eprintln!(
                "a wg:\n{}",
                String::from_utf8_lossy(&lab.exec(&a, &["wg", "show", &a_if]).stdout)
            );
        }
        assert!(
            out.status.success(),
            "sync on a failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    lab.eventually(Duration::from_secs(20), "both servers listen", || {
        lab.log("server.log").contains("listening on")
            && lab.log("web.log").contains("listening on")
    });
    sync_a(&lab, &[]);
    lab.eventually(
        Duration::from_secs(30),
        "a, b and exit know each other",
        || {
            sync_a(&lab, &[]);
            wg_endpoints(&lab, &a, &a_if).lines().count() == 2
                && wg_endpoints(&lab, &b, &b_if).lines().count() == 2
        },
    );

    // NAT traversal: a and b reach each other directly, each naming the other's router.
    let b_ip = assigned_ip(&b_cfg).unwrap();
    let a_ip = assigned_ip(&a_cfg).unwrap();
    lab.eventually(
        Duration::from_secs(30),
        "a and b ping each other through both NATs",
        || {
            sync_a(&lab, &[]);
            lab.ping(&a, &b_ip) && lab.ping(&b, &a_ip)
        },
    );
    // b (`up`) starts a on the relay and moves it to the direct path once a probe proves it
    // (within 30 s); a (`sync`) starts on the relay too, attempts direct at its first run
    // that sees the relayed session, and follows b's packets.
    lab.eventually(
        Duration::from_secs(40),
        "a and b name each other's routers as endpoints",
        || {
            sync_a(&lab, &[]);
            let a_sees = wg_endpoints(&lab, &a, &a_if);
            let b_sees = wg_endpoints(&lab, &b, &b_if);
            a_sees.contains(&format!(
                "{}\t{HOME2}:51820",
                public_key_of(&b_cfg).unwrap().to_base64()
            )) && b_sees.contains(&format!(
                "{}\t{HOME1}:51820",
                public_key_of(&a_cfg).unwrap().to_base64()
            ))
        },
    );
    let status: serde_json::Value = serde_json::from_str(
        &lab.exec_ok(&a, &[wgmesh_bin(), "status", "--config", &a_cfg, "--json"]),
    )
    .unwrap();
    let b_status = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["hostname"] == "b")
        .unwrap()
        .clone();
    assert_eq!(b_status["direct"], true);
    assert_eq!(b_status["endpoint"], format!("{HOME2}:51820"));

    // netcheck behind each NAT: the router's address, a mapping that does not vary.
    let out = lab.exec_ok(
        &a,
        &[wgmesh_bin(), "netcheck", "--config", &a_cfg, "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["udp"], true, "{report}");
    assert!(
        report["mapped"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{HOME1}:")),
        "{report}"
    );
    assert_eq!(report["mapping_varies_by_destination"], false, "{report}");
    assert_eq!(
        seen_from(&lab, &b, &b_cfg, &format!("{SERVER}:3478")).as_deref(),
        Some(HOME2)
    );
    // A standard STUN client gets the same answer from the server.
    let stun = lab.exec(&a, &["stun", &format!("{SERVER}:3478"), "1", "-v"]);
    let stun_text =
        String::from_utf8_lossy(&stun.stdout).to_string() + &String::from_utf8_lossy(&stun.stderr);
    assert!(
        stun_text.contains(&format!("MappedAddress = {HOME1}:")),
        "stun client said: {stun_text}"
    );

    // Without an exit node the web host sees a's own router, and a has no IPv6 at all.
    assert_eq!(
        seen_from(&lab, &a, &a_cfg, &web_stun).as_deref(),
        Some(HOME1)
    );
    assert_eq!(seen_from(&lab, &a, &a_cfg, &web6_stun), None);
    let a_mesh_only = rules_and_routes(&lab, &a);

    // Through the exit node: the web host sees the exit's address; mesh and server still work.
    sync_a(&lab, &["--use-exit-node", "exit"]);
    lab.eventually(
        Duration::from_secs(20),
        "the web host sees the exit node",
        || {
            sync_a(&lab, &[]);
            seen_from(&lab, &a, &a_cfg, &web_stun).as_deref() == Some(EXIT)
        },
    );
    assert!(
        lab.ping(&a, WEB),
        "a reaches the web host through the exit node"
    );
    // The exit node has IPv6, so it offered ::/0 too: a reaches the IPv6 internet through it
    // (from its IPv6 mesh address, NATed to the exit's).
    lab.eventually(
        Duration::from_secs(20),
        "IPv6 through the exit node",
        || seen_from(&lab, &a, &a_cfg, &web6_stun).as_deref() == Some(EXIT6),
    );
    assert!(lab
        .exec(&a, &["ping", "-6", "-c", "1", "-W", "1", "-n", "-q", WEB6])
        .status
        .success());
    lab.eventually(Duration::from_secs(10), "mesh traffic still flows", || {
        lab.ping(&a, &b_ip)
    });
    let out = lab.exec(
        &a,
        &[wgmesh_bin(), "netcheck", "--config", &a_cfg, "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exit_check"]["ok"], true, "{report}");
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_str(
        &lab.exec_ok(&a, &[wgmesh_bin(), "status", "--config", &a_cfg, "--json"]),
    )
    .unwrap();
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["hostname"] == "exit" && p["exit_node_in_use"] == true),
        "{status}"
    );

    // Clearing the exit node restores rules and routes exactly.
    sync_a(&lab, &["--use-exit-node", "none"]);
    assert_eq!(
        rules_and_routes(&lab, &a),
        a_mesh_only,
        "routing after --use-exit-node none"
    );
    assert_eq!(
        seen_from(&lab, &a, &a_cfg, &web_stun).as_deref(),
        Some(HOME1)
    );
    assert_eq!(
        seen_from(&lab, &a, &a_cfg, &web6_stun),
        None,
        "no IPv6 without the exit"
    );

    // The exit node dies (its link goes down): fail closed by default, within a bounded time.
    sync_a(&lab, &["--use-exit-node", "exit"]);
    lab.eventually(Duration::from_secs(20), "exit in use again", || {
        sync_a(&lab, &[]);
        seen_from(&lab, &a, &a_cfg, &web_stun).as_deref() == Some(EXIT)
    });
    lab.exec_ok(&exit, &["ip", "link", "set", "eth0", "down"]);
    let exit_key = public_key_of(&exit_cfg).unwrap().to_base64();
    lab.eventually(
        Duration::from_secs(30),
        "a drops the dead exit node",
        || {
            sync_a(&lab, &[]);
            !wg_endpoints(&lab, &a, &a_if).contains(&exit_key)
        },
    );
    // Nothing leaks: the web host hears nothing from a, and certainly not its home address.
    for _ in 0..3 {
        sync_a(&lab, &[]);
        assert_eq!(
            seen_from(&lab, &a, &a_cfg, &web_stun),
            None,
            "fail-closed leaked traffic"
        );
        assert_eq!(
            seen_from(&lab, &a, &a_cfg, &web6_stun),
            None,
            "fail-closed leaked IPv6"
        );
    }
    assert!(!lab.ping(&a, WEB));
    // a keeps syncing as its timer would: the checks above take ~4.4 s, longer than the
    // server's 4 s heartbeat timeout, so without a sync the mesh check raced the server
    // marking a offline (and b dropping it).
    lab.eventually(Duration::from_secs(10), "mesh traffic still flows", || {
        sync_a(&lab, &[]);
        lab.ping(&a, &b_ip)
    });

    // With --exit-fallback direct the node uses its own connection while the exit is down...
    sync_a(&lab, &["--exit-fallback", "direct"]);
    lab.eventually(Duration::from_secs(20), "direct fallback", || {
        sync_a(&lab, &[]);
        seen_from(&lab, &a, &a_cfg, &web_stun).as_deref() == Some(HOME1)
    });
    assert_eq!(
        rules_and_routes(&lab, &a),
        a_mesh_only,
        "routing while falling back"
    );
    // ...and returns to the exit node once it is back.
    lab.exec_ok(&exit, &["ip", "link", "set", "eth0", "up"]);
    lab.exec_ok(
        &exit,
        &["ip", "route", "replace", "default", "via", GATEWAY],
    );
    lab.eventually(Duration::from_secs(30), "exit node back in use", || {
        sync_a(&lab, &[]);
        seen_from(&lab, &a, &a_cfg, &web_stun).as_deref() == Some(EXIT)
    });

    // down restores a exactly; the exit node's SIGTERM removes its NAT rule set completely.
    lab.exec_ok(&a, &[wgmesh_bin(), "down", "--config", &a_cfg]);
    assert_eq!(rules_and_routes(&lab, &a), a_pristine, "a after down");
    assert_eq!(
        lab.signal(exit_agent, "TERM"),
        Some(0),
        "{}",
        lab.log("exit.log")
    );
    assert_eq!(
        lab.exec_ok(&exit, &["nft", "list", "ruleset"]),
        nft_before,
        "exit's NAT rules after down"
    );
}
