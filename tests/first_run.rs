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
