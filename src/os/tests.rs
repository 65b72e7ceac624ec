//! Tests of the plan generators: golden files for every OS and plan (the whole rendered text,
//! compared byte for byte; `UPDATE_GOLDEN=1` rewrites them), shell-quoting round trips, and
//! the properties every plan must keep (no secrets shown, bounded process counts).

use super::runner::{Runner, SystemRunner};
use super::*;
use crate::keys::{PrivateKey, PublicKey};
use ipnet::IpNet;
use std::path::Path;

const PRIVATE: &str = "QNpZDY3OBvXJBPTgNPCX8Y31UzgAFy07ZEs68LXlpWM=";
const PEER_A: &str = "zg/lcXNzdCZCv3DiThn1/ik4x+2T0CQk4PNma2RpDVg=";
const PEER_B: &str = "rayaQJ75xg+gezeMWtSQHh/zGGjwNTnxUxh1pWbNoGo=";
const PEER_C: &str = "/R8q7i+dnixuw76yJCzFO8tRjw9qglyEwdpV2JBuzH4=";
const ALL: [TargetOs; 3] = [TargetOs::Linux, TargetOs::Macos, TargetOs::Windows];

fn iface(name: &str) -> InterfaceName {
    name.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn key(s: &str) -> PublicKey {
    PublicKey::from_base64(s).unwrap()
}

fn spec() -> InterfaceSpec {
    InterfaceSpec {
        name: iface("wg0"),
        private_key: PrivateKey::from_base64(PRIVATE).unwrap(),
        listen_port: 51820,
        address: "10.100.0.5".parse().unwrap(),
        network: "10.100.0.0/16".parse().unwrap(),
        ipv6: Some((
            "fd12:3456:789a::a64:5".parse().unwrap(),
            "fd12:3456:789a::/96".parse().unwrap(),
        )),
        mtu: DEFAULT_MTU,
    }
}

fn peer_a() -> PeerSpec {
    PeerSpec {
        public_key: key(PEER_A),
        endpoint: Some("198.18.0.7:51820".parse().unwrap()),
        allowed_ips: vec![net("10.100.0.7/32"), net("198.18.4.0/24")],
        persistent_keepalive: Some(25),
    }
}

fn peer_b() -> PeerSpec {
    PeerSpec {
        public_key: key(PEER_B),
        endpoint: Some("[::1]:51821".parse().unwrap()),
        allowed_ips: vec![net("10.100.0.8/32")],
        persistent_keepalive: None,
    }
}

/// A peer whose endpoint the server does not know, with nothing routed to it.
fn peer_c() -> PeerSpec {
    PeerSpec {
        public_key: key(PEER_C),
        endpoint: None,
        allowed_ips: vec![],
        persistent_keepalive: None,
    }
}

fn exit_peer() -> PeerSpec {
    PeerSpec {
        allowed_ips: vec![net("10.100.0.7/32"), net("0.0.0.0/0")],
        ..peer_a()
    }
}

/// The kernel's name for the interface: utunN on macOS.
fn real(os: TargetOs) -> InterfaceName {
    match os {
        TargetOs::Macos => iface("utun3"),
        _ => iface("wg0"),
    }
}

fn keep_outside() -> Vec<IpAddr> {
    // The coordination server and the exit peer's endpoint again (deduplicated).
    ["198.18.0.1", "198.18.0.7"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn ipv6_halves_are_left_out_when_an_ipv6_address_must_stay_outside() {
    // No IPv6 gateway to pin it to: routing ::/1 and 8000::/1 into the tunnel would capture
    // it (and, for the exit's endpoint, loop WireGuard's own packets).
    let mut outside = keep_outside();
    outside.push("2001:db8::1".parse().unwrap());
    for os in [TargetOs::Macos, TargetOs::Windows] {
        let on = full_tunnel_on(os, &real(os), &exit_peer(), &outside, GATEWAY).render();
        assert!(!on.contains("::/1") && !on.contains("8000::/1"), "{on}");
        let plain = full_tunnel_on(os, &real(os), &exit_peer(), &keep_outside(), GATEWAY).render();
        assert!(
            plain.contains("::/1") && plain.contains("8000::/1"),
            "{plain}"
        );
    }
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

fn changes() -> PeerChanges {
    PeerChanges {
        upsert: vec![peer_a(), peer_c()],
        remove: vec![key(PEER_B)],
    }
}

/// Every plan of every OS, named as its golden file.
fn all_plans() -> Vec<(String, Plan)> {
    let mut plans = Vec::new();
    for os in ALL {
        let r = real(os);
        let mut add = |name: &str, plan: Plan| plans.push((format!("{os}_{name}"), plan));
        add("create", create(os, &spec().name));
        add(
            "configure",
            configure(os, &spec(), &r, &[peer_a(), peer_b(), peer_c()], None),
        );
        add("apply_peers", apply_peers(os, &r, &changes()));
        add(
            "routes",
            routes(
                os,
                &r,
                &[net("192.168.50.0/24"), net("fd00:1::/64")],
                &[net("172.16.0.0/12")],
            ),
        );
        add("destroy", destroy(os, &spec().name, &r, spec().network));
        add(
            "full_tunnel_on",
            full_tunnel_on(os, &r, &exit_peer(), &keep_outside(), GATEWAY),
        );
        add(
            "full_tunnel_off",
            full_tunnel_off(os, &r, &exit_peer(), &keep_outside(), GATEWAY),
        );
        let mesh = spec().network;
        for (fw, label) in [
            (Firewall::Nftables, "nft"),
            (Firewall::Iptables, "iptables"),
        ] {
            let eth0 = iface("eth0");
            if let Ok(plan) = exit_node_nat_on(os, &r, &eth0, mesh, fw) {
                add(&format!("exit_node_nat_{label}_on"), plan);
            }
            if let Ok(plan) = exit_node_nat_off(os, &r, &eth0, mesh, fw) {
                add(&format!("exit_node_nat_{label}_off"), plan);
            }
        }
    }
    plans.extend(super::dns::golden_plans());
    plans.extend(super::subnet_routes::golden_plans());
    let boot = |exe, config| super::boot::install(exe, config).expect("default paths");
    plans.push((
        "windows_service_install".into(),
        boot(super::boot::DEFAULT_EXE, super::boot::DEFAULT_CONFIG),
    ));
    plans.push(("windows_service_uninstall".into(), super::boot::uninstall()));
    // With an exit node and `--exit-fallback block`: the exit peer alone, with its /0.
    let mut exit = exit_peer();
    exit.allowed_ips.push(net("0.0.0.0/0"));
    let windows = real(TargetOs::Windows);
    plans.push((
        "windows_configure_kill_switch".into(),
        configure(TargetOs::Windows, &spec(), &windows, &[], Some(&exit)),
    ));
    plans
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A line diff (longest common subsequence) of expected and actual text, `-`/`+` marked.
fn diff_lines(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn plans_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = golden_dir();
    let mut failures = Vec::new();
    for (name, plan) in all_plans() {
        let path = dir.join(format!("{name}.txt"));
        let actual = plan.render();
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "--- {} (expected)\n+++ actual\n{}",
                path.display(),
                diff_lines(&expected, &actual)
            )),
            Err(e) => failures.push(format!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it. Actual:\n{actual}",
                path.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 rewrites after you check the diff):\n{}",
        failures.join("\n")
    );
}

#[test]
fn diff_shows_removed_then_added_lines() {
    assert_eq!(diff_lines("a\nb\nc\n", "a\nB\nc\n"), "  a\n- b\n+ B\n  c\n");
}

#[test]
fn every_golden_file_belongs_to_a_plan() {
    let names: Vec<String> = all_plans().into_iter().map(|(n, _)| n).collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let stem = file.trim_end_matches(".txt");
        assert!(names.iter().any(|n| n == stem), "stale golden file {file}");
    }
}

#[test]
fn no_plan_shows_or_debug_prints_the_private_key() {
    for (name, plan) in all_plans() {
        assert!(!plan.render().contains(PRIVATE), "{name}");
        assert!(!format!("{plan:?}").contains(PRIVATE), "{name}");
        for cmd in &plan.commands {
            assert!(!cmd.args.iter().any(|a| a.contains(PRIVATE)), "{name}");
        }
    }
}

#[test]
fn the_private_key_reaches_stdin_and_the_windows_file() {
    let key_line = format!("{PRIVATE}\n");
    let linux = configure(TargetOs::Linux, &spec(), &spec().name, &[], None);
    assert_eq!(
        linux.commands[0].stdin.as_ref().unwrap().as_bytes(),
        key_line.as_bytes()
    );
    let windows = configure(
        TargetOs::Windows,
        &spec(),
        &spec().name,
        &[],
        Some(&peer_a()),
    );
    let text = String::from_utf8(windows.files[0].contents.as_bytes().to_vec()).unwrap();
    assert!(text.contains(&format!("PrivateKey = {PRIVATE}")), "{text}");
    assert_eq!(windows.files[0].mode, 0o600);
}

#[test]
fn no_changes_make_an_empty_plan() {
    for os in ALL {
        let plan = apply_peers(os, &real(os), &PeerChanges::default());
        assert!(plan.is_empty(), "{os}: {}", plan.render());
        assert!(routes(os, &real(os), &[], &[]).is_empty());
    }
}

#[test]
fn many_peers_take_few_processes_and_stay_under_the_command_line_limit() {
    let peers: Vec<PeerSpec> = (0..1000u32)
        .map(|i| PeerSpec {
            public_key: PublicKey::from_bytes({
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                b
            }),
            endpoint: Some(
                format!("198.18.{}.{}:51820", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
            ),
            allowed_ips: vec![net(&format!("10.100.{}.{}/32", i / 250, i % 250 + 1))],
            persistent_keepalive: Some(25),
        })
        .collect();
    let removes: Vec<PublicKey> = (0..200u8).map(|i| PublicKey::from_bytes([i; 32])).collect();
    let changes = PeerChanges {
        upsert: peers.clone(),
        remove: removes,
    };
    for os in ALL {
        let plan = apply_peers(os, &real(os), &changes);
        let limit = arg_budget(os);
        let expected_max = 1 + (1000 * 140 + 200 * 60) / (limit - 200);
        assert!(
            plan.commands.len() <= expected_max,
            "{os}: {} processes",
            plan.commands.len()
        );
        let mut peers_seen = 0;
        for cmd in &plan.commands {
            let len: usize = cmd.args.iter().map(|a| a.len() + 1).sum();
            if os == TargetOs::Windows {
                assert!(len <= limit, "{os}: {len} bytes of arguments");
            }
            match cmd.args[0].as_str() {
                "set" => {}
                "addconf" => {
                    assert_eq!(cmd.args[2], "/dev/stdin");
                    let text = std::str::from_utf8(cmd.stdin.as_ref().unwrap().as_bytes())
                        .unwrap()
                        .to_owned();
                    peers_seen += text.matches("[Peer]").count();
                }
                other => panic!("{os}: unexpected wg {other}"),
            }
            assert_eq!(cmd.args[1], real(os).as_str());
            peers_seen += cmd.args.iter().filter(|a| *a == "peer").count();
        }
        assert_eq!(peers_seen, 1200, "{os}");
        // A mass change costs a constant number of processes where the OS allows it.
        if os != TargetOs::Windows {
            assert_eq!(plan.commands.len(), 2, "{os}");
        }
    }
    // Ten times more still takes two processes.
    let big = PeerChanges {
        upsert: (0..10).flat_map(|_| peers.clone()).collect(),
        remove: (0..10_000u32)
            .map(|i| {
                let mut b = [7u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                PublicKey::from_bytes(b)
            })
            .collect(),
    };
    assert_eq!(
        apply_peers(TargetOs::Linux, &real(TargetOs::Linux), &big)
            .commands
            .len(),
        2
    );
    // Linux's configure puts the key and the first peers in one process.
    let plan = configure(TargetOs::Linux, &spec(), &spec().name, &peers, None);
    assert_eq!(plan.commands[0].args[2], "private-key");
    assert!(plan.commands[0].stdin.is_some());
    assert!(plan.commands[1].stdin.is_none());
}

#[test]
fn exit_node_nat_is_refused_on_macos_and_windows() {
    for os in [TargetOs::Macos, TargetOs::Windows] {
        let err = exit_node_nat_on(
            os,
            &real(os),
            &iface("en0"),
            spec().network,
            Firewall::Nftables,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{os} is not supported as an exit node yet: run the exit node on Linux")
        );
    }
}

#[test]
fn target_os_parses_its_names_and_explains_refusals() {
    for os in ALL {
        assert_eq!(os.to_string().parse::<TargetOs>().unwrap(), os);
    }
    let err = "freebsd".parse::<TargetOs>().unwrap_err();
    assert!(err.0.contains("use linux, macos or windows"), "{err}");
    assert!("Linux".parse::<TargetOs>().is_err());
    if cfg!(target_os = "linux") {
        assert_eq!(TargetOs::current(), Some(TargetOs::Linux));
    }
}

#[test]
fn name_file_paths_and_contents() {
    assert_eq!(
        macos_name_file(&iface("wg0")),
        PathBuf::from("/var/run/wireguard/wg0.name")
    );
    assert_eq!(parse_name_file("utun7\n").unwrap(), iface("utun7"));
    assert!(parse_name_file("utun7; rm -rf /").is_err());
    assert!(parse_name_file("").is_err());
}

#[test]
fn secrets_are_redacted_in_debug() {
    let secret = Secret::new("private key", b"hunter2".to_vec());
    assert_eq!(format!("{secret:?}"), "Secret(private key, <redacted>)");
    let cmd = Command::new("wg").stdin(Payload::Secret(secret));
    assert!(!format!("{cmd:?}").contains("hunter2"));
    assert!(!cmd.render().contains("hunter2"));
}

fn hostile() -> Vec<String> {
    [
        "",
        " ",
        "a b",
        "it's",
        "'",
        "''",
        "\"",
        "$(id)",
        "`id`",
        "${HOME}",
        "a;b",
        "a|b",
        "a&&b",
        "#comment",
        "a#b",
        "~",
        "~root",
        "*",
        "?",
        "[a]",
        "{a,b}",
        "a\nb",
        "a\tb",
        "\\",
        "\\'",
        "-rf",
        "--",
        "x=y",
        "é🦀",
        "!",
        "%s",
        "C:\\ProgramData\\wgmesh\\wg0.conf",
        "<",
        ">",
        "(",
        ")",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn rendered_argv_splits_back_unchanged() {
    let words = hostile();
    let cmd = Command::new("prog").args(words.clone());
    let split = shlex::split(&cmd.render_argv()).expect("shlex could not split the line");
    assert_eq!(&split[0], "prog");
    assert_eq!(&split[1..], &words[..]);
    for word in &words {
        let program = Command::new(word.clone());
        let split = shlex::split(&program.render_argv()).unwrap();
        assert_eq!(split, vec![word.clone()]);
    }
    // Environment values and a program name that looks like an assignment.
    let cmd = Command::new("x=y").env("V", "a 'b' $c").arg("z");
    assert_eq!(cmd.render_argv(), "V='a '\\''b'\\'' $c' 'x=y' z");
    assert_eq!(Command::new("x=y").render_argv(), "'x=y'");
}

/// The real judge of "a POSIX shell reads it back unchanged": /bin/sh prints each argument
/// NUL-terminated.
#[test]
fn posix_shell_reads_rendered_lines_back_unchanged() {
    let words = hostile();
    let printer = Command::new("printf").arg("%s\\0").args(words.clone());
    let script = printer.render_argv();
    let out = SystemRunner::new()
        .run(&Command::new("sh").args(["-c", &script]))
        .unwrap();
    let got: Vec<&str> = out.stdout.split('\0').collect();
    assert_eq!(&got[..got.len() - 1], &words[..]);
    // A whole rendered line with a fallback, a tolerated failure and a here-document.
    let line = Command::new("false")
        .or_else(Command::new("cat").stdin(Payload::Text("EOF\n$(id) 'x'\n".into())))
        .tolerate_failure()
        .render();
    let out = SystemRunner::new()
        .run(&Command::new("sh").args(["-c", &line]))
        .unwrap();
    assert_eq!(out.stdout, "EOF\n$(id) 'x'\n");
    // A program named like an assignment is run (and not found), not assigned.
    let line = Command::new("wgm=no-such-program").env("V", "1").render();
    let err = SystemRunner::new()
        .run(&Command::new("sh").args(["-c", &line]))
        .unwrap_err();
    assert_eq!(err.exit_status(), Some(127), "{err}");
}

#[test]
fn render_marks_fallbacks_tolerance_stdin_and_files() {
    let cmd = Command::new("ip")
        .args(["link", "add"])
        .or_else(Command::new("wireguard-go").arg("wg0"))
        .tolerate_failure();
    assert_eq!(cmd.render(), "ip link add || wireguard-go wg0 || true");
    let plan = configure(TargetOs::Windows, &spec(), &spec().name, &[], None);
    assert!(plan
        .render()
        .starts_with("# write C:\\ProgramData\\wgmesh\\wg0.conf (mode 0600)\n"));
}

/// Prefixes every command of `plan` (fallbacks included) with `ip netns exec NS`, under an
/// inherited `LOG_LEVEL=debug` (which once made a daemonizing wireguard-go hold the runner's
/// pipes open until the timeout).
fn in_netns(ns: &str, plan: &Plan) -> Plan {
    fn wrap(ns: &str, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip")
            .args(["netns", "exec", ns, &cmd.program])
            .args(cmd.args.clone());
        // As if the agent itself ran with LOG_LEVEL=debug: the plan's own settings must win.
        wrapped.env = vec![("LOG_LEVEL".into(), "debug".into())];
        wrapped.env.extend(cmd.env.iter().cloned());
        wrapped.stdin = cmd.stdin.clone();
        wrapped.allow_failure = cmd.allow_failure;
        wrapped.fallback = cmd.fallback.as_deref().map(|f| Box::new(wrap(ns, f)));
        wrapped
    }
    Plan {
        files: plan.files.clone(),
        commands: plan.commands.iter().map(|c| wrap(ns, c)).collect(),
    }
}

/// A private network namespace for running real plans, deleted (with the interface, which
/// makes a wireguard-go fallback exit) even when the test fails.
struct Namespace {
    name: String,
    iface: String,
}

impl Namespace {
    fn new(tag: &str) -> Namespace {
        // Unique per namespace, not just per process: tests run in parallel threads, and
        // wireguard-go's control socket (/var/run/wireguard/NAME.sock) is not namespaced.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        let pid = std::process::id();
        let ns = Namespace {
            name: format!("wgm-os-{tag}-{pid}"),
            iface: format!("wgm{n}p{}", pid % 100_000_000),
        };
        let add = Plan::of(vec![Command::new("ip").args(["netns", "add", &ns.name])]);
        runner::execute(&add, &mut SystemRunner::new()).expect("ip netns add (needs root)");
        ns
    }

    fn run(&self, plan: &Plan) {
        let wrapped = in_netns(&self.name, plan);
        let mut runner = SystemRunner {
            timeout: std::time::Duration::from_secs(10),
        };
        runner::execute(&wrapped, &mut runner)
            .unwrap_or_else(|e| panic!("{e}\nplan:\n{}", plan.render()));
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let cmd = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args.iter().copied());
        SystemRunner::new()
            .run(&cmd)
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout
    }

    fn dump(&self) -> crate::os::wgdump::Dump {
        crate::os::wgdump::parse(&self.output("wg", &["show", &self.iface, "dump"])).unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let cleanup = Plan::of(vec![
            Command::new("ip")
                .args(["-n", &self.name, "link", "del", &self.iface])
                .tolerate_failure(),
            Command::new("ip")
                .args(["netns", "del", &self.name])
                .tolerate_failure(),
            Command::new("rm")
                .args(["-f", &format!("/var/run/wireguard/{}.sock", self.iface)])
                .tolerate_failure(),
        ]);
        let _ = runner::execute(&cleanup, &mut SystemRunner::new());
    }
}

/// Runs the Linux plans for real in a private namespace (kernel WireGuard or, where the
/// kernel has none, the wireguard-go fallback) and checks the kernel's state after each:
/// configure + dump + diff is a no-op, peer updates land, routing and NAT go on and off
/// without leftovers, and the exit-node NAT can be re-applied without duplicating rules.
/// Needs root, iproute2, wireguard-tools, wireguard-go, nft and iptables; fails without them.
#[test]
fn linux_plans_run_for_real_in_a_private_namespace() {
    use crate::agent::decide::reconcile::diff;
    let ns = Namespace::new("plans");
    let name = iface(&ns.iface);
    let spec = InterfaceSpec {
        name: name.clone(),
        // Only benchmarking addresses (198.18.0.0/15), even inside a private namespace.
        address: "198.19.0.5".parse().unwrap(),
        network: "198.19.0.0/16".parse().unwrap(),
        ..spec()
    };
    let in_range = |p: PeerSpec| PeerSpec {
        allowed_ips: p
            .allowed_ips
            .iter()
            .map(|n| net(&n.to_string().replace("10.100.", "198.19.")))
            .collect(),
        ..p
    };
    let (peer_a, peer_b, peer_c) = (in_range(peer_a()), in_range(peer_b()), in_range(peer_c()));
    let os = TargetOs::Linux;
    ns.run(&create(os, &name));
    ns.run(&configure(
        os,
        &spec,
        &name,
        &[peer_a.clone(), peer_b.clone(), peer_c.clone()],
        None,
    ));
    let dump = ns.dump();
    assert_eq!(
        dump.interface.public_key,
        Some(spec.private_key.public_key())
    );
    assert_eq!(dump.interface.listen_port, 51820);
    let first = diff(
        &[peer_a.clone(), peer_b.clone(), peer_c.clone()],
        &dump.peers,
    );
    assert!(first.is_empty(), "{first:?}\n{dump:?}");
    let addr = ns.output("ip", &["-4", "-o", "address", "show", "dev", &ns.iface]);
    assert!(addr.contains("inet 198.19.0.5/32"), "{addr}");
    assert!(ns
        .output("ip", &["link", "show", "dev", &ns.iface])
        .contains("mtu 1420"));

    // Update a, drop b, add c; then the diff is empty again.
    let a2 = PeerSpec {
        allowed_ips: vec![net("198.19.0.7/32")],
        persistent_keepalive: None,
        ..peer_a.clone()
    };
    let c2 = PeerSpec {
        allowed_ips: vec![net("198.19.0.9/32")],
        persistent_keepalive: Some(10),
        ..peer_c.clone()
    };
    let desired = [a2, c2];
    let changes = diff(&desired, &ns.dump().peers);
    assert_eq!((changes.upsert.len(), changes.remove.len()), (2, 1));
    ns.run(&apply_peers(os, &name, &changes));
    let after = ns.dump();
    let again = diff(&desired, &after.peers);
    assert!(again.is_empty(), "{again:?}\n{after:?}");

    ns.run(&routes(os, &name, &[net("198.18.4.0/24")], &[]));
    ns.run(&routes(
        os,
        &name,
        &[net("198.18.4.0/24")],
        &[net("198.18.9.0/24")],
    ));
    let table = ns.output("ip", &["-4", "route", "show", "dev", &ns.iface]);
    assert!(
        table.contains("198.18.4.0/24") && table.contains("198.19.0.0/16"),
        "{table}"
    );
    ns.run(&routes(os, &name, &[], &[net("198.18.4.0/24")]));

    let rules_before = ns.output("ip", &["-4", "rule", "show"]);
    let exit = in_range(exit_peer());
    ns.run(&full_tunnel_on(os, &name, &exit, &keep_outside(), GATEWAY));
    let rules = ns.output("ip", &["-4", "rule", "show"]);
    assert!(
        rules.contains("not from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
    assert!(
        rules.contains("lookup main suppress_prefixlength 0"),
        "{rules}"
    );
    assert_eq!(ns.dump().interface.fwmark, Some(FWMARK_TABLE));
    ns.run(&full_tunnel_off(os, &name, &exit, &keep_outside(), GATEWAY));
    assert_eq!(ns.output("ip", &["-4", "rule", "show"]), rules_before);
    assert_eq!(ns.dump().interface.fwmark, None);

    let lo = iface("lo");
    let mesh = spec.network;
    for _ in 0..2 {
        ns.run(&exit_node_nat_on(os, &name, &lo, mesh, Firewall::Nftables).unwrap());
    }
    let table = format!("wgmesh-{}", ns.iface);
    let listed = ns.output("nft", &["list", "table", "ip", &table]);
    assert_eq!(listed.matches("masquerade").count(), 1, "{listed}");
    ns.run(&exit_node_nat_off(os, &name, &lo, mesh, Firewall::Nftables).unwrap());
    assert!(!ns.output("nft", &["list", "tables"]).contains(&table));

    for _ in 0..2 {
        ns.run(&exit_node_nat_on(os, &name, &lo, mesh, Firewall::Iptables).unwrap());
    }
    let nat = ns.output("iptables", &["-w", "-t", "nat", "-S"]);
    assert_eq!(nat.matches("MASQUERADE").count(), 1, "{nat}");
    assert_eq!(nat.matches("-A POSTROUTING -j WGMESH-").count(), 1, "{nat}");
    let filter = ns.output("iptables", &["-w", "-t", "filter", "-S"]);
    assert_eq!(
        filter.matches("-A FORWARD -j WGMESH-").count(),
        1,
        "{filter}"
    );
    ns.run(&exit_node_nat_off(os, &name, &lo, mesh, Firewall::Iptables).unwrap());
    for t in ["nat", "filter"] {
        let rules = ns.output("iptables", &["-w", "-t", t, "-S"]);
        assert!(!rules.contains("WGMESH"), "{rules}");
    }

    ns.run(&destroy(os, &name, &name, mesh));
    ns.run(&destroy(os, &name, &name, mesh)); // already gone: tolerated
    let links = ns.output("ip", &["link", "show"]);
    assert!(!links.contains(&ns.iface), "{links}");
}

/// A mass change (1,000 peers replaced by 1,000 others) lands in two processes for real, and
/// the interface then matches exactly: `wg addconf` from stdin and one `wg set` of removals.
/// Needs root, iproute2, wireguard-tools and wireguard-go (or kernel WireGuard).
#[test]
fn a_thousand_peer_change_lands_in_two_processes_for_real() {
    use crate::agent::decide::reconcile::diff;
    let ns = Namespace::new("bulk");
    let name = iface(&ns.iface);
    let spec = InterfaceSpec {
        name: name.clone(),
        address: "198.19.0.5".parse().unwrap(),
        network: "198.19.0.0/16".parse().unwrap(),
        ..spec()
    };
    let os = TargetOs::Linux;
    ns.run(&create(os, &name));
    ns.run(&configure(os, &spec, &name, &[], None));
    let batch = |_: u8| -> Vec<PeerSpec> {
        (0..1000u32)
            .map(|i| PeerSpec {
                public_key: PrivateKey::generate().public_key(),
                endpoint: Some(
                    format!("198.18.{}.{}:51820", i / 250, i % 250 + 1)
                        .parse()
                        .unwrap(),
                ),
                allowed_ips: vec![net(&format!("198.19.{}.{}/32", 10 + i / 250, i % 250 + 1))],
                persistent_keepalive: Some(25),
            })
            .collect()
    };
    for desired in [batch(1), batch(2)] {
        let changes = diff(&desired, &ns.dump().peers);
        let plan = apply_peers(os, &name, &changes);
        assert!(plan.commands.len() <= 2, "{}", plan.render());
        ns.run(&plan);
        let after = ns.dump();
        assert_eq!(after.peers.len(), 1000);
        let again = diff(&desired, &after.peers);
        assert!(again.is_empty(), "{again:?}");
        // The interface itself was left alone.
        assert_eq!(after.interface.listen_port, spec.listen_port);
        assert_eq!(
            after.interface.public_key,
            Some(spec.private_key.public_key())
        );
    }
}
