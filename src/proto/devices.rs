//! The JSON of devices without the agent (phones behind a gateway): the operator's
//! `/admin/devices` endpoints and the gateway's signed `GET /devices`. Shared by the server
//! and the CLI/agent, so both agree on every field by construction.

use crate::keys::PublicKey;
use crate::types::{PeerId, Tag};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `POST /admin/devices`: add a device behind a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAddRequest {
    /// The device's name (`NAME.mesh`): one DNS label.
    pub name: String,
    /// The gateway: its `.mesh` name, hostname or peer id.
    pub via: String,
    /// Tags for the access policy.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The device's own public key; without it the server generates a key pair, returns the
    /// private key once in the answer and keeps only the public key.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// Send all internet traffic through the gateway (it must be an exit node).
    #[serde(default)]
    pub exit: bool,
}

/// One device as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device's `.mesh` name.
    pub name: String,
    /// Its stable id (from its key).
    pub id: PeerId,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its mesh addresses (/32, and /128 in the IPv6 mesh).
    pub addresses: Vec<IpNet>,
    /// The gateway's id.
    pub via: PeerId,
    /// The gateway's `.mesh` name.
    pub via_name: String,
    /// Its tags.
    pub tags: Vec<Tag>,
    /// When it was added (RFC 3339).
    pub created_at: String,
}

/// Everything a device's wg-quick configuration is made of (but its private key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// The device's addresses (`[Interface] Address`).
    pub addresses: Vec<IpNet>,
    /// The gateway's mesh resolver addresses (`DNS`).
    pub dns: Vec<std::net::IpAddr>,
    /// The gateway's WireGuard public key.
    pub gateway_public_key: PublicKey,
    /// Where the device dials the gateway (`host:port`); None while the server knows no
    /// address for the gateway.
    pub endpoint: Option<String>,
    /// What the device routes to the gateway: the mesh's networks (and the default routes
    /// with `exit`).
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives (a phone behind NAT must keep its mapping open).
    pub persistent_keepalive: u16,
}

/// Answer to `POST /admin/devices` and `GET /admin/devices/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAnswer {
    /// Always true on this type.
    pub success: bool,
    /// The device.
    pub device: DeviceView,
    /// Its configuration's parts.
    pub config: DeviceConfig,
    /// The private key the server generated, only in the answer that added the device (it
    /// is never stored, so never shown again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// Answer to `GET /admin/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListResponse {
    /// Always true on this type.
    pub success: bool,
    /// Every device, in address order.
    pub devices: Vec<DeviceView>,
}

/// One device as its gateway configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayDevice {
    /// The device's id.
    pub id: PeerId,
    /// Its `.mesh` name.
    pub name: String,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its mesh addresses (its AllowedIPs on the gateway).
    pub addresses: Vec<IpNet>,
    /// The mesh addresses the policy lets it reach (the gateway forwards nothing else).
    pub reach: Vec<IpNet>,
    /// The parts of approved subnet routes the policy grants it, each with the router that
    /// serves it (absent from servers before devices could use subnet routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<DeviceRoute>,
}

/// One part of an approved subnet route a device may reach, and the router (the prefix's
/// primary) its gateway sends it to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRoute {
    /// The granted part (the whole route, or a narrower prefix inside it).
    pub prefix: IpNet,
    /// The router in use for the route it is part of.
    pub router: PeerId,
}

/// Answer to the gateway's signed `GET /devices?peer_id=ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayDevicesResponse {
    /// Always true on this type.
    pub success: bool,
    /// The devices behind the caller.
    pub devices: Vec<GatewayDevice>,
}
