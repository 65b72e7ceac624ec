//! A small internet of network namespaces for the path and relay tests (addresses in
//! 198.18.0.0/15): a gateway routing one public segment, the coordination server's host on
//! it, public hosts, home routers of every kind behind it, and nodes running `wgmesh up`.

#![allow(dead_code)]

use super::netns::{Lab, Router};
use super::wgmesh_bin;
use std::time::{Duration, Instant};

/// The coordination server's public address.
pub const SERVER: &str = "198.18.0.1";
/// The public segment's gateway: every public host and home router routes through it.
pub const GATEWAY: &str = "198.18.0.254";

/// A node running `wgmesh up`.
pub struct Node {
    /// Its hostname (and log name).
    pub name: &'static str,
    /// Its namespace.
    pub ns: String,
    /// Its config file.
    pub cfg: String,
    /// Its agent's child index in the lab.
    pub agent: usize,
}

/// The public segment: a gateway and the coordination server's host.
pub struct Internet {
    /// The lab holding every namespace.
    pub lab: Lab,
    /// The server's namespace.
    pub srv: String,
    /// Flags every agent of this internet gets (the test file's timers or log level).
    agent_flags: &'static [&'static str],
}

impl Internet {
    /// A new internet; every `wgmesh up` started in it gets `agent_flags`.
    pub fn new(label: &str, agent_flags: &'static [&'static str]) -> Internet {
        let mut lab = Lab::new(label);
        let gw = lab.host("gw", &format!("{GATEWAY}/24"));
        lab.exec_ok(&gw, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let srv = lab.host("srv", &format!("{SERVER}/24"));
        lab.exec_ok(&srv, &["ip", "route", "add", "default", "via", GATEWAY]);
        Internet {
            lab,
            srv,
            agent_flags,
        }
    }

    /// A file in the lab's folder.
    pub fn path(&self, name: &str) -> String {
        self.lab.dir.path().join(name).display().to_string()
    }

    /// A host on the public segment itself, with no NAT in front of it.
    pub fn public_host(&mut self, name: &str, ip: &str) -> String {
        let ns = self.lab.host(name, &format!("{ip}/24"));
        self.lab
            .exec_ok(&ns, &["ip", "route", "add", "default", "via", GATEWAY]);
        ns
    }

    /// A home router of `kind` at `public` with one host behind it: (router, host).
    pub fn home(&mut self, name: &str, public: &str, lan: u8, kind: Router) -> (String, String) {
        self.lab.home(name, public, lan, kind, Some(GATEWAY))
    }

    /// Starts the server (`--open`, a 1 s sweep, then `extra`); returns its child index and
    /// when it listened.
    pub fn start_server(&mut self, log: &str, extra: &[&str]) -> (usize, Instant) {
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
        let mut listening = Instant::now();
        self.lab
            .eventually(Duration::from_secs(20), "the server listens", || {
                listening = Instant::now();
                self.lab.log(log).contains("listening on")
            });
        (child, listening)
    }

    /// The server's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.lab.exec_ok(
            &self.srv,
            &["curl", "-sf", &format!("http://{SERVER}:8080/metrics")],
        )
    }

    /// One metric's value (`name` with its labels, as the line starts).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name).filter(|v| v.starts_with(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Starts `wgmesh up` for `name` in `ns` (this internet's agent flags, then `extra`).
    pub fn agent(&mut self, name: &'static str, ns: &str, extra: &[&str]) -> Node {
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
        ];
        args.extend_from_slice(self.agent_flags);
        args.extend_from_slice(extra);
        let agent = self.lab.spawn(ns, &args, &format!("{name}.log"));
        Node {
            name,
            ns: ns.to_owned(),
            cfg,
            agent,
        }
    }

    /// `wgmesh up` again for a node whose agent stopped.
    pub fn restart_agent(&mut self, node: &mut Node, extra: &[&str]) {
        let again = self.agent(node.name, &node.ns.clone(), extra);
        node.agent = again.agent;
    }

    /// `status --json` of `from`'s view of `to`: (path, endpoint), empty when unknown.
    pub fn path_of(&self, from: &Node, to: &Node) -> (String, String) {
        let out = self.lab.exec(
            &from.ns,
            &[wgmesh_bin(), "status", "--config", &from.cfg, "--json"],
        );
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let peer = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["hostname"] == to.name).cloned())
            .unwrap_or_default();
        (
            peer["path"].as_str().unwrap_or("").to_owned(),
            peer["endpoint"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Waits until both ends of a pair report `path`.
    pub fn expect_path(&self, a: &Node, b: &Node, path: &str, limit: Duration) {
        self.lab.eventually(
            limit,
            &format!("{} and {} both report path {path}", a.name, b.name),
            || self.path_of(a, b).0 == path && self.path_of(b, a).0 == path,
        );
    }
}
