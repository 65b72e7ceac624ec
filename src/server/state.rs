//! The mesh as every reader sees it: the in-memory registry (peers, addresses, the change
//! log that numbers versions), the access policy in force, and the notifier that wakes
//! parked long-polls when the version moves. The storage behind the API
//! (`crate::server::storage`) is the only writer; handlers, the relay view and `/metrics`
//! read it.

use crate::server::http::Notifier;
use crate::server::registry::Registry;
use crate::server::trust::PolicyHolder;
use std::sync::{Mutex, MutexGuard};

/// The registry, the policy and the long-poll notifier, shared by the API and its storage.
pub struct MeshState {
    registry: Mutex<Registry>,
    /// Who sees whom; swapped under the registry lock, so a list or delta is always computed
    /// with the policy of the version it is stamped with.
    pub policy: PolicyHolder,
    changes: Notifier,
}

impl MeshState {
    /// Wraps a loaded registry and the policy in force.
    pub fn new(registry: Registry, policy: PolicyHolder) -> MeshState {
        MeshState {
            registry: Mutex::new(registry),
            policy,
            changes: Notifier::new(),
        }
    }

    /// The registry, locked. A poisoned lock is taken over: every change to the registry
    /// leaves it consistent before anything can panic.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes long-polls parked on the version.
    pub fn changes(&self) -> &Notifier {
        &self.changes
    }

    /// Runs `f` on the registry and wakes parked long-polls when it moved the version (a
    /// change some caller may see). The notifier is poked after the lock is released.
    pub fn change<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let (result, moved) = {
            let mut registry = self.registry();
            let before = registry.generation();
            let result = f(&mut registry);
            (result, registry.generation() != before)
        };
        if moved {
            self.changes.notify();
        }
        result
    }
}
