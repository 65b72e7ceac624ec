//! The JSON of the operator endpoints under `/admin/`, shared by the server that writes it
//! and `wgmesh token|peers|policy` that read it, so both agree on every field by
//! construction. Response fields are in alphabetical order, the order the server always
//! wrote them in.

use crate::keys::PublicKey;
use crate::types::{PeerId, Tag};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// `POST /admin/tokens`: what the operator asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// Redemptions allowed; `None` = unlimited.
    #[serde(default)]
    pub uses: Option<u32>,
    /// Lifetime such as `7d` (humantime syntax); `None` = never expires.
    #[serde(default)]
    pub expires: Option<String>,
    /// Tags given to every machine that joins with the token.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// One token as `token list` shows it: never the hash, and a status column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// The public token id (`tok-...`).
    pub id: String,
    /// Redemptions left; `None` = unlimited.
    pub uses_left: Option<u32>,
    /// When it stops working (RFC 3339); `None` = never.
    pub expires_at: Option<String>,
    /// Tags its machines get.
    pub tags: Vec<Tag>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Whether an operator revoked it.
    pub revoked: bool,
    /// `usable`, `revoked`, `expired` or `used up`.
    pub status: String,
}

/// Answer to `POST /admin/tokens`: the secret, shown this once, and its listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreateResponse {
    /// The new token as `token list` will show it.
    pub info: TokenView,
    /// Always true on this type.
    pub success: bool,
    /// The secret token (`wgm_...`); the server keeps only its hash.
    pub token: String,
}

/// Answer to `GET /admin/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenListResponse {
    /// Always true on this type.
    pub success: bool,
    /// Every token, revoked and expired ones included.
    pub tokens: Vec<TokenView>,
}

/// One peer in the admin view: everything the registry holds, offline peers included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminPeerView {
    /// The peer's id.
    pub id: PeerId,
    /// The peer's key.
    pub public_key: PublicKey,
    /// Its mesh address.
    pub virtual_ip: Ipv4Addr,
    /// Its hostname.
    pub hostname: String,
    /// Its name in the `.mesh` zone; absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Its OS.
    pub os: String,
    /// The endpoint others dial, when known.
    pub endpoint: Option<String>,
    /// Whether it heartbeats.
    pub online: bool,
    /// Its tags.
    pub tags: Vec<Tag>,
    /// First registration (RFC 3339).
    pub registered_at: String,
    /// Last heartbeat (RFC 3339).
    pub last_heartbeat: String,
    /// The single sign-on owner (email, else subject); absent for token peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the owner last logged in for it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_login: Option<String>,
    /// When that login expires (`--login-expiry` after it), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_login_expires: Option<String>,
    /// When an admin ended that login (`wgmesh peers logout`), if one did (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_logged_out: Option<String>,
}

/// Answer to `GET /admin/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminPeersResponse {
    /// Every registered peer.
    pub peers: Vec<AdminPeerView>,
    /// Always true on this type.
    pub success: bool,
}

/// Answer to `POST /admin/policy/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReloadResponse {
    /// Whether the file differed from the policy in force.
    pub changed: bool,
    /// The policy now in force, in one line.
    pub policy: String,
    /// Always true on this type.
    pub success: bool,
}
