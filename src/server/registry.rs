//! The in-memory peer registry: who holds which address, who is online, and a change log
//! (`super::changes`) whose version moves whenever what `/peers` would show changes.
//!
//! Pure state, no I/O: the API layer journals a change to disk before committing it here,
//! so nothing is acknowledged that a crash could lose.

use super::changes::ChangeLog;
use super::names::Names;
use crate::keys::PublicKey;
use crate::proto::model::PeerInfo;
use crate::server::ipam::{Ipam, IpamError};
use crate::server::policy::Party;
use crate::server::store::{PeerRecord, Snapshot, FORMAT_VERSION};
use crate::time;
use crate::types::Tag;
use crate::types::{Endpoint, Hostname, OsName, PeerId};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// What a registration asks for, already validated.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Its hostname.
    pub hostname: Hostname,
    /// Its OS.
    pub os: OsName,
    /// The endpoint it names, if any.
    pub endpoint: Option<Endpoint>,
    /// Its WireGuard listen port, if it said.
    pub listen_port: Option<u16>,
    /// Whether it offers to be an exit node.
    pub exit_node: bool,
    /// Extra prefixes it routes (normalized, deduplicated).
    pub allowed_ips: Vec<IpNet>,
    /// Where the request came from.
    pub observed_ip: IpAddr,
    /// Tags from the join token, for a first registration. A known key keeps the tags it
    /// joined with: re-registering proves ownership of the key, not a new invitation.
    pub tags: Vec<Tag>,
    /// The owner a single sign-on login records: it replaces the stored owner and, with
    /// it, the tags (a fresh login re-reads the person's groups).
    pub owner: Option<crate::server::sso::identity::Owner>,
    /// The port its devices reach it on, when it runs `up --gateway`.
    pub gateway_port: Option<u16>,
}

/// The outcome of preparing a registration.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Same key, same details: nothing to write; counts as a heartbeat.
    Unchanged(PeerRecord),
    /// A new or changed record that must be journaled before [`Registry::commit`].
    Write {
        /// The record to store.
        record: PeerRecord,
        /// Whether the address was freshly allocated (released again on abort).
        fresh_address: bool,
    },
}

/// Every registered peer, indexed by key and by id.
#[derive(Debug)]
pub struct Registry {
    ipam: Ipam,
    peers: HashMap<PublicKey, PeerRecord>,
    ids: HashMap<PeerId, PublicKey>,
    changes: ChangeLog,
    /// Peers whose stored fields (endpoint, observed address, online) changed without a
    /// journal entry: heartbeats and timeouts. Journaled in a batch by the sweeper.
    unsaved: HashSet<PublicKey>,
    /// The IPv6 mesh prefix (from the server key); each peer's /128 is listed beside its /32.
    mesh6: Option<Ipv6Net>,
    /// Which peer holds which `.mesh` name.
    names: Names,
}

impl Registry {
    /// Gives every peer an IPv6 mesh address under `prefix` (see [`crate::proto::mesh6`]).
    pub fn set_mesh6(&mut self, prefix: Ipv6Net) {
        self.mesh6 = Some(prefix);
        self.changes.reset();
    }

    /// Rebuilds the registry (and the address pool) from a loaded snapshot.
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Registry, IpamError> {
        let mut ipam = Ipam::new(snapshot.network_cidr)?;
        let mut records = snapshot.peers;
        let (names, renamed) = Names::load(&mut records);
        if renamed > 0 {
            log::info!("gave {renamed} peer(s) a DNS name");
        }
        // Names assigned on load must reach the disk at the next sweep's journal batch.
        let unsaved: HashSet<PublicKey> = if renamed > 0 {
            records.iter().map(|p| p.public_key).collect()
        } else {
            HashSet::new()
        };
        let mut peers = HashMap::with_capacity(records.len());
        let mut ids = HashMap::with_capacity(records.len());
        for peer in records {
            ipam.reserve(peer.virtual_ip)?;
            ids.insert(peer.id.clone(), peer.public_key);
            peers.insert(peer.public_key, peer);
        }
        Ok(Registry {
            ipam,
            peers,
            ids,
            changes: ChangeLog::new(
                super::changes::start_version(SystemTime::now()),
                super::changes::DEFAULT_CAPACITY,
            ),
            unsaved,
            mesh6: None,
            names,
        })
    }

    /// The mesh network.
    pub fn network(&self) -> Ipv4Net {
        self.ipam.network()
    }

    /// Changes whenever the visible peer list changes: the `/peers` version and ETag.
    pub fn generation(&self) -> u64 {
        self.changes.version()
    }

    /// Replicas (issue 11): from now on versions are the shared database's sequence numbers,
    /// starting at `start`, the sequence this registry was loaded at (see
    /// [`ChangeLog::following`]). Called once at start, after [`Registry::set_mesh6`].
    pub fn follow_versions(&mut self, start: u64) {
        self.changes = ChangeLog::following(start, super::changes::DEFAULT_CAPACITY);
    }

    /// Following the database: what is recorded next happens at sequence `seq`.
    pub fn advance_to(&mut self, seq: u64) {
        self.changes.advance_to(seq);
    }

    /// The change log, to answer `/peers?since=N`.
    pub fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    /// Records a policy reload (with the policy it replaced) as a change everyone may see.
    pub fn policy_changed(&mut self, replaced: std::sync::Arc<crate::server::policy::Policy>) {
        self.changes.record_policy(replaced);
    }

    /// A peer says it is going offline on purpose (`wgmesh down`, or `up` stopping): it keeps
    /// its registration and address, and leaves everyone's list at once instead of at the
    /// heartbeat timeout. Returns None for an unknown id.
    pub fn offline(&mut self, id: &PeerId) -> Option<&PeerRecord> {
        let key = self.ids.get(id)?;
        let peer = self.peers.get_mut(key)?;
        if peer.online {
            peer.online = false;
            self.unsaved.insert(*key);
            self.changes.record(peer.id.clone());
        }
        self.peers.get(key)
    }

    /// How many peers are registered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is registered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// How many peers are online.
    pub fn online(&self) -> usize {
        self.peers.values().filter(|p| p.online).count()
    }

    /// The record of a peer id, if registered.
    pub fn by_id(&self, id: &PeerId) -> Option<&PeerRecord> {
        self.ids.get(id).and_then(|k| self.peers.get(k))
    }

    /// Works out what a registration changes, allocating an address for a new key. The
    /// result must be journaled, then passed to [`Registry::commit`] (or
    /// [`Registry::abort`] if journaling failed).
    pub fn prepare(&mut self, reg: &Registration, now: SystemTime) -> Result<Prepared, IpamError> {
        if let Some(existing) = self.peers.get(&reg.public_key) {
            let mut record = existing.clone();
            record.hostname = reg.hostname.clone();
            record.os = reg.os.clone();
            record.endpoint = reg.endpoint;
            record.listen_port = reg.listen_port;
            record.exit_node = reg.exit_node;
            record.allowed_ips = reg.allowed_ips.clone();
            // An approval lasts while the route is advertised; one dropped and advertised
            // again needs approving again.
            record
                .approved_routes
                .retain(|r| reg.allowed_ips.contains(r));
            record.observed_ip = Some(reg.observed_ip);
            if reg.owner.is_some() {
                record.owner = reg.owner.clone();
                record.tags = reg.tags.clone();
            }
            record.gateway_port = reg.gateway_port;
            record.dns_name = Some(self.names.choose(
                &record.public_key,
                &record.id,
                &reg.hostname,
                existing.dns_name.as_ref().map(|n| (&existing.hostname, n)),
            ));
            if record == *existing {
                return Ok(Prepared::Unchanged(record));
            }
            record.registered_at = now;
            record.last_heartbeat = now;
            record.online = true;
            return Ok(Prepared::Write {
                record,
                fresh_address: false,
            });
        }
        let virtual_ip = self.ipam.allocate()?;
        let id = PeerId::for_key(&reg.public_key);
        let dns_name = self.names.choose(&reg.public_key, &id, &reg.hostname, None);
        Ok(Prepared::Write {
            record: PeerRecord {
                id,
                public_key: reg.public_key,
                virtual_ip,
                endpoint: reg.endpoint,
                observed_ip: Some(reg.observed_ip),
                listen_port: reg.listen_port,
                hostname: reg.hostname.clone(),
                os: reg.os.clone(),
                allowed_ips: reg.allowed_ips.clone(),
                exit_node: reg.exit_node,
                registered_at: now,
                last_heartbeat: now,
                online: true,
                tags: reg.tags.clone(),
                dns_name: Some(dns_name),
                approved_routes: Vec::new(),
                owner: reg.owner.clone(),
                via: None,
                gateway_port: reg.gateway_port,
            },
            fresh_address: true,
        })
    }

    /// Stores a journaled record.
    pub fn commit(&mut self, record: PeerRecord) {
        let old = self.peers.get(&record.public_key);
        if let Some(old) = old {
            if !old.online {
                log::info!("peer {} ({}) is back online", old.id, old.hostname);
            }
        }
        if let Some(name) = &record.dns_name {
            let old_name = old.and_then(|o| o.dns_name.clone());
            self.names
                .claim(record.public_key, name.clone(), old_name.as_ref());
        }
        self.ids.insert(record.id.clone(), record.public_key);
        self.unsaved.remove(&record.public_key);
        self.changes.record(record.id.clone());
        self.peers.insert(record.public_key, record);
    }

    /// A fresh address and the `.mesh` name `hostname` asks for, for a device (see
    /// [`crate::server::devices`]): the record built with them must be stored, then passed
    /// to [`Registry::commit`], or the address given back with [`Registry::release`].
    pub fn allocate(
        &mut self,
        key: &PublicKey,
        id: &PeerId,
        hostname: &Hostname,
    ) -> Result<(std::net::Ipv4Addr, crate::types::DnsName), IpamError> {
        let ip = self.ipam.allocate()?;
        Ok((ip, self.names.choose(key, id, hostname, None)))
    }

    /// Gives back an address [`Registry::allocate`] handed out for a record never stored.
    pub fn release(&mut self, ip: std::net::Ipv4Addr) {
        self.ipam.release(ip);
    }

    /// The IPv6 mesh prefix, once set.
    pub fn mesh6(&self) -> Option<Ipv6Net> {
        self.mesh6
    }

    /// The mesh's own networks (IPv4, and IPv6 when the server has a prefix), which no
    /// subnet route and no policy prefix may overlap.
    pub fn mesh_nets(&self) -> Vec<IpNet> {
        std::iter::once(IpNet::V4(self.network()))
            .chain(self.mesh6.map(IpNet::V6))
            .collect()
    }

    /// Undoes [`Registry::prepare`] when the change could not be made durable.
    pub fn abort(&mut self, prepared: &Prepared) {
        if let Prepared::Write {
            record,
            fresh_address: true,
        } = prepared
        {
            self.ipam.release(record.virtual_ip);
        }
    }

    /// Records a sign of life. Returns None for an unknown id.
    pub fn heartbeat(
        &mut self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed_ip: IpAddr,
        now: SystemTime,
    ) -> Option<&PeerRecord> {
        let key = self.ids.get(id)?;
        let peer = self.peers.get_mut(key)?;
        let mut visible = false;
        if !peer.online {
            peer.online = true;
            visible = true;
            log::info!("peer {} ({}) is back online", peer.id, peer.hostname);
        }
        if endpoint.is_some() && endpoint != peer.endpoint {
            peer.endpoint = endpoint;
            visible = true;
        }
        let mut stored = visible;
        if peer.observed_ip != Some(observed_ip) {
            peer.observed_ip = Some(observed_ip);
            visible |= peer.endpoint.is_none();
            stored = true;
        }
        // The time alone is not stored: heartbeats must not cost disk writes.
        peer.last_heartbeat = now;
        if stored {
            self.unsaved.insert(*key);
        }
        if visible {
            self.changes.record(peer.id.clone());
        }
        self.peers.get(key)
    }

    /// Stores a record another replica committed to the shared database (issue 11): reserves
    /// its address and name here, keeping the later of the two last-heartbeat times.
    pub fn apply_remote(&mut self, mut record: PeerRecord) {
        if let Some(old) = self.peers.get(&record.public_key) {
            if old.virtual_ip != record.virtual_ip {
                self.ipam.release(old.virtual_ip);
            }
            record.last_heartbeat = record.last_heartbeat.max(old.last_heartbeat);
            if *old == record {
                return;
            }
        }
        if !self.ipam.is_allocated(record.virtual_ip) {
            let _ = self.ipam.reserve(record.virtual_ip);
        }
        self.commit(record);
    }

    /// What a heartbeat would make of a peer's record, without changing anything: the new
    /// record, and whether others would see the change (back online, new endpoint). A
    /// replica writes visible changes to the database before applying them here.
    pub fn heartbeat_preview(
        &self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed_ip: IpAddr,
        now: SystemTime,
    ) -> Option<(PeerRecord, bool)> {
        let peer = self.by_id(id)?;
        let mut record = peer.clone();
        let mut visible = !record.online;
        record.online = true;
        if endpoint.is_some() && endpoint != record.endpoint {
            record.endpoint = endpoint;
            visible = true;
        }
        if record.observed_ip != Some(observed_ip) {
            record.observed_ip = Some(observed_ip);
            visible |= record.endpoint.is_none();
        }
        record.last_heartbeat = now;
        Some((record, visible))
    }

    /// Removes a peer for good and frees its address.
    pub fn remove(&mut self, id: &PeerId) -> Option<PeerRecord> {
        let key = self.ids.remove(id)?;
        let peer = self.peers.remove(&key)?;
        self.ipam.release(peer.virtual_ip);
        if let Some(name) = &peer.dns_name {
            self.names.release(name, &key);
        }
        self.unsaved.remove(&key);
        self.changes.record(peer.id.clone());
        Some(peer)
    }

    /// Marks peers silent for longer than `timeout` offline; returns them.
    pub fn sweep(&mut self, now: SystemTime, timeout: Duration) -> Vec<(PeerId, Hostname, u64)> {
        let mut gone = Vec::new();
        // Devices (`via`) never heartbeat: they are listed while they are registered.
        for peer in self
            .peers
            .values_mut()
            .filter(|p| p.online && p.via.is_none())
        {
            let silent = now.duration_since(peer.last_heartbeat).unwrap_or_default();
            if silent > timeout {
                peer.online = false;
                self.unsaved.insert(peer.public_key);
                gone.push((peer.id.clone(), peer.hostname.clone(), silent.as_secs()));
            }
        }
        for (id, _, _) in &gone {
            self.changes.record(id.clone());
        }
        gone
    }

    /// The records changed since the last call without a journal entry of their own, for
    /// the sweeper to journal in one batch.
    pub fn take_unsaved(&mut self) -> Vec<PeerRecord> {
        let keys = std::mem::take(&mut self.unsaved);
        keys.iter()
            .filter_map(|k| self.peers.get(k).cloned())
            .collect()
    }

    /// The whole registry, for a snapshot on disk.
    pub fn snapshot(&self) -> Snapshot {
        let mut peers: Vec<PeerRecord> = self.peers.values().cloned().collect();
        peers.sort_by_key(|p| p.virtual_ip);
        Snapshot {
            version: FORMAT_VERSION,
            network_cidr: self.network(),
            peers,
        }
    }

    /// Whether a public key is registered: a first registration needs a join token, a known
    /// key does not.
    pub fn knows(&self, key: &PublicKey) -> bool {
        self.peers.contains_key(key)
    }

    /// Every record by reference, in no order, for readers that filter under the lock
    /// (the console's peers page) instead of copying the registry.
    pub fn iter(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    /// Every record, in address order, for the admin view.
    pub fn records(&self) -> Vec<PeerRecord> {
        self.snapshot().peers
    }

    /// Every online peer's id, tags and approved routes, for deltas across a policy reload.
    pub fn online_ids(&self) -> impl Iterator<Item = (&PeerId, &[Tag], &[IpNet])> {
        self.peers
            .values()
            .filter(|p| p.online)
            .map(|p| (&p.id, p.tags.as_slice(), p.approved_routes.as_slice()))
    }

    /// One peer's entry as `/peers` shows it, for a delta.
    pub fn info(&self, id: &PeerId) -> Option<PeerInfo> {
        self.by_id(id).map(|p| peer_info(p, self.mesh6))
    }

    /// The online peers as `/peers` shows them, each with its party (tags and approved
    /// routes, which decide who may see it and how), in address order.
    pub fn online_tagged(&self) -> Vec<(Party, PeerInfo)> {
        let mut entries: Vec<(Party, PeerInfo)> = self
            .peers
            .values()
            .filter(|p| p.online)
            .map(|p| (party(p), peer_info(p, self.mesh6)))
            .collect();
        entries.sort_by_key(|(_, e)| e.virtual_ip);
        entries
    }
}

/// What the policy looks at in a record: its tags and approved subnet routes, and whether it
/// advertises any (a default route is an exit node's, not a subnet route).
pub fn party(p: &PeerRecord) -> Party {
    Party::new(&p.tags, &p.approved_routes)
        .serving(p.allowed_ips.iter().any(|n| n.prefix_len() != 0))
}

/// The public view of a record: its /32 (and /128 in the IPv6 mesh), its approved subnet
/// routes (advertised but unapproved prefixes stay private), and the default route for an
/// exit node.
pub fn peer_info(p: &PeerRecord, mesh6: Option<Ipv6Net>) -> PeerInfo {
    let mut allowed_ips = vec![IpNet::from(std::net::IpAddr::V4(p.virtual_ip))];
    if let Some(prefix) = mesh6 {
        let v6 = crate::proto::mesh6::address(prefix, p.virtual_ip);
        allowed_ips.push(IpNet::from(std::net::IpAddr::V6(v6)));
    }
    allowed_ips.extend(
        p.allowed_ips
            .iter()
            .filter(|n| n.prefix_len() == 0 || p.approved_routes.contains(n))
            .copied(),
    );
    let default_v4: IpNet = "0.0.0.0/0".parse().expect("literal");
    if p.exit_node && !allowed_ips.contains(&default_v4) {
        allowed_ips.push(default_v4);
    }
    PeerInfo {
        id: p.id.clone(),
        public_key: p.public_key,
        virtual_ip: p.virtual_ip,
        endpoint: p.published_endpoint(),
        hostname: p.hostname.clone(),
        dns_name: p.dns_name.clone(),
        os: p.os.clone(),
        allowed_ips,
        exit_node: p.exit_node,
        online: p.online,
        last_heartbeat: time::format(p.last_heartbeat),
        via: p.via.clone(),
        reach: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn empty() -> Registry {
        Registry::from_snapshot(Snapshot {
            version: FORMAT_VERSION,
            network_cidr: "10.100.0.0/24".parse().unwrap(),
            peers: Vec::new(),
        })
        .unwrap()
    }

    fn registration(hostname: &str) -> Registration {
        Registration {
            public_key: PrivateKey::generate().public_key(),
            hostname: hostname.parse().unwrap(),
            os: "linux".parse().unwrap(),
            endpoint: None,
            listen_port: Some(51820),
            exit_node: false,
            allowed_ips: Vec::new(),
            observed_ip: "198.18.0.9".parse().unwrap(),
            tags: Vec::new(),
            owner: None,
            gateway_port: None,
        }
    }

    fn write(registry: &mut Registry, reg: &Registration, now: SystemTime) -> PeerRecord {
        match registry.prepare(reg, now).unwrap() {
            Prepared::Write { record, .. } => record,
            Prepared::Unchanged(_) => panic!("a new key is a write"),
        }
    }

    #[test]
    fn a_record_from_another_replica_takes_its_address_and_name_here() {
        let now = time::from_unix_secs(1_700_000_000);
        let (mut here, mut there) = (empty(), empty());
        let remote = write(&mut there, &registration("box"), now);
        there.commit(remote.clone());
        let before = here.generation();
        here.apply_remote(remote.clone());
        assert!(here.generation() > before, "peer lists are rebuilt");
        assert_eq!(here.by_id(&remote.id), Some(&remote));
        // The next local allocation skips the address, and the name gets a suffix.
        let local = write(&mut here, &registration("box"), now);
        assert_ne!(local.virtual_ip, remote.virtual_ip);
        assert_ne!(local.dns_name, remote.dns_name);
        // Applying the same record again changes nothing; a later heartbeat time held
        // here is kept over an older one from the database.
        let mut seen = remote.clone();
        seen.last_heartbeat = now + Duration::from_secs(30);
        here.apply_remote(seen.clone());
        let generation = here.generation();
        here.apply_remote(remote.clone());
        assert_eq!(here.generation(), generation);
        assert_eq!(
            here.by_id(&remote.id).unwrap().last_heartbeat,
            seen.last_heartbeat
        );
    }

    #[test]
    fn registries_following_the_database_agree_on_versions() {
        let now = time::from_unix_secs(1_700_000_000);
        let (mut here, mut there) = (empty(), empty());
        here.follow_versions(10);
        there.follow_versions(10);
        // "there" writes at sequence 12 (11 went elsewhere, invisible to both); "here"
        // applies it from the database at the same sequence.
        let record = write(&mut there, &registration("box"), now);
        there.advance_to(12);
        there.commit(record.clone());
        here.advance_to(11);
        here.advance_to(12);
        here.apply_remote(record.clone());
        assert_eq!((here.generation(), there.generation()), (12, 12));
        assert_eq!(here.changes().since(10), there.changes().since(10));
        // Re-applying what it already has (its own write read back) records nothing but
        // still reaches the sequence.
        there.advance_to(13);
        there.apply_remote(record);
        assert_eq!(there.generation(), 13);
        assert!(matches!(
            there.changes().since(12),
            crate::server::changes::Since::Delta { ref peers, .. } if peers.is_empty()
        ));
    }

    #[test]
    fn heartbeat_preview_says_what_others_would_see_and_changes_nothing() {
        let now = time::from_unix_secs(1_700_000_000);
        let mut registry = empty();
        let reg = registration("beat");
        let record = write(&mut registry, &reg, now);
        registry.commit(record.clone());
        let later = now + Duration::from_secs(5);
        let same_ip = reg.observed_ip;
        let (next, visible) = registry
            .heartbeat_preview(&record.id, None, same_ip, later)
            .unwrap();
        assert!(!visible, "a plain heartbeat is invisible");
        assert_eq!(next.last_heartbeat, later);
        assert_eq!(registry.by_id(&record.id).unwrap().last_heartbeat, now);
        let endpoint = "198.18.0.9:51999".parse().unwrap();
        let (_, visible) = registry
            .heartbeat_preview(&record.id, Some(endpoint), same_ip, later)
            .unwrap();
        assert!(visible, "a new endpoint is visible");
        registry.sweep(later + Duration::from_secs(600), Duration::from_secs(120));
        let (next, visible) = registry
            .heartbeat_preview(&record.id, None, same_ip, later)
            .unwrap();
        assert!(visible && next.online, "coming back online is visible");
        assert!(registry
            .heartbeat_preview(
                &PeerId::for_key(&PrivateKey::generate().public_key()),
                None,
                same_ip,
                later
            )
            .is_none());
    }
}
