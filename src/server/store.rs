//! The server's durable registry (design 7.2): a JSON snapshot plus an append-only journal.
//!
//! A registration must be on disk before it is acknowledged, and rewriting a 60,000-peer
//! snapshot for every registration would make the last registration thousands of times
//! slower than the first. So each change is one fsynced JSON line appended to
//! `PATH.journal`; the snapshot at `PATH` is rewritten atomically (temp, fsync, rename) only
//! at start and stop and when the journal has grown to the snapshot's size (at least
//! [`MIN_COMPACT_BYTES`]), and then the journal is emptied. So writes are proportional to
//! changes: a heartbeat that changes nothing visible writes nothing at all (its time lives
//! in memory; see README "Durability"), and one that moves an endpoint costs one line.
//!
//! Loading refuses anything it cannot fully understand, and never rewrites a file it could
//! not read: a corrupt state file stops the server with the path and the reason. Only a torn
//! final journal line (a write cut by a crash, never acknowledged) is skipped.

use crate::fsutil::{self, with_path};
use crate::keys::PublicKey;
use crate::time;
use crate::types::{Endpoint, Hostname, OsName, PeerId};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The snapshot format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One registered peer, as stored (design 7.1, plus what NAT traversal needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// Stable id derived from the public key.
    pub id: PeerId,
    /// The peer's identity.
    pub public_key: PublicKey,
    /// The peer's mesh address.
    pub virtual_ip: Ipv4Addr,
    /// The endpoint the peer asked others to dial, if it named one.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// The source address the server last saw the peer's requests come from.
    #[serde(default)]
    pub observed_ip: Option<IpAddr>,
    /// The peer's WireGuard listen port, paired with `observed_ip` when no endpoint is named.
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// The peer's hostname.
    pub hostname: Hostname,
    /// The peer's operating system.
    pub os: OsName,
    /// Extra prefixes the peer routes, beyond its own /32.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    /// Whether the peer offers to be an exit node.
    #[serde(default)]
    pub exit_node: bool,
    /// When the peer last registered (or re-registered).
    #[serde(with = "time::rfc3339")]
    pub registered_at: SystemTime,
    /// When the peer last showed signs of life.
    #[serde(with = "time::rfc3339")]
    pub last_heartbeat: SystemTime,
    /// Whether the peer is within the heartbeat timeout.
    pub online: bool,
    /// Tags from the join token the peer first registered with; the access policy decides
    /// who sees whom by them. Absent in files written before tokens existed (= untagged),
    /// and not written when empty so open-mode state files keep their old shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<crate::types::Tag>,
    /// The peer's name in the `.mesh` zone, unique in the registry. Absent in files written
    /// before names existed: the registry assigns those on load, in registration order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<crate::types::DnsName>,
    /// Which of `allowed_ips` an operator or the policy approved as subnet routes (see
    /// `crate::server::storage::subnet_routes`): only these reach other peers' lists. Not
    /// written when empty, so files without subnet routes keep their old shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_routes: Vec<IpNet>,
    /// The person whose single sign-on login admitted the peer (`wgmesh up --login`);
    /// absent for peers that joined with a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::server::sso::identity::Owner>,
    /// For a device without the agent (a phone): the gateway peer it reaches the mesh
    /// through. Devices never heartbeat; see [`crate::server::devices`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PeerId>,
    /// For a node running `up --gateway`: the UDP port its devices' interface listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<u16>,
}

impl PeerRecord {
    /// Where other peers should dial this one: the endpoint it named, else the address the
    /// server sees it from with its listen port (which is what works through a
    /// port-preserving NAT), else unknown.
    pub fn published_endpoint(&self) -> Option<Endpoint> {
        self.endpoint.or_else(|| {
            let ip = self.observed_ip?;
            let port = self.listen_port.filter(|p| *p != 0)?;
            format!("{}", std::net::SocketAddr::new(ip, port))
                .parse()
                .ok()
        })
    }
}

/// The whole registry as written to the snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Format version, so a future build can migrate instead of misreading.
    pub version: u32,
    /// The mesh network every address was allocated from.
    pub network_cidr: Ipv4Net,
    /// Every registered peer, online or not.
    pub peers: Vec<PeerRecord>,
}

/// One journal line: a change made after the snapshot was written.
// Entries live only between building and writing (or reading and applying) one line, never
// in bulk, so boxing the record would cost an allocation per line for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum JournalEntry {
    /// A peer was added or its registration changed.
    Put {
        /// The whole new record.
        peer: PeerRecord,
    },
    /// A peer left.
    Delete {
        /// The key of the peer that left.
        public_key: PublicKey,
    },
}

/// Why the state could not be loaded or saved. Load errors are fatal by design.
#[derive(Debug)]
pub enum StoreError {
    /// The file exists but cannot be read or parsed; it is left untouched.
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state was allocated from another network than the one configured.
    NetworkMismatch {
        /// The file holding the state.
        path: PathBuf,
        /// What the file says.
        stored: Ipv4Net,
        /// What the server was asked to use.
        configured: Ipv4Net,
    },
    /// A file-system error, with the path in its message.
    Io(io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt { path, reason } => write!(
                f,
                "state file {} is unreadable ({reason}); it was left untouched: restore it from a backup, or move it aside to start an empty registry",
                path.display()
            ),
            StoreError::NetworkMismatch { path, stored, configured } => write!(
                f,
                "state file {} was allocated from {stored}, but --network-cidr is {configured}; \
                 peers would be silently renumbered, so the server refuses: pass --network-cidr {stored}, \
                 or use another --state file for a new network",
                path.display()
            ),
            StoreError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// The legacy layout of design 7.2: a bare array of peers.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnySnapshot {
    Current(Snapshot),
    Legacy(Vec<PeerRecord>),
}

/// The journal may grow to this size (or the snapshot's, if larger) before compaction
/// rewrites the snapshot: small enough to replay in a blink, large enough that a busy mesh
/// rewrites its snapshot rarely.
pub const MIN_COMPACT_BYTES: u64 = 1 << 20;

/// Handle on the snapshot and journal files of one registry.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    journal: File,
    journal_entries: usize,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

impl Store {
    /// Opens (or creates) the state at `path`, replays the journal, checks the network and
    /// compacts, returning the loaded snapshot. Refuses corrupt files without touching them.
    pub fn open(path: &Path, network: Ipv4Net) -> Result<(Store, Snapshot), StoreError> {
        let path = path.to_path_buf();
        let journal_path = journal_path(&path);
        let dir = fsutil::parent_dir(&path);
        fs::create_dir_all(&dir).map_err(|e| with_path(e, "cannot create folder", &dir))?;

        let mut snapshot = match fs::read(&path) {
            Ok(bytes) => parse_snapshot(&path, &bytes, network)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot {
                version: FORMAT_VERSION,
                network_cidr: network,
                peers: Vec::new(),
            },
            Err(e) => return Err(with_path(e, "cannot read state file", &path).into()),
        };
        if snapshot.network_cidr != network {
            return Err(StoreError::NetworkMismatch {
                path,
                stored: snapshot.network_cidr,
                configured: network,
            });
        }
        match fs::read(&journal_path) {
            Ok(bytes) => replay(&journal_path, &bytes, &mut snapshot)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, "cannot read journal", &journal_path).into()),
        }
        check_consistent(&path, &snapshot)?;

        let journal = open_journal(&journal_path)?;
        let mut store = Store {
            path,
            journal_path,
            journal,
            journal_entries: 0,
            journal_bytes: 0,
            snapshot_bytes: 0,
        };
        store.compact(&snapshot)?;
        Ok((store, snapshot))
    }

    /// Appends one change and waits until it is on disk; only then may it be acknowledged.
    pub fn append(&mut self, entry: &JournalEntry) -> io::Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends several changes with one write and one fsync (e.g. the endpoint changes and
    /// timeouts a sweep collected).
    pub fn append_all(&mut self, entries: &[JournalEntry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut lines, entry).map_err(io::Error::other)?;
            lines.push(b'\n');
        }
        self.journal
            .write_all(&lines)
            .and_then(|()| self.journal.sync_data())
            .map_err(|e| with_path(e, "cannot append to journal", &self.journal_path))?;
        self.journal_entries += entries.len();
        self.journal_bytes += lines.len() as u64;
        Ok(())
    }

    /// Whether the journal has grown enough that rewriting the snapshot is worth it.
    pub fn wants_compaction(&self) -> bool {
        self.journal_bytes > self.snapshot_bytes.max(MIN_COMPACT_BYTES)
    }

    /// How many changes wait in the journal for the next compaction.
    pub fn journal_entries(&self) -> usize {
        self.journal_entries
    }

    /// Writes the whole registry as a new snapshot (atomically) and empties the journal.
    /// The caller must hold off appends while this runs.
    pub fn compact(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
            .map_err(|e| with_path(e, "cannot truncate journal", &self.journal_path))?;
        self.journal_entries = 0;
        self.journal_bytes = 0;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }

    /// The snapshot file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the journal of the state file at `path` lives.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

fn open_journal(path: &Path) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| with_path(e, "cannot open journal", path).into())
}

fn parse_snapshot(path: &Path, bytes: &[u8], network: Ipv4Net) -> Result<Snapshot, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(corrupt("the file is empty".into()));
    }
    match serde_json::from_slice::<AnySnapshot>(bytes) {
        Ok(AnySnapshot::Current(s)) if s.version == FORMAT_VERSION => Ok(s),
        Ok(AnySnapshot::Current(s)) => Err(corrupt(format!(
            "format version {} is not {FORMAT_VERSION}; it was written by another wgmesh",
            s.version
        ))),
        Ok(AnySnapshot::Legacy(peers)) => Ok(Snapshot {
            version: FORMAT_VERSION,
            // The bare array does not name its network: take the configured one;
            // check_consistent then refuses addresses outside it.
            network_cidr: network,
            peers,
        }),
        Err(_) => {
            // Re-parse as the current format for the precise line/column of the problem.
            let err = serde_json::from_slice::<Snapshot>(bytes).unwrap_err();
            Err(corrupt(err.to_string()))
        }
    }
}

fn replay(path: &Path, bytes: &[u8], snapshot: &mut Snapshot) -> Result<(), StoreError> {
    let mut index: std::collections::HashMap<PublicKey, usize> = snapshot
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.public_key, i))
        .collect();
    let mut lines = bytes
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .peekable();
    while let Some((number, line)) = lines.next() {
        let is_last = lines.peek().is_none();
        let complete = line.ends_with(b"\n");
        let parsed = serde_json::from_slice::<JournalEntry>(line);
        match parsed {
            Ok(entry) if complete => apply(snapshot, &mut index, entry),
            _ if is_last => {
                // A crash cut this write short; it was never fsynced, so never acknowledged.
                log::warn!(
                    "ignoring a torn final line {} of {} left by a crash",
                    number + 1,
                    path.display()
                );
            }
            Ok(_) => unreachable!("only the last line can lack its newline"),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {e}", number + 1),
                })
            }
        }
    }
    Ok(())
}

/// Applies one journal entry in O(1), keeping `index` (key -> position) in step.
fn apply(
    snapshot: &mut Snapshot,
    index: &mut std::collections::HashMap<PublicKey, usize>,
    entry: JournalEntry,
) {
    match entry {
        JournalEntry::Put { peer } => match index.get(&peer.public_key) {
            Some(&i) => snapshot.peers[i] = peer,
            None => {
                index.insert(peer.public_key, snapshot.peers.len());
                snapshot.peers.push(peer);
            }
        },
        JournalEntry::Delete { public_key } => {
            if let Some(i) = index.remove(&public_key) {
                snapshot.peers.swap_remove(i);
                if let Some(moved) = snapshot.peers.get(i) {
                    index.insert(moved.public_key, i);
                }
            }
        }
    }
}

fn check_consistent(path: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    let mut seen_keys = std::collections::HashSet::new();
    let mut seen_ips = std::collections::HashSet::new();
    for peer in &snapshot.peers {
        let problem = if !seen_keys.insert(peer.public_key) {
            Some(format!("public key {} appears twice", peer.public_key))
        } else if !seen_ips.insert(peer.virtual_ip) {
            Some(format!("address {} is assigned twice", peer.virtual_ip))
        } else if !snapshot.network_cidr.contains(&peer.virtual_ip) {
            Some(format!(
                "address {} lies outside the network {}",
                peer.virtual_ip, snapshot.network_cidr
            ))
        } else if peer.id != PeerId::for_key(&peer.public_key) {
            Some(format!("peer id {} does not match its public key", peer.id))
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn temp_state(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgmesh-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir.join("peers.json")
    }

    fn net() -> Ipv4Net {
        "10.100.0.0/16".parse().unwrap()
    }

    fn record(n: u8) -> PeerRecord {
        let key = PrivateKey::generate().public_key();
        PeerRecord {
            id: PeerId::for_key(&key),
            public_key: key,
            virtual_ip: Ipv4Addr::new(10, 100, 0, n),
            endpoint: Some("198.18.0.1:51820".parse().unwrap()),
            observed_ip: None,
            listen_port: Some(51820),
            hostname: format!("host{n}").parse().unwrap(),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![],
            exit_node: false,
            registered_at: time::from_unix_secs(1_700_000_000),
            last_heartbeat: time::from_unix_secs(1_700_000_000),
            online: true,
            tags: Vec::new(),
            dns_name: None,
            approved_routes: Vec::new(),
            owner: None,
            via: None,
            gateway_port: None,
        }
    }

    #[test]
    fn journal_survives_reopen_and_compaction_round_trips() {
        let path = temp_state("roundtrip");
        let (mut store, snap) = Store::open(&path, net()).unwrap();
        assert!(snap.peers.is_empty());
        let (a, b) = (record(1), record(2));
        store
            .append(&JournalEntry::Put { peer: a.clone() })
            .unwrap();
        store
            .append(&JournalEntry::Put { peer: b.clone() })
            .unwrap();
        store
            .append(&JournalEntry::Delete {
                public_key: a.public_key,
            })
            .unwrap();
        drop(store);
        let (_, snap) = Store::open(&path, net()).unwrap();
        assert_eq!(snap.peers, vec![b]);
        assert_eq!(fs::read(journal_path(&path)).unwrap().len(), 0, "compacted");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn torn_last_journal_line_is_skipped() {
        let path = temp_state("torn");
        let (mut store, _) = Store::open(&path, net()).unwrap();
        let a = record(1);
        store
            .append(&JournalEntry::Put { peer: a.clone() })
            .unwrap();
        drop(store);
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .unwrap();
        f.write_all(b"{\"op\":\"put\",\"peer\":{\"id\"").unwrap();
        let (_, snap) = Store::open(&path, net()).unwrap();
        assert_eq!(snap.peers, vec![a]);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupt_snapshot_is_refused_and_left_untouched() {
        let path = temp_state("corrupt");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            b"{\"version\":1,\"network_cidr\":\"10.100.0.0/16\",\"peers\":[{]}",
        )
        .unwrap();
        let before = fs::read(&path).unwrap();
        let err = Store::open(&path, net()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("left untouched"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupt_journal_middle_line_is_refused() {
        let path = temp_state("corrupt-journal");
        let (mut store, _) = Store::open(&path, net()).unwrap();
        store
            .append(&JournalEntry::Put { peer: record(1) })
            .unwrap();
        drop(store);
        let journal = journal_path(&path);
        let mut text = fs::read(&journal).unwrap();
        text.splice(0..0, b"garbage\n".iter().copied());
        fs::write(&journal, &text).unwrap();
        let err = Store::open(&path, net()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(fs::read(&journal).unwrap(), text);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn another_network_is_refused_not_renumbered() {
        let path = temp_state("mismatch");
        let (mut store, _) = Store::open(&path, net()).unwrap();
        store
            .append(&JournalEntry::Put { peer: record(1) })
            .unwrap();
        drop(store);
        let other: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let err = Store::open(&path, other).unwrap_err();
        assert!(matches!(err, StoreError::NetworkMismatch { .. }));
        assert!(
            err.to_string().contains("--network-cidr 10.100.0.0/16"),
            "{err}"
        );
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn duplicate_addresses_in_a_file_are_refused() {
        let path = temp_state("dup");
        let (a, mut b) = (record(1), record(2));
        b.virtual_ip = a.virtual_ip;
        let snap = Snapshot {
            version: FORMAT_VERSION,
            network_cidr: net(),
            peers: vec![a, b],
        };
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
        let err = Store::open(&path, net()).unwrap_err();
        assert!(err.to_string().contains("assigned twice"), "{err}");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
