//! WireGuard messages as a relay sees them: the four message types, the indexes that tie a
//! session together, and MAC1, which names the *recipient* of a handshake message.
//!
//! The relay can decrypt nothing. What it can do (see `../shared/design/WIREGUARD-WIRE.md`):
//! read the type and the little-endian sender/receiver indexes, and check a handshake
//! message's MAC1 against each member's public key, because
//! `mac1 = MAC(HASH("mac1----" || recipient public key), message up to mac1)`. MAC1 proves
//! nothing about the sender; the relay uses it for routing only.

use crate::keys::PublicKey;
use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};

/// Handshake initiation: 148 bytes.
pub const INITIATION_LEN: usize = 148;
/// Handshake response: 92 bytes.
pub const RESPONSE_LEN: usize = 92;
/// Cookie reply: 64 bytes.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Smallest transport message: header, receiver, counter and an empty payload's 16-byte tag
/// (a keepalive).
pub const TRANSPORT_MIN_LEN: usize = 32;
/// Where MAC1 starts in an initiation (it covers everything before it).
const INITIATION_MAC1: usize = 116;
/// Where MAC1 starts in a response.
const RESPONSE_MAC1: usize = 60;
/// STUN's magic cookie (RFC 5389) at bytes 4..8 of every modern STUN message.
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// One WireGuard message, reduced to what a relay may use. Indexes are in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Type 1: the initiator's index; MAC1 names the responder.
    Initiation {
        /// The index the initiator chose for this handshake.
        sender: u32,
    },
    /// Type 2: binds the responder's index to the initiator's; MAC1 names the initiator.
    Response {
        /// The responder's new index.
        sender: u32,
        /// The initiator's index from the initiation being answered.
        receiver: u32,
    },
    /// Type 3: an answer under load to the sender of `receiver`'s handshake message.
    CookieReply {
        /// The index of the handshake message this cookie answers.
        receiver: u32,
    },
    /// Type 4: encrypted data (or a keepalive) for whoever chose `receiver`.
    Transport {
        /// The recipient's index.
        receiver: u32,
    },
}

fn index(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses a datagram as a WireGuard message: type 1-4 in byte 0, three zero bytes, and the
/// exact size of its type (transport: at least 32 bytes). None otherwise.
pub fn parse(datagram: &[u8]) -> Option<Message> {
    if datagram.len() < TRANSPORT_MIN_LEN || datagram[1..4] != [0, 0, 0] {
        return None;
    }
    match (datagram[0], datagram.len()) {
        (1, INITIATION_LEN) => Some(Message::Initiation {
            sender: index(datagram, 4),
        }),
        (2, RESPONSE_LEN) => Some(Message::Response {
            sender: index(datagram, 4),
            receiver: index(datagram, 8),
        }),
        (3, COOKIE_REPLY_LEN) => Some(Message::CookieReply {
            receiver: index(datagram, 4),
        }),
        // No size rule beyond the minimum: WireGuard pads plaintext to 16 bytes only up to
        // the interface MTU, so a full-size packet (1420 + 32 = 1452) is no multiple of 16.
        (4, _) => Some(Message::Transport {
            receiver: index(datagram, 4),
        }),
        _ => None,
    }
}

/// Whether a datagram is WireGuard-shaped rather than STUN: lets one UDP port serve both.
/// STUN (RFC 5389) has the magic cookie at 4..8, which no WireGuard header has (bytes 1..4
/// are zero); a classic RFC 3489 request starts `00 01`, never a WireGuard type byte.
pub fn is_wireguard(datagram: &[u8]) -> bool {
    datagram.len() >= 4
        && (1..=4).contains(&datagram[0])
        && datagram[1..4] == [0, 0, 0]
        && !(datagram.len() >= 8 && datagram[4..8] == STUN_MAGIC_COOKIE)
}

/// `HASH("mac1----" || public key)` with MAC state precomputed: the key a handshake message
/// addressed to that public key is MACed with. Computed once per member, cloned per check.
#[derive(Clone)]
pub struct Mac1Key {
    state: Blake2sMac<U16>,
}

impl Mac1Key {
    /// The MAC1 key of handshake messages addressed to `public_key`.
    pub fn new(public_key: &PublicKey) -> Mac1Key {
        let mut hash = Blake2s256::new();
        hash.update(b"mac1----");
        hash.update(public_key.as_bytes());
        let key = hash.finalize();
        Mac1Key {
            state: <Blake2sMac<U16> as KeyInit>::new_from_slice(&key)
                .expect("a 32-byte key fits BLAKE2s"),
        }
    }

    /// Whether a handshake initiation or response carries a MAC1 made with this key, i.e. is
    /// addressed to this key's owner. False for other message types.
    pub fn addresses(&self, datagram: &[u8]) -> bool {
        let at = match parse(datagram) {
            Some(Message::Initiation { .. }) => INITIATION_MAC1,
            Some(Message::Response { .. }) => RESPONSE_MAC1,
            _ => return false,
        };
        let mut mac = self.state.clone();
        mac.update(&datagram[..at]);
        // Constant time is not needed (MAC1 is public routing data), but costs nothing here.
        mac.verify_slice(&datagram[at..at + 16]).is_ok()
    }

    /// Computes MAC1 over `message` (everything before the MAC1 field): for tests and tools
    /// that build handshake-shaped datagrams.
    pub fn compute(&self, message: &[u8]) -> [u8; 16] {
        let mut mac = self.state.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Key")
    }
}

/// Builds a handshake-shaped initiation with a valid MAC1 for `to` (random-looking body):
/// what a relay must treat like a real one. For tests and the bench.
pub fn fake_initiation(to: &Mac1Key, sender: u32, filler: u8) -> [u8; INITIATION_LEN] {
    let mut m = [filler; INITIATION_LEN];
    m[..4].copy_from_slice(&[1, 0, 0, 0]);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    let mac = to.compute(&m[..INITIATION_MAC1]);
    m[INITIATION_MAC1..INITIATION_MAC1 + 16].copy_from_slice(&mac);
    m[INITIATION_MAC1 + 16..].fill(0);
    m
}

/// Builds a handshake-shaped response with a valid MAC1 for `to`. For tests and the bench.
pub fn fake_response(to: &Mac1Key, sender: u32, receiver: u32) -> [u8; RESPONSE_LEN] {
    let mut m = [7u8; RESPONSE_LEN];
    m[..4].copy_from_slice(&[2, 0, 0, 0]);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[8..12].copy_from_slice(&receiver.to_le_bytes());
    let mac = to.compute(&m[..RESPONSE_MAC1]);
    m[RESPONSE_MAC1..RESPONSE_MAC1 + 16].copy_from_slice(&mac);
    m[RESPONSE_MAC1 + 16..].fill(0);
    m
}

/// Builds a transport message (`payload_blocks` * 16 bytes of payload) for `receiver`.
pub fn fake_transport(receiver: u32, payload_blocks: usize) -> Vec<u8> {
    let mut m = vec![0x5a; TRANSPORT_MIN_LEN + 16 * payload_blocks];
    m[..4].copy_from_slice(&[4, 0, 0, 0]);
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn parses_each_type_by_exact_size() {
        let key = Mac1Key::new(&PrivateKey::generate().public_key());
        let init = fake_initiation(&key, 0x0403_0201, 9);
        assert_eq!(
            parse(&init),
            Some(Message::Initiation {
                sender: 0x0403_0201
            })
        );
        assert_eq!(
            parse(&fake_response(&key, 5, 6)),
            Some(Message::Response {
                sender: 5,
                receiver: 6
            })
        );
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        cookie[0] = 3;
        cookie[4] = 9;
        assert_eq!(parse(&cookie), Some(Message::CookieReply { receiver: 9 }));
        assert_eq!(
            parse(&fake_transport(77, 0)),
            Some(Message::Transport { receiver: 77 })
        );
        assert_eq!(
            parse(&fake_transport(77, 90)),
            Some(Message::Transport { receiver: 77 })
        );
        // Wrong sizes, a non-zero reserved byte, unknown types, too short: not WireGuard.
        assert_eq!(parse(&init[..147]), None);
        assert_eq!(parse(&fake_transport(1, 0)[..31]), None);
        // A full-MTU transport message is not a multiple of 16 bytes (padding stops at the
        // MTU); it must still be recognised, or bulk traffic would never be relayed.
        let mut full = fake_transport(1, 0);
        full.resize(1420 + 32, 0x5a);
        assert_eq!(parse(&full), Some(Message::Transport { receiver: 1 }));
        let mut reserved = init;
        reserved[2] = 1;
        assert_eq!(parse(&reserved), None);
        let mut five = init;
        five[0] = 5;
        assert_eq!(parse(&five), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn mac1_names_the_recipient_only() {
        let alice = Mac1Key::new(&PrivateKey::generate().public_key());
        let bob = Mac1Key::new(&PrivateKey::generate().public_key());
        let to_bob = fake_initiation(&bob, 1, 3);
        assert!(bob.addresses(&to_bob));
        assert!(!alice.addresses(&to_bob));
        let to_alice = fake_response(&alice, 2, 1);
        assert!(alice.addresses(&to_alice));
        assert!(!bob.addresses(&to_alice));
        let mut tampered = to_bob;
        tampered[20] ^= 1;
        assert!(!bob.addresses(&tampered));
        assert!(!bob.addresses(&fake_transport(1, 2)));
    }

    #[test]
    fn stun_and_wireguard_are_told_apart() {
        let id = crate::proto::stun::TransactionId::random();
        assert!(!is_wireguard(&crate::proto::stun::binding_request(&id)));
        let key = Mac1Key::new(&PrivateKey::generate().public_key());
        assert!(is_wireguard(&fake_initiation(&key, 1, 0)));
        assert!(is_wireguard(&fake_transport(1, 0)));
        // An RFC 3489 request (no cookie) starts 00 01.
        assert!(!is_wireguard(&[0, 1, 0, 0, 1, 2, 3, 4]));
        // WireGuard-looking header followed by the STUN cookie: STUN's.
        assert!(!is_wireguard(&[1, 0, 0, 0, 0x21, 0x12, 0xA4, 0x42]));
        assert!(!is_wireguard(b"GET / HTTP/1.1"));
    }
}
