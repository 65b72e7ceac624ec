//! `status` and `export`: what this node is and sees, from its config, the last peer list and
//! `wg show dump` (status), or as a wg-quick file (export). The CLI only prints the result.

use super::config::ClientConfig;
use super::desired;
use super::engine::{load_peer_cache, AgentError};
use super::host;
use super::setup;
use crate::os::runner::Runner;
use crate::os::TargetOs;
use crate::types::InterfaceName;
use serde::Serialize;
use std::path::Path;
use std::time::SystemTime;

/// A handshake older than this means the tunnel is idle or broken (WireGuard rekeys every
/// 2 minutes while traffic flows, and keepalives keep traffic flowing).
pub const HANDSHAKE_FRESH_SECS: u64 = 180;

/// One peer in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The peer's hostname, when the last peer list named it.
    pub hostname: Option<String>,
    /// The peer's mesh address, when the last peer list named it.
    pub virtual_ip: Option<String>,
    /// The peer's key (base64).
    pub public_key: String,
    /// The endpoint WireGuard sends to right now.
    pub endpoint: Option<String>,
    /// Whether packets go straight to the peer's endpoint: wgmesh never relays, so every
    /// peer with a known endpoint is direct (a relay would show here when one exists).
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
    /// WireGuard's peers, as `wg show` lists them.
    pub peers: Vec<PeerStatus>,
}

/// Reads the config at `path`, the cached peer list beside it and (through `reader`) `wg show
/// dump` of the applied interface.
pub fn collect(
    path: &Path,
    reader: &mut dyn Runner,
    now: SystemTime,
) -> Result<Status, AgentError> {
    let cfg = ClientConfig::load(path)?.ok_or_else(|| {
        AgentError::Usage(format!(
            "no config at {}: run `wgmesh up` first",
            path.display()
        ))
    })?;
    let known = load_peer_cache(path);
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
                    PeerStatus {
                        hostname: info.map(|i| i.hostname.to_string()),
                        virtual_ip: info.map(|i| i.virtual_ip.to_string()),
                        public_key: p.public_key.to_base64(),
                        endpoint: p.endpoint.map(|e| e.to_string()),
                        direct: p.endpoint.is_some(),
                        exit_node_in_use: exit_in_use == Some(p.public_key),
                        online: age.is_some_and(|a| a <= HANDSHAKE_FRESH_SECS),
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
        peers,
    })
}

/// The human `status` table: a summary line, one row per peer, and which peer carries
/// internet traffic when a full tunnel is up. PATH says how packets reach the peer: `direct`
/// to its endpoint, or `-` while no endpoint is known.
pub fn table(status: &Status) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "interface {} ({}), address {}, peer id {}\n",
        status.interface.clone().unwrap_or_else(dash),
        if status.up { "up" } else { "down" },
        status.address.clone().unwrap_or_else(dash),
        status.peer_id.clone().unwrap_or_else(dash),
    );
    out.push_str(&format!(
        "{:<20} {:<15} {:<24} {:<7} {:<7} {:>10} {:>12} {:>12}\n",
        "HOSTNAME", "ADDRESS", "ENDPOINT", "PATH", "ONLINE", "HANDSHAKE", "RX", "TX"
    ));
    for p in &status.peers {
        let path = if p.direct { "direct" } else { "-" };
        out.push_str(&format!(
            "{:<20} {:<15} {:<24} {:<7} {:<7} {:>10} {:>12} {:>12}\n",
            p.hostname
                .clone()
                .unwrap_or_else(|| p.public_key[..8].to_string()),
            p.virtual_ip.clone().unwrap_or_else(dash),
            p.endpoint.clone().unwrap_or_else(dash),
            path,
            if p.online { "yes" } else { "no" },
            p.latest_handshake_secs
                .map_or_else(|| "never".into(), |s| format!("{s}s ago")),
            p.rx_bytes,
            p.tx_bytes
        ));
    }
    for p in status.peers.iter().filter(|p| p.exit_node_in_use) {
        let name = p.hostname.as_deref().unwrap_or(&p.public_key);
        out.push_str(&format!("internet traffic goes through exit node {name}\n"));
    }
    out
}

/// A wg-quick configuration for this node (`export`): the server's current peer list, or
/// the last one this node saw when the server cannot be reached.
pub fn export(path: &Path, ca: Option<&Path>) -> Result<String, AgentError> {
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
    let client = setup::api_client(server, &cfg, None, &setup::tls_trust(ca)?);
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
    let desired = desired::desired_peers(&peers, exit.as_ref());
    Ok(crate::os::wgquick::render(&spec, &desired))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(hostname: Option<&str>, endpoint: Option<&str>, exit: bool) -> PeerStatus {
        PeerStatus {
            hostname: hostname.map(str::to_owned),
            virtual_ip: hostname.map(|_| "10.100.0.3".to_owned()),
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            endpoint: endpoint.map(str::to_owned),
            direct: endpoint.is_some(),
            exit_node_in_use: exit,
            online: endpoint.is_some(),
            latest_handshake_secs: endpoint.map(|_| 12),
            rx_bytes: 1234,
            tx_bytes: 56,
        }
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
            peers: vec![
                peer(Some("web"), Some("198.18.0.3:51820"), false),
                peer(Some("gateway"), Some("198.18.0.4:51820"), true),
                peer(None, None, false),
            ],
        };
        let text = table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "interface wg0 (up), address 10.100.0.2, peer id p-1"
        );
        let header: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "HOSTNAME",
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
                "10.100.0.3",
                "198.18.0.3:51820",
                "direct",
                "yes",
                "12s",
                "ago",
                "1234",
                "56"
            ]
        );
        assert_eq!(rows[1][3], "direct");
        assert_eq!(
            rows[2],
            ["AAAAAAAA", "-", "-", "-", "no", "never", "1234", "56"]
        );
        assert_eq!(lines[5], "internet traffic goes through exit node gateway");
        assert_eq!(lines.len(), 6);
        // Columns line up with their headings.
        let at = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(at(lines[1], "PATH"), at(lines[2], "direct"));
        assert_eq!(at(lines[1], "ONLINE"), at(lines[2], "yes"));
        assert_eq!(
            at(lines[1], "TX") + "TX".len(),
            lines[2].trim_end().len(),
            "right-aligned TX ends the row"
        );
    }

    #[test]
    fn collect_reads_the_applied_interface_with_the_recorded_os_wg() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let dir = std::env::temp_dir().join(format!("wgmesh-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.json");
        let mut cfg = ClientConfig::generate("wg0".parse().unwrap());
        cfg.applied = Some(super::super::config::Applied {
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
}
