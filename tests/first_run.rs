//! What a new user does in the first minutes, on real hosts (network namespaces, wireguard-go):
//! starting `up` twice, stopping it with `down`, running without root, dry runs. Each test
//! runs the real binary with the user's command line and checks what it prints (stdout vs
//! stderr) and its exit code.
//!
//! Needs root, iproute2, wireguard-go, wireguard-tools and ping; fails (never skips) without.

mod common;

use common::netns::{Lab, MeshNode, FAST_AGENT};
use common::wgmesh_bin;
use std::process::Output;
use std::time::Duration;

const SERVER_IP: &str = "198.18.0.1";

fn server_url() -> String {
    format!("http://{SERVER_IP}:8080")
}

/// A lab with an open server on SERVER_IP:8080 in its own namespace; returns the lab and
/// the server's namespace.
fn lab_with_server(label: &str, extra: &[&str]) -> (Lab, String) {
    let mut lab = Lab::new(label);
    let ns = lab.host("server", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let listen = format!("{SERVER_IP}:8080");
    let mut args = vec![
        wgmesh_bin(),
        "server",
        "--listen",
        &listen,
        "--state",
        &state,
        "--udp-listen",
        "off",
    ];
    args.extend_from_slice(extra);
    lab.spawn(&ns, &args, "server.log");
    (lab, ns)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `wgmesh ARGS` in `node`'s namespace with its config and interface.
fn agent(lab: &Lab, node: &MeshNode, args: &[&str]) -> Output {
    let mut full = vec![wgmesh_bin()];
    full.extend_from_slice(args);
    full.extend(["--config", &node.config]);
    lab.exec(&node.ns, &full)
}

fn interface_exists(lab: &Lab, node: &MeshNode) -> bool {
    lab.exec(&node.ns, &["ip", "link", "show", "dev", &node.iface])
        .status
        .success()
}

/// The server's view of `hostname`: (online, present) from `GET /admin/peers`.
fn online(lab: &Lab, server_ns: &str, hostname: &str) -> Option<bool> {
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let url = server_url();
    let out = lab.exec(
        server_ns,
        &[
            wgmesh_bin(),
            "peers",
            "list",
            "--json",
            "--server",
            &url,
            "--admin-secret-file",
            &secret,
        ],
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list["peers"]
        .as_array()?
        .iter()
        .find(|p| p["hostname"] == hostname)
        .map(|p| p["online"] == true)
}

#[test]
fn a_second_up_or_sync_is_refused_with_the_pid_and_down_stops_the_running_up() {
    let (mut lab, server_ns) = lab_with_server("twice", &["--open"]);
    let node = lab.mesh_node("a", "198.18.0.10/24");
    let first = lab.spawn_up(&node, &server_url(), "node-a", &[], &FAST_AGENT, "a.log");
    lab.eventually(Duration::from_secs(20), "up creates the interface", || {
        interface_exists(&lab, &node)
    });
    let pid = lab.child(first).id();
    // `ip netns exec` runs wgmesh as its child; the agent is the exec'd process itself.
    let url = server_url();
    for args in [
        &["up", "--server", &url, "--interface", &node.iface][..],
        &["sync", "--server", &url, "--interface", &node.iface],
    ] {
        let out = agent(&lab, &node, args);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("already running (pid {pid})")),
            "{args:?}: {err}"
        );
        assert!(err.contains("wgmesh down"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
    // The refused runs changed nothing: the first agent and its interface carry on.
    assert!(lab.child(first).try_wait().unwrap().is_none());
    assert!(interface_exists(&lab, &node));
    assert_eq!(online(&lab, &server_ns, "node-a"), Some(true));

    // `down` stops the running `up` (which tells the server and removes the interface),
    // and nothing comes back afterwards.
    let out = agent(&lab, &node, &["down"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("stopped the running agent (pid {pid})")),
        "{}",
        text(&out.stderr)
    );
    let status = lab.child(first).try_wait().unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "up has exited, cleanly"
    );
    assert!(!interface_exists(&lab, &node));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!interface_exists(&lab, &node), "nothing re-creates it");
    assert_eq!(online(&lab, &server_ns, "node-a"), Some(false));

    // With nothing running, `up` starts again as usual.
    lab.spawn_up(&node, &server_url(), "node-a", &[], &FAST_AGENT, "a2.log");
    lab.eventually(Duration::from_secs(20), "up starts again", || {
        interface_exists(&lab, &node)
    });
}

/// `wgmesh ARGS` against the lab's server from its own namespace (admin commands).
fn admin(lab: &Lab, server_ns: &str, args: &[&str]) -> Output {
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let url = server_url();
    let mut full = vec![wgmesh_bin()];
    full.extend_from_slice(args);
    full.extend(["--server", &url, "--admin-secret-file", &secret]);
    lab.exec(server_ns, &full)
}

/// Creates a one-use join token (retrying while the server starts).
fn one_use_token(lab: &Lab, server_ns: &str) -> String {
    let mut token = String::new();
    lab.eventually(Duration::from_secs(20), "the server makes a token", || {
        let out = admin(lab, server_ns, &["token", "create", "--uses", "1"]);
        token = text(&out.stdout).trim().to_owned();
        out.status.success()
    });
    token
}

/// (peers registered, uses left of the only token), as the operator sees them.
fn registry(lab: &Lab, server_ns: &str) -> (usize, serde_json::Value) {
    let peers: serde_json::Value =
        serde_json::from_slice(&admin(lab, server_ns, &["peers", "list", "--json"]).stdout)
            .unwrap();
    let tokens: serde_json::Value =
        serde_json::from_slice(&admin(lab, server_ns, &["token", "list", "--json"]).stdout)
            .unwrap();
    (
        peers["peers"].as_array().unwrap().len(),
        tokens["tokens"][0]["uses_left"].clone(),
    )
}

#[test]
fn up_without_root_or_tools_says_why_before_registering_and_unfixable_refusals_end_it() {
    let (lab, server_ns) = lab_with_server("preflight", &[]);
    let mut lab = lab;
    let node = lab.mesh_node("a", "198.18.0.10/24");
    let token = one_use_token(&lab, &server_ns);
    let url = server_url();
    // The binary where an unprivileged user may run it.
    let bin = lab.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wgmesh = bin.join("wgmesh").display().to_string();
    std::fs::copy(wgmesh_bin(), &wgmesh).unwrap();
    let only_ip = lab.dir.path().join("only-ip");
    std::fs::create_dir_all(&only_ip).unwrap();
    std::os::unix::fs::symlink("/usr/sbin/ip", only_ip.join("ip"))
        .or_else(|_| std::os::unix::fs::symlink("/sbin/ip", only_ip.join("ip")))
        .unwrap();
    for dir in [lab.dir.path(), bin.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let env_token = format!("WGMESH_TOKEN={token}");
    let only_ip_path = format!("PATH={}", only_ip.display());
    let up = |prefix: &[&str]| {
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend([
            "/usr/bin/timeout",
            "20",
            &wgmesh,
            "up",
            "--server",
            &url,
            "--config",
            &node.config,
            "--interface",
            &node.iface,
            "--hostname",
            "node-a",
        ]);
        lab.exec(&node.ns, &args)
    };
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "HOME=/nonexistent",
        &env_token,
    ];
    let no_wg = ["/usr/bin/env", &env_token, &only_ip_path];
    for (prefix, says) in [
        (&nobody[..], "needs root or CAP_NET_ADMIN: run it with sudo"),
        (
            &no_wg[..],
            "wg is not installed (not on PATH): install wireguard-tools",
        ),
    ] {
        let out = up(prefix);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{says}: {err}");
        assert!(err.contains(says), "{err}");
        assert!(err.contains("nothing was registered"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(out.stdout.is_empty());
        assert!(!interface_exists(&lab, &node));
        assert!(
            !std::path::Path::new(&node.config).exists(),
            "no config written"
        );
    }
    assert_eq!(
        registry(&lab, &server_ns),
        (0, serde_json::json!(1)),
        "nothing registered, no token use spent"
    );

    // As root without a token: the server says 401, which no retry can fix; up says so
    // and ends (before, it retried every second for ever).
    let out = lab.exec(
        &node.ns,
        &[
            "timeout",
            "20",
            &wgmesh,
            "up",
            "--server",
            &url,
            "--config",
            &node.config,
            "--interface",
            &node.iface,
            "--hostname",
            "node-a",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot join the mesh"), "{err}");
    assert!(err.contains("(401)"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(!interface_exists(&lab, &node));
}

/// Writes `node`'s config with `key`, so the test decides which of two nodes has the
/// smaller public key (the one that initiates; the other defers its keepalive).
fn write_config(node: &MeshNode, key: &wgmesh::keys::PrivateKey, hostname: &str) {
    let config = serde_json::json!({
        "version": 1,
        "private_key": key.to_base64(),
        "server": server_url(),
        "interface": node.iface,
        "listen_port": 51820,
        "hostname": hostname,
    });
    std::fs::write(&node.config, config.to_string()).unwrap();
}

fn mesh_ip_of(node: &MeshNode) -> Option<String> {
    let text = std::fs::read_to_string(&node.config).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(config["assignment"]["assigned_ip"].as_str()?.to_owned())
}

#[test]
fn a_new_nodes_name_is_answered_within_a_second_of_the_peer_list() {
    let (mut lab, _server_ns) = lab_with_server("names", &["--open"]);
    let a = lab.mesh_node("a", "198.18.0.10/24");
    let b = lab.mesh_node("b", "198.18.0.11/24");
    // a gets the smaller key, so on learning of b it defers b's keepalive: the live-update
    // pass that used to skip the resolver refresh until the next sync (60 s by default).
    let mut keys = [
        wgmesh::keys::PrivateKey::generate(),
        wgmesh::keys::PrivateKey::generate(),
    ];
    keys.sort_by_key(|k| *k.public_key().as_bytes());
    write_config(&a, &keys[0], "node-a");
    write_config(&b, &keys[1], "node-b");
    // Default intervals (sync every 60 s): names must follow the live list, not the sync.
    let debug = ["--log-level", "debug"];
    lab.spawn_up(&a, &server_url(), "node-a", &[], &debug, "a.log");
    lab.eventually(Duration::from_secs(20), "a is up", || {
        mesh_ip_of(&a).is_some() && interface_exists(&lab, &a)
    });
    let a_ip = mesh_ip_of(&a).unwrap();
    lab.spawn_up(&b, &server_url(), "node-b", &[], &debug, "b.log");
    let listed = || {
        let out = agent(&lab, &a, &["status", "--json"]);
        text(&out.stdout).contains("\"node-b\"")
    };
    lab.eventually(Duration::from_secs(30), "a's list has node-b", listed);
    let seen = std::time::Instant::now();
    let server = format!("@{a_ip}");
    lab.eventually(
        Duration::from_secs(5),
        "a answers node-b.mesh (within a second or so of its list; it was up to 60 s)",
        || {
            let out = lab.exec(
                &a.ns,
                &[
                    "dig",
                    &server,
                    "node-b.mesh",
                    "A",
                    "+short",
                    "+time=1",
                    "+tries=1",
                ],
            );
            !text(&out.stdout).trim().is_empty()
        },
    );
    eprintln!("node-b.mesh answered {:?} after the list", seen.elapsed());
}

/// `/etc/netns/NS/hosts`, which `ip netns exec NS` bind-mounts over `/etc/hosts`; the folder
/// is removed on drop.
struct NetnsHosts(std::path::PathBuf);

impl NetnsHosts {
    fn new(ns: &str, contents: &str) -> NetnsHosts {
        let dir = std::path::PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), contents).unwrap();
        NetnsHosts(dir)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(self.0.join("hosts")).unwrap()
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn dns_hosts_keeps_names_in_a_bind_mounted_etc_hosts_and_restores_it() {
    let (mut lab, _server_ns) = lab_with_server("bindhosts", &["--open"]);
    let a = lab.mesh_node("a", "198.18.0.10/24");
    let b = lab.mesh_node("b", "198.18.0.11/24");
    let original = "127.0.0.1\tlocalhost\n198.18.0.1\tcoordinator\n";
    let hosts = NetnsHosts::new(&a.ns, original);
    // Under `ip netns exec`, /etc/hosts is a bind mount: rename(2) onto it fails (EBUSY).
    let up_a = lab.spawn_up(
        &a,
        &server_url(),
        "node-a",
        &[],
        &["--dns-hosts", "--sync-interval", "1"],
        "a.log",
    );
    lab.spawn_up(&b, &server_url(), "node-b", &[], &FAST_AGENT, "b.log");
    lab.eventually(
        Duration::from_secs(30),
        "a's /etc/hosts names node-b",
        || hosts.read().contains("\tnode-b.mesh"),
    );
    let inside = lab.exec_ok(&a.ns, &["cat", "/etc/hosts"]);
    assert!(inside.contains("\tnode-b.mesh"), "{inside}");
    assert!(
        inside.starts_with(original),
        "the user's lines are kept: {inside}"
    );
    let log = lab.log("a.log");
    assert!(!log.contains("busy"), "{log}");
    assert_eq!(
        log.matches("cannot be replaced atomically").count(),
        1,
        "said once: {log}"
    );
    // Stopping up removes the block: the file is as it was.
    assert_eq!(lab.signal(up_a, "TERM"), Some(0));
    assert_eq!(hosts.read(), original);
}

// ---------------------------------------------------------------------------------------------
// README's quick start, as written

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The ```sh blocks of README.md's section `title`, in order.
fn readme_blocks(title: &str) -> Vec<Vec<String>> {
    let readme = readme();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(title))
        .unwrap_or_else(|| panic!("README has a {title:?} section"));
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (line.trim_start().starts_with("```"), current.take()) {
            (true, None) => current = Some(Vec::new()),
            (true, Some(block)) => blocks.push(block),
            (false, Some(mut block)) => {
                block.push(line.to_owned());
                current = Some(block);
            }
            (false, None) => {}
        }
    }
    blocks
}

/// A README line without its trailing `# comment`.
fn command_of(line: &str) -> String {
    match line.find(" #") {
        Some(i) => line[..i].trim().to_owned(),
        None => line.trim().to_owned(),
    }
}

/// The quick start is two commands: the server on its JSON store (the same command the
/// joining walkthrough below starts, so that test runs it), and the whole suite as CI runs it.
#[test]
fn readme_quick_start_is_the_server_and_the_whole_test_suite() {
    let blocks = readme_blocks("Quick start");
    let [block] = &blocks[..] else {
        panic!("the quick start is one block of two commands: {blocks:?}");
    };
    let commands: Vec<String> = block.iter().map(|l| command_of(l)).collect();
    let [server, suite] = &commands[..] else {
        panic!("the quick start is two commands: {commands:?}");
    };
    let server_args = server
        .strip_prefix("cargo run --release -- ")
        .expect("the server runs from the checkout with cargo run");
    let walkthrough = readme_blocks("Joining machines");
    let started = command_of(&walkthrough[1][0]);
    assert_eq!(
        started.trim_end_matches('&').trim(),
        format!("wgmesh {server_args}"),
        "the quick start's server is the one the joining walkthrough (tested below) starts"
    );
    // The suite: .ci/run, executable, running exactly the test command README names.
    assert_eq!(suite, "sudo .ci/run");
    let ci = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ci).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, ".ci/run is executable: {mode:o}");
    let readme = readme();
    let test_command = readme
        .split("The test command is `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("README names its test command");
    let script = std::fs::read_to_string(ci).unwrap();
    assert!(
        script
            .lines()
            .any(|l| l.starts_with(&format!("{test_command} 2>&1"))),
        ".ci/run runs `{test_command}` as README says"
    );
}

#[test]
fn readme_joining_machines_works_as_written_on_a_fresh_machine() {
    let blocks = readme_blocks("Joining machines");
    let [install, server, node, cron] = &blocks[..] else {
        panic!(
            "the joining walkthrough's shape changed ({} blocks): update this test",
            blocks.len()
        );
    };
    let mut lab = Lab::new("quick");
    // One fresh host: the server and the node are the same machine here, SERVER is
    // 127.0.0.1, and the default interface wg0 is the namespace's own. A private /run/wireguard
    // keeps wireguard-go's wg0 socket from meeting any other.
    let ns = lab.bare("host");
    let root = lab.dir.path().join("root");
    let home = lab.dir.path().join("home");
    for dir in [root.join("usr/local/bin"), home.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all("/run/wireguard").unwrap();

    // Background processes keep what they inherit open: the script's own output goes to
    // files, so nothing waits on a pipe the server or `up` holds.
    let mut script = vec![
        format!(
            "exec >{0}/script.out 2>{0}/script.err",
            lab.dir.path().display()
        ),
        "set -eu".to_owned(),
        "mount -t tmpfs tmpfs /run/wireguard".to_owned(),
        format!("export HOME={}", home.display()),
        format!("export PATH={}/usr/local/bin:$PATH", root.display()),
        format!("cd {}", lab.dir.path().display()),
    ];
    // The install line, as written, with the test's build standing in for the release
    // build and a scratch root for /.
    assert_eq!(install.len(), 1, "one install line: {install:?}");
    let line = command_of(&install[0]);
    let (build, copy) = line.split_once(" && ").expect("build && install");
    assert_eq!(build, "cargo build --release --locked");
    assert!(
        copy.starts_with("sudo install -m 0755 target/release/wgmesh /usr/local/bin/"),
        "installs where sudo and the units find it: {copy}"
    );
    script.push(
        copy.trim_start_matches("sudo ")
            .replace("target/release/wgmesh", wgmesh_bin())
            .replace(
                " /usr/local/bin/",
                &format!(" {}/usr/local/bin/", root.display()),
            ),
    );
    script.push("echo '== installed'; command -v wgmesh".to_owned());
    let readme_line = |line: &str| {
        command_of(line)
            .replace("http://SERVER:", "http://127.0.0.1:")
            .replace("wgm_...", "$TOKEN")
    };
    for line in server {
        let command = readme_line(line);
        if command.contains("token create") {
            // The user copies the token it prints.
            script.push(format!("TOKEN=$({command})"));
            script.push("echo \"== token ${TOKEN%%_*}\"".to_owned());
        } else {
            let command = command
                .strip_suffix('&')
                .expect("the server runs in the background");
            script.push(format!("{command} >server.log 2>&1 &"));
            // A moment for the server to start (a person types the next line).
            script.push("n=0; until wgmesh token list >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 100 ]; sleep 0.2; done".to_owned());
        }
    }
    for line in node {
        let command = readme_line(line);
        script.push(format!("echo '== {}'", command.replace('\'', "")));
        if let Some(command) = command.strip_suffix('&') {
            script.push(format!("{command} >up.log 2>&1 &"));
            script.push("n=0; until wgmesh status 2>/dev/null | grep -q wg0; do n=$((n+1)); [ $n -lt 100 ]; sleep 0.2; done".to_owned());
        } else {
            script.push(command);
        }
    }
    script.push("echo '== after down'; ip link show dev wg0 2>&1 || true".to_owned());
    for line in cron {
        let command = readme_line(line);
        script.push(format!("echo '== {command}'"));
        script.push(command);
    }
    script.push("wgmesh down; echo '== done'".to_owned());
    let script = script.join("\n");
    let out = lab.exec(
        &ns,
        &[
            "timeout",
            "120",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    );
    let read = |name: &str| std::fs::read_to_string(lab.dir.path().join(name)).unwrap_or_default();
    let (stdout, stderr) = (read("script.out"), read("script.err"));
    let all = format!(
        "--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}{}\n--- server\n{}\n--- up\n{}",
        text(&out.stderr),
        read("server.log"),
        read("up.log")
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        stdout.contains("== token wgm"),
        "token create printed a token: {all}"
    );
    // status shows this node's interface and address; export wrote the key 0600.
    let status = stdout.split("== wgmesh status").nth(1).unwrap_or_default();
    assert!(
        status.contains("wg0") && status.contains("10.100.0."),
        "{all}"
    );
    let exported = lab.dir.path().join("wg0.conf");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&exported).expect("export --output wrote wg0.conf");
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&exported)
        .unwrap()
        .contains("PrivateKey = "));
    // down stopped up and removed wg0.
    let after_down = stdout.split("== after down").nth(1).unwrap_or_default();
    assert!(after_down.contains("does not exist"), "{all}");
    // sync --json printed a summary on stdout.
    let json = stdout
        .split("--json\n")
        .nth(1)
        .and_then(|rest| rest.split("== done").next())
        .unwrap_or_default();
    let summary: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("sync --json: {e}\n{all}"));
    assert!(summary.is_object(), "{all}");
}

#[test]
fn sync_json_names_the_peers_it_added_and_removed() {
    let (mut lab, _server_ns) = lab_with_server("syncjson", &["--open"]);
    let a = lab.mesh_node("a", "198.18.0.10/24");
    let b = lab.mesh_node("b", "198.18.0.11/24");
    let url = server_url();
    let sync_a = |lab: &Lab| {
        let out = agent(
            lab,
            &a,
            &[
                "sync",
                "--server",
                &url,
                "--interface",
                &a.iface,
                "--hostname",
                "node-a",
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    };
    sync_a(&lab);
    let up_b = lab.spawn_up(&b, &url, "node-b", &[], &FAST_AGENT, "b.log");
    lab.eventually(Duration::from_secs(20), "b is up", || {
        mesh_ip_of(&b).is_some()
    });
    let b_ip = mesh_ip_of(&b).unwrap();
    let summary = sync_a(&lab);
    assert_eq!(summary["added"][0]["hostname"], "node-b", "{summary}");
    assert_eq!(summary["added"][0]["dns_name"], "node-b", "{summary}");
    assert_eq!(summary["added"][0]["address"], b_ip.as_str(), "{summary}");
    assert!(summary["added"][0]["public_key"].is_string(), "{summary}");
    // b stops (its up tells the server): the next sync removes it, named from the old list.
    assert_eq!(lab.signal(up_b, "TERM"), Some(0));
    let summary = sync_a(&lab);
    assert_eq!(summary["removed"][0]["hostname"], "node-b", "{summary}");
    assert_eq!(summary["removed"][0]["address"], b_ip.as_str(), "{summary}");
    let out = agent(&lab, &a, &["down"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn netcheck_with_the_server_on_the_lan_sees_traffic_leave_through_the_exit_node() {
    // One flat LAN: the server, an exit node and a client, all with a default route to a
    // router on the same segment (the "internet" behind it never answers; nothing leaves).
    let mut lab = Lab::new("lanexit");
    let gw = lab.host("gw", "198.18.0.254/24");
    lab.exec_ok(&gw, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let server_ns = lab.host("server", &format!("{SERVER_IP}/24"));
    let state = lab.dir.path().join("peers.json").display().to_string();
    let listen = format!("{SERVER_IP}:8080");
    let stun = format!("{SERVER_IP}:3478");
    lab.spawn(
        &server_ns,
        &[
            wgmesh_bin(),
            "server",
            "--listen",
            &listen,
            "--udp-listen",
            &stun,
            "--state",
            &state,
            "--open",
        ],
        "server.log",
    );
    let exit = lab.mesh_node("exit", "198.18.0.2/24");
    let client = lab.mesh_node("c", "198.18.0.10/24");
    for ns in [&exit.ns, &client.ns] {
        lab.exec_ok(
            ns,
            &["ip", "route", "add", "default", "via", "198.18.0.254"],
        );
    }
    let mut exit_flags = FAST_AGENT.to_vec();
    exit_flags.push("--exit-node");
    lab.spawn_up(&exit, &server_url(), "exit", &[], &exit_flags, "exit.log");
    lab.eventually(Duration::from_secs(20), "the exit node is up", || {
        mesh_ip_of(&exit).is_some() && interface_exists(&lab, &exit)
    });
    let mut client_flags = FAST_AGENT.to_vec();
    client_flags.extend(["--use-exit-node", "exit"]);
    lab.spawn_up(&client, &server_url(), "c", &[], &client_flags, "c.log");
    lab.eventually(
        Duration::from_secs(30),
        "the client's full tunnel is up",
        || {
            let rules = lab.exec_ok(&client.ns, &["ip", "-4", "rule"]);
            let tunnel = rules.contains("lookup 51820");
            let handshake = lab.exec(
                &client.ns,
                &["wg", "show", &client.iface, "latest-handshakes"],
            );
            tunnel
                && text(&handshake.stdout)
                    .split_whitespace()
                    .any(|w| w.parse::<u64>().is_ok_and(|t| t > 0))
        },
    );
    let mut last = None;
    lab.eventually(Duration::from_secs(20), "netcheck passes", || {
        let out = agent(
            &lab,
            &client,
            &["netcheck", "--json", "--timeout-ms", "800"],
        );
        // Exit 0 alone also means "no exit node recorded yet" (no check made): wait for the
        // check itself.
        let checked = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|r| r["exit_check"]["ok"] == true);
        let ok = out.status.code() == Some(0) && checked;
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exit_check"]["ok"], true, "{report}");
    assert_eq!(report["exit_check"]["seen"], "198.18.0.2", "{report}");
    // The plain probe (outside the tunnel: the server is on the LAN) still reports this
    // node's own address as its mapping.
    assert_eq!(
        report["mapped"].as_str().and_then(|m| m.split(':').next()),
        Some("198.18.0.10"),
        "{report}"
    );
}

#[test]
fn dry_runs_register_nothing_write_nothing_and_spend_no_token() {
    let (lab, server_ns) = lab_with_server("dryrun", &[]);
    let mut lab = lab;
    let node = lab.mesh_node("a", "198.18.0.10/24");
    let token = one_use_token(&lab, &server_ns);
    let url = server_url();
    let with_token = format!("WGMESH_TOKEN={token}");
    let dry = |lab: &Lab, command: &str| {
        lab.exec(
            &node.ns,
            &[
                "env",
                &with_token,
                wgmesh_bin(),
                command,
                "--dry-run",
                "--server",
                &url,
                "--config",
                &node.config,
                "--interface",
                &node.iface,
                "--hostname",
                "node-a",
            ],
        )
    };
    for command in ["sync", "up"] {
        let out = dry(&lab, command);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command}: {}",
            text(&out.stderr)
        );
        assert!(
            stdout.starts_with("# not registered with http://198.18.0.1:8080")
                && stdout.contains("with the join token given")
                && stdout.contains("registered nothing"),
            "{command}: {stdout}"
        );
        assert!(
            !std::path::Path::new(&node.config).exists(),
            "{command} wrote a config"
        );
        assert!(!interface_exists(&lab, &node));
        assert_eq!(
            registry(&lab, &server_ns),
            (0, serde_json::json!(1)),
            "{command}"
        );
    }

    // A real first run, with the token in a file (as a shell writes it, newline included).
    let token_file = lab.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_arg = token_file.display().to_string();
    let out = agent(
        &lab,
        &node,
        &[
            "sync",
            "--server",
            &url,
            "--interface",
            &node.iface,
            "--hostname",
            "node-a",
            "--token-file",
            &token_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(interface_exists(&lab, &node));
    assert_eq!(registry(&lab, &server_ns), (1, serde_json::json!(0)));

    // Registered and in step: a dry run plans from the server's list (nothing to change)
    // and writes nothing.
    let before = std::fs::read(&node.config).unwrap();
    let out = dry(&lab, "sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("not registered"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(&node.config).unwrap(), before);
    assert_eq!(registry(&lab, &server_ns), (1, serde_json::json!(0)));
    let out = agent(&lab, &node, &["down"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
