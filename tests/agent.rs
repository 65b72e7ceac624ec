//! Integration: the agent engine against a real `wgmesh server` on loopback, with a recording
//! command runner standing in for the OS. Asserts the exact commands a user would see run,
//! including that nothing runs when nothing changed and that one `wg set` carries a change.

mod common;

use common::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wgmesh::agent::client::ApiClient;
use wgmesh::agent::error::AgentError;
use wgmesh::agent::run::engine::{Engine, Sink};
use wgmesh::agent::state::config::ClientConfig;
use wgmesh::keys::PrivateKey;
use wgmesh::os::runner::{CommandError, CommandOutput, RecordingRunner, Runner, Scripted};
use wgmesh::os::{Command, PlannedFile, TargetOs};

/// One recording runner shared by the engine's reader (`wg show dump`) and its plans, so the
/// whole sequence of commands is checked in order.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<RecordingRunner>>);

impl Runner for Shared {
    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        self.0.borrow_mut().run(cmd)
    }
    fn write_file(&mut self, file: &PlannedFile) -> std::io::Result<()> {
        self.0.borrow_mut().write_file(file)
    }
}

impl Shared {
    fn expect(&self, line: &str) -> &Self {
        self.0.borrow_mut().expect(line);
        self
    }
    fn expect_out(&self, line: &str, out: Scripted) -> &Self {
        self.0.borrow_mut().expect_scripted(line, out);
        self
    }
    fn assert_done(&self) {
        self.0.borrow().assert_done();
    }
}

/// `wg show IF dump` output for an interface with `key` on 51820 and these peers.
fn dump(key: &PrivateKey, peers: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        "{}\t{}\t51820\toff\n",
        key.to_base64(),
        key.public_key().to_base64()
    );
    for (public, endpoint, allowed) in peers {
        out.push_str(&format!(
            "{public}\t(none)\t{endpoint}\t{allowed}\t0\t0\t0\t25\n"
        ));
    }
    out
}

fn engine(server: &ServerProcess, dir: &TempDir, reader: Shared) -> Engine {
    let mut config = ClientConfig::generate("wgt0".parse().unwrap());
    config.hostname = Some("me".parse().unwrap());
    let url = format!("http://{}", server.addr).parse().unwrap();
    config.server = Some(url);
    Engine {
        client: ApiClient::new(config.server.clone().unwrap(), Duration::from_secs(5))
            .with_identity(config.private_key.clone(), None),
        config,
        config_path: dir.path().join("client.json"),
        os: TargetOs::Linux,
        reader: Some(Box::new(reader)),
        last_list: None,
        relay_probe: Default::default(),
        persist: true,
        device_routes: Vec::new(),
        poke: None,
        paths: Default::default(),
        path_settings: Default::default(),
        path_choices: Default::default(),
    }
}

#[test]
fn agent_turns_the_server_list_into_exact_commands_and_only_what_changed() {
    let dir = TempDir::new("agent");
    // No relay: with one, every new peer starts relayed (relay first, direct when proven),
    // and this test is about the commands for the published endpoints.
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open", "--no-relay"]);
    let other = new_key();
    let other_reg = post(
        &server,
        "/register",
        &serde_json::json!({"public_key": other, "hostname": "other", "endpoint": "198.18.0.50:51820"}).to_string(),
    );
    assert_eq!(other_reg.status, 200);

    // Each peer's IPv6 mesh address derives from the server's key and its IPv4 address.
    let prefix6 = wgmesh::proto::mesh6::prefix(&server.public_key());
    let v6 = |last: u8| {
        wgmesh::proto::mesh6::address(prefix6, std::net::Ipv4Addr::new(10, 100, 0, last))
    };
    let (me6, other6, third6) = (v6(2), v6(1), v6(3));
    let runner = Shared::default();
    let mut engine = engine(&server, &dir, runner.clone());
    let key = engine.config.private_key.clone();
    let no_such_device = Scripted::Fail(1, "Unable to access interface: No such device".into());

    // First sync: no interface yet, so it is created (kernel first, wireguard-go fallback),
    // configured, and given the one peer in a single `wg set`.
    runner
        .expect_out("wg show wgt0 dump", no_such_device.clone())
        .expect_out("ip link delete dev wgt0", Scripted::Fail(1, "Cannot find device".into()))
        .expect_out("ip link add dev wgt0 type wireguard", Scripted::Fail(2, "Unknown device type.".into()))
        .expect("LOG_LEVEL=silent wireguard-go wgt0")
        .expect("wg set wgt0 private-key /dev/stdin listen-port 51820")
        .expect("ip -4 address add 10.100.0.2/32 dev wgt0")
        .expect("ip link set mtu 1420 up dev wgt0")
        .expect("ip -4 route add 10.100.0.0/16 dev wgt0")
        .expect(&format!("ip -6 address add {me6}/128 dev wgt0 nodad"))
        .expect(&format!("ip -6 route add {prefix6} dev wgt0"))
        .expect(&format!(
            "wg set wgt0 peer {other} endpoint 198.18.0.50:51820 allowed-ips 10.100.0.1/32,{other6}/128 persistent-keepalive 25"
        ));
    let mut sink_runner = runner.clone();
    let summary = engine.sync(&mut Sink::Run(&mut sink_runner)).unwrap();
    runner.assert_done();
    assert!(summary.created_interface);
    assert_eq!(summary.address, "10.100.0.2");
    assert_eq!(summary.added, vec![other.clone()]);

    // Nothing changed: one read, no command, and the server answered 304.
    runner.expect_out(
        "wg show wgt0 dump",
        Scripted::Succeed(dump(
            &key,
            &[(
                &other,
                "198.18.0.50:51820",
                &format!("10.100.0.1/32,{other6}/128"),
            )],
        )),
    );
    let summary = engine.sync(&mut Sink::Run(&mut sink_runner)).unwrap();
    runner.assert_done();
    assert!(summary.list_unchanged);
    assert!(summary.added.is_empty() && summary.updated.is_empty() && summary.removed.is_empty());

    // A new peer, and the old one moved: one `wg set` carries both changes.
    let third = new_key();
    post(&server, "/register", &serde_json::json!({"public_key": third, "hostname": "third", "endpoint": "198.18.0.60:51820"}).to_string());
    post(&server, "/register", &serde_json::json!({"public_key": other, "hostname": "other", "endpoint": "198.18.0.51:51820"}).to_string());
    runner
        .expect_out(
            "wg show wgt0 dump",
            Scripted::Succeed(dump(&key, &[(&other, "198.18.0.50:51820", &format!("10.100.0.1/32,{other6}/128"))])),
        )
        .expect(&format!(
            "wg set wgt0 peer {other} endpoint 198.18.0.51:51820 allowed-ips 10.100.0.1/32,{other6}/128 persistent-keepalive 25 \
             peer {third} endpoint 198.18.0.60:51820 allowed-ips 10.100.0.3/32,{third6}/128 persistent-keepalive 25"
        ));
    let summary = engine.sync(&mut Sink::Run(&mut sink_runner)).unwrap();
    runner.assert_done();
    assert_eq!(summary.updated, vec![other.clone()]);
    assert_eq!(summary.added, vec![third.clone()]);

    // A peer that leaves the mesh is removed.
    let other_id = other_reg.json["peer_id"].as_str().unwrap();
    assert_eq!(
        post(
            &server,
            "/deregister",
            &format!("{{\"peer_id\":\"{other_id}\"}}")
        )
        .status,
        200
    );
    runner
        .expect_out(
            "wg show wgt0 dump",
            Scripted::Succeed(dump(
                &key,
                &[
                    (
                        &other,
                        "198.18.0.51:51820",
                        &format!("10.100.0.1/32,{other6}/128"),
                    ),
                    (
                        &third,
                        "198.18.0.60:51820",
                        &format!("10.100.0.3/32,{third6}/128"),
                    ),
                ],
            )),
        )
        .expect(&format!("wg set wgt0 peer {other} remove"));
    let summary = engine.sync(&mut Sink::Run(&mut sink_runner)).unwrap();
    runner.assert_done();
    assert_eq!(summary.removed, vec![other.clone()]);

    // The server goes away: the sync fails as "server" trouble and runs nothing at all.
    server.kill9();
    let err = engine.sync(&mut Sink::Run(&mut sink_runner)).unwrap_err();
    assert!(matches!(err, AgentError::Server(_)), "{err}");
    runner.assert_done();

    // Teardown removes exactly what was set up.
    runner.expect("ip link delete dev wgt0");
    assert!(engine.teardown(&mut Sink::Run(&mut sink_runner)).unwrap());
    runner.assert_done();
    let saved = ClientConfig::load(&dir.path().join("client.json"))
        .unwrap()
        .unwrap();
    assert!(saved.applied.is_none());
    assert_eq!(saved.private_key, key, "the key survives teardown");
}

#[test]
fn dry_run_prints_each_os_plan_and_changes_nothing() {
    let dir = TempDir::new("dryrun");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let peer = new_key();
    post(&server, "/register", &serde_json::json!({"public_key": peer, "hostname": "peer", "endpoint": "198.18.0.50:51820"}).to_string());
    let config = dir.path().join("c.json").display().to_string();
    let url = format!("http://{}", server.addr);
    // A dry run registers nothing: the machine is registered as a first real run does.
    common::join(
        std::path::Path::new(&config),
        std::slice::from_ref(&url),
        "me",
        None,
        None,
    );
    let before = std::fs::read(&config).unwrap();
    for (os, must_contain) in [
        (
            "linux",
            "ip link add dev wg0 type wireguard || LOG_LEVEL=silent wireguard-go wg0",
        ),
        ("macos", "WG_TUN_NAME_FILE=/var/run/wireguard/wg0.name"),
        ("windows", "wireguard.exe /installtunnelservice"),
    ] {
        let out = std::process::Command::new(wgmesh_bin())
            .args([
                "sync",
                "--dry-run",
                "--os",
                os,
                "--server",
                &url,
                "--config",
                &config,
                "--hostname",
                "me",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(
            plan.contains(must_contain),
            "{os} plan lacks {must_contain:?}:\n{plan}"
        );
        assert!(
            plan.contains(&peer),
            "{os} plan configures the peer:\n{plan}"
        );
        let key = ClientConfig::load(std::path::Path::new(&config))
            .unwrap()
            .unwrap()
            .private_key;
        assert!(
            !plan.contains(&key.to_base64()),
            "{os} plan shows the private key"
        );
        // Every line reads back unchanged through a POSIX shell's word splitting.
        for line in plan
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("<<"))
        {
            let words = shlex::split(line.split("  #").next().unwrap())
                .unwrap_or_else(|| panic!("unquotable: {line}"));
            assert!(!words.is_empty());
        }
    }
    assert_eq!(
        std::fs::read(&config).unwrap(),
        before,
        "a dry run writes nothing"
    );
    let saved = ClientConfig::load(std::path::Path::new(&config))
        .unwrap()
        .unwrap();
    assert!(
        saved.applied.is_none(),
        "a dry run records nothing as applied"
    );
    assert_eq!(
        saved.assignment.unwrap().assigned_ip.to_string(),
        "10.100.0.2",
        "one key, one address"
    );
}

#[test]
fn keys_are_wg_compatible_both_ways() {
    let wg = |args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e} (apt-get install wireguard-tools)"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    for _ in 0..20 {
        let ours = wg(&[wgmesh_bin(), "genkey"], "");
        assert_eq!(
            wg(&["wg", "pubkey"], &ours),
            wg(&[wgmesh_bin(), "pubkey"], &ours)
        );
        let theirs = wg(&["wg", "genkey"], "");
        assert_eq!(
            wg(&["wg", "pubkey"], &theirs),
            wg(&[wgmesh_bin(), "pubkey"], &theirs)
        );
    }
    let bad = std::process::Command::new(wgmesh_bin())
        .arg("pubkey")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("private key"));
}

/// A one-shot `sync` (a fresh engine, as each `wgmesh sync` run is) asks for only what changed
/// since the version cached beside its config, and a cached version the server cannot answer
/// (it restarted) converges through the full list with no stale peer left.
#[test]
fn sync_sends_since_from_the_cached_version_and_recovers_through_full() {
    let dir = TempDir::new("agent-since");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open", "--log-level", "debug"]);
    let first = new_key();
    assert_eq!(register(&server, &first, "first").status, 200);
    let mut engine = engine(&server, &dir, Shared::default());
    engine.fetch_peers().unwrap();
    let cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("client.peers.json")).unwrap())
            .unwrap();
    let version = cache["version"]
        .as_u64()
        .expect("the cache keeps the version");

    // Next run: a fresh engine from the same config, one new peer on the server.
    let second = new_key();
    assert_eq!(register(&server, &second, "second").status, 200);
    let config = engine.config.clone();
    let mut again = engine_from(&server, &dir, config.clone());
    let (peers, unchanged) = again.fetch_peers().unwrap();
    assert!(!unchanged);
    let mut keys: Vec<String> = peers.iter().map(|p| p.public_key.to_base64()).collect();
    keys.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(keys, want);
    // The second run asked for a delta (the server logs a request once it has answered it).
    server.log_once_it_says(&format!("&since={version} "));

    // The server restarts and `first` is deregistered meanwhile: the cached version is
    // unknown to the new process, so the full list replaces the cache.
    drop(server);
    let server = ServerProcess::start(&state, &["--open", "--log-level", "debug"]);
    assert_eq!(
        post(
            &server,
            "/deregister",
            &serde_json::json!({"peer_id": wgmesh::types::PeerId::for_key(
                &wgmesh::keys::PublicKey::from_base64(&first).unwrap()
            )})
            .to_string()
        )
        .status,
        200
    );
    let mut third = engine_from(&server, &dir, config);
    let (peers, _) = third.fetch_peers().unwrap();
    let keys: Vec<String> = peers.iter().map(|p| p.public_key.to_base64()).collect();
    assert_eq!(keys, vec![second], "no stale peer survives a missed delta");
}

fn engine_from(server: &ServerProcess, dir: &TempDir, mut config: ClientConfig) -> Engine {
    // A restarted test server listens on another ephemeral port.
    config.server = Some(format!("http://{}", server.addr).parse().unwrap());
    Engine {
        client: ApiClient::new(config.server.clone().unwrap(), Duration::from_secs(5))
            .with_identity(config.private_key.clone(), Some(server.public_key())),
        config,
        config_path: dir.path().join("client.json"),
        os: TargetOs::Linux,
        reader: None,
        last_list: None,
        paths: Default::default(),
        path_settings: Default::default(),
        path_choices: Default::default(),
        relay_probe: Default::default(),
        persist: true,
        device_routes: Vec::new(),
        poke: None,
    }
}
