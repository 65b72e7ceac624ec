//! Which replica a pair of peers meets at (issue 11), for the relay: both ends of a pair must
//! send to the same replica's relay without talking to each other first. Rendezvous (highest
//! random weight) hashing over the replica list the servers publish (`GET /replicas`): each
//! end scores every replica by SHA-256 of the two keys (sorted, so both ends compute the same)
//! and the replica's URL, and takes the highest. When a replica dies, only the pairs that met
//! there move, and they all move to their second choice together.

use crate::keys::PublicKey;
use sha2::{Digest, Sha256};

fn score(low: &PublicKey, high: &PublicKey, replica: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(low.as_bytes());
    hash.update(high.as_bytes());
    hash.update(replica.as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("32-byte digest"))
}

/// The replica (from `replicas`, e.g. their URLs) the pair `a`-`b` meets at; the same for
/// (a, b) and (b, a). None when the list is empty.
pub fn meeting_replica<'r>(
    a: &PublicKey,
    b: &PublicKey,
    replicas: &'r [String],
) -> Option<&'r str> {
    let (low, high) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    replicas
        .iter()
        .max_by_key(|r| (score(low, high, r), r.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::generate().public_key()
    }

    #[test]
    fn both_ends_agree_and_a_dead_replica_moves_only_its_own_pairs() {
        let replicas: Vec<String> = (1..=3)
            .map(|i| format!("http://198.18.0.{i}:8080"))
            .collect();
        let pairs: Vec<(PublicKey, PublicKey)> = (0..300).map(|_| (key(), key())).collect();
        let mut load = std::collections::HashMap::new();
        for (a, b) in &pairs {
            let chosen = meeting_replica(a, b, &replicas).unwrap();
            assert_eq!(
                Some(chosen),
                meeting_replica(b, a, &replicas),
                "both ends agree"
            );
            *load.entry(chosen.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(load.len(), 3, "every replica gets pairs: {load:?}");
        assert!(
            load.values().all(|n| *n >= 50),
            "spread evenly enough: {load:?}"
        );
        let survivors = replicas[1..].to_vec();
        for (a, b) in &pairs {
            let before = meeting_replica(a, b, &replicas).unwrap();
            let after = meeting_replica(a, b, &survivors).unwrap();
            if before != replicas[0] {
                assert_eq!(before, after, "pairs on live replicas stay where they are");
            }
        }
        assert_eq!(meeting_replica(&key(), &key(), &[]), None);
    }
}
