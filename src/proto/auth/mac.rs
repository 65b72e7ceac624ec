//! The protocol's shared parts: constants and header names, errors, the MAC keys derived
//! from X25519, and the canonical strings both sides MAC.

use crate::keys::{PrivateKey, PublicKey, KEY_LEN};
use crate::types::describe;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use std::fmt;

use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// Names this protocol and its version in the HKDF salt, the HKDF info labels and the first
/// line of every canonical string, so a MAC made for any other protocol (or a future version
/// of this one) never verifies here.
pub const PROTOCOL_VERSION: &str = "wgmesh-auth-v1";

/// Header carrying the sender's WireGuard public key (standard base64, as `wg pubkey` prints).
/// The server needs it before anything else: it selects the shared secret.
pub const KEY_HEADER: &str = "X-Wgmesh-Key";
/// Header carrying the request time in unix seconds, so a captured request goes stale.
pub const TIMESTAMP_HEADER: &str = "X-Wgmesh-Timestamp";
/// Header carrying 16 random bytes (standard base64), so a captured request cannot be
/// replayed even inside the timestamp window, and so the response can name its request.
pub const NONCE_HEADER: &str = "X-Wgmesh-Nonce";
/// Header carrying the request's HMAC-SHA256 (standard base64).
pub const MAC_HEADER: &str = "X-Wgmesh-Mac";
/// Header carrying the response's HMAC-SHA256 (standard base64), checked by the agent
/// against its pinned server key before it believes a single byte of the body.
pub const RESPONSE_MAC_HEADER: &str = "X-Wgmesh-Response-Mac";

/// How far (either way) a request's timestamp may be from the server's clock, in seconds.
///
/// Why 120: NTP-synced machines agree to well under a second, but laptops waking from sleep
/// and small VMs without NTP drift by tens of seconds; two minutes absorbs that. It is also how
/// long a captured request stays usable if the replay cache were lost (e.g. a server restart),
/// and it sets how long the [`super::ReplayCache`] must remember each nonce, so it should not be
/// generous either.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 120;

/// How many nonces [`super::ReplayCache::default`] remembers at once, across all keys.
///
/// Why 2^22 (4,194,304, about 150 MB at worst, far less in practice): nonces are kept for
/// [`super::REPLAY_ORDER_WINDOW_SECS`] of each key's own requests, so 10,000 signed requests a
/// second need about 300,000; this leaves over tenfold headroom before the cache fails
/// closed. Only requests with a valid MAC are inserted.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 22;

/// Length of the random nonce, in bytes: 128 bits never collide by chance.
pub const NONCE_LEN: usize = 16;

pub(super) const MAC_LEN: usize = 32;
const MAX_TIMESTAMP_DIGITS: usize = 19;

/// Why a request or response was refused. Each message says what went wrong and what to
/// check, because "401 Unauthorized" alone leaves an operator guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A required header is absent: usually an old agent that does not sign requests.
    MissingHeader(&'static str),
    /// A header is present but unparsable; `reason` says what was expected.
    MalformedHeader {
        /// The header name.
        header: &'static str,
        /// What was wrong with it, with the value quoted safely.
        reason: String,
    },
    /// The method or path contains control characters, which would make the canonical string
    /// ambiguous; real HTTP clients never send these.
    MalformedRequestLine(String),
    /// The other side's public key is a low-order point: the X25519 result is all zeros no
    /// matter whose private key is used, so anyone could compute the MAC key.
    WeakKey(PublicKey),
    /// The timestamp is further than the allowed skew from the server's clock.
    ClockSkew {
        /// Request time minus server time, in seconds (negative: in the past).
        offset_secs: i64,
        /// The allowed skew, in seconds.
        max_secs: u64,
    },
    /// The MAC does not verify for the claimed key.
    BadMac(PublicKey),
    /// This nonce was already accepted within the window.
    Replayed,
    /// The request is stamped more than the order window before the newest request already
    /// accepted from its key, so its nonce may have been forgotten: refused, saying so.
    OutOfOrder {
        /// How many seconds it is stamped before that newest request.
        behind_secs: u64,
        /// The window, [`super::REPLAY_ORDER_WINDOW_SECS`].
        window_secs: u64,
    },
    /// A state-changing request stamped at or before one its key had accepted before the
    /// server restarted: the restarted server cannot tell it from a replay.
    BeforeRestart,
    /// The replay cache is full of live nonces; the request is refused rather than risk
    /// accepting a replay (fail closed). Maps to 503, not 401.
    ReplayCacheFull,
    /// The server's response lacks a MAC or carries a wrong one.
    BadResponseMac(PublicKey),
}

impl AuthError {
    /// The HTTP status the server should answer with: 401 for everything the client can fix
    /// by signing correctly, 503 when the server itself is overloaded.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::ReplayCacheFull => 503,
            _ => 401,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::MissingHeader(h) => write!(
                f,
                "missing header {h}: this server only accepts signed requests (upgrade the agent)"
            ),
            AuthError::MalformedHeader { header, reason } => {
                write!(f, "malformed header {header}: {reason}")
            }
            AuthError::MalformedRequestLine(what) => write!(
                f,
                "request line is not signable: {what} contains control characters"
            ),
            AuthError::WeakKey(key) => write!(
                f,
                "public key {key} is a low-order point and cannot authenticate anything: \
                 generate a real key with `wg genkey`"
            ),
            AuthError::ClockSkew {
                offset_secs,
                max_secs,
            } => {
                let dir = if *offset_secs < 0 { "past" } else { "future" };
                write!(
                    f,
                    "timestamp {} s in the {dir} (at most {max_secs} s allowed): \
                     check the clock (NTP)",
                    offset_secs.unsigned_abs()
                )
            }
            AuthError::BadMac(key) => write!(
                f,
                "request MAC does not match: this request was not signed by the owner of \
                 public key {key}"
            ),
            AuthError::Replayed => f.write_str(
                "replayed request: this nonce was already used; each request needs a fresh one",
            ),
            AuthError::OutOfOrder {
                behind_secs,
                window_secs,
            } => write!(
                f,
                "request timestamp is {behind_secs} s older than a request this key already \
                 sent (at most {window_secs} s allowed): sign each request when sending it, \
                 and check that the agent's clock does not jump back"
            ),
            AuthError::BeforeRestart => f.write_str(
                "request timestamp is not newer than a change this key made before the server \
                 restarted, so it may be a replay: sign the request again with the current time",
            ),
            AuthError::ReplayCacheFull => f.write_str(
                "server is remembering too many recent requests to check for replays; retry shortly",
            ),
            AuthError::BadResponseMac(server) => write!(
                f,
                "response MAC does not match: this response was not signed by server key \
                 {server} (a man-in-the-middle, or the wrong server key is pinned)"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// The two MAC keys one peer shares with the server, derived from their X25519 secret.
/// Private: derived afresh per call (one X25519 operation, tens of microseconds), which is
/// cheap next to an HTTP request; cache per key here if profiling ever says otherwise.
#[derive(Clone)]
pub(super) struct MacKeys {
    pub(super) request: [u8; 32],
    pub(super) response: [u8; 32],
}

impl fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKeys(<redacted>)")
    }
}

impl MacKeys {
    /// Derives the keys on the agent's side, from its own private key and the pinned server
    /// public key. Refuses a low-order server key, whose MAC keys anyone could compute.
    pub(super) fn for_peer(
        peer_private: &PrivateKey,
        server: &PublicKey,
    ) -> Result<MacKeys, AuthError> {
        let peer = peer_private.public_key();
        let secret = peer_private.shared_secret(server);
        Self::derive(&secret, server, &peer).ok_or(AuthError::WeakKey(*server))
    }

    /// Derives the keys on the server's side, from its private key and the peer's claimed
    /// public key. Refuses a low-order peer key, whose MAC keys anyone could compute.
    pub(super) fn for_server(
        server_private: &PrivateKey,
        peer: &PublicKey,
    ) -> Result<MacKeys, AuthError> {
        let server = server_private.public_key();
        let secret = server_private.shared_secret(peer);
        Self::derive(&secret, &server, peer).ok_or(AuthError::WeakKey(*peer))
    }

    pub(super) fn derive(
        secret: &[u8; KEY_LEN],
        server: &PublicKey,
        peer: &PublicKey,
    ) -> Option<MacKeys> {
        // RFC 7748 section 6.1: an all-zero result means a low-order point was supplied.
        if secret.iter().fold(0u8, |acc, b| acc | b) == 0 {
            return None;
        }
        let hk = Hkdf::<Sha256>::new(Some(PROTOCOL_VERSION.as_bytes()), secret);
        let expand = |label: &str| {
            let mut okm = [0u8; 32];
            let label = format!("{PROTOCOL_VERSION} {label}");
            hk.expand_multi_info(
                &[label.as_bytes(), server.as_bytes(), peer.as_bytes()],
                &mut okm,
            )
            .expect("32 bytes is a valid HKDF-SHA256 output length");
            okm
        };
        Some(MacKeys {
            request: expand("request"),
            response: expand("response"),
        })
    }

    pub(super) fn request_mac(&self, canonical: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.request)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(canonical.as_bytes());
        mac
    }

    pub(super) fn response_mac(&self, canonical: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.response)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(canonical.as_bytes());
        mac
    }
}

pub(super) fn body_hash_hex(body: &[u8]) -> String {
    body_parts_hash_hex(&[body])
}

pub(super) fn body_parts_hash_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

pub(super) fn unix_secs(now: SystemTime) -> u64 {
    // A clock before 1970 is broken; treating it as 0 makes every timestamp "stale" with a
    // message pointing at the clock, which is the right diagnosis.
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn check_request_line(method: &str, path: &str) -> Result<(), AuthError> {
    for (what, text) in [("method", method), ("path", path)] {
        if text.chars().any(char::is_control) {
            return Err(AuthError::MalformedRequestLine(format!(
                "{what} {}",
                describe(text)
            )));
        }
    }
    Ok(())
}

pub(super) fn request_canonical(
    method: &str,
    path: &str,
    timestamp: &str,
    nonce: &str,
    key: &PublicKey,
    body: &[u8],
) -> String {
    format!(
        "{PROTOCOL_VERSION} request\n{method}\n{path}\n{timestamp}\n{nonce}\n{key}\n{}",
        body_hash_hex(body)
    )
}

pub(super) fn response_canonical(status: u16, nonce: &str, body: &[u8]) -> String {
    response_canonical_parts(status, nonce, &[body])
}

pub(super) fn response_canonical_parts(status: u16, nonce: &str, parts: &[&[u8]]) -> String {
    format!(
        "{PROTOCOL_VERSION} response\n{status}\n{nonce}\n{}",
        body_parts_hash_hex(parts)
    )
}

pub(super) fn required<'a>(
    headers: &dyn Fn(&str) -> Option<&'a str>,
    name: &'static str,
) -> Result<&'a str, AuthError> {
    headers(name).ok_or(AuthError::MissingHeader(name))
}

pub(super) fn decode_fixed<const N: usize>(
    header: &'static str,
    value: &str,
    what: &str,
) -> Result<[u8; N], AuthError> {
    let bad = || AuthError::MalformedHeader {
        header,
        reason: format!(
            "{} is not the standard base64 of {N} bytes ({what})",
            describe(value)
        ),
    };
    let bytes = STANDARD.decode(value.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

pub(super) fn parse_timestamp(value: &str) -> Result<u64, AuthError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TIMESTAMP_DIGITS
        && value.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| value.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| AuthError::MalformedHeader {
            header: TIMESTAMP_HEADER,
            reason: format!("{} is not unix seconds in decimal", describe(value)),
        })
}
