//! End to end in network namespaces (issue 23): a "phone" without the agent joins the mesh
//! through a gateway node by loading the configuration `wgmesh device add` printed (with
//! `wg setconf`, addresses set with `ip`, as a WireGuard app would), from behind a home NAT.
//! It reaches a mesh node by address and by `NAME.mesh` (asked of the gateway's resolver);
//! the QR PNG decodes (`zbarimg --raw`) to exactly the printed configuration; the policy
//! keeps it from a node its tags may not reach; it survives the gateway's agent and the
//! server restarting; the server-generated private key is in no file the server writes;
//! removing the device ends its access at once. A device added with `--exit` behind a
//! gateway that is an exit node reaches an internet host through it (wg-quick's full-tunnel
//! routing on the device).
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools, nftables, ping, dig and zbarimg;
//! fails (never skips) without.

mod common;

use common::device_conf::{field, load_config, load_full_tunnel};
use common::netns::{run, Lab, MeshNode as Node, NetnsEtc, Router, FAST_AGENT};
use common::{wgmesh_bin, TempDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SERVER_IP: &str = "198.18.0.1";
const GW_IP: &str = "198.18.0.2";

fn server_url() -> String {
    format!("http://{SERVER_IP}:8080")
}

fn start_server(lab: &mut Lab, ns: &str, log: &str) -> usize {
    let state = lab.dir.path().join("peers.json").display().to_string();
    let policy = lab.dir.path().join("policy.json").display().to_string();
    let listen = format!("{SERVER_IP}:8080");
    lab.spawn(
        ns,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--state",
            &state,
            "--policy",
            &policy,
        ],
        log,
    )
}

fn up(lab: &mut Lab, n: &Node, token: &str, extra: &[&str], log: &str) -> usize {
    let mut flags = FAST_AGENT.to_vec();
    flags.extend_from_slice(extra);
    lab.spawn_up(
        n,
        &server_url(),
        &format!("host-{}", n.name),
        &[format!("WGMESH_TOKEN={token}")],
        &flags,
        log,
    )
}

/// `wgmesh device ARGS` in `ns` against the lab's server: (exit code, stdout, stderr).
fn device(lab: &Lab, ns: &str, args: &[&str]) -> (i32, String, String) {
    common::device_conf::device(lab, ns, &server_url(), args)
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Whether `from` reaches `to` within `secs` seconds of pinging.
fn reaches(lab: &Lab, from: &str, to: &str, secs: u64) -> bool {
    (0..secs).any(|_| lab.ping(from, to))
}

/// The global IPv6 address on `iface` in `ns`: a node's mesh IPv6 address.
fn mesh_ip6(lab: &Lab, ns: &str, iface: &str) -> String {
    let out = lab.exec_ok(
        ns,
        &[
            "ip", "-o", "-6", "addr", "show", "dev", iface, "scope", "global",
        ],
    );
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv6 address on {iface}: {out}"))
        .to_owned()
}

#[test]
fn a_phone_joins_through_its_gateway_by_its_printed_config_and_leaves_when_removed() {
    for tool in ["dig", "zbarimg", "nft", "dnsmasq"] {
        let found = run(&["sh", "-c", &format!("command -v {tool}")])
            .status
            .success();
        assert!(
            found,
            "{tool} is missing: apt-get install dnsutils zbar-tools nftables"
        );
    }
    let mut lab = Lab::new("dev");
    let outside = TempDir::new("devices-phone");
    std::fs::write(
        lab.dir.path().join("policy.json"),
        r#"{"allow": [{"from": ["tag:gw"], "to": ["tag:web", "tag:db", "tag:phone"]},
                      {"from": ["tag:phone"], "to": ["tag:web"]}]}"#,
    )
    .unwrap();
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    let mut server = start_server(&mut lab, &server_ns, "server.log");
    let token = |lab: &Lab, tag: &str| {
        lab.create_token(&server_ns, &server_url(), &["--uses", "2", "--tag", tag])
    };
    let (gw_token, web_token, db_token) = (
        token(&lab, "tag:gw"),
        token(&lab, "tag:web"),
        token(&lab, "tag:db"),
    );
    // The gateway's own upstream resolver: dnsmasq on the server's host, named in the
    // gateway's resolv.conf (before its agent starts: `ip netns exec` binds it then).
    let upstream_at = format!("--listen-address={SERVER_IP}");
    lab.spawn(
        &server_ns,
        &[
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &upstream_at,
            "--address=/example.test/198.18.0.99",
        ],
        "dnsmasq.log",
    );
    let gw = lab.mesh_node("gw", &format!("{GW_IP}/24"));
    let _gw_resolv = NetnsEtc::resolv_conf(&gw.ns, SERVER_IP);
    let web = lab.mesh_node("web", "198.18.0.3/24");
    let db = lab.mesh_node("db", "198.18.0.4/24");
    let gw_iface = lab.ifname("gd", "gw");
    let gateway_flags = [
        "--gateway",
        "--gateway-port",
        "51821",
        "--gateway-interface",
        &gw_iface,
    ];
    let mut gw_agent = up(&mut lab, &gw, &gw_token, &gateway_flags, "gw.log");
    up(&mut lab, &web, &web_token, &[], "web.log");
    up(&mut lab, &db, &db_token, &[], "db.log");
    lab.eventually(Duration::from_secs(30), "every node registered", || {
        [&gw, &web, &db].iter().all(|n| n.mesh_ip().is_some())
    });
    let (gw_ip, web_ip, db_ip) = (
        gw.mesh_ip().unwrap(),
        web.mesh_ip().unwrap(),
        db.mesh_ip().unwrap(),
    );
    lab.eventually(
        Duration::from_secs(30),
        "the gateway reaches web and db",
        || lab.ping(&gw.ns, &web_ip) && lab.ping(&gw.ns, &db_ip),
    );

    // A device's name and gateway are checked before anything is stored.
    let (code, _, err) = device(&lab, &server_ns, &["add", "Bad_Name", "--via", "host-gw"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("device name"), "{err}");
    let (code, _, err) = device(&lab, &server_ns, &["add", "p2", "--via", "host-web"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is not a gateway"), "{err}");

    let png = outside.path().join("phone.png").display().to_string();
    let svg = outside.path().join("phone.svg").display().to_string();
    let mut added = (0, String::new(), String::new());
    lab.eventually(
        Duration::from_secs(20),
        "the gateway's port is known",
        || {
            added = device(
                &lab,
                &server_ns,
                &[
                    "add",
                    "phone",
                    "--via",
                    "host-gw",
                    "--tag",
                    "tag:phone",
                    "--qr-png",
                    &png,
                    "--qr-svg",
                    &svg,
                ],
            );
            added.0 == 0
        },
    );
    let config = added.1.clone();
    assert!(config.starts_with("[Interface]\nPrivateKey = "), "{config}");
    assert_eq!(field(&config, "Endpoint"), format!("{GW_IP}:51821"));
    assert!(
        field(&config, "DNS").starts_with(&format!("{gw_ip}, ")),
        "{config}"
    );
    assert_eq!(
        field(&config, "PublicKey"),
        gw.public_key().unwrap().to_base64()
    );
    for file in [&png, &svg] {
        let mode = std::fs::metadata(file).unwrap();
        let bits = std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777;
        assert_eq!(bits, 0o600, "{file}");
    }
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    // The QR code holds exactly the printed configuration (zbarimg ends its output with a
    // newline of its own).
    let decoded = run(&["zbarimg", "--quiet", "--raw", &png]);
    assert!(decoded.status.success(), "{decoded:?}");
    assert_eq!(
        String::from_utf8_lossy(&decoded.stdout),
        format!("{config}\n")
    );
    let (_, listed, _) = device(&lab, &server_ns, &["list"]);
    assert!(
        listed.contains("phone.mesh") && listed.contains("host-gw"),
        "{listed}"
    );

    // The phone, behind a home NAT, loads it and reaches web by address and by name.
    let (_router, phone_ns) = lab.home("ph", "198.18.0.20", 40, Router::MasqueradeFirewall, None);
    let phone_if = lab.ifname("wg", "ph");
    load_config(&lab, &phone_ns, &phone_if, &config, outside.path());
    assert!(
        reaches(&lab, &phone_ns, &web_ip, 30),
        "the phone cannot reach web through the gateway"
    );
    // And over IPv6: the configuration's second address is the phone's mesh IPv6 address,
    // routed through the same gateway both ways.
    let web_ip6 = mesh_ip6(&lab, &web.ns, &web.iface);
    assert!(
        reaches(&lab, &phone_ns, &web_ip6, 10),
        "the phone cannot reach web's mesh IPv6 address {web_ip6}"
    );
    let phone_ip6 = field(&config, "Address")
        .split(", ")
        .find(|a| a.contains(':'))
        .and_then(|a| a.split('/').next())
        .expect("the configuration gives the phone an IPv6 mesh address")
        .to_owned();
    assert!(
        lab.ping(&web.ns, &phone_ip6),
        "web reaches the phone over IPv6"
    );
    let dns = format!("@{gw_ip}");
    let answer = lab.exec_ok(
        &phone_ns,
        &["dig", &dns, "+short", "+time=2", "host-web.mesh", "A"],
    );
    assert_eq!(answer.trim(), web_ip);
    let _resolv = NetnsEtc::resolv_conf(&phone_ns, &gw_ip);
    assert!(
        lab.ping(&phone_ns, "host-web.mesh"),
        "ping host-web.mesh from the phone"
    );
    // Names outside .mesh: the gateway forwards its devices' queries to its own resolver,
    // and only theirs (to a mesh node it stays no open resolver).
    let outside_name = lab.exec_ok(
        &phone_ns,
        &["dig", &dns, "+short", "+time=4", "example.test", "A"],
    );
    assert_eq!(outside_name.trim(), "198.18.0.99");
    let out = lab.exec(&web.ns, &["dig", &dns, "+time=2", "example.test", "A"]);
    let refused = String::from_utf8_lossy(&out.stdout);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    // Other nodes resolve the phone's name too.
    let phone_ip = field(&config, "Address")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let web_dns = format!("@{web_ip}");
    let named = lab.exec_ok(
        &web.ns,
        &["dig", &web_dns, "+short", "+time=2", "phone.mesh", "A"],
    );
    assert_eq!(named.trim(), phone_ip);
    assert!(lab.ping(&web.ns, &phone_ip), "web reaches the phone");

    // The policy lets tag:phone reach tag:web only: db stays out of reach (the gateway,
    // which reaches db itself, forwards nothing of the phone's there).
    assert!(
        !reaches(&lab, &phone_ns, &db_ip, 3),
        "the policy must keep the phone from db"
    );
    assert!(lab.ping(&gw.ns, &db_ip));
    let table = lab.exec_ok(
        &gw.ns,
        &[
            "nft",
            "list",
            "table",
            "inet",
            &format!("wgmesh-gw-{gw_iface}"),
        ],
    );
    assert!(table.contains(&phone_ip), "{table}");

    // The gateway's agent restarts: the phone is back without touching its configuration.
    assert_eq!(lab.signal(gw_agent, "TERM"), Some(0));
    assert!(
        !lab.exec_ok(&gw.ns, &["ip", "-o", "link"])
            .contains(&gw_iface),
        "down removes the devices' interface"
    );
    gw_agent = up(&mut lab, &gw, &gw_token, &gateway_flags, "gw2.log");
    assert!(
        reaches(&lab, &phone_ns, &web_ip, 40),
        "the phone after the gateway restarted"
    );

    // So does the server.
    assert_eq!(lab.signal(server, "TERM"), Some(0));
    server = start_server(&mut lab, &server_ns, "server2.log");
    lab.eventually(
        Duration::from_secs(20),
        "the server lists the phone again",
        || device(&lab, &server_ns, &["show", "phone"]).0 == 0,
    );
    let (_, shown, _) = device(&lab, &server_ns, &["show", "phone"]);
    assert!(
        shown.contains("PrivateKey = PASTE_THIS_DEVICES_OWN_PRIVATE_KEY_HERE"),
        "{shown}"
    );
    assert!(
        reaches(&lab, &phone_ns, &web_ip, 30),
        "the phone after the server restarted"
    );

    // The generated private key went into the answer and nowhere the server writes.
    let private = field(&config, "PrivateKey");
    let leaks = files_containing(lab.dir.path(), &private);
    assert!(leaks.is_empty(), "the device's private key is in {leaks:?}");
    let audit = std::fs::read_to_string(lab.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("device_add"), "{audit}");

    // Removed: its access ends at once.
    let (code, out, err) = device(&lab, &server_ns, &["remove", "phone"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "removed phone\n");
    lab.eventually(
        Duration::from_secs(5),
        "the removed phone is cut off",
        || !lab.ping(&phone_ns, &web_ip),
    );
    assert!(!reaches(&lab, &phone_ns, &web_ip, 3));
    let (code, _, err) = device(&lab, &server_ns, &["show", "phone"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no device is called phone"), "{err}");
    let _ = (server, gw_agent);
}

#[test]
fn a_device_added_with_exit_reaches_the_internet_through_its_exit_node_gateway() {
    let mut lab = Lab::new("devx");
    let outside = TempDir::new("devices-exit");
    std::fs::write(
        lab.dir.path().join("policy.json"),
        r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#,
    )
    .unwrap();
    let server_ns = lab.host("srv", &format!("{SERVER_IP}/24"));
    start_server(&mut lab, &server_ns, "server.log");
    // An internet host that drops whatever comes from the phone's home router: only a
    // packet the exit node forwarded (from the gateway's address) gets an answer.
    let internet = lab.host("inet", "198.18.0.99/24");
    lab.exec_ok(&internet, &["nft", "add", "table", "inet", "filter"]);
    lab.exec_ok(
        &internet,
        &[
            "nft",
            "add chain inet filter input { type filter hook input priority 0; policy accept; }",
        ],
    );
    lab.exec_ok(
        &internet,
        &[
            "nft",
            "add rule inet filter input ip saddr 198.18.0.20 drop",
        ],
    );
    let gw_token = lab.create_token(&server_ns, &server_url(), &["--uses", "1"]);
    let web_token = lab.create_token(&server_ns, &server_url(), &["--uses", "1"]);
    let gw = lab.mesh_node("gw", &format!("{GW_IP}/24"));
    // The exit node sends the internet's traffic out of its default route.
    lab.exec_ok(
        &gw.ns,
        &["ip", "route", "add", "default", "via", "198.18.0.99"],
    );
    let web = lab.mesh_node("web", "198.18.0.3/24");
    let gw_iface = lab.ifname("gx", "gw");
    up(
        &mut lab,
        &gw,
        &gw_token,
        &[
            "--gateway",
            "--gateway-port",
            "51821",
            "--gateway-interface",
            &gw_iface,
            "--exit-node",
        ],
        "gw.log",
    );
    up(&mut lab, &web, &web_token, &[], "web.log");
    lab.eventually(Duration::from_secs(30), "both nodes registered", || {
        gw.mesh_ip().is_some() && web.mesh_ip().is_some()
    });

    // --exit through a gateway that is no exit node is refused with the reason.
    let (code, _, err) = device(
        &lab,
        &server_ns,
        &["add", "p0", "--via", "host-web", "--exit"],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("is not a gateway") || err.contains("is not an exit node"),
        "{err}"
    );

    let mut added = (0, String::new(), String::new());
    lab.eventually(
        Duration::from_secs(20),
        "the gateway's port is known",
        || {
            added = device(
                &lab,
                &server_ns,
                &["add", "laptop", "--via", "host-gw", "--exit"],
            );
            added.0 == 0
        },
    );
    let config = added.1.clone();
    let allowed = field(&config, "AllowedIPs");
    assert!(
        allowed.contains("0.0.0.0/0") && allowed.contains("::/0"),
        "{config}"
    );

    // Before the tunnel, the internet host drops the device's packets (its router's address).
    let (_router, laptop_ns) = lab.home("lx", "198.18.0.20", 41, Router::MasqueradeFirewall, None);
    assert!(!reaches(&lab, &laptop_ns, "198.18.0.99", 2));
    let iface = lab.ifname("wg", "lx");
    load_full_tunnel(&lab, &laptop_ns, &iface, &config, outside.path());
    // The internet host answers now: it saw the gateway's address, not the router's (the
    // exit node masqueraded the device's packets).
    assert!(
        reaches(&lab, &laptop_ns, "198.18.0.99", 30),
        "the device cannot reach the internet host through its exit-node gateway"
    );
    // And the mesh too, through the same tunnel.
    assert!(reaches(&lab, &laptop_ns, &web.mesh_ip().unwrap(), 10));
}
