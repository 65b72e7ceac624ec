//! The server's side: verify requests (cheapest checks first, replay cache last) and sign
//! answers; [`ServerAuth`] caches each peer's derived keys.

use super::mac::{
    check_request_line, decode_fixed, parse_timestamp, request_canonical, required,
    response_canonical_parts, unix_secs,
};
use super::mac::{
    AuthError, MacKeys, KEY_HEADER, MAC_HEADER, MAC_LEN, NONCE_HEADER, NONCE_LEN,
    RESPONSE_MAC_HEADER, TIMESTAMP_HEADER,
};
use super::replay::ReplayCache;
use crate::keys::{PrivateKey, PublicKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::Mac;
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

/// Verifies a request on the server's side and returns the public key that signed it.
///
/// `headers` looks a header up by name; it must ignore ASCII case as HTTP requires (the
/// server's `Request::header` does). Checks run cheapest first: headers present and
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
    pub(super) keys: Mutex<std::collections::HashMap<PublicKey, MacKeys>>,
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
