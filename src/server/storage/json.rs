//! The single server's store: the registry snapshot and its journal
//! ([`crate::server::store::Store`]) and the join tokens in `tokens.json`, beside the state
//! file. Changes are decided under one write lock (the journal), made durable (fsync) and
//! only then applied to the registry every reader sees. Heartbeats cost no disk write; what
//! they change is journaled in batches on every sweep interval.

use super::admission::{self, Credential, Denied, Rules};
use super::write_floor::{FloorError, WriteFloor};
use super::{
    NonceClaim, PolicyReload, Registered, Signed, Storage, StorageError, TokenChange, WentOffline,
};
use crate::fsutil;
use crate::proto::auth::NONCE_LEN;
use crate::server::config::{files_beside, ServerConfig, ServerError};
use crate::server::registry::{Prepared, Registration, Registry};
use crate::server::state::MeshState;
use crate::server::store::{JournalEntry, PeerRecord, Store};
use crate::server::tokens::{TokenRecord, TokenStore};
use crate::types::{Endpoint, PeerId};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The join tokens and the file they persist to (JSON, 0600, rewritten atomically on every
/// change so a crash leaves either the old or the new set, never half of one).
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// The tokens as last saved.
    pub store: TokenStore,
}

impl TokenFile {
    /// Loads the token file, or starts empty if there is none. A corrupt file stops the
    /// server instead of silently forgetting (or resurrecting) tokens.
    pub fn load(path: PathBuf) -> io::Result<TokenFile> {
        let store = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "token file {} is unreadable ({e}); restore it or move it aside",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => TokenStore::new(),
            Err(e) => return Err(fsutil::with_path(e, "cannot read token file", &path)),
        };
        Ok(TokenFile { path, store })
    }

    /// Writes `store` to disk and only then makes it current, so memory never runs ahead of
    /// what a restart would load.
    pub fn replace(&mut self, store: TokenStore) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&store).expect("token stores serialize");
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        self.store = store;
        Ok(())
    }
}

/// The JSON journal store of a single server.
pub struct JsonStorage {
    state: Arc<MeshState>,
    /// Doubles as the write lock: changes are journaled one at a time, in order.
    journal: Mutex<Store>,
    tokens: Mutex<TokenFile>,
    rules: Rules,
    /// Each key's newest change, on disk, against replays across a restart.
    floor: WriteFloor,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The failure of a write to disk: 500, with what could not be stored.
fn disk(what: &str, e: &io::Error) -> StorageError {
    StorageError::Failed(format!("{what} could not be stored: {e}"))
}

/// What a loaded store hands the server: the store, the registry it loaded, and how many
/// peers that was.
pub struct OpenedJson {
    /// The store, over the state just loaded.
    pub journal: Store,
    /// The registry the state holds.
    pub registry: Registry,
    /// The join tokens.
    pub tokens: TokenFile,
}

/// Opens the state file (replaying its journal) and the token file beside it. Peers stored
/// as online get one full heartbeat timeout from this start to check in again: heartbeat
/// times are not written to disk (README "Durability").
pub fn open(config: &ServerConfig, mesh6: ipnet::Ipv6Net) -> Result<OpenedJson, ServerError> {
    let (journal, mut snapshot) =
        Store::open(&config.state, config.network).map_err(ServerError::Store)?;
    let started = SystemTime::now();
    for peer in snapshot.peers.iter_mut().filter(|p| p.online) {
        peer.last_heartbeat = peer.last_heartbeat.max(started);
    }
    let mut registry =
        Registry::from_snapshot(snapshot).map_err(|e| ServerError::Config(e.to_string()))?;
    registry.set_mesh6(mesh6);
    let (_, tokens, _) = files_beside(&config.state);
    let tokens = TokenFile::load(tokens).map_err(ServerError::Io)?;
    Ok(OpenedJson {
        journal,
        registry,
        tokens,
    })
}

impl JsonStorage {
    /// The store over `state` (which holds the registry `journal` was loaded into).
    pub fn new(
        state: Arc<MeshState>,
        journal: Store,
        tokens: TokenFile,
        rules: Rules,
        floor: WriteFloor,
    ) -> Self {
        JsonStorage {
            state,
            journal: Mutex::new(journal),
            tokens: Mutex::new(tokens),
            rules,
            floor,
        }
    }

    /// Saves the redeemed token (if any), then journals the record, then commits it to the
    /// registry; a failure at any point undoes what was done before it. Runs under the
    /// journal and token locks, so nothing interleaves.
    fn write_registration(
        &self,
        journal: &mut Store,
        tokens: &mut TokenFile,
        redeemed: Option<(TokenStore, TokenRecord)>,
        prepared: &Prepared,
        record: &PeerRecord,
    ) -> Result<(), StorageError> {
        let failed = |e: &io::Error| {
            log::error!("registration of {} failed: {e}", record.public_key);
            disk("registration", e)
        };
        let previous = tokens.store.clone();
        if let Some((next, _)) = &redeemed {
            if let Err(e) = tokens.replace(next.clone()) {
                self.state.registry().abort(prepared);
                return Err(failed(&e));
            }
        }
        let entry = JournalEntry::Put {
            peer: record.clone(),
        };
        if let Err(e) = journal.append(&entry) {
            self.state.registry().abort(prepared);
            if redeemed.is_some() {
                let _ = tokens.replace(previous);
            }
            return Err(failed(&e));
        }
        self.state
            .change(|registry| registry.commit(record.clone()));
        Ok(())
    }
}

/// The refusal for a peer id the registry does not hold.
fn unknown(id: &PeerId) -> StorageError {
    StorageError::Refused(
        404,
        format!("no peer {id} is registered (see `wgmesh routes list`)"),
    )
}

impl JsonStorage {
    /// Journals one changed record and commits it (an operator's change to a peer).
    /// [`Storage::approve_covered_routes`] with the journal lock held.
    fn approve_covered_in(
        &self,
        journal: &mut Store,
        policy: &crate::server::policy::Policy,
    ) -> Result<usize, StorageError> {
        let approved = super::subnet_routes::reload_approvals(policy, &self.state.registry());
        if approved.is_empty() {
            return Ok(0);
        }
        let entries: Vec<JournalEntry> = approved
            .iter()
            .map(|peer| JournalEntry::Put { peer: peer.clone() })
            .collect();
        journal
            .append_all(&entries)
            .map_err(|e| disk("route approval", &e))?;
        let count = approved.len();
        self.state.change(|registry| {
            for record in approved {
                registry.commit(record);
            }
        });
        Ok(count)
    }

    fn write_record(
        &self,
        mut journal: MutexGuard<'_, Store>,
        record: &PeerRecord,
    ) -> Result<(), StorageError> {
        journal
            .append(&JournalEntry::Put {
                peer: record.clone(),
            })
            .map_err(|e| disk("route decision", &e))?;
        self.state
            .change(|registry| registry.commit(record.clone()));
        Ok(())
    }
}

impl Storage for JsonStorage {
    fn kind(&self) -> &'static str {
        "json"
    }

    fn register(
        &self,
        mut registration: Registration,
        credential: Credential<'_>,
        now: SystemTime,
    ) -> Result<Registered, StorageError> {
        let mut journal = lock(&self.journal);
        let mut tokens = lock(&self.tokens);
        let known = self.state.registry().knows(&registration.public_key);
        let mut next = match admission::spends_token(known, credential) {
            true => tokens.store.clone(),
            false => TokenStore::new(),
        };
        let admitted = admission::admit(self.rules, known, credential, &mut next, now)
            .map_err(StorageError::Denied)?;
        if let Some(tags) = admitted.tags {
            registration.tags = tags;
        }
        registration.owner = admitted.owner;
        let prepared = self
            .state
            .registry()
            .prepare(&registration, now)
            .map_err(StorageError::from)?;
        let prepared = {
            let (policy, _) = self.state.policy.current();
            super::subnet_routes::settle(prepared, &policy, &self.state.registry())
        };
        let (record, fresh_address) = match &prepared {
            Prepared::Unchanged(record) => {
                drop((journal, tokens));
                let (id, source) = (&record.id, registration.observed_ip);
                self.state
                    .change(|registry| registry.heartbeat(id, None, source, now).is_some());
                return Ok(Registered::Unchanged(record.clone()));
            }
            Prepared::Write {
                record,
                fresh_address,
            } => (record.clone(), *fresh_address),
        };
        let redeemed = admitted.token.map(|record| (next, record));
        let token = redeemed.as_ref().map(|(_, record)| record.id.clone());
        self.write_registration(&mut journal, &mut tokens, redeemed, &prepared, &record)?;
        Ok(Registered::Written {
            record,
            fresh_address,
            token,
        })
    }

    fn heartbeat(
        &self,
        id: &PeerId,
        endpoint: Option<Endpoint>,
        observed: IpAddr,
        now: SystemTime,
    ) -> Result<bool, StorageError> {
        Ok(self
            .state
            .change(|registry| registry.heartbeat(id, endpoint, observed, now).is_some()))
    }

    fn offline(&self, id: &PeerId) -> Result<WentOffline, StorageError> {
        Ok(self.state.change(|registry| {
            let before = registry.generation();
            let known = registry.offline(id).is_some();
            match (known, registry.generation() == before) {
                (false, _) => WentOffline::Unknown,
                (true, true) => WentOffline::Already,
                (true, false) => WentOffline::Now,
            }
        }))
    }

    fn end_login(&self, id: &PeerId, now: SystemTime) -> Result<Option<PeerRecord>, StorageError> {
        let mut journal = lock(&self.journal);
        let Some(record) = self.state.registry().by_id(id).cloned() else {
            return Ok(None);
        };
        let changed = super::logout::end_login(&record, now)?;
        journal
            .append(&JournalEntry::Put {
                peer: changed.clone(),
            })
            .map_err(|e| disk("logout", &e))?;
        self.state
            .change(|registry| registry.commit(changed.clone()));
        Ok(Some(changed))
    }

    fn deregister(&self, id: &PeerId) -> Result<Option<PeerRecord>, StorageError> {
        let mut journal = lock(&self.journal);
        let Some(record) = self.state.registry().by_id(id).cloned() else {
            return Ok(None);
        };
        journal
            .append(&JournalEntry::Delete {
                public_key: record.public_key,
            })
            .map_err(|e| disk("deregistration", &e))?;
        self.state.change(|registry| registry.remove(id));
        Ok(Some(record))
    }

    fn decide_route(
        &self,
        id: &PeerId,
        prefix: ipnet::IpNet,
        verdict: super::subnet_routes::Verdict,
    ) -> Result<PeerRecord, StorageError> {
        let journal = lock(&self.journal);
        let (before, record) = {
            let registry = self.state.registry();
            let owner = registry.by_id(id).ok_or_else(|| unknown(id))?;
            let record = super::subnet_routes::decide(&registry, owner, prefix, verdict)
                .map_err(StorageError::from)?;
            (owner.clone(), record)
        };
        if record == before {
            return Ok(record);
        }
        self.write_record(journal, &record)?;
        Ok(record)
    }

    fn add_device(
        &self,
        device: &crate::server::devices::NewDevice,
        now: SystemTime,
    ) -> Result<PeerRecord, StorageError> {
        let mut journal = lock(&self.journal);
        let record = crate::server::devices::prepare(&mut self.state.registry(), device, now)?;
        let entry = JournalEntry::Put {
            peer: record.clone(),
        };
        if let Err(e) = journal.append(&entry) {
            self.state.registry().release(record.virtual_ip);
            return Err(disk("device", &e));
        }
        self.state
            .change(|registry| registry.commit(record.clone()));
        Ok(record)
    }

    fn remove_device(&self, name: &str) -> Result<Option<PeerRecord>, StorageError> {
        let found = crate::server::devices::find_device(&self.state.registry(), name);
        match found {
            Some(device) => self.deregister(&device.id),
            None => Ok(None),
        }
    }

    fn tokens(&self) -> Result<TokenStore, StorageError> {
        Ok(lock(&self.tokens).store.clone())
    }

    /// A state-changing request is recorded on disk before it may take effect; one its key
    /// may have made before a restart is refused (see [`super::write_floor`]). Reads and
    /// heartbeats change nothing a replay could abuse for long: the in-memory cache decides.
    fn claim_nonce(&self, signed: &Signed<'_>) -> Result<NonceClaim, StorageError> {
        use base64::Engine as _;
        if !signed.write {
            return Ok(NonceClaim::Fresh);
        }
        let nonce = base64::engine::general_purpose::STANDARD
            .decode(signed.nonce.trim())
            .ok()
            .and_then(|bytes| <[u8; NONCE_LEN]>::try_from(bytes).ok())
            .ok_or_else(|| {
                StorageError::Denied(Denied {
                    status: 401,
                    why: "the request's nonce is not 16 bytes of base64".into(),
                })
            })?;
        let now = crate::time::unix_secs(SystemTime::now());
        match self.floor.admit(signed.key, (signed.timestamp, nonce), now) {
            Ok(()) => Ok(NonceClaim::Fresh),
            Err(FloorError::Auth(e)) => Err(StorageError::Denied(Denied {
                status: e.http_status(),
                why: e.to_string(),
            })),
            Err(FloorError::Io(e)) => Err(StorageError::Unavailable(format!(
                "this change could not be recorded against replays ({e})"
            ))),
        }
    }

    fn change_tokens(&self, change: TokenChange<'_>) -> Result<TokenRecord, StorageError> {
        let mut tokens = lock(&self.tokens);
        let mut next = tokens.store.clone();
        let record = change(&mut next)?;
        tokens.replace(next).map_err(|e| disk("token", &e))?;
        Ok(record)
    }

    fn sweep(&self, timeout: Duration) -> u64 {
        let gone = self
            .state
            .change(|registry| registry.sweep(SystemTime::now(), timeout));
        for (id, hostname, silent) in &gone {
            log::warn!(
                "peer {id} ({hostname}) timed out: no heartbeat for {silent} s, marked offline"
            );
        }
        gone.len() as u64
    }

    /// Journals what heartbeats and timeouts changed (one fsync for the batch), and rewrites
    /// the snapshot only when the journal has grown enough (or at shutdown). A mesh that
    /// only heartbeats writes nothing. Holds the journal lock throughout so no journaled
    /// change can slip between snapshot and truncation.
    fn persist(&self, last: bool) -> io::Result<()> {
        let mut journal = lock(&self.journal);
        let unsaved = self.state.registry().take_unsaved();
        let entries: Vec<JournalEntry> = unsaved
            .into_iter()
            .map(|peer| JournalEntry::Put { peer })
            .collect();
        journal.append_all(&entries)?;
        if !last && !journal.wants_compaction() {
            return Ok(());
        }
        let snapshot = self.state.registry().snapshot();
        journal.compact(&snapshot)
    }

    fn approve_covered_routes(&self) -> Result<usize, StorageError> {
        let mut journal = lock(&self.journal);
        let (policy, _) = self.state.policy.current();
        self.approve_covered_in(&mut journal, &policy)
    }

    /// Re-reads the policy file. Swapped and recorded under the registry lock, so no delta
    /// is ever computed with one policy and stamped with the version of the other. A changed
    /// policy then approves the advertised routes its `routes` rules now cover, journaled
    /// like any route decision (the journal lock is held throughout, so no registration
    /// slips in between).
    fn reload_policy(&self) -> Result<PolicyReload, StorageError> {
        let mut journal = lock(&self.journal);
        let policy = &self.state.policy;
        let reloaded = self.state.change(|registry| {
            let (replaced, _) = policy.current();
            let reloaded = policy.reload(&registry.mesh_nets());
            if let Ok((true, _)) = &reloaded {
                registry.policy_changed(replaced);
            }
            reloaded
        });
        let (changed, policy) = reloaded.map_err(|e| StorageError::Refused(400, e.to_string()))?;
        if changed {
            // The new policy is in force either way; routes it could not approve now are
            // approved by the next reload or by hand.
            if let Err(e) = self.approve_covered_in(&mut journal, &policy) {
                log::error!("policy reloaded, but its route approvals were not made: {e}");
            }
        }
        Ok(PolicyReload {
            changed,
            text: policy.to_string(),
        })
    }
}
