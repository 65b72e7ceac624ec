//! A small lab of network namespaces joined by a bridge: real hosts for end-to-end tests.
//!
//! Every name carries a random tag so parallel tests never collide, and everything the lab
//! made (namespaces, processes, wireguard-go sockets) is removed on drop, even after a
//! failed assertion. Underlay addresses come from 198.18.0.0/15 (RFC 2544 benchmarking),
//! and traffic only ever goes to addresses inside the lab's own namespaces.

#![allow(dead_code)]

use super::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails (never skips) when the machine cannot host the lab, naming what is missing.
pub fn require_lab_tools() {
    let uid = Command::new("id").arg("-u").output().expect("id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "end-to-end tests need root (network namespaces); CI runs them as root"
    );
    for tool in ["ip", "wg", "wireguard-go", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is missing: apt-get install iproute2 wireguard-tools wireguard-go iputils-ping"
        );
    }
}

/// A set of namespaces on one bridged segment.
pub struct Lab {
    pub tag: String,
    pub dir: TempDir,
    switch: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

/// Runs a command, returning its output (never panics on failure).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    /// A new lab with its switch namespace and bridge.
    pub fn new(label: &str) -> Lab {
        require_lab_tools();
        let mut seed = [0u8; 2];
        getrandom::fill(&mut seed).unwrap();
        let tag = format!("{:02x}{:02x}", seed[0], seed[1]);
        let switch = format!("wgmt-{label}-{tag}-sw");
        let lab = Lab {
            dir: TempDir::new(&format!("lab-{label}")),
            tag,
            switch: switch.clone(),
            namespaces: vec![switch.clone()],
            children: Vec::new(),
        };
        must(&["ip", "netns", "add", &switch]);
        lab.exec_ok(&switch, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.exec_ok(&switch, &["ip", "link", "set", "br0", "up"]);
        lab
    }

    /// The namespace name for host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("wgmt-{}-{}", self.tag, name)
    }

    /// An interface name unique to this lab (<= 15 bytes).
    pub fn ifname(&self, prefix: &str, name: &str) -> String {
        let n = format!("{prefix}{}{name}", self.tag);
        assert!(n.len() <= 15, "{n} is too long for an interface name");
        n
    }

    /// Adds a host on the switch with `cidr` (e.g. 198.18.0.10/24) on its `eth0`.
    pub fn host(&mut self, name: &str, cidr: &str) -> String {
        let ns = self.ns(name);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let outside = self.ifname("v", name);
        must(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        must(&["ip", "link", "set", &outside, "netns", &self.switch]);
        self.exec_ok(
            &self.switch,
            &["ip", "link", "set", &outside, "master", "br0", "up"],
        );
        self.exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
        self.exec_ok(&ns, &["ip", "addr", "add", cidr, "dev", "eth0"]);
        self.exec_ok(&ns, &["ip", "link", "set", "eth0", "up"]);
        ns
    }

    /// Adds a bare namespace (for routers wired by hand).
    pub fn bare(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Plugs the test's own (root) namespace into the switch at `cidr` through a veth of
    /// its own, so a browser on this machine reaches the lab's hosts. The veth goes when
    /// the switch namespace does. Use a subnet no other lab plugs in here.
    pub fn plug_in_root(&self, cidr: &str) {
        let outside = self.ifname("rt", "");
        let inside = self.ifname("rs", "");
        must(&[
            "ip",
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            &self.switch,
        ]);
        self.exec_ok(
            &self.switch,
            &["ip", "link", "set", &inside, "master", "br0", "up"],
        );
        must(&["ip", "addr", "add", cidr, "dev", &outside]);
        must(&["ip", "link", "set", &outside, "up"]);
    }

    /// The switch namespace (holds br0).
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command inside a namespace; it must succeed. Returns stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        must(&full)
    }

    /// Starts a long-running process in a namespace; the lab kills it on drop.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log_name: &str) -> usize {
        let log = std::fs::File::create(self.dir.path().join(log_name)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// The child started as number `index`.
    pub fn child(&mut self, index: usize) -> &mut Child {
        &mut self.children[index]
    }

    /// Sends a signal to a child and waits up to 20 s for it to exit; returns its exit code.
    pub fn signal(&mut self, index: usize, signal: &str) -> Option<i32> {
        let pid = self.children[index].id().to_string();
        run(&["kill", &format!("-{signal}"), &pid]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.children[index].try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} ignored SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A log file's contents.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Whether `from` can ping `to` (one echo, 1 s wait).
    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c", "1", "-W", "1", "-n", "-q", to])
            .status
            .success()
    }

    /// Retries `check` every 200 ms until it holds or `limit` passes.
    pub fn eventually(&self, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The flags lab agents run `up` with: heartbeats and syncs every second, debug logs.
pub const FAST_AGENT: [&str; 6] = [
    "--heartbeat-interval",
    "1",
    "--sync-interval",
    "1",
    "--log-level",
    "debug",
];

/// A lab host that runs `wgmesh up`: its namespace, a WireGuard interface name unique
/// across parallel labs, and its config file in the lab's folder.
pub struct MeshNode {
    /// The name the lab knows the host by (also its log's and config's name).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its WireGuard interface.
    pub iface: String,
    /// Its `wgmesh` config file.
    pub config: String,
}

impl Lab {
    /// A host `name` at `cidr` ready to run `wgmesh up` ([`MeshNode`]).
    pub fn mesh_node(&mut self, name: &str, cidr: &str) -> MeshNode {
        MeshNode {
            name: name.to_owned(),
            ns: self.host(name, cidr),
            iface: self.ifname("wg", name),
            config: self
                .dir
                .path()
                .join(format!("{name}.json"))
                .display()
                .to_string(),
        }
    }

    /// Starts `wgmesh up` for `node` against `server` as `hostname`, with `env` settings
    /// (`NAME=value`, such as a join token) and `flags` after the common ones; its output
    /// goes to `log`. Returns the process's index for [`Lab::signal`].
    pub fn spawn_up(
        &mut self,
        node: &MeshNode,
        server: &str,
        hostname: &str,
        env: &[String],
        flags: &[&str],
        log: &str,
    ) -> usize {
        let mut args: Vec<&str> = vec!["env"];
        args.extend(env.iter().map(String::as_str));
        args.extend([
            super::wgmesh_bin(),
            "up",
            "--server",
            server,
            "--config",
            &node.config,
            "--interface",
            &node.iface,
            "--hostname",
            hostname,
        ]);
        args.extend_from_slice(flags);
        self.spawn(&node.ns, &args, log)
    }
}

/// A node's `wgmesh` config file as JSON; None while it is missing or half-written.
pub fn config_json(path: impl AsRef<Path>) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The mesh address the server assigned, from the config at `path`; None until the node
/// has registered.
pub fn assigned_ip(path: impl AsRef<Path>) -> Option<String> {
    config_json(path)?["assignment"]["assigned_ip"]
        .as_str()
        .map(str::to_owned)
}

/// The node's WireGuard public key, from the private key in the config at `path`; None
/// until the config is written.
pub fn public_key_of(path: impl AsRef<Path>) -> Option<wgmesh::keys::PublicKey> {
    let config = config_json(path)?;
    let private = wgmesh::keys::PrivateKey::from_base64(config["private_key"].as_str()?).ok()?;
    Some(private.public_key())
}

impl MeshNode {
    /// Its mesh address, once it has registered.
    pub fn mesh_ip(&self) -> Option<String> {
        assigned_ip(&self.config)
    }

    /// Its WireGuard public key, once its config is written.
    pub fn public_key(&self) -> Option<wgmesh::keys::PublicKey> {
        public_key_of(&self.config)
    }
}

impl Lab {
    /// Node `name`'s config file, in the lab's folder (where [`Lab::mesh_node`] puts it).
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.json"))
    }

    /// Node `name`'s mesh address; panics if it has not registered.
    pub fn mesh_ip(&self, name: &str) -> String {
        assigned_ip(self.config_path(name))
            .unwrap_or_else(|| panic!("{name} has no mesh address in its config yet"))
    }

    /// Node `name`'s WireGuard public key; panics if its config is not written.
    pub fn key_of(&self, name: &str) -> wgmesh::keys::PublicKey {
        public_key_of(self.config_path(name))
            .unwrap_or_else(|| panic!("{name} has no config with a private key yet"))
    }

    /// Runs `wgmesh token create ARGS` in `server_ns` against `server` with the lab's
    /// admin secret (`admin.secret` in its folder), retrying while the server starts, and
    /// returns the token.
    pub fn create_token(&self, server_ns: &str, server: &str, args: &[&str]) -> String {
        let secret = self.dir.path().join("admin.secret").display().to_string();
        let mut full = vec![
            super::wgmesh_bin(),
            "token",
            "create",
            "--server",
            server,
            "--admin-secret-file",
            &secret,
        ];
        full.extend_from_slice(args);
        let mut token = String::new();
        self.eventually(Duration::from_secs(20), "the server makes a token", || {
            let out = self.exec(server_ns, &full);
            token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            out.status.success()
        });
        assert!(token.starts_with("wgm_"), "{token}");
        token
    }
}

/// How a home router ([`Lab::home`]) treats its node's traffic: the NATs of the world.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Router<'a> {
    /// Plain MASQUERADE and nothing else: what a minimal Linux router does. No inbound
    /// firewall, so a peer's early packet leaves a conntrack entry that makes MASQUERADE
    /// move the node's own outgoing port.
    Masquerade,
    /// MASQUERADE plus the stateful inbound firewall every home router has.
    MasqueradeFirewall,
    /// `MASQUERADE --random --random-fully`: a new random port per mapping, like carrier-grade
    /// and many corporate NATs (no direct path to anyone behind a NAT).
    RandomPorts,
    /// MASQUERADE, and UDP leaves only towards this address (the coordination server).
    UdpOnlyTo(&'a str),
}

impl Lab {
    /// `iptables ARGS` in `ns`.
    pub fn iptables(&self, ns: &str, args: &[&str]) {
        let mut v = vec!["iptables"];
        v.extend_from_slice(args);
        self.exec_ok(ns, &v);
    }

    /// A router `r<name>` on the shared segment at `public` (default route via `gateway`,
    /// when the segment has one) with one node `name` behind it, on LAN 198.19.`lan`.0/24 at
    /// .2, its traffic treated as `kind` says. Returns (router, node) namespaces.
    pub fn home(
        &mut self,
        name: &str,
        public: &str,
        lan: u8,
        kind: Router,
        gateway: Option<&str>,
    ) -> (String, String) {
        let router = self.host(&format!("r{name}"), &format!("{public}/24"));
        if let Some(gateway) = gateway {
            self.exec_ok(&router, &["ip", "route", "add", "default", "via", gateway]);
        }
        self.exec_ok(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let node = self.bare(name);
        let lan_if = self.ifname("l", name);
        must(&[
            "ip", "link", "add", &lan_if, "type", "veth", "peer", "name", "eth0", "netns", &node,
        ]);
        must(&["ip", "link", "set", &lan_if, "netns", &router]);
        let gw = format!("198.19.{lan}.1");
        self.exec_ok(
            &router,
            &["ip", "addr", "add", &format!("{gw}/24"), "dev", &lan_if],
        );
        self.exec_ok(&router, &["ip", "link", "set", &lan_if, "up"]);
        let address = format!("198.19.{lan}.2/24");
        self.exec_ok(&node, &["ip", "addr", "add", &address, "dev", "eth0"]);
        self.exec_ok(&node, &["ip", "link", "set", "eth0", "up"]);
        self.exec_ok(&node, &["ip", "route", "add", "default", "via", &gw]);
        let lan_net = format!("198.19.{lan}.0/24");
        let mut masq = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &lan_net,
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ];
        if kind == Router::RandomPorts {
            // nft's `masquerade random,fully-random`.
            masq.extend_from_slice(&["--random", "--random-fully"]);
        }
        self.iptables(&router, &masq);
        match kind {
            Router::Masquerade | Router::RandomPorts => {}
            Router::MasqueradeFirewall => self.iptables(
                &router,
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    "eth0",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW,INVALID",
                    "-j",
                    "DROP",
                ],
            ),
            Router::UdpOnlyTo(server) => self.iptables(
                &router,
                &[
                    "-A", "FORWARD", "-s", &lan_net, "-p", "udp", "!", "-d", server, "-j", "DROP",
                ],
            ),
        }
        (router, node)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // WGMESH_LAB_LOGS=DIR keeps a failed lab's whole logs there, for debugging.
            if let Some(keep) = std::env::var_os("WGMESH_LAB_LOGS") {
                let keep = std::path::Path::new(&keep).join(&self.tag);
                let _ = std::fs::create_dir_all(&keep);
                for entry in std::fs::read_dir(self.dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
            // Show every process's log next to the failed assertion.
            if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                for entry in entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!(
                        "----- {} (last lines) -----",
                        entry.file_name().to_string_lossy()
                    );
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // wireguard-go daemons outlive `ip netns exec`; stop the ones of this lab's interfaces.
        let _ = run(&["pkill", "-f", &format!("wireguard-go [a-z]*{}", self.tag)]);
        for ns in self.namespaces.iter().rev() {
            let pids = run(&["ip", "netns", "pids", ns]).stdout;
            for pid in String::from_utf8_lossy(&pids).split_whitespace() {
                let _ = run(&["kill", "-9", pid]);
            }
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if let Ok(entries) = std::fs::read_dir("/var/run/wireguard") {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(&self.tag) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// `/etc/netns/NS/`, which `ip netns exec` binds over `/etc` (a namespace's own
/// `resolv.conf`), removed on drop.
pub struct NetnsEtc(PathBuf);

impl NetnsEtc {
    /// A `resolv.conf` for `ns` naming `nameserver`.
    pub fn resolv_conf(ns: &str, nameserver: &str) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .unwrap();
        NetnsEtc(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself too, when no other test still uses it (only empty folders go).
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A /24 (as "198.19.N") for a lab plugged into the root namespace ([`Lab::plug_in_root`]),
/// the `slot`-th of this checkout's five: the root namespace is shared by every checkout
/// on the machine, so each checkout's labs take their own block (from a hash of its path)
/// and two checkouts running the suite at once do not route each other's tests.
pub fn root_subnet(slot: u8) -> String {
    assert!(slot < 5, "five root-plugged subnets per checkout");
    let checkout = env!("CARGO_MANIFEST_DIR")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("198.19.{}", (checkout % 50) * 5 + u64::from(slot))
}
