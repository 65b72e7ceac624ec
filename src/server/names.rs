//! Who is called what in the `.mesh` zone: the server decides every peer's DNS name, so all
//! nodes agree on it, and keeps it stable.
//!
//! Rules: a peer's name is its hostname made into a DNS label ([`DnsName::from_hostname`]);
//! the first peer to hold a label keeps it, later ones get `LABEL-2`, `LABEL-3`, ... (the
//! lowest free suffix). A peer that registers again with a hostname giving the same label
//! keeps its name, whatever registered since; a peer whose hostname changes to another label
//! gets a name for the new one and frees the old. Names live in the registry's records, so they
//! survive restarts; records from before names existed are named on load, in registration
//! order, after every stored name has been claimed.

use crate::keys::PublicKey;
use crate::server::store::PeerRecord;
use crate::types::{DnsName, Hostname, PeerId};
use std::collections::HashMap;

/// The label a peer's hostname asks for. Hostnames the API accepts but that leave no label
/// (`_`) are refused at registration; a stored one (from an older server) falls back to the
/// peer id, which is always a valid label, so loading never fails on a name.
pub fn base_name(hostname: &Hostname, id: &PeerId) -> DnsName {
    DnsName::from_hostname(hostname.as_str())
        .unwrap_or_else(|_| id.as_str().parse().expect("peer ids are valid DNS labels"))
}

/// Every name in use and its owner.
#[derive(Debug, Default)]
pub struct Names {
    owners: HashMap<DnsName, PublicKey>,
}

impl Names {
    /// Whether `name` is free for `key` (unused, or already its own).
    fn free_for(&self, name: &DnsName, key: &PublicKey) -> bool {
        self.owners.get(name).is_none_or(|owner| owner == key)
    }

    /// The name `key` should hold when it registers as `hostname`. `current` is its record's
    /// hostname and name if it is registered already: it keeps that name while its hostname
    /// still asks for the same label.
    pub fn choose(
        &self,
        key: &PublicKey,
        id: &PeerId,
        hostname: &Hostname,
        current: Option<(&Hostname, &DnsName)>,
    ) -> DnsName {
        let base = base_name(hostname, id);
        if let Some((old_host, old_name)) = current {
            if base_name(old_host, id) == base && self.free_for(old_name, key) {
                return old_name.clone();
            }
        }
        if self.free_for(&base, key) {
            return base;
        }
        // There are fewer owners than suffixes tried, so this ends.
        (2..)
            .map(|n| base.with_suffix(n))
            .find(|candidate| self.free_for(candidate, key))
            .expect("some suffix is free")
    }

    /// Records that `key` now holds `name`, freeing `old` (its previous name) if different.
    pub fn claim(&mut self, key: PublicKey, name: DnsName, old: Option<&DnsName>) {
        if let Some(old) = old.filter(|o| **o != name) {
            self.release(old, &key);
        }
        self.owners.insert(name, key);
    }

    /// Frees `name` if `key` holds it.
    pub fn release(&mut self, name: &DnsName, key: &PublicKey) {
        if self.owners.get(name) == Some(key) {
            self.owners.remove(name);
        }
    }

    /// Builds the table from loaded records, naming those that have no (or a duplicate) name:
    /// stored names are claimed first, in registration order (the earlier registration keeps
    /// a duplicate), then the unnamed are named in that same order. Deterministic for a given
    /// file. Returns the table and how many records were (re)named, which must be saved.
    pub fn load(records: &mut [PeerRecord]) -> (Names, usize) {
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by_key(|&i| (records[i].registered_at, records[i].virtual_ip));
        let mut names = Names::default();
        for &i in &order {
            let record = &mut records[i];
            if let Some(name) = record.dns_name.clone() {
                if names.free_for(&name, &record.public_key) {
                    names.claim(record.public_key, name, None);
                } else {
                    log::warn!(
                        "peer {} stored the DNS name {name}, which an earlier peer holds: renaming it",
                        record.id
                    );
                    record.dns_name = None;
                }
            }
        }
        let mut renamed = 0;
        for &i in &order {
            let record = &mut records[i];
            if record.dns_name.is_none() {
                let name = names.choose(&record.public_key, &record.id, &record.hostname, None);
                names.claim(record.public_key, name.clone(), None);
                record.dns_name = Some(name);
                renamed += 1;
            }
        }
        (names, renamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::time;

    fn record(host: &str, at: u64, ip: u8) -> PeerRecord {
        let key = PrivateKey::generate().public_key();
        PeerRecord {
            id: PeerId::for_key(&key),
            public_key: key,
            virtual_ip: std::net::Ipv4Addr::new(10, 100, 0, ip),
            endpoint: None,
            observed_ip: None,
            listen_port: None,
            hostname: host.parse().unwrap(),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![],
            exit_node: false,
            registered_at: time::from_unix_secs(1_700_000_000 + at),
            last_heartbeat: time::from_unix_secs(1_700_000_000 + at),
            online: true,
            tags: Vec::new(),
            dns_name: None,
            approved_routes: Vec::new(),
            owner: None,
            via: None,
            gateway_port: None,
        }
    }

    fn names_of(records: &[PeerRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| r.dns_name.as_ref().unwrap().to_string())
            .collect()
    }

    #[test]
    fn old_state_is_named_in_registration_order_whatever_the_file_order() {
        // File order differs from registration order: the earliest registration keeps `web`.
        let mut records = vec![
            record("web", 30, 3),
            record("Web", 10, 1),
            record("db", 5, 9),
            record("web", 20, 2),
        ];
        let (_, renamed) = Names::load(&mut records);
        assert_eq!(renamed, 4);
        assert_eq!(names_of(&records), ["web-3", "web", "db", "web-2"]);
        // Loading again (names now stored) changes nothing.
        let before = names_of(&records);
        let (_, renamed) = Names::load(&mut records);
        assert_eq!((renamed, names_of(&records)), (0, before));
    }

    #[test]
    fn stored_names_win_over_unnamed_records_and_duplicates_are_renamed() {
        let mut records = vec![
            record("web", 1, 1),
            record("web", 2, 2),
            record("web", 3, 3),
        ];
        // The second registration already holds `web` (the first was named later by hand).
        records[1].dns_name = Some("web".parse().unwrap());
        records[2].dns_name = Some("web".parse().unwrap());
        let (_, renamed) = Names::load(&mut records);
        assert_eq!(renamed, 2);
        assert_eq!(names_of(&records), ["web-2", "web", "web-3"]);
    }

    #[test]
    fn a_peer_keeps_its_name_until_its_hostname_asks_for_another() {
        let mut names = Names::default();
        let a = record("web", 1, 1);
        let b = record("web", 2, 2);
        let name_a = names.choose(&a.public_key, &a.id, &a.hostname, None);
        names.claim(a.public_key, name_a.clone(), None);
        let name_b = names.choose(&b.public_key, &b.id, &b.hostname, None);
        names.claim(b.public_key, name_b.clone(), None);
        assert_eq!((name_a.as_str(), name_b.as_str()), ("web", "web-2"));
        // b registers again, as WEB: same label, same name.
        let upper: Hostname = "WEB".parse().unwrap();
        let again = names.choose(&b.public_key, &b.id, &upper, Some((&b.hostname, &name_b)));
        assert_eq!(again, name_b);
        // a renames itself to db: `web` is freed, b keeps web-2 (names are stable).
        let db: Hostname = "db".parse().unwrap();
        let renamed = names.choose(&a.public_key, &a.id, &db, Some((&a.hostname, &name_a)));
        names.claim(a.public_key, renamed.clone(), Some(&name_a));
        assert_eq!(renamed.as_str(), "db");
        let again = names.choose(
            &b.public_key,
            &b.id,
            &b.hostname,
            Some((&b.hostname, &name_b)),
        );
        assert_eq!(again, name_b);
        // A newcomer called web now gets the freed `web`.
        let c = record("web", 3, 3);
        assert_eq!(
            names
                .choose(&c.public_key, &c.id, &c.hostname, None)
                .as_str(),
            "web"
        );
    }

    #[test]
    fn a_hostname_with_no_label_falls_back_to_the_peer_id_on_load() {
        let mut records = vec![record("_", 1, 1)];
        Names::load(&mut records);
        assert_eq!(
            records[0].dns_name.as_ref().unwrap().as_str(),
            records[0].id.as_str()
        );
    }

    #[test]
    fn a_literal_suffixed_hostname_does_not_steal_an_assigned_name() {
        let mut names = Names::default();
        let peers = [
            record("web", 1, 1),
            record("web", 2, 2),
            record("web-2", 3, 3),
        ];
        let mut got = Vec::new();
        for p in &peers {
            let n = names.choose(&p.public_key, &p.id, &p.hostname, None);
            names.claim(p.public_key, n.clone(), None);
            got.push(n.to_string());
        }
        assert_eq!(got, ["web", "web-2", "web-2-2"]);
    }
}
