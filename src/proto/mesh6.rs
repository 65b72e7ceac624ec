//! IPv6 inside the mesh: each peer's IPv6 mesh address is derived from its IPv4 one, so no
//! second allocator is needed and the two can never disagree.
//!
//! The prefix is a unique local /96 (RFC 4193): `fd` followed by a 40-bit global ID taken from
//! a hash of the coordination server's public key (so two meshes do not collide), a zero
//! subnet, and the IPv4 mesh address in the last 32 bits.

use crate::keys::PublicKey;
use ipnet::Ipv6Net;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Prefix length of the IPv6 mesh: the last 32 bits carry the IPv4 mesh address.
pub const PREFIX_LEN: u8 = 96;

/// The IPv6 mesh prefix of the mesh run by the server with `server_key`.
pub fn prefix(server_key: &PublicKey) -> Ipv6Net {
    let digest = Sha256::new()
        .chain_update(b"wgmesh ipv6 mesh prefix v1")
        .chain_update(server_key.as_bytes())
        .finalize();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[..5]);
    Ipv6Net::new(Ipv6Addr::from(octets), PREFIX_LEN).expect("96 is a valid IPv6 prefix length")
}

/// The IPv6 mesh address of the peer whose IPv4 mesh address is `v4`.
pub fn address(prefix: Ipv6Net, v4: Ipv4Addr) -> Ipv6Addr {
    let mut octets = prefix.network().octets();
    octets[12..].copy_from_slice(&v4.octets());
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn prefix_is_a_stable_ula_per_server_and_addresses_embed_ipv4() {
        let key = PrivateKey::generate().public_key();
        let p = prefix(&key);
        assert_eq!(p, prefix(&key));
        assert_ne!(p, prefix(&PrivateKey::generate().public_key()));
        assert_eq!(p.network().octets()[0], 0xfd);
        assert_eq!(p.prefix_len(), 96);
        let a = address(p, Ipv4Addr::new(10, 100, 0, 7));
        assert!(p.contains(&a));
        assert_eq!(&a.octets()[12..], &[10, 100, 0, 7]);
    }
}
