//! WireGuard key pairs, byte-for-byte compatible with `wg genkey` / `wg pubkey`.
//!
//! Keys are typed so a malformed key can never reach a command line or the registry:
//! anything that is not the base64 encoding of exactly 32 bytes is refused at parse time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// Length of every WireGuard key, private or public, in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key string was refused; the message says what a valid key looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn decode_key(text: &str, what: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let trimmed = text.trim();
    let bytes = STANDARD.decode(trimmed).map_err(|_| {
        KeyError(format!(
            "{what} is not valid base64 (expected 44 characters like `wg {}` prints)",
            if what == "private key" {
                "genkey"
            } else {
                "pubkey"
            }
        ))
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        KeyError(format!(
            "{what} decodes to {} bytes; a WireGuard key is exactly {KEY_LEN} bytes",
            b.len()
        ))
    })
}

/// Bytes of randomness in a shared secret (the admin secret): 256 bits, beyond guessing at
/// any request rate.
const SECRET_BYTES: usize = 32;

/// A fresh shared secret: 256 random bits in base64url, for the admin secret of a server or
/// a cluster.
pub fn random_secret() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A WireGuard private key. Its Debug output is redacted so it never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Generates a fresh key from the OS's randomness, clamped exactly as `wg genkey` clamps,
    /// so the stored base64 is indistinguishable from one made by wireguard-tools.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        // Curve25519 clamping (RFC 7748 section 5), as wg(8)'s genkey applies it.
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        PrivateKey(bytes)
    }

    /// Parses the base64 form that `wg genkey` prints (surrounding whitespace allowed).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text, "private key").map(PrivateKey)
    }

    /// The base64 form, for the 0600 config file and for `wg set ... private-key` via a file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Derives the public key, as `wg pubkey` does.
    pub fn public_key(&self) -> PublicKey {
        let secret = StaticSecret::from(self.0);
        PublicKey(*DalekPublic::from(&secret).as_bytes())
    }

    /// The X25519 shared secret with another key, for authenticating requests to the server.
    pub fn shared_secret(&self, other: &PublicKey) -> [u8; KEY_LEN] {
        let secret = StaticSecret::from(self.0);
        *secret
            .diffie_hellman(&DalekPublic::from(other.0))
            .as_bytes()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A WireGuard public key: the identity of a peer everywhere in wgmesh.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Parses the base64 form that `wg pubkey` prints.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text, "public key").map(PublicKey)
    }

    /// The base64 form used on the wire, in the registry and on `wg` command lines.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw bytes, for deriving stable peer ids and MAC keys.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Builds a key from raw bytes (e.g. read back from `wg show dump`).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::from_base64(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PrivateKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let key = PrivateKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let back = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(back, key);
        assert_eq!(key.0[0] & 7, 0);
        assert_eq!(key.0[31] & 128, 0);
        assert_eq!(key.0[31] & 64, 64);
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(PrivateKey(private).public_key().as_bytes(), &public);
    }

    #[test]
    fn shared_secret_is_symmetric() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_eq!(
            a.shared_secret(&b.public_key()),
            b.shared_secret(&a.public_key())
        );
    }

    #[test]
    fn wrong_length_and_bad_base64_are_refused_with_reasons() {
        let err = PublicKey::from_base64("AAAA").unwrap_err();
        assert!(err.0.contains("3 bytes"), "{err}");
        let err = PublicKey::from_base64("not base64!").unwrap_err();
        assert!(err.0.contains("not valid base64"), "{err}");
    }

    #[test]
    fn debug_never_shows_private_key() {
        let key = PrivateKey::generate();
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap();
        }
        out
    }
}
