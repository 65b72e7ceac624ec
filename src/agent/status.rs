//! `status` and `export`: what this node is and sees, from its config, the last peer list and
//! `wg show dump` (status), or as a wg-quick file (export). The CLI only prints the result.

use super::decide::desired;
use super::error::AgentError;
use super::observe::host;
use super::run::engine::load_peer_cache;
use super::run::setup;
use super::state::config::ClientConfig;
use crate::os::runner::Runner;
use crate::os::TargetOs;
use crate::types::InterfaceName;
use serde::Serialize;
use std::path::Path;
use std::time::SystemTime;

/// A handshake older than this means the tunnel is idle or broken (WireGuard rekeys every
/// 2 minutes while traffic flows, and keepalives keep traffic flowing).
pub const HANDSHAKE_FRESH_SECS: u64 = 180;

/// `path_detail` of a peer WireGuard never completed a handshake with.
const NEVER: &str = "no handshake yet";
/// `path_detail` of a peer whose last handshake is too old to prove a path.
const STALE: &str = "no handshake in 180 s";
/// `path_detail` while a probe of the direct path runs (a fraction of a second).
const PROBING: &str = "probing the direct path; the relay carries the traffic";
/// `path_detail` while a direct path that went quiet under traffic is checked (a second;
/// without an answer the relay takes over).
const CHECKING: &str = "checking the direct path: data went out and nothing came back";

/// One peer in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The peer's hostname, when the last peer list named it.
    pub hostname: Option<String>,
    /// The peer's name in the `.mesh` zone, when the last peer list named it.
    pub dns_name: Option<String>,
    /// The peer's mesh address, when the last peer list named it.
    pub virtual_ip: Option<String>,
    /// The peer's key (base64).
    pub public_key: String,
    /// The endpoint WireGuard sends to right now.
    pub endpoint: Option<String>,
    /// How packets reach the peer, when they do (a handshake within
    /// [`HANDSHAKE_FRESH_SECS`]): `"exit"` for the exit node in use, `"relay"` when the
    /// endpoint is the server's relay (or a probe of the direct path runs while the relay
    /// carries the traffic), `"direct"` otherwise. `"unknown"` while no handshake proves
    /// any path works (`path_detail` says why): a peer that never answered is not shown as
    /// reachable.
    pub path: &'static str,
    /// What more there is to know about `path`: why it is unknown (`"no handshake yet"`,
    /// `"no handshake in 180 s"`), or that a probe of the direct path runs.
    pub path_detail: Option<&'static str>,
    /// `path == "direct"`: kept for scripts written before the relay existed.
    pub direct: bool,
    /// Whether this is the exit node internet traffic goes through.
    pub exit_node_in_use: bool,
    /// Whether the latest handshake is fresh (within [`HANDSHAKE_FRESH_SECS`]).
    pub online: bool,
    /// Seconds since the latest handshake; `None` if never.
    pub latest_handshake_secs: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The interface recorded as applied.
    pub interface: Option<String>,
    /// Whether `wg show` could read it.
    pub up: bool,
    /// Our mesh address.
    pub address: Option<String>,
    /// The mesh network.
    pub network_cidr: Option<String>,
    /// Our peer id.
    pub peer_id: Option<String>,
    /// Our public key (base64).
    pub public_key: String,
    /// Our listen port.
    pub listen_port: u16,
    /// The coordination server.
    pub server: Option<String>,
    /// Our name in the `.mesh` zone.
    pub dns_name: Option<String>,
    /// Mesh DNS: whether it runs, where, and how `.mesh` names reach it.
    pub dns: super::dns::DnsStatus,
    /// WireGuard's peers, as `wg show` lists them.
    pub peers: Vec<PeerStatus>,
    /// With replicas: each replica's relay, whether it answers and whether a relayed peer
    /// meets there (empty for a single server).
    pub relays: Vec<RelayStatus>,
    /// Subnet routes: what this node advertises, and the routes it uses with the router in
    /// use for each.
    pub subnet_routes: super::decide::subnet_routes::SubnetRouteStatus,
}

/// One replica's relay in `status` (issue 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStatus {
    /// The replica, as `GET /replicas` names it.
    pub replica: String,
    /// Its relay's address.
    pub address: String,
    /// Whether it stopped answering this node's STUN probes (left out of the rendezvous).
    pub down: bool,
    /// Whether a relayed peer meets there now.
    pub in_use: bool,
}

/// The replica relays of `paths`, for [`Status::relays`].
fn relay_statuses(paths: &super::decide::path::PathTable) -> Vec<RelayStatus> {
    let in_use = paths.relays_in_use();
    paths
        .relays
        .iter()
        .map(|(replica, address)| RelayStatus {
            replica: replica.clone(),
            address: address.to_string(),
            down: paths.health.is_down(address),
            in_use: in_use.contains(address),
        })
        .collect()
}

/// Reads the config at `path`, the cached peer list beside it and (through `reader`) `wg show
/// dump` of the applied interface.
pub fn collect(
    path: &Path,
    reader: &mut dyn Runner,
    now: SystemTime,
) -> Result<Status, AgentError> {
    let cfg = ClientConfig::load(path)?.ok_or_else(|| {
        let hint = if super::observe::preflight::is_root() {
            "run `wgmesh up` first"
        } else {
            // The usual case: `up` runs as root, with its config in root's folder.
            "if `wgmesh up` runs as root, its config is root's and reading the interface \
             needs root too: run `sudo wgmesh status`"
        };
        AgentError::Usage(format!("no config at {}: {hint}", path.display()))
    })?;
    let known = load_peer_cache(path);
    let paths = super::decide::path::PathTable::load(path);
    let interface = cfg.applied.as_ref().map(|a| a.interface.clone());
    let dump = cfg.applied.as_ref().and_then(|a| {
        let os = a.os.parse().unwrap_or(TargetOs::Linux);
        let name: InterfaceName = a.interface.parse().ok()?;
        host::wg_dump(reader, os, &name)
    });
    let exit_in_use = cfg
        .applied
        .as_ref()
        .and_then(|a| a.full_tunnel.as_ref())
        .map(|t| t.exit_public_key);
    let peers = dump
        .as_ref()
        .map(|d| {
            d.peers
                .iter()
                .map(|p| {
                    let info = known.iter().find(|k| k.public_key == p.public_key);
                    let age = p
                        .latest_handshake
                        .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
                    let online = age.is_some_and(|a| a <= HANDSHAKE_FRESH_SECS);
                    let state = paths.peers.get(&p.public_key.to_base64());
                    let probing = state.is_some_and(|s| s.probe_until_ms.is_some());
                    let checking = state.is_some_and(|s| s.check_until_ms.is_some());
                    let (path, path_detail) = match () {
                        _ if age.is_none() => ("unknown", Some(NEVER)),
                        _ if !online => ("unknown", Some(STALE)),
                        _ if exit_in_use == Some(p.public_key) => ("exit", None),
                        _ if probing => ("relay", Some(PROBING)),
                        _ if paths.is_relay(p.endpoint) => ("relay", None),
                        _ if checking => ("direct", Some(CHECKING)),
                        _ => ("direct", None),
                    };
                    PeerStatus {
                        hostname: info.map(|i| i.hostname.to_string()),
                        dns_name: info.and_then(|i| i.dns_name.as_ref().map(|n| n.to_string())),
                        virtual_ip: info.map(|i| i.virtual_ip.to_string()),
                        public_key: p.public_key.to_base64(),
                        endpoint: p.endpoint.map(|e| e.to_string()),
                        path,
                        path_detail,
                        direct: path == "direct",
                        exit_node_in_use: exit_in_use == Some(p.public_key),
                        online,
                        latest_handshake_secs: age,
                        rx_bytes: p.transfer_rx,
                        tx_bytes: p.transfer_tx,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Status {
        interface,
        up: dump.is_some(),
        address: cfg.assignment.as_ref().map(|a| a.assigned_ip.to_string()),
        network_cidr: cfg.assignment.as_ref().map(|a| a.network_cidr.to_string()),
        peer_id: cfg.assignment.as_ref().map(|a| a.peer_id.to_string()),
        public_key: cfg.private_key.public_key().to_base64(),
        listen_port: cfg.listen_port,
        server: cfg.server.as_ref().map(|s| s.to_string()),
        dns_name: cfg
            .assignment
            .as_ref()
            .and_then(|a| a.dns_name.as_ref().map(|n| n.to_string())),
        dns: dns_status(&cfg, reader),
        peers,
        relays: relay_statuses(&paths),
        subnet_routes: super::decide::subnet_routes::status(&cfg, &known),
    })
}

/// How `.mesh` names reach the resolver, and on Windows whether Group Policy NRPT rules
/// make Windows ignore wgmesh's local rule (read with `reg.exe`).
fn dns_status(cfg: &ClientConfig, reader: &mut dyn Runner) -> super::dns::DnsStatus {
    let applied = cfg.applied.as_ref().and_then(|a| a.dns.as_ref());
    let mut status = super::dns::status(applied);
    if let Some(dns) = applied.filter(|d| d.method == crate::os::dns::DnsMethod::Nrpt) {
        let gpo = reader
            .run(&crate::os::dns::nrpt_gpo_command())
            .is_ok_and(|out| crate::os::dns::gpo_nrpt_rules_present(&out.stdout));
        if gpo {
            status.warning = Some(crate::os::dns::gpo_nrpt_hint(&dns.servers));
        }
    }
    status
}

/// The human `status` table: a summary line, one row per peer, and which peer carries
/// internet traffic when a full tunnel is up. PATH says how packets reach the peer: `direct`,
/// `relay` (through the server) or `exit`, or `unknown` while no handshake proves any path
/// works (`status --json` says why in `path_detail`).
pub fn table(status: &Status) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "interface {} ({}), address {}, peer id {}\n",
        status.interface.clone().unwrap_or_else(dash),
        if status.up { "up" } else { "down" },
        status.address.clone().unwrap_or_else(dash),
        status.peer_id.clone().unwrap_or_else(dash),
    );
    let mesh_name = |n: &Option<String>| n.as_ref().map_or_else(dash, |n| format!("{n}.mesh"));
    out.push_str(&format!(
        "name {}; {}\n",
        mesh_name(&status.dns_name),
        status.dns.summary()
    ));
    out.push_str(&format!(
        "{:<20} {:<24} {:<15} {:<24} {:<7} {:<7} {:>10} {:>12} {:>12}\n",
        "HOSTNAME", "NAME", "ADDRESS", "ENDPOINT", "PATH", "ONLINE", "HANDSHAKE", "RX", "TX"
    ));
    for p in &status.peers {
        let path = p.path;
        out.push_str(&format!(
            "{:<20} {:<24} {:<15} {:<24} {:<7} {:<7} {:>10} {:>12} {:>12}\n",
            p.hostname
                .clone()
                .unwrap_or_else(|| p.public_key[..8].to_string()),
            mesh_name(&p.dns_name),
            p.virtual_ip.clone().unwrap_or_else(dash),
            p.endpoint.clone().unwrap_or_else(dash),
            path,
            if p.online { "yes" } else { "no" },
            p.latest_handshake_secs
                .map_or_else(|| "never".into(), |s| format!("{s}s ago")),
            human_bytes(p.rx_bytes),
            human_bytes(p.tx_bytes)
        ));
    }
    for p in status.peers.iter().filter(|p| p.exit_node_in_use) {
        let name = p.hostname.as_deref().unwrap_or(&p.public_key);
        out.push_str(&format!("internet traffic goes through exit node {name}\n"));
    }
    out.push_str(&super::decide::subnet_routes::describe(
        &status.subnet_routes,
    ));
    if !status.relays.is_empty() {
        let relays: Vec<String> = status
            .relays
            .iter()
            .map(|r| match (r.down, r.in_use) {
                (true, _) => format!("{} (down)", r.address),
                (false, true) => format!("{} (in use)", r.address),
                (false, false) => r.address.clone(),
            })
            .collect();
        out.push_str(&format!("replica relays: {}\n", relays.join(", ")));
    }
    out
}

/// A byte count as people read it: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB` (`--json`
/// keeps the raw number).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A wg-quick configuration for this node (`export`): the server's current peer list, or
/// the last one this node saw when the server cannot be reached.
/// With `names`, each `[Peer]` gets a `# NAME.mesh (hostname)` comment above it.
pub fn export(path: &Path, ca: Option<&Path>, names: bool) -> Result<String, AgentError> {
    let cfg = ClientConfig::load(path)?.ok_or_else(|| {
        AgentError::Usage(format!(
            "no config at {}: run `wgmesh up` or `wgmesh sync` first",
            path.display()
        ))
    })?;
    let assignment = cfg
        .assignment
        .clone()
        .ok_or_else(|| AgentError::Usage("not registered yet: run `wgmesh sync` first".into()))?;
    let server = cfg
        .server
        .clone()
        .ok_or_else(|| AgentError::Usage("no coordination server in the config".into()))?;
    let client = setup::api_client(server, &cfg, None, &setup::tls_trust(ca)?)
        .with_fallbacks(&cfg.fallback_servers);
    let peers = match client.peers(&assignment.peer_id, None) {
        Ok(super::client::PeerList::Changed { peers, .. }) => peers,
        Ok(super::client::PeerList::NotModified) => unreachable!("no ETag was sent"),
        Err(e) => {
            log::warn!("{e}; exporting the last peer list this node saw");
            load_peer_cache(path)
        }
    };
    let spec = desired::interface_spec(&cfg, &assignment);
    // The chosen exit node (if any) gets the default route, so wg-quick makes the same full
    // tunnel the agent would.
    let exit = cfg.use_exit_node.as_deref().and_then(|wanted| {
        peers
            .iter()
            .find(|p| p.exit_node && desired::is_named(p, wanted))
            .map(|p| p.public_key)
    });
    let mesh = super::decide::subnet_routes::MeshNets {
        v4: assignment.network_cidr,
        v6: crate::proto::mesh6::prefix(&assignment.server_public_key),
    };
    let own = cfg.subnet_routes.advertised();
    let (used, _) = super::decide::subnet_routes::select(&peers, cfg.accept_routes, &own, mesh);
    let desired = desired::desired_peers(&used, exit.as_ref());
    let text = crate::os::wgquick::render(&spec, &desired);
    Ok(if names {
        super::dns::annotate_export(&text, &peers)
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(hostname: Option<&str>, endpoint: Option<&str>, exit: bool) -> PeerStatus {
        PeerStatus {
            hostname: hostname.map(str::to_owned),
            dns_name: hostname.map(str::to_owned),
            virtual_ip: hostname.map(|_| "10.100.0.3".to_owned()),
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            endpoint: endpoint.map(str::to_owned),
            path: match (endpoint, exit) {
                (None, _) => "unknown",
                (Some(_), true) => "exit",
                (Some(_), false) => "direct",
            },
            path_detail: endpoint.is_none().then_some(NEVER),
            direct: endpoint.is_some() && !exit,
            exit_node_in_use: exit,
            online: endpoint.is_some(),
            latest_handshake_secs: endpoint.map(|_| 12),
            rx_bytes: 1234,
            tx_bytes: 56,
        }
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 300 * 1024), "5.3 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_table_fills_every_column_it_heads() {
        let status = Status {
            interface: Some("wg0".into()),
            up: true,
            address: Some("10.100.0.2".into()),
            network_cidr: Some("10.100.0.0/16".into()),
            peer_id: Some("p-1".into()),
            public_key: "key".into(),
            listen_port: 51820,
            server: None,
            dns_name: Some("me".into()),
            dns: crate::agent::dns::status(None),
            peers: vec![
                peer(Some("web"), Some("198.18.0.3:51820"), false),
                peer(Some("gateway"), Some("198.18.0.4:51820"), true),
                peer(None, None, false),
            ],
            relays: Vec::new(),
            subnet_routes: Default::default(),
        };
        let text = table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "interface wg0 (up), address 10.100.0.2, peer id p-1"
        );
        assert_eq!(
            lines[1],
            "name me.mesh; mesh DNS off (it runs while `wgmesh up` does)"
        );
        let lines = &lines[1..];
        let header: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "HOSTNAME",
                "NAME",
                "ADDRESS",
                "ENDPOINT",
                "PATH",
                "ONLINE",
                "HANDSHAKE",
                "RX",
                "TX"
            ]
        );
        let rows: Vec<Vec<&str>> = lines[2..5]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "web",
                "web.mesh",
                "10.100.0.3",
                "198.18.0.3:51820",
                "direct",
                "yes",
                "12s",
                "ago",
                "1.2",
                "KiB",
                "56",
                "B"
            ]
        );
        // The exit node in use shows as the path its traffic takes.
        assert_eq!(rows[1][4], "exit");
        assert_eq!(
            rows[2],
            ["AAAAAAAA", "-", "-", "-", "unknown", "no", "never", "1.2", "KiB", "56", "B"]
        );
        assert_eq!(lines[5], "internet traffic goes through exit node gateway");
        assert_eq!(lines.len(), 6);
        // Raw byte counts stay in --json.
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["peers"][0]["rx_bytes"], 1234);
        assert_eq!(json["dns"]["running"], false);
        // Columns line up with their headings.
        let at = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(at(lines[1], "PATH"), at(lines[2], "direct"));
        assert_eq!(at(lines[1], "ONLINE"), at(lines[2], "yes"));
        assert_eq!(
            at(lines[1], "TX") + "TX".len(),
            lines[2].trim_end().len(),
            "right-aligned TX ends the row"
        );

        // With replicas, one line says which relays answer and which one peers meet at.
        let mut paths = super::super::decide::path::PathTable::default();
        for i in 1..=3u8 {
            paths.relays.insert(
                format!("http://198.18.0.{i}:8080"),
                std::net::SocketAddr::from(([198, 18, 0, i], 3478)),
            );
        }
        paths
            .health
            .round_failed("198.18.0.1:3478".parse().unwrap());
        let with_relays = Status {
            relays: relay_statuses(&super::super::decide::path::PathTable {
                peers: [(
                    "k".to_string(),
                    super::super::decide::path::PeerPath {
                        mode: super::super::decide::path::Mode::Relay,
                        relay: Some("198.18.0.2:3478".parse().unwrap()),
                        ..Default::default()
                    },
                )]
                .into(),
                ..paths
            }),
            ..status
        };
        let text = table(&with_relays);
        assert_eq!(
            text.lines().last().unwrap(),
            "replica relays: 198.18.0.1:3478 (down), 198.18.0.2:3478 (in use), 198.18.0.3:3478"
        );
        let json = serde_json::to_value(&with_relays).unwrap();
        assert_eq!(json["relays"][0]["down"], true);
        assert_eq!(json["relays"][1]["in_use"], true);
        assert_eq!(json["relays"][2]["replica"], "http://198.18.0.3:8080");
    }

    #[test]
    fn collect_reads_the_applied_interface_with_the_recorded_os_wg() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let dir = std::env::temp_dir().join(format!("wgmesh-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.json");
        let mut cfg = ClientConfig::generate("wg0".parse().unwrap());
        cfg.applied = Some(super::super::state::config::Applied {
            os: "windows".into(),
            interface: "wg0".into(),
            ..Default::default()
        });
        cfg.save(&path).unwrap();
        let mut reader = RecordingRunner::default();
        reader.expect_scripted(
            "wg.exe show wg0 dump",
            Scripted::Fail(1, "Unable to access interface".into()),
        );
        let status = collect(&path, &mut reader, SystemTime::now()).unwrap();
        reader.assert_done();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!status.up);
        assert_eq!(status.interface.as_deref(), Some("wg0"));
        assert!(status.peers.is_empty());
    }

    #[test]
    fn windows_status_says_when_group_policy_nrpt_rules_hide_ours() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let dir = std::env::temp_dir().join(format!("wgmesh-status-gpo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.json");
        let mut cfg = ClientConfig::generate("wg0".parse().unwrap());
        cfg.applied = Some(crate::agent::state::config::Applied {
            os: "windows".into(),
            interface: "wg0".into(),
            dns: Some(crate::agent::state::config::AppliedDns {
                method: crate::os::dns::DnsMethod::Nrpt,
                interface: "wg0".into(),
                servers: vec!["10.100.0.5".parse().unwrap()],
                hosts_file: None,
            }),
            ..Default::default()
        });
        cfg.save(&path).unwrap();
        let gpo = std::fs::read_to_string(format!(
            "{}/tests/fixtures/windows/reg_query_nrpt_gpo.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut reader = RecordingRunner::default();
        reader
            .expect_scripted("wg.exe show wg0 dump", Scripted::Fail(1, String::new()))
            .expect_scripted(
                &crate::os::dns::nrpt_gpo_command().render(),
                Scripted::Succeed(gpo),
            );
        let status = collect(&path, &mut reader, SystemTime::now()).unwrap();
        reader.assert_done();
        assert!(
            status
                .dns
                .summary()
                .contains("Group Policy NRPT rules exist")
                && status.dns.summary().contains("10.100.0.5"),
            "{}",
            status.dns.summary()
        );
        // Without policy rules (`reg` fails: no such key), nothing is added.
        let mut reader = RecordingRunner::default();
        reader
            .expect_scripted("wg.exe show wg0 dump", Scripted::Fail(1, String::new()))
            .expect_scripted(
                &crate::os::dns::nrpt_gpo_command().render(),
                Scripted::Fail(
                    1,
                    "ERROR: The system was unable to find the specified registry key or value."
                        .into(),
                ),
            );
        let status = collect(&path, &mut reader, SystemTime::now()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !status.dns.summary().contains("Group Policy"),
            "{}",
            status.dns.summary()
        );
        assert!(
            status.dns.summary().contains("an NRPT rule sends .mesh"),
            "{}",
            status.dns.summary()
        );
    }

    #[test]
    fn the_path_is_relay_at_the_relay_and_unknown_without_a_handshake() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let dir = std::env::temp_dir().join(format!("wgmesh-status-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.json");
        let mut cfg = ClientConfig::generate("wg0".parse().unwrap());
        cfg.applied = Some(super::super::state::config::Applied {
            os: "linux".into(),
            interface: "wg0".into(),
            ..Default::default()
        });
        cfg.save(&path).unwrap();
        let keys: Vec<String> = (1..=6u8)
            .map(|n| crate::keys::PublicKey::from_bytes([n; 32]).to_base64())
            .collect();
        // The fourth peer's direct path is being probed: the relay carries its traffic.
        let probing = super::super::decide::path::PeerPath {
            probe_until_ms: Some(1),
            ..Default::default()
        };
        // The sixth peer's direct path went quiet under traffic and is being checked.
        let checking = super::super::decide::path::PeerPath {
            mode: super::super::decide::path::Mode::Direct,
            check_until_ms: Some(1),
            ..Default::default()
        };
        let table = super::super::decide::path::PathTable {
            relay: Some("198.18.0.1:3478".parse().unwrap()),
            peers: [(keys[3].clone(), probing), (keys[5].clone(), checking)].into(),
            ..Default::default()
        };
        table.save(&path);
        let now = SystemTime::now();
        let fresh = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 10;
        let stale = fresh - 190;
        let me = cfg.private_key.public_key().to_base64();
        let dump = format!(
            "{priv}\t{me}\t51820\toff\n\
             {k1}\t(none)\t198.18.0.1:3478\t10.100.0.2/32\t{fresh}\t100\t100\t25\n\
             {k2}\t(none)\t198.18.0.12:51820\t10.100.0.3/32\t{fresh}\t100\t100\t25\n\
             {k3}\t(none)\t198.18.0.13:51820\t10.100.0.4/32\t0\t0\t100\t25\n\
             {k4}\t(none)\t198.18.0.14:51820\t10.100.0.5/32\t{fresh}\t100\t100\t25\n\
             {k5}\t(none)\t198.18.0.15:51820\t10.100.0.6/32\t{stale}\t100\t100\t25\n\
             {k6}\t(none)\t198.18.0.16:51820\t10.100.0.7/32\t{fresh}\t100\t100\t25\n",
            priv = cfg.private_key.to_base64(),
            k1 = keys[0],
            k2 = keys[1],
            k3 = keys[2],
            k4 = keys[3],
            k5 = keys[4],
            k6 = keys[5],
        );
        let mut reader = RecordingRunner::default();
        reader.expect_scripted("wg show wg0 dump", Scripted::Succeed(dump));
        let status = collect(&path, &mut reader, now).unwrap();
        reader.assert_done();
        std::fs::remove_dir_all(&dir).unwrap();
        let paths: Vec<(&str, Option<&str>)> = status
            .peers
            .iter()
            .map(|p| (p.path, p.path_detail))
            .collect();
        // Through the relay; straight to the peer; and nothing proven: no handshake ever.
        assert_eq!(
            paths,
            [
                ("relay", None),
                ("direct", None),
                ("unknown", Some("no handshake yet")),
                ("relay", Some(PROBING)),
                ("unknown", Some("no handshake in 180 s")),
                ("direct", Some(CHECKING)),
            ]
        );
        assert!(!status.peers[2].direct && !status.peers[2].online);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["peers"][2]["path"], "unknown");
        assert_eq!(json["peers"][2]["path_detail"], "no handshake yet");
    }
}
