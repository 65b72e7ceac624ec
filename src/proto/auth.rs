//! Request and response authentication between a peer and the coordination server.
//!
//! wgmesh talks plain HTTP, so anything on the path could forge a registration ("this is my
//! key, route me your traffic") or a peer list ("here is a new peer, trust it"). Instead of
//! adding TLS and a PKI, both ends reuse keys they already have: the server's static X25519
//! key (pinned by every agent at join time) and each peer's WireGuard key. The X25519 shared
//! secret between the two is known only to those two key owners, so a MAC keyed from it
//! proves "the owner of this public key sent this" in both directions.
//!
//! # Key derivation
//!
//! `HKDF-SHA256(salt = "wgmesh-auth-v1", ikm = X25519(peer, server))`, expanded twice with
//! `info = label || server public key || peer public key` where the label is
//! `"wgmesh-auth-v1 request"` or `"wgmesh-auth-v1 response"`. Separate keys per direction
//! mean a server response can never be replayed to the server as a request (or vice versa),
//! and binding both public keys pins the derived keys to this exact pair.
//!
//! # Request
//!
//! The agent sends four headers ([`KEY_HEADER`], [`TIMESTAMP_HEADER`], [`NONCE_HEADER`],
//! [`MAC_HEADER`]); the MAC is HMAC-SHA256 with the request key over the canonical string
//!
//! ```text
//! wgmesh-auth-v1 request\n
//! {METHOD}\n
//! {path with query, exactly as sent}\n
//! {unix seconds, decimal}\n
//! {nonce header value}\n
//! {public key, standard base64}\n
//! {lowercase hex SHA-256 of the body}
//! ```
//!
//! (the `\n` are single line feeds; there is no trailing newline). Method and path may hold no
//! control characters, so no two different requests share a canonical string.
//!
//! # Response
//!
//! The server answers with [`RESPONSE_MAC_HEADER`]: HMAC-SHA256 with the response key over
//!
//! ```text
//! wgmesh-auth-v1 response\n
//! {status code, decimal}\n
//! {the request's nonce header value}\n
//! {lowercase hex SHA-256 of the response body}
//! ```
//!
//! The nonce ties the response to the one request it answers, so an old (signed) peer list
//! cannot be replayed to an agent later.

use crate::keys::{PrivateKey, PublicKey, KEY_LEN};
use crate::types::describe;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
/// and it sets how long the [`ReplayCache`] must remember each nonce, so it should not be
/// generous either.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 120;

/// How many nonces [`ReplayCache::default`] remembers at once, across all keys.
///
/// Why 2^22 (4,194,304, about 150 MB at worst, far less in practice): nonces are kept for
/// [`REPLAY_ORDER_WINDOW_SECS`] of each key's own requests, so 10,000 signed requests a
/// second need about 300,000; this leaves over tenfold headroom before the cache fails
/// closed. Only requests with a valid MAC are inserted.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 22;

/// Length of the random nonce, in bytes: 128 bits never collide by chance.
pub const NONCE_LEN: usize = 16;

const MAC_LEN: usize = 32;
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
struct MacKeys {
    request: [u8; 32],
    response: [u8; 32],
}

impl fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKeys(<redacted>)")
    }
}

impl MacKeys {
    /// Derives the keys on the agent's side, from its own private key and the pinned server
    /// public key. Refuses a low-order server key, whose MAC keys anyone could compute.
    fn for_peer(peer_private: &PrivateKey, server: &PublicKey) -> Result<MacKeys, AuthError> {
        let peer = peer_private.public_key();
        let secret = peer_private.shared_secret(server);
        Self::derive(&secret, server, &peer).ok_or(AuthError::WeakKey(*server))
    }

    /// Derives the keys on the server's side, from its private key and the peer's claimed
    /// public key. Refuses a low-order peer key, whose MAC keys anyone could compute.
    fn for_server(server_private: &PrivateKey, peer: &PublicKey) -> Result<MacKeys, AuthError> {
        let server = server_private.public_key();
        let secret = server_private.shared_secret(peer);
        Self::derive(&secret, &server, peer).ok_or(AuthError::WeakKey(*peer))
    }

    fn derive(secret: &[u8; KEY_LEN], server: &PublicKey, peer: &PublicKey) -> Option<MacKeys> {
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

    fn request_mac(&self, canonical: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.request)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(canonical.as_bytes());
        mac
    }

    fn response_mac(&self, canonical: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.response)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(canonical.as_bytes());
        mac
    }
}

fn body_hash_hex(body: &[u8]) -> String {
    body_parts_hash_hex(&[body])
}

fn body_parts_hash_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

fn unix_secs(now: SystemTime) -> u64 {
    // A clock before 1970 is broken; treating it as 0 makes every timestamp "stale" with a
    // message pointing at the clock, which is the right diagnosis.
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_request_line(method: &str, path: &str) -> Result<(), AuthError> {
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

fn request_canonical(
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

fn response_canonical(status: u16, nonce: &str, body: &[u8]) -> String {
    response_canonical_parts(status, nonce, &[body])
}

fn response_canonical_parts(status: u16, nonce: &str, parts: &[&[u8]]) -> String {
    format!(
        "{PROTOCOL_VERSION} response\n{status}\n{nonce}\n{}",
        body_parts_hash_hex(parts)
    )
}

/// Signs a request on the agent's side: returns the four headers to add to it.
///
/// `path` must be exactly the request target sent on the wire (path plus query), and `body`
/// exactly the bytes sent (empty for a GET). Keep the returned [`NONCE_HEADER`] value (see
/// [`header_value`]) to check the response with [`verify_response`]. Signing with a low-order
/// server key is harmless (the server will refuse it), so this cannot fail; the agent's
/// [`verify_response`] refuses such a key.
pub fn sign_request(
    private_key: &PrivateKey,
    server_pub: &PublicKey,
    method: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    sign_with(
        &private_key.public_key(),
        MacKeys::for_peer(private_key, server_pub).ok().as_ref(),
        method,
        path,
        body,
        now,
    )
}

fn sign_with(
    key: &PublicKey,
    keys: Option<&MacKeys>,
    method: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    let nonce = STANDARD.encode(nonce);
    let timestamp = unix_secs(now).to_string();
    let canonical = request_canonical(method, path, &timestamp, &nonce, key, body);
    let mac = match keys {
        Some(keys) => STANDARD.encode(keys.request_mac(&canonical).finalize().into_bytes()),
        // A low-order server key: send a MAC of zeros, which the real server refuses.
        None => STANDARD.encode([0u8; MAC_LEN]),
    };
    vec![
        (KEY_HEADER, key.to_base64()),
        (TIMESTAMP_HEADER, timestamp),
        (NONCE_HEADER, nonce),
        (MAC_HEADER, mac),
    ]
}

/// The agent's side with the key agreement done once: for a client that sends many requests
/// to the same server (a load generator, a busy agent), where [`sign_request`]'s X25519 per
/// call would dominate.
pub struct RequestSigner {
    key: PublicKey,
    keys: Option<MacKeys>,
}

impl fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSigner")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RequestSigner {
    /// Derives the MAC keys of `private_key` with `server_pub` once.
    pub fn new(private_key: &PrivateKey, server_pub: &PublicKey) -> RequestSigner {
        RequestSigner {
            key: private_key.public_key(),
            keys: MacKeys::for_peer(private_key, server_pub).ok(),
        }
    }

    /// Exactly what [`sign_request`] returns for the same key pair.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        sign_with(&self.key, self.keys.as_ref(), method, path, body, now)
    }
}

/// Finds a header in a list such as [`sign_request`] returns (names compared ignoring ASCII
/// case, as HTTP does), so the agent can pick out the nonce it sent.
pub fn header_value<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn required<'a>(
    headers: &dyn Fn(&str) -> Option<&'a str>,
    name: &'static str,
) -> Result<&'a str, AuthError> {
    headers(name).ok_or(AuthError::MissingHeader(name))
}

fn decode_fixed<const N: usize>(
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

fn parse_timestamp(value: &str) -> Result<u64, AuthError> {
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

/// Verifies a request on the server's side and returns the public key that signed it.
///
/// `headers` looks a header up by name; it must ignore ASCII case as HTTP requires (tiny_http's
/// header fields already compare that way). Checks run cheapest first: headers present and
/// well-formed, timestamp within the cache's skew, MAC, and only then the replay cache, so a
/// stranger without a valid MAC can never insert nonces. The caller must still check that the
/// returned key is the one the request is about (e.g. the key in a register body, or the key
/// registered under the peer id being heartbeated).
pub fn verify_request<'a>(
    server_private: &PrivateKey,
    headers: &dyn Fn(&str) -> Option<&'a str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
    replay: &ReplayCache,
) -> Result<PublicKey, AuthError> {
    verify_with(
        &|key| MacKeys::for_server(server_private, key),
        headers,
        method,
        path,
        body,
        now,
        replay,
    )
    .map(|(key, _)| key)
}

fn verify_with<'a>(
    derive: &dyn Fn(&PublicKey) -> Result<MacKeys, AuthError>,
    headers: &dyn Fn(&str) -> Option<&'a str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
    replay: &ReplayCache,
) -> Result<(PublicKey, MacKeys), AuthError> {
    let key_text = required(headers, KEY_HEADER)?;
    let timestamp = required(headers, TIMESTAMP_HEADER)?;
    let nonce_text = required(headers, NONCE_HEADER)?;
    let mac_text = required(headers, MAC_HEADER)?;

    let key = PublicKey::from_base64(key_text).map_err(|e| AuthError::MalformedHeader {
        header: KEY_HEADER,
        reason: e.0,
    })?;
    let ts = parse_timestamp(timestamp)?;
    let nonce: [u8; NONCE_LEN] = decode_fixed(NONCE_HEADER, nonce_text, "a random nonce")?;
    let mac: [u8; MAC_LEN] = decode_fixed(MAC_HEADER, mac_text, "an HMAC-SHA256")?;
    check_request_line(method, path)?;

    let now_secs = unix_secs(now);
    let offset = i128::from(ts) - i128::from(now_secs);
    let max = replay.max_skew_secs();
    if offset.unsigned_abs() > u128::from(max) {
        return Err(AuthError::ClockSkew {
            offset_secs: offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            max_secs: max,
        });
    }

    let keys = derive(&key)?;
    let canonical = request_canonical(method, path, timestamp, nonce_text, &key, body);
    keys.request_mac(&canonical)
        .verify_slice(&mac)
        .map_err(|_| AuthError::BadMac(key))?;

    replay.check_and_remember(&key, nonce, ts, now_secs)?;
    Ok((key, keys))
}

/// Most peers whose derived MAC keys [`ServerAuth`] keeps: 65,536 entries of 64 bytes plus
/// the map's overhead stay in the low megabytes, and cover a large mesh.
pub const MAX_CACHED_PEER_KEYS: usize = 1 << 16;

/// The server's side of the protocol with the X25519 work cached: one key agreement per peer
/// rather than per request, which would otherwise cost more than the rest of a heartbeat.
///
/// Keys are remembered only after a request verified with them, so strangers sending forged
/// requests cannot fill the cache (they still pay, and cost the server, one X25519 each, which
/// the failed-authentication rate limit bounds). When full, the cache starts over.
pub struct ServerAuth {
    private: PrivateKey,
    public: PublicKey,
    replay: ReplayCache,
    keys: Mutex<std::collections::HashMap<PublicKey, MacKeys>>,
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAuth")
            .field("public", &self.public)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl ServerAuth {
    /// The server's key and the replay cache whose skew window requests must fall within.
    pub fn new(private: PrivateKey, replay: ReplayCache) -> ServerAuth {
        ServerAuth {
            public: private.public_key(),
            private,
            replay,
            keys: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The server's public key, as `/key` and `/register` announce it.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn cached(&self, peer: &PublicKey) -> Option<MacKeys> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    fn remember(&self, peer: PublicKey, keys: MacKeys) {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_PEER_KEYS && !map.contains_key(&peer) {
            map.clear();
        }
        map.insert(peer, keys);
    }

    /// [`verify_request`] with this server's key, replay cache and key cache.
    pub fn verify_request<'a>(
        &self,
        headers: &dyn Fn(&str) -> Option<&'a str>,
        method: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<PublicKey, AuthError> {
        let derive = |key: &PublicKey| match self.cached(key) {
            Some(keys) => Ok(keys),
            None => MacKeys::for_server(&self.private, key),
        };
        let (key, keys) = verify_with(&derive, headers, method, path, body, now, &self.replay)?;
        if self.cached(&key).is_none() {
            self.remember(key, keys);
        }
        Ok(key)
    }

    /// [`sign_response_parts`] with this server's key, reusing the cached keys of `peer`.
    pub fn sign_response_parts(
        &self,
        peer: &PublicKey,
        request_nonce: &str,
        status: u16,
        parts: &[&[u8]],
    ) -> Vec<(&'static str, String)> {
        let keys = self
            .cached(peer)
            .map(Ok)
            .unwrap_or_else(|| MacKeys::for_server(&self.private, peer));
        let canonical = response_canonical_parts(status, request_nonce, parts);
        let mac = match keys {
            Ok(keys) => STANDARD.encode(keys.response_mac(&canonical).finalize().into_bytes()),
            Err(_) => STANDARD.encode([0u8; MAC_LEN]),
        };
        vec![(RESPONSE_MAC_HEADER, mac)]
    }
}

/// Signs a response on the server's side: returns the [`RESPONSE_MAC_HEADER`] to add.
///
/// `peer` is the key [`verify_request`] returned and `request_nonce` the request's
/// [`NONCE_HEADER`] value; `body` must be exactly the bytes sent. Sign every response to an
/// authenticated request, errors included, so the agent can trust the error too.
pub fn sign_response(
    server_private: &PrivateKey,
    peer: &PublicKey,
    request_nonce: &str,
    status: u16,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    sign_response_parts(server_private, peer, request_nonce, status, &[body])
}

/// Like [`sign_response`], for a body sent as several slices (the server's cached peer list
/// minus the caller's own entry goes out as two slices of a shared buffer): the MAC covers
/// their concatenation, so the server never has to copy the list just to sign it.
pub fn sign_response_parts(
    server_private: &PrivateKey,
    peer: &PublicKey,
    request_nonce: &str,
    status: u16,
    parts: &[&[u8]],
) -> Vec<(&'static str, String)> {
    let canonical = response_canonical_parts(status, request_nonce, parts);
    let mac = match MacKeys::for_server(server_private, peer) {
        Ok(keys) => STANDARD.encode(keys.response_mac(&canonical).finalize().into_bytes()),
        // verify_request never accepts a low-order key; if called anyway, sign nothing useful.
        Err(_) => STANDARD.encode([0u8; MAC_LEN]),
    };
    vec![(RESPONSE_MAC_HEADER, mac)]
}

/// Verifies a response on the agent's side against the pinned server key.
///
/// `request_nonce` is the [`NONCE_HEADER`] value this agent sent; `headers` looks up the
/// response's headers (ignoring ASCII case). Until this returns `Ok`, the body is untrusted:
/// it may be a forged peer list injected on the path.
pub fn verify_response<'a>(
    private_key: &PrivateKey,
    server_pub: &PublicKey,
    request_nonce: &str,
    status: u16,
    headers: &dyn Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<(), AuthError> {
    let keys = MacKeys::for_peer(private_key, server_pub)?;
    let bad = || AuthError::BadResponseMac(*server_pub);
    let mac_text = headers(RESPONSE_MAC_HEADER).ok_or_else(bad)?;
    let mac: [u8; MAC_LEN] =
        decode_fixed(RESPONSE_MAC_HEADER, mac_text, "an HMAC-SHA256").map_err(|_| bad())?;
    let canonical = response_canonical(status, request_nonce, body);
    keys.response_mac(&canonical)
        .verify_slice(&mac)
        .map_err(|_| bad())
}

/// Remembers the nonces of accepted requests, so each signed request is accepted at most once,
/// in memory proportional to the request rate over a short window rather than over the whole
/// clock-skew window.
///
/// Per key, the cache keeps the newest timestamp seen and the nonces of that key's requests
/// stamped within [`REPLAY_ORDER_WINDOW_SECS`] of it. A request stamped earlier than that is
/// refused as out of order: its nonce may have been forgotten. So a replay is refused either
/// because its nonce is remembered, or because its timestamp is too old for its key, or (once
/// its key is forgotten, `max_skew` after its newest request) because it is stale. Honest
/// agents never send a request that arrives after one they signed 30 s later.
///
/// Why not one set of every nonce for twice the skew window (what it was): at 10,000 signed
/// requests a second that is 2.4 million nonces, and a cache of 2^18 refused valid requests
/// above ~2,200 a second. Here 10,000 a second cost about 300,000 entries of 16 bytes, and
/// each key's own clock decides, so clock skew between agents costs nothing.
///
/// Nonces are stored as 64-bit fingerprints of (key, nonce) under a per-process random
/// SipHash key: a valid request can collide with another by chance (about one in 10^13 at
/// full load, and it would only be refused), never be made to. Memory is bounded by
/// `capacity` fingerprints in all; past it requests are refused with
/// [`AuthError::ReplayCacheFull`] (fail closed). Thread-safe: one `Mutex`, held for a
/// hash-set insert.
///
/// The cache lives in memory: after a server restart, a request captured in the last
/// `max_skew` seconds could be replayed once. Requests are idempotent (register, heartbeat,
/// list), which is why this is accepted rather than persisted.
pub struct ReplayCache {
    max_skew_secs: u64,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    inner: Mutex<ReplayInner>,
}

/// How far (in seconds) a request may be stamped before the newest request of its key and
/// still be accepted; see [`ReplayCache`].
pub const REPLAY_ORDER_WINDOW_SECS: u64 = 30;

/// One key's recent nonces.
#[derive(Default)]
struct KeyWindow {
    newest: u64,
    seen: HashSet<u64>,
    /// (timestamp, fingerprint) in arrival order, for pruning.
    order: VecDeque<(u64, u64)>,
}

#[derive(Default)]
struct ReplayInner {
    keys: HashMap<PublicKey, KeyWindow>,
    /// Fingerprints remembered across all keys.
    len: usize,
    /// When (unix seconds) keys silent for longer than the skew are next forgotten.
    next_sweep: u64,
    /// When they last were (a full cache sweeps at most once a second).
    swept_at: u64,
}

impl ReplayCache {
    /// Builds a cache accepting timestamps within `max_skew` of the server clock (rounded down
    /// to whole seconds) and remembering at most `capacity` nonces.
    pub fn new(max_skew: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            max_skew_secs: max_skew.as_secs(),
            capacity,
            hasher: std::collections::hash_map::RandomState::new(),
            inner: Mutex::new(ReplayInner::default()),
        }
    }

    /// The accepted clock skew in seconds, which [`verify_request`] applies.
    pub fn max_skew_secs(&self) -> u64 {
        self.max_skew_secs
    }

    /// How many nonces are remembered right now, for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether no nonce is remembered, for metrics and tests.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys have nonces remembered, for tests and figures.
    pub fn keys(&self) -> usize {
        self.lock().keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayInner> {
        // A panic while holding the lock leaves at worst a count off by one; refusing every
        // later request would be far worse.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_and_remember(
        &self,
        key: &PublicKey,
        nonce: [u8; NONCE_LEN],
        timestamp: u64,
        now: u64,
    ) -> Result<(), AuthError> {
        use std::hash::BuildHasher;
        let fingerprint = self.hasher.hash_one((key.as_bytes(), nonce));
        let mut guard = self.lock();
        let inner = &mut *guard;
        if now >= inner.next_sweep || (inner.len >= self.capacity && now > inner.swept_at) {
            // Forget keys whose every request is now refused as stale anyway.
            let skew = self.max_skew_secs;
            let mut forgotten = 0;
            inner.keys.retain(|_, w| {
                let keep = w.newest.saturating_add(skew) >= now;
                if !keep {
                    forgotten += w.seen.len();
                }
                keep
            });
            inner.len -= forgotten;
            inner.next_sweep = now + (skew / 8).max(1);
            inner.swept_at = now;
        }
        let window = inner.keys.entry(*key).or_default();
        if timestamp.saturating_add(REPLAY_ORDER_WINDOW_SECS) < window.newest {
            return Err(AuthError::Replayed);
        }
        if window.seen.contains(&fingerprint) {
            return Err(AuthError::Replayed);
        }
        if inner.len >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        window.seen.insert(fingerprint);
        window.order.push_back((timestamp, fingerprint));
        window.newest = window.newest.max(timestamp);
        inner.len += 1;
        let floor = window.newest.saturating_sub(REPLAY_ORDER_WINDOW_SECS);
        while let Some(&(ts, old)) = window.order.front() {
            if ts >= floor {
                break;
            }
            window.order.pop_front();
            window.seen.remove(&old);
            inner.len -= 1;
        }
        Ok(())
    }
}

impl Default for ReplayCache {
    /// [`DEFAULT_MAX_CLOCK_SKEW_SECS`] and [`DEFAULT_REPLAY_CAPACITY`].
    fn default() -> Self {
        ReplayCache::new(
            Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS),
            DEFAULT_REPLAY_CAPACITY,
        )
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("max_skew_secs", &self.max_skew_secs)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Setup {
        server: PrivateKey,
        peer: PrivateKey,
        now: SystemTime,
    }

    fn setup() -> Setup {
        Setup {
            server: PrivateKey::generate(),
            peer: PrivateKey::generate(),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn lookup<'h>(headers: &'h [(&'static str, String)]) -> impl Fn(&str) -> Option<&'h str> {
        move |name| header_value(headers, name)
    }

    fn verify(
        s: &Setup,
        headers: &[(&'static str, String)],
        method: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
        cache: &ReplayCache,
    ) -> Result<PublicKey, AuthError> {
        verify_request(&s.server, &lookup(headers), method, path, body, now, cache)
    }

    fn sign(s: &Setup, method: &str, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        sign_request(&s.peer, &s.server.public_key(), method, path, body, s.now)
    }

    #[test]
    fn round_trip_request_and_response() {
        let s = setup();
        let cache = ReplayCache::default();
        let body = br#"{"hostname":"a"}"#;
        let headers = sign(&s, "POST", "/api/register?x=1", body);
        let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, MAC_HEADER]
        );
        let key = verify(
            &s,
            &headers,
            "POST",
            "/api/register?x=1",
            body,
            s.now,
            &cache,
        )
        .unwrap();
        assert_eq!(key, s.peer.public_key());

        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let resp_body = br#"{"peers":[]}"#;
        let resp = sign_response(&s.server, &key, nonce, 200, resp_body);
        verify_response(
            &s.peer,
            &s.server.public_key(),
            nonce,
            200,
            &lookup(&resp),
            resp_body,
        )
        .unwrap();
    }

    #[test]
    fn response_signed_in_parts_verifies_as_the_whole_body() {
        let s = setup();
        let nonce = STANDARD.encode([3u8; NONCE_LEN]);
        let body = br#"{"peers":[{"a":1},{"b":2}]}"#;
        let (head, tail) = body.split_at(11);
        let key = s.peer.public_key();
        let resp = sign_response_parts(&s.server, &key, &nonce, 200, &[head, tail]);
        let server_pub = s.server.public_key();
        verify_response(&s.peer, &server_pub, &nonce, 200, &lookup(&resp), body).unwrap();
    }

    #[test]
    fn server_auth_caches_keys_and_agrees_with_the_free_functions() {
        let s = setup();
        let server = ServerAuth::new(s.server.clone(), ReplayCache::default());
        for round in 0..2 {
            let body = format!("{{\"round\":{round}}}");
            let headers = sign(&s, "POST", "/heartbeat", body.as_bytes());
            let key = server
                .verify_request(
                    &lookup(&headers),
                    "POST",
                    "/heartbeat",
                    body.as_bytes(),
                    s.now,
                )
                .unwrap();
            assert_eq!(key, s.peer.public_key());
            let nonce = header_value(&headers, NONCE_HEADER).unwrap();
            let resp = server.sign_response_parts(&key, nonce, 200, &[b"ok"]);
            verify_response(
                &s.peer,
                &server.public_key(),
                nonce,
                200,
                &lookup(&resp),
                b"ok",
            )
            .unwrap();
            // Replays and forgeries are refused whether or not the key is cached.
            let err = server
                .verify_request(
                    &lookup(&headers),
                    "POST",
                    "/heartbeat",
                    body.as_bytes(),
                    s.now,
                )
                .unwrap_err();
            assert_eq!(err, AuthError::Replayed);
            let fresh = sign(&s, "POST", "/heartbeat", body.as_bytes());
            let err = server
                .verify_request(&lookup(&fresh), "POST", "/heartbeat", b"other", s.now)
                .unwrap_err();
            assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        }
        assert_eq!(server.keys.lock().unwrap().len(), 1);
    }

    #[test]
    fn request_signer_signs_what_the_server_verifies() {
        let s = setup();
        let signer = RequestSigner::new(&s.peer, &s.server.public_key());
        let cache = ReplayCache::default();
        let headers = signer.sign("GET", "/peers?peer_id=x", b"", s.now);
        let key = verify(&s, &headers, "GET", "/peers?peer_id=x", b"", s.now, &cache).unwrap();
        assert_eq!(key, s.peer.public_key());
    }

    #[test]
    fn header_lookup_ignores_case() {
        let s = setup();
        let headers = sign(&s, "GET", "/api/peers", b"");
        assert!(header_value(&headers, "x-wgmesh-mac").is_some());
    }

    #[test]
    fn request_signed_by_another_key_is_refused_naming_the_key() {
        let s = setup();
        let cache = ReplayCache::default();
        let mut headers = sign(&s, "GET", "/api/peers", b"");
        // Claim to be a different peer while keeping the original MAC.
        let victim = PrivateKey::generate().public_key();
        headers[0].1 = victim.to_base64();
        let err = verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
        assert_eq!(err, AuthError::BadMac(victim));
        let msg = err.to_string();
        assert!(msg.contains("request MAC does not match"), "{msg}");
        assert!(msg.contains(&victim.to_base64()), "{msg}");
        assert_eq!(err.http_status(), 401);
        assert!(cache.is_empty(), "a refused request must not burn a nonce");
    }

    #[test]
    fn request_for_another_server_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let other = PrivateKey::generate();
        let err = verify_request(
            &other,
            &lookup(&headers),
            "GET",
            "/api/peers",
            b"",
            s.now,
            &cache,
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
    }

    #[test]
    fn tampering_with_any_signed_part_is_detected() {
        let s = setup();
        let body = br#"{"endpoint":"198.18.0.1:51820"}"#;
        let headers = sign(&s, "POST", "/api/heartbeat", body);
        let cases: [(&str, &str, &[u8]); 4] = [
            ("PUT", "/api/heartbeat", body),
            ("POST", "/api/deregister", body),
            ("POST", "/api/heartbeat?x", body),
            (
                "POST",
                "/api/heartbeat",
                br#"{"endpoint":"203.0.113.9:51820"}"#,
            ),
        ];
        for (method, path, b) in cases {
            let cache = ReplayCache::default();
            let err = verify(&s, &headers, method, path, b, s.now, &cache).unwrap_err();
            assert!(
                matches!(err, AuthError::BadMac(_)),
                "{method} {path}: {err}"
            );
        }
        // Timestamp moved by one second (still inside the window).
        let mut moved = headers.clone();
        moved[1].1 = (unix_secs(s.now) + 1).to_string();
        let cache = ReplayCache::default();
        let err = verify(&s, &moved, "POST", "/api/heartbeat", body, s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        // A different nonce.
        let mut renonced = headers.clone();
        renonced[2].1 = STANDARD.encode([7u8; NONCE_LEN]);
        let err = verify(&s, &renonced, "POST", "/api/heartbeat", body, s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        // The untouched request still verifies.
        verify(&s, &headers, "POST", "/api/heartbeat", body, s.now, &cache).unwrap();
    }

    #[test]
    fn replay_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap();
        let later = s.now + Duration::from_secs(5);
        let err = verify(&s, &headers, "GET", "/api/peers", b"", later, &cache).unwrap_err();
        assert_eq!(err, AuthError::Replayed);
        assert!(err.to_string().contains("replayed request"));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_with_the_offset() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let err = verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now + Duration::from_secs(300),
            &cache,
        )
        .unwrap_err();
        assert_eq!(
            err,
            AuthError::ClockSkew {
                offset_secs: -300,
                max_secs: 120
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("timestamp 300 s in the past"), "{msg}");
        assert!(msg.contains("check the clock (NTP)"), "{msg}");

        let err = verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now - Duration::from_secs(121),
            &cache,
        )
        .unwrap_err();
        assert!(err.to_string().contains("121 s in the future"), "{err}");

        // Exactly at the edge is still fine.
        verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now + Duration::from_secs(120),
            &cache,
        )
        .unwrap();
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        for i in 0..headers.len() {
            let mut fewer = headers.clone();
            let (name, _) = fewer.remove(i);
            let err = verify(&s, &fewer, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
            assert_eq!(err, AuthError::MissingHeader(name));
            assert!(err.to_string().contains(name));
        }
        for (i, bad) in [(0, "AAAA"), (1, "-5"), (1, "12e3"), (2, "AAAA"), (3, "%%")] {
            let mut broken = headers.clone();
            broken[i].1 = bad.to_owned();
            let err = verify(&s, &broken, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
            assert!(
                matches!(err, AuthError::MalformedHeader { header, .. } if header == headers[i].0),
                "{bad}: {err}"
            );
        }
        let err = verify(&s, &headers, "GET", "/a\nb", b"", s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::MalformedRequestLine(_)), "{err}");
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        // The all-zero point has order 4: its shared secret with anything is all zeros, so
        // without the check anyone could forge requests "from" it.
        let weak = PublicKey::from_bytes([0u8; 32]);
        let zero_keys = MacKeys {
            request: {
                let hk = Hkdf::<Sha256>::new(Some(PROTOCOL_VERSION.as_bytes()), &[0u8; 32]);
                let mut okm = [0u8; 32];
                let label = format!("{PROTOCOL_VERSION} request");
                hk.expand_multi_info(
                    &[
                        label.as_bytes(),
                        s.server.public_key().as_bytes(),
                        weak.as_bytes(),
                    ],
                    &mut okm,
                )
                .unwrap();
                okm
            },
            response: [0u8; 32],
        };
        let ts = unix_secs(s.now).to_string();
        let nonce = STANDARD.encode([1u8; NONCE_LEN]);
        let canonical = request_canonical("GET", "/api/peers", &ts, &nonce, &weak, b"");
        let mac = STANDARD.encode(zero_keys.request_mac(&canonical).finalize().into_bytes());
        let headers = vec![
            (KEY_HEADER, weak.to_base64()),
            (TIMESTAMP_HEADER, ts),
            (NONCE_HEADER, nonce),
            (MAC_HEADER, mac),
        ];
        let err = verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
        assert_eq!(err, AuthError::WeakKey(weak));
    }

    #[test]
    fn low_order_pinned_server_key_is_refused_by_the_agent() {
        // With such a pinned key, anyone could compute the response MAC key.
        let s = setup();
        let weak = PublicKey::from_bytes([0u8; 32]);
        let headers = sign_request(&s.peer, &weak, "GET", "/api/peers", b"", s.now);
        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let none: Vec<(&'static str, String)> = Vec::new();
        let err = verify_response(&s.peer, &weak, nonce, 200, &lookup(&none), b"").unwrap_err();
        assert_eq!(err, AuthError::WeakKey(weak));
    }

    #[test]
    fn forged_response_is_refused() {
        let s = setup();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let body = br#"{"peers":[]}"#;
        let server_pub = s.server.public_key();

        // A man-in-the-middle with its own server key.
        let mitm = PrivateKey::generate();
        let forged = sign_response(&mitm, &s.peer.public_key(), nonce, 200, body);
        let err =
            verify_response(&s.peer, &server_pub, nonce, 200, &lookup(&forged), body).unwrap_err();
        assert_eq!(err, AuthError::BadResponseMac(server_pub));
        assert!(err.to_string().contains("man-in-the-middle"), "{err}");

        // The genuine signature, but a changed body, status or nonce.
        let real = sign_response(&s.server, &s.peer.public_key(), nonce, 200, body);
        let other_nonce = STANDARD.encode([9u8; NONCE_LEN]);
        for (n, status, b) in [
            (nonce, 200, &br#"{"peers":[1]}"#[..]),
            (nonce, 500, &body[..]),
            (other_nonce.as_str(), 200, &body[..]),
        ] {
            assert!(
                verify_response(&s.peer, &server_pub, n, status, &lookup(&real), b).is_err(),
                "{n} {status}"
            );
        }
        // No MAC at all.
        let none: Vec<(&'static str, String)> = Vec::new();
        assert!(verify_response(&s.peer, &server_pub, nonce, 200, &lookup(&none), body).is_err());
    }

    #[test]
    fn response_mac_cannot_be_used_as_request_mac() {
        // Same canonical bytes under the two keys must differ: directions are separated.
        let s = setup();
        let keys = MacKeys::for_peer(&s.peer, &s.server.public_key()).unwrap();
        let server_keys = MacKeys::for_server(&s.server, &s.peer.public_key()).unwrap();
        assert_eq!(keys.request, server_keys.request);
        assert_eq!(keys.response, server_keys.response);
        assert_ne!(keys.request, keys.response);
    }

    #[test]
    fn replay_cache_forgets_stale_keys_and_fails_closed_when_full() {
        let cache = ReplayCache::new(Duration::from_secs(10), 2);
        let (a, b, c) = (key(1), key(2), key(3));
        cache
            .check_and_remember(&a, [1; NONCE_LEN], 100, 100)
            .unwrap();
        cache
            .check_and_remember(&b, [2; NONCE_LEN], 105, 100)
            .unwrap();
        assert_eq!(
            cache.check_and_remember(&c, [3; NONCE_LEN], 100, 100),
            Err(AuthError::ReplayCacheFull)
        );
        assert_eq!(AuthError::ReplayCacheFull.http_status(), 503);
        // At 111, key a (newest 100, stale after 110) is forgotten, key b (105) stays.
        cache
            .check_and_remember(&c, [3; NONCE_LEN], 111, 111)
            .unwrap();
        assert_eq!((cache.len(), cache.keys()), (2, 2));
        assert_eq!(
            cache.check_and_remember(&b, [2; NONCE_LEN], 105, 111),
            Err(AuthError::Replayed)
        );
    }

    fn key(n: u32) -> PublicKey {
        let mut bytes = [0u8; KEY_LEN];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey::from_bytes(bytes)
    }

    /// 10,000 signed requests a second from 10,000 keys (and 2,000 more from one busy key)
    /// for longer than the old cache's 240 s memory: nothing valid is refused, memory stays
    /// near rate x window, and replays, recent or old, are still refused. The old cache
    /// (2^18 nonces for 240 s) refused valid requests from about 2,200 a second on.
    #[test]
    fn replay_cache_holds_10000_requests_a_second_without_refusing_valid_ones() {
        let cache = ReplayCache::default();
        let keys: Vec<PublicKey> = (0..10_000).map(key).collect();
        let busy = key(u32::MAX);
        let start = 1_800_000_000u64;
        let nonce = |second: u64, i: u64| {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&second.to_le_bytes());
            n[8..].copy_from_slice(&i.to_le_bytes());
            n
        };
        let mut most = 0;
        for second in 0..250u64 {
            let now = start + second;
            for (i, k) in keys.iter().enumerate() {
                // Each agent's clock is off by its own amount, up to a minute either way.
                let skew = (i as u64 % 121).wrapping_sub(60);
                let ts = now.wrapping_add(skew);
                cache
                    .check_and_remember(k, nonce(second, i as u64), ts, now)
                    .unwrap_or_else(|e| panic!("second {second}, key {i}: {e}"));
            }
            // The busy key: 2,000 more a second, some arriving 20 s late.
            for i in 0..2_000u64 {
                let ts = if i % 100 == 0 {
                    now.saturating_sub(20)
                } else {
                    now
                };
                cache
                    .check_and_remember(&busy, nonce(second, 1_000_000 + i), ts, now)
                    .unwrap_or_else(|e| panic!("second {second}, busy {i}: {e}"));
            }
            most = most.max(cache.len());
        }
        // 12,000 a second for a window of 30 s (plus the second in progress).
        assert!(most <= 12_000 * 32, "{most} nonces remembered");
        let now = start + 249;
        // A replay of this second's request, and of one long forgotten, are both refused.
        let recent = cache.check_and_remember(&keys[7], nonce(249, 7), now - 53, now);
        assert_eq!(recent, Err(AuthError::Replayed));
        let old = cache.check_and_remember(&busy, nonce(10, 1_000_005), start + 10, now);
        assert_eq!(old, Err(AuthError::Replayed));
    }

    #[test]
    fn replay_cache_is_shared_across_threads() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    if verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).is_ok() {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 1);
    }
}
