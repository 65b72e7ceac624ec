//! The JSON wire types of the coordination API (design section 5.2), shared by server and
//! client so both sides agree on every field name by construction.
//!
//! Request types hold validated values (keys, hostnames, endpoints, CIDRs), so a request that
//! deserializes is already safe to store and to hand to a command line.

use crate::keys::PublicKey;
use crate::types::{DnsName, Endpoint, Hostname, OsName, PeerId};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn default_os() -> OsName {
    "unknown".parse().expect("literal is a valid OS name")
}

fn yes() -> bool {
    true
}

/// Most extra prefixes (`allowed_ips`) one peer may advertise; the server refuses more.
pub const MAX_ALLOWED_IPS: usize = 64;

/// `POST /register`: a peer announces its public key and asks for its mesh address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The peer's WireGuard public key: its identity.
    pub public_key: PublicKey,
    /// How other peers will see this device named.
    pub hostname: Hostname,
    /// The peer's operating system (informational).
    #[serde(default = "default_os")]
    pub os: OsName,
    /// Where other peers should dial this one; when absent the server uses the source address
    /// it sees the request come from, with `listen_port`.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// The peer's WireGuard listen port, used with the observed source address when no
    /// endpoint is given (a port-preserving NAT keeps it).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// Kept for compatibility with the design; an address is always assigned.
    #[serde(default = "yes")]
    pub request_ip: bool,
    /// Whether this peer offers to route internet traffic for others.
    #[serde(default)]
    pub exit_node: bool,
    /// Extra prefixes this peer routes (subnet routes), beyond its own mesh address.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    /// The join token (`wgm_...`) that invites this key: required for the first registration
    /// of a key unless the server runs `--open`; ignored (and not used up) for a known key.
    /// Absent from the JSON when not set, so requests to open servers look as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A finished single sign-on login of this key (`POST /sso/login`, then `/sso/poll`
    /// until done), instead of a token: admits the key with the tags of the person's
    /// identity rules and records them as its owner. Used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Set by `up --gateway`: the UDP port where this node's devices (phones, routers
    /// without the agent) reach it; the server puts it in their configurations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<u16>,
}

/// Answer to a successful registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Always true on this type; errors use [`ApiError`].
    pub success: bool,
    /// The peer's mesh address; the same for the same public key, always.
    pub assigned_ip: Ipv4Addr,
    /// The mesh network, which the client routes through its WireGuard interface.
    pub network_cidr: Ipv4Net,
    /// The peer's stable identifier, used by heartbeat and peers.
    pub peer_id: PeerId,
    /// The coordination server's own WireGuard public key.
    pub server_public_key: PublicKey,
    /// The peer's own name in the `.mesh` zone (others see it in `/peers`); absent from older
    /// servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<DnsName>,
}

/// `POST /heartbeat`: a peer says it is alive, and maybe that its endpoint moved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Who is alive.
    pub peer_id: PeerId,
    /// The peer's current endpoint, when it knows it better than the server does.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
}

/// `POST /deregister`: a peer leaves the mesh for good and frees its address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeregisterRequest {
    /// Who is leaving.
    pub peer_id: PeerId,
}

/// `POST /offline`: a peer stops on purpose (`wgmesh down`, or `up` stopping) and leaves
/// everyone's list now, keeping its registration and address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRequest {
    /// Who is going offline.
    pub peer_id: PeerId,
}

/// One entry of `GET /peers`: everything a client needs to configure a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's stable identifier.
    pub id: PeerId,
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// The peer's mesh address.
    pub virtual_ip: Ipv4Addr,
    /// Where to dial the peer; null when the server does not know yet.
    pub endpoint: Option<Endpoint>,
    /// The peer's hostname.
    pub hostname: Hostname,
    /// The peer's name in the `.mesh` zone (`NAME.mesh`), unique in the mesh and the same on
    /// every node; absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<DnsName>,
    /// The peer's operating system.
    pub os: OsName,
    /// What to route to this peer: its /32, plus any advertised prefixes (`0.0.0.0/0` for an
    /// exit node, which clients install only when they chose that exit node).
    pub allowed_ips: Vec<IpNet>,
    /// Whether the peer offers to be an exit node.
    pub exit_node: bool,
    /// Whether the peer has sent a heartbeat within the server's timeout.
    pub online: bool,
    /// RFC 3339 time of the last heartbeat, refreshed in the list at each sweep.
    pub last_heartbeat: String,
    /// Set for a device without the agent (a phone): the id of the gateway peer it sits
    /// behind. Nodes route `allowed_ips` to that gateway instead of configuring the device
    /// as a WireGuard peer of their own; its name resolves like any peer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PeerId>,
    /// What this peer may reach of the mesh's approved subnet routes, as the policy grants
    /// it, in the lists of nodes that advertise routes (others are not told): absent for
    /// every route (no policy, or `"*"` in a rule's `to`; also what servers before per-prefix
    /// access meant), else only addresses inside these prefixes. A subnet router forwards
    /// this peer's traffic only there (see [`crate::proto::subnet_routes::Grants`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<Vec<IpNet>>,
}

#[cfg(test)]
impl PeerInfo {
    /// A listed peer for unit tests: `key` named `name` at 10.100.0.`last` (its /32 the only
    /// allowed IP), online, with no endpoint; a test sets what it needs on top with struct
    /// update syntax, so a new field is added here once.
    pub fn for_test(key: PublicKey, name: &str, last: u8) -> PeerInfo {
        PeerInfo {
            id: PeerId::for_key(&key),
            public_key: key,
            virtual_ip: Ipv4Addr::new(10, 100, 0, last),
            endpoint: None,
            hostname: name.parse().expect("a test hostname"),
            dns_name: None,
            os: "linux".parse().expect("linux"),
            allowed_ips: vec![IpNet::V4(
                Ipv4Net::new(Ipv4Addr::new(10, 100, 0, last), 32).expect("/32"),
            )],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
            via: None,
            reach: None,
        }
    }
}

/// Answer to `GET /peers`, and the agent's peer cache (with the version it is at).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// The UDP port where the server relays WireGuard between members (on the server's own
    /// host); absent when the server runs no relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
    /// Every online peer except the caller that the access policy lets the caller see.
    pub peers: Vec<PeerInfo>,
    /// The list's version, to ask for only what changed after it (`since`); absent from
    /// servers before live sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Answer to `GET /peers?since=N`: either the whole list (`full`, in `peers`) or what
/// changed after N (`changed` entries replace or add, `removed` ids go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersDelta {
    /// The version the caller is at after applying this answer.
    pub version: u64,
    /// True: `peers` is the whole list; false: apply `changed` and `removed`.
    pub full: bool,
    /// The whole list, when `full`.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
    /// Peers to add or replace, when not `full`.
    #[serde(default)]
    pub changed: Vec<PeerInfo>,
    /// Peers to drop, when not `full` (ids the caller never had are ignored).
    #[serde(default)]
    pub removed: Vec<PeerId>,
    /// The relay's UDP port, in full answers from a server that relays (as in
    /// [`PeersResponse`]); deltas leave it out and keep what the caller knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
}

/// Answer to heartbeat and deregister.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessResponse {
    /// Always true on this type.
    pub success: bool,
}

/// Every refusal of the coordination API: `error` says what went wrong and how to fix it (for
/// people); `code` says which kind of refusal it is (for programs, which must never parse
/// `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Always false.
    pub success: bool,
    /// What went wrong and how to fix it.
    pub error: String,
    /// The stable, machine-readable kind of refusal.
    #[serde(default)]
    pub code: ErrorCode,
}

/// The kinds of refusal, as `code` in every API error body (snake_case strings). New kinds
/// may be added; clients treat codes they do not know as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request or one of its fields is invalid; `error` names it.
    BadRequest,
    /// 401: authentication failed (request MAC, clock, replay, key ownership, join token,
    /// admin secret).
    Unauthorized,
    /// 403: the join token is expired, used up or revoked.
    Forbidden,
    /// 404: the peer id is not registered (never was, or was removed): register again.
    UnknownPeer,
    /// 404: no such endpoint or object.
    NotFound,
    /// 405: the endpoint exists but not for this method (see `Allow`).
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 411: a body was sent without `Content-Length`.
    LengthRequired,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 429: too many requests from this source (see `Retry-After`).
    RateLimited,
    /// 431: the request's headers are too large or too many.
    HeadersTooLarge,
    /// 500: the server could not store the change; nothing was changed.
    Internal,
    /// 501: the request uses something the server does not implement (a transfer coding).
    NotImplemented,
    /// 505: the request line names an HTTP version other than 1.x.
    HttpVersionNotSupported,
    /// 503: the server cannot take this now (address pool exhausted, replay cache full).
    Unavailable,
    /// No code given (a server older than codes) or one this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The usual code for an HTTP status; refusals with a more specific meaning (such as
    /// [`ErrorCode::UnknownPeer`]) set theirs explicitly.
    pub fn for_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            411 => ErrorCode::LengthRequired,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::RateLimited,
            431 => ErrorCode::HeadersTooLarge,
            501 => ErrorCode::NotImplemented,
            503 => ErrorCode::Unavailable,
            505 => ErrorCode::HttpVersionNotSupported,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::Unknown,
        }
    }
}

/// Answer to the unauthenticated `GET /key`: the server's X25519 public key, which a new
/// agent pins (trust on first use) unless the operator gave it with `--server-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResponse {
    /// Always true on this type.
    pub success: bool,
    /// The key every signed answer is checked against.
    pub server_public_key: PublicKey,
}
