//! What the agent wants the host to look like, independent of any OS: the target OS, the
//! interface and its peers, the firewall flavour, and the refusal for a feature an OS lacks.

use crate::keys::{PrivateKey, PublicKey};
use crate::types::{Endpoint, InterfaceName, InvalidValue};
use ipnet::{IpNet, Ipv4Net};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Default tunnel MTU: a 1500-byte Ethernet MTU minus WireGuard's worst-case overhead of 80
/// bytes (40 IPv6 header + 8 UDP + 16 WireGuard data header + 16 Poly1305 tag), the same value
/// `wg-quick` and the WireGuard apps pick, so tunnelled packets never fragment on the path.
pub const DEFAULT_MTU: u16 = 1420;

/// WireGuard's worst-case overhead (see [`DEFAULT_MTU`]), subtracted from the uplink's MTU.
pub const WIREGUARD_OVERHEAD: u16 = 80;

/// The MTU darwin.bash's `set_mtu` gives a tunnel: the default route's interface MTU minus
/// [`WIREGUARD_OVERHEAD`], or 1500 minus it when that MTU is unknown (wireguard-windows'
/// `tunnel/mtumonitor.go` does the same subtraction, with a floor of 576 for IPv4).
pub fn mtu_below(uplink_mtu: Option<u16>) -> u16 {
    uplink_mtu
        .filter(|m| *m > WIREGUARD_OVERHEAD)
        .unwrap_or(1500)
        .saturating_sub(WIREGUARD_OVERHEAD)
        .max(576)
}

/// The MTU `spec` asks for, with 0 (automatic) turned into [`DEFAULT_MTU`] where the OS's
/// reference has no automatic choice of its own for us to leave it to.
pub(super) fn mtu_or_default(spec: &InterfaceSpec) -> u16 {
    if spec.mtu == 0 {
        DEFAULT_MTU
    } else {
        spec.mtu
    }
}

/// Firewall mark and routing table number used for full-tunnel routing on Linux: WireGuard's
/// own encrypted packets carry this mark and so bypass the tunnel's default route. 51820 is the
/// value `wg-quick` uses (WireGuard's default port), which keeps `ip rule` output familiar.
pub const FWMARK_TABLE: u32 = 51820;

/// The operating system a plan is generated for; independent of the host, so every OS's plans
/// can be built and tested anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetOs {
    /// Kernel WireGuard driven by `ip` and `wg`, falling back to `wireguard-go`.
    Linux,
    /// `wireguard-go` on a `utun` device, driven by `ifconfig`, `route` and `wg`.
    Macos,
    /// The WireGuard for Windows tunnel service (`wireguard.exe`, `wg.exe`, `netsh`).
    Windows,
}

impl TargetOs {
    /// The OS this binary was compiled for, or `None` on a host wgmesh has no commands for
    /// (the generators still work there, e.g. to print a plan for another machine).
    pub fn current() -> Option<TargetOs> {
        if cfg!(target_os = "linux") {
            Some(TargetOs::Linux)
        } else if cfg!(target_os = "macos") {
            Some(TargetOs::Macos)
        } else if cfg!(target_os = "windows") {
            Some(TargetOs::Windows)
        } else {
            None
        }
    }

    /// The lowercase name used on command lines and in errors (`linux`, `macos`, `windows`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetOs::Linux => "linux",
            TargetOs::Macos => "macos",
            TargetOs::Windows => "windows",
        }
    }
}

impl fmt::Display for TargetOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetOs {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "linux" => Ok(TargetOs::Linux),
            "macos" => Ok(TargetOs::Macos),
            "windows" => Ok(TargetOs::Windows),
            _ => Err(InvalidValue(format!(
                "{} is not a supported OS: use linux, macos or windows",
                crate::types::describe(s)
            ))),
        }
    }
}

/// The local interface as the agent wants it: identity, port, mesh address and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The logical name (`wg0`); on macOS the kernel picks the real `utunN` name.
    pub name: InterfaceName,
    /// This device's WireGuard identity.
    pub private_key: PrivateKey,
    /// UDP port WireGuard listens on.
    pub listen_port: u16,
    /// This device's mesh address (a /32 on the interface).
    pub address: Ipv4Addr,
    /// The whole mesh network, routed into the interface.
    pub network: Ipv4Net,
    /// This device's IPv6 mesh address (a /128) and the IPv6 mesh prefix, when the mesh
    /// carries IPv6 (see [`crate::proto::mesh6`]). Hosts with IPv6 turned off tolerate their absence.
    pub ipv6: Option<(std::net::Ipv6Addr, ipnet::Ipv6Net)>,
    /// Tunnel MTU (`--mtu`), or 0 for the OS's automatic one: wireguard-windows' MTU
    /// monitor (no `MTU =` line), darwin.bash's rule ([`mtu_below`], resolved by the agent
    /// from the uplink before planning), wg-quick's own in an exported file, and
    /// [`DEFAULT_MTU`] for Linux interfaces the agent makes.
    pub mtu: u16,
}

/// One peer as the agent wants WireGuard to know it (serializable: the Windows kill-switch
/// peer is recorded as applied).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerSpec {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Where to dial it; `None` leaves whatever WireGuard learned from the peer's packets.
    pub endpoint: Option<Endpoint>,
    /// What WireGuard routes to this peer and accepts from it.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives (holds NAT mappings open); `None` means off.
    pub persistent_keepalive: Option<u16>,
}

/// Which packet filter programs an exit node's NAT: nftables where available, iptables for
/// older distributions (and hosts whose firewall is managed through iptables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// A table of wgmesh's own, loaded atomically with `nft -f`.
    Nftables,
    /// Chains of wgmesh's own, jumped to from the built-in chains.
    Iptables,
}

/// A feature that has no command sequence on the requested OS yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The OS that was asked.
    pub os: TargetOs,
    /// What was asked of it.
    pub what: &'static str,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not supported as {} yet: run the exit node on Linux",
            self.os, self.what
        )
    }
}

impl std::error::Error for Unsupported {}

/// What to change on the interface: peers to add or update (the whole desired spec), and
/// peers to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// New peers and peers whose allowed IPs, endpoint or keepalive differ, in desired order.
    pub upsert: Vec<PeerSpec>,
    /// Peers WireGuard has that are no longer desired, in WireGuard's order.
    pub remove: Vec<PublicKey>,
}

impl PeerChanges {
    /// True when the interface already matches, so no command needs to run.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}
