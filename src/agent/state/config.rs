//! The client's configuration file (design 7.2: `~/.config/wireguard-mesh/client.json`):
//! the private key, the server, what the server assigned, and what this host has applied so
//! `down` can undo exactly that. Mode 0600, written atomically.

use crate::agent::client::ServerUrl;
use crate::fsutil;
use crate::keys::{PrivateKey, PublicKey};
use crate::os::dns::DnsMethod;
use crate::types::{Endpoint, Hostname, InterfaceName, InvalidValue, PeerId};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The config format version this build writes.
pub const CONFIG_VERSION: u32 = 1;

/// Default WireGuard listen port (the IANA-registered one).
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// What the server told us at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Our stable id.
    pub peer_id: PeerId,
    /// Our mesh address.
    pub assigned_ip: Ipv4Addr,
    /// The mesh network.
    pub network_cidr: Ipv4Net,
    /// The server's key (pinned for later authentication).
    pub server_public_key: PublicKey,
    /// Our name in the `.mesh` zone; absent in configs from before names (and from older
    /// servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<crate::types::DnsName>,
}

/// What to do when the chosen exit node goes offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitFallback {
    /// Fail closed: keep routing internet traffic into the tunnel, where it is dropped, so
    /// nothing leaks out of the local network unannounced. The default.
    #[default]
    Block,
    /// Fall back to the local internet connection until the exit node returns.
    Direct,
}

impl std::str::FromStr for ExitFallback {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "block" => Ok(ExitFallback::Block),
            "direct" => Ok(ExitFallback::Direct),
            _ => Err(InvalidValue(format!(
                "{s:?} is not an exit fallback: use block or direct"
            ))),
        }
    }
}

/// The exit node's NAT as set up on this host (we are the exit node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedNat {
    /// The interface traffic leaves by (the default route's).
    pub out_iface: String,
    /// "nftables" or "iptables".
    pub firewall: String,
    /// The interface IPv6 leaves by, when the exit node has IPv6 and NATs the IPv6 mesh too.
    #[serde(default)]
    pub out_iface6: Option<String>,
}

/// The full tunnel through an exit node as set up on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTunnel {
    /// The exit node's key.
    pub exit_public_key: PublicKey,
    /// The exit node's endpoint when the tunnel was set up.
    pub exit_endpoint: Option<Endpoint>,
    /// The exit peer's allowed IPs without the default route.
    pub exit_allowed_ips: Vec<IpNet>,
    /// Addresses kept outside the tunnel (the coordination server, the exit's endpoint).
    pub keep_outside: Vec<std::net::IpAddr>,
    /// Unused since pins follow the observed uplink ([`AppliedTunnel::pinned`]); kept so
    /// configurations written by earlier versions still load.
    pub gateway: Ipv4Addr,
    /// Whether the exit node also carries IPv6 (it advertised `::/0`).
    #[serde(default)]
    pub exit_ipv6: bool,
    /// macOS and Windows: the host routes pinned outside the tunnel and the uplink they use,
    /// as last planned from the observed routing table (removed exactly at `down`).
    #[serde(default)]
    pub pinned: Option<crate::os::pins::Pinned>,
}

/// What this host has set up, so teardown removes exactly that and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The OS whose commands set it up.
    pub os: String,
    /// The interface's real name (on macOS the utunN wireguard-go picked).
    pub interface: String,
    /// The address put on the interface; a different assignment means rebuilding it.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Extra prefixes routed through the interface (beyond the mesh network).
    #[serde(default)]
    pub routes: Vec<IpNet>,
    /// Exit-node NAT, when this host is an exit node.
    #[serde(default)]
    pub nat: Option<AppliedNat>,
    /// The full tunnel, when this host uses an exit node.
    #[serde(default)]
    pub full_tunnel: Option<AppliedTunnel>,
    /// How the OS sends `.mesh` names to our resolver, while `up` serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<AppliedDns>,
    /// Windows: the exit peer the tunnel service's configuration file holds in
    /// wireguard-windows' kill-switch form (its only peer, with `0.0.0.0/0`), written while
    /// an exit node is chosen with `--exit-fallback block`: the service's firewall then
    /// blocks traffic outside the tunnel from its start at boot, before the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<crate::os::PeerSpec>,
    /// Forwarding and NAT for the networks this node routes for the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_router: Option<super::subnet_routes::AppliedSubnetRouter>,
    /// Accepted routes copied into a routing daemon's table (`--routes-to-table`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_table: Option<super::subnet_routes::AppliedTableRoutes>,
}

/// The OS side of mesh DNS as set up on this host, so it can be undone exactly
/// ([`crate::agent::dns::undo_plan`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedDns {
    /// How `.mesh` reaches the resolver.
    pub method: DnsMethod,
    /// The interface the setting hangs on (resolved's link, the NRPT rule's tag).
    pub interface: String,
    /// The resolver's addresses the OS was given.
    pub servers: Vec<IpAddr>,
    /// The hosts file holding our block, for [`DnsMethod::Hosts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
}

/// The whole client configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Format version.
    pub version: u32,
    /// Our WireGuard private key; never leaves this file except on a command's stdin.
    pub private_key: PrivateKey,
    /// The coordination server.
    #[serde(default)]
    pub server: Option<ServerUrl>,
    /// More replicas of the same cluster, tried in order when `server` fails (`--server`
    /// given more than once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_servers: Vec<ServerUrl>,
    /// The interface name asked for.
    pub interface: InterfaceName,
    /// The tunnel MTU from `--mtu`; `None` follows each OS's reference: the default route's
    /// interface MTU minus 80 (darwin.bash's `set_mtu` on macOS, wireguard-windows' MTU
    /// monitor on Windows), 1420 on Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Our WireGuard listen port.
    pub listen_port: u16,
    /// The hostname we register with (default: the OS hostname).
    #[serde(default)]
    pub hostname: Option<Hostname>,
    /// The endpoint we ask others to dial (default: what the server sees).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Whether we offer to be an exit node.
    #[serde(default)]
    pub exit_node: bool,
    /// The exit node we route internet traffic through (hostname, mesh address or peer id).
    #[serde(default)]
    pub use_exit_node: Option<String>,
    /// What to do while that exit node is offline.
    #[serde(default)]
    pub exit_fallback: ExitFallback,
    /// Subnet routes: what this node advertises and how it serves them (`--advertise-routes`
    /// and friends, remembered).
    #[serde(
        default,
        skip_serializing_if = "super::subnet_routes::SubnetRouteConfig::is_default"
    )]
    pub subnet_routes: super::subnet_routes::SubnetRouteConfig,
    /// Whether this node installs the subnet routes others advertise (`--accept-routes`,
    /// given on every run like `--exit-node`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_routes: bool,
    /// Set by `up --gateway`: this node carries devices without the agent (phones) into the
    /// mesh (see [`crate::agent::gateway`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySettings>,
    /// What the server assigned.
    #[serde(default)]
    pub assignment: Option<Assignment>,
    /// What is set up on this host right now.
    #[serde(default)]
    pub applied: Option<Applied>,
}

/// Where a gateway's devices reach it: a WireGuard interface of its own (so the mesh
/// interface's peers, paths and relay never see the devices) on its own UDP port, with the
/// node's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySettings {
    /// The devices' interface.
    pub interface: InterfaceName,
    /// Its UDP listen port, which devices dial.
    pub port: u16,
}

/// Why the config could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// Unreadable or invalid; left untouched.
    Invalid(PathBuf, String),
    /// An I/O failure (message includes the path).
    Io(io::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid(path, why) => write!(
                f,
                "client config {} is invalid ({why}); fix it, or move it aside to start over with a new key",
                path.display()
            ),
            ConfigError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ClientConfig {
    /// A new config with a freshly generated key.
    pub fn generate(interface: InterfaceName) -> ClientConfig {
        ClientConfig {
            version: CONFIG_VERSION,
            private_key: PrivateKey::generate(),
            server: None,
            fallback_servers: Vec::new(),
            interface,
            listen_port: DEFAULT_LISTEN_PORT,
            mtu: None,
            hostname: None,
            endpoint: None,
            exit_node: false,
            use_exit_node: None,
            exit_fallback: ExitFallback::Block,
            subnet_routes: Default::default(),
            accept_routes: false,
            gateway: None,
            assignment: None,
            applied: None,
        }
    }

    /// Reads the config, or None if there is none yet. A file readable by others is
    /// tightened to 0600 with a warning: it holds the private key.
    pub fn load(path: &Path) -> Result<Option<ClientConfig>, ConfigError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ConfigError::Io(fsutil::with_path(
                    e,
                    "cannot read client config",
                    path,
                )))
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    log::warn!(
                        "{} holds a private key but others can read it; setting mode 0600",
                        path.display()
                    );
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        let config: ClientConfig = serde_json::from_slice(&bytes)
            .map_err(|e| ConfigError::Invalid(path.to_path_buf(), e.to_string()))?;
        if config.version != CONFIG_VERSION {
            return Err(ConfigError::Invalid(
                path.to_path_buf(),
                format!("format version {} is not {CONFIG_VERSION}", config.version),
            ));
        }
        Ok(Some(config))
    }

    /// Writes the config atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("config always serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(path, &bytes, 0o600).map_err(ConfigError::Io)
    }
}

/// The default config path (design 7.2).
pub fn default_path() -> PathBuf {
    fsutil::config_dir().join("client.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_with_mode_0600_and_keeps_the_key() {
        let dir = std::env::temp_dir().join(format!("wgmesh-config-{}", std::process::id()));
        let path = dir.join("client.json");
        let config = ClientConfig::generate("wg0".parse().unwrap());
        config.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let back = ClientConfig::load(&path).unwrap().unwrap();
        assert_eq!(back.private_key, config.private_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "loading tightened a world-readable key file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_config_is_none_and_garbage_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("wgmesh-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(ClientConfig::load(&dir.join("absent.json"))
            .unwrap()
            .is_none());
        let bad = dir.join("bad.json");
        std::fs::write(&bad, b"{\"version\":1}").unwrap();
        let err = ClientConfig::load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("private_key"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
