//! The `/peers` answer cache: the serialized list of online peers one tag group may see,
//! shared by every answer to that group until the registry's generation or the policy moves
//! on. Serializing once per change instead of once per request is what lets a large mesh poll
//! cheaply; each caller gets the shared bytes minus its own entry, as two slices.

use crate::server::policy::Party;
use crate::server::route_access::Viewer;
use crate::server::state::MeshState;
use crate::types::PeerId;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

/// One tag group's serialized list at one registry generation and policy version.
#[derive(Debug)]
pub struct PeerList {
    /// The registry generation the list was built from.
    pub generation: u64,
    /// The policy version the list was filtered with.
    pub policy_version: u64,
    /// `{"success":true,"version":N,"full":true,"relay_port":P,"peers":[...]}`, every visible
    /// online peer (`relay_port` only when the relay runs).
    pub body: Arc<Vec<u8>>,
    /// For each listed peer, the bytes to cut (its entry and one adjacent comma).
    cut: HashMap<PeerId, Range<usize>>,
}

impl PeerList {
    /// The two byte ranges of `body` that make up the list as `id` sees it (without itself).
    pub fn parts_for(&self, id: &PeerId) -> [Range<usize>; 2] {
        match self.cut.get(id) {
            Some(cut) => [0..cut.start, cut.end..self.body.len()],
            None => [0..self.body.len(), 0..0],
        }
    }
}

/// One cached list per party (the caller's sorted tags, and its approved routes when it is a
/// subnet router).
#[derive(Debug, Default)]
pub struct PeerLists {
    slots: Mutex<HashMap<Party, Arc<PeerList>>>,
    /// The relay's UDP port, written into every list so agents know where it is.
    relay_port: std::sync::OnceLock<u16>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PeerLists {
    /// Advertises the relay on UDP `port` of the server's host in every list (once, at
    /// startup, before the first list is built).
    pub fn set_relay_port(&self, port: u16) {
        let _ = self.relay_port.set(port);
    }

    /// Drops every cached list (the policy changed).
    pub fn clear(&self) {
        lock(&self.slots).clear();
    }

    /// The cached list for a party at the current generation and policy, rebuilt by one
    /// thread when stale; the registry lock is held only to copy the entries, never while
    /// serializing. Entries show only the parts of subnet routes the party is granted
    /// (`crate::server::route_access`).
    pub fn current(&self, group: &Party, state: &MeshState) -> Arc<PeerList> {
        let mut slots = lock(&self.slots);
        // The policy is read under the registry lock, where reloads swap it, so a list and
        // its version always belong together.
        let (policy, policy_version, generation, entries) = {
            let registry = state.registry();
            let (policy, policy_version) = state.policy.current();
            let generation = registry.generation();
            if let Some(cache) = slots
                .get(group)
                .filter(|c| c.generation == generation && c.policy_version == policy_version)
            {
                return cache.clone();
            }
            (policy, policy_version, generation, registry.online_tagged())
        };
        if slots
            .values()
            .any(|c| c.generation != generation || c.policy_version != policy_version)
        {
            slots.clear();
        }
        let mut viewer = Viewer::new(&policy, group);
        let visible: Vec<_> = entries
            .into_iter()
            .filter_map(|(party, entry)| viewer.sees(&party).then(|| viewer.shape(&party, entry)))
            .collect();
        let mut body = Vec::with_capacity(64 + visible.len() * 320);
        body.extend_from_slice(
            format!("{{\"success\":true,\"version\":{generation},\"full\":true,").as_bytes(),
        );
        if let Some(port) = self.relay_port.get() {
            body.extend_from_slice(format!("\"relay_port\":{port},").as_bytes());
        }
        body.extend_from_slice(b"\"peers\":[");
        let mut spans = Vec::with_capacity(visible.len());
        for (i, entry) in visible.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            serde_json::to_writer(&mut body, entry).expect("API types always serialize");
            spans.push((entry.id.clone(), start..body.len()));
        }
        body.extend_from_slice(b"]}");
        let count = spans.len();
        let cut = spans
            .into_iter()
            .enumerate()
            .map(|(i, (id, span))| {
                // Cut the entry with the comma before it, or after it for the first entry.
                let range = if i > 0 {
                    span.start - 1..span.end
                } else if count > 1 {
                    span.start..span.end + 1
                } else {
                    span
                };
                (id, range)
            })
            .collect();
        let cache = Arc::new(PeerList {
            generation,
            policy_version,
            body: Arc::new(body),
            cut,
        });
        slots.insert(group.clone(), cache.clone());
        cache
    }
}
