//! The agent's side: sign requests, check the server's answers. [`RequestSigner`] does the
//! key agreement once per server key; [`sign_request`] and [`verify_response`] per call.

use super::mac::{decode_fixed, request_canonical, response_canonical, unix_secs};
use super::mac::{
    AuthError, MacKeys, KEY_HEADER, MAC_HEADER, MAC_LEN, NONCE_HEADER, NONCE_LEN,
    RESPONSE_MAC_HEADER, TIMESTAMP_HEADER,
};
use crate::keys::{PrivateKey, PublicKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::Mac;
use std::fmt;
use std::time::SystemTime;

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

/// The agent's side with the key agreement done once: signs requests and verifies the
/// answers for one (agent key, server key) pair, for a client that sends many requests to the
/// same server (the agent, a load generator), where [`sign_request`]'s and
/// [`verify_response`]'s X25519 per call would dominate.
pub struct RequestSigner {
    key: PublicKey,
    server: PublicKey,
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
            server: *server_pub,
            keys: MacKeys::for_peer(private_key, server_pub).ok(),
        }
    }

    /// The server key this signer was made for.
    pub fn server_key(&self) -> PublicKey {
        self.server
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

    /// Exactly what [`verify_response`] returns for the same key pair.
    pub fn verify_response<'a>(
        &self,
        request_nonce: &str,
        status: u16,
        headers: &dyn Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let keys = self.keys.as_ref().ok_or(AuthError::WeakKey(self.server))?;
        verify_response_with(keys, &self.server, request_nonce, status, headers, body)
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
    verify_response_with(&keys, server_pub, request_nonce, status, headers, body)
}

fn verify_response_with<'a>(
    keys: &MacKeys,
    server_pub: &PublicKey,
    request_nonce: &str,
    status: u16,
    headers: &dyn Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<(), AuthError> {
    let bad = || AuthError::BadResponseMac(*server_pub);
    let mac_text = headers(RESPONSE_MAC_HEADER).ok_or_else(bad)?;
    let mac: [u8; MAC_LEN] =
        decode_fixed(RESPONSE_MAC_HEADER, mac_text, "an HMAC-SHA256").map_err(|_| bad())?;
    let canonical = response_canonical(status, request_nonce, body);
    keys.response_mac(&canonical)
        .verify_slice(&mac)
        .map_err(|_| bad())
}
