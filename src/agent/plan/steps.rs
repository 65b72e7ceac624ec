//! What a sync plan is made of: the ordered [`Step`]s (commands, what to record as applied,
//! host checks between them) and the summary `sync --json` prints. Kept apart from the
//! decision in [`super`] so the engine's vocabulary is findable on its own.

use crate::agent::error::AgentError;
use crate::agent::state::config::Applied;
use crate::os::Plan;
use crate::types::InterfaceName;
use serde::Serialize;
/// What one sync changed, printed by `sync --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncSummary {
    /// Our stable peer id.
    pub peer_id: String,
    /// Our mesh address.
    pub address: String,
    /// The interface's real name.
    pub interface: String,
    /// Whether the interface had to be created (first run, or after a reboot or `down`).
    pub created_interface: bool,
    /// Peers configured after the sync.
    pub peers: usize,
    /// Public keys of peers added.
    pub added: Vec<String>,
    /// Public keys of peers whose endpoint, allowed IPs or keepalive changed.
    pub updated: Vec<String>,
    /// Public keys of peers removed.
    pub removed: Vec<String>,
    /// Whether the server said the list had not changed (304).
    pub list_unchanged: bool,
    /// Whether new peers were added with their keepalive deferred (`up` only): another pass
    /// a moment later turns it on (see `plan::defer_crossing_handshakes`).
    #[serde(skip)]
    pub keepalive_deferred: bool,
}

/// One plan, and what is recorded as applied once it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The commands (possibly none: a step may only record).
    pub plan: Plan,
    /// `Some(record)` when this step changes what is recorded as applied; saved right after
    /// the plan ran, so a failure later in the sequence never forgets what is set up.
    pub record: Option<Option<Applied>>,
    /// Logged (info) once the plan ran.
    pub note: Option<String>,
    /// A check of the host to pass once the plan ran, before anything later runs.
    pub check: Option<HostCheck>,
}

/// What must be true of the host before the next step may run; the engine checks it
/// (never in a dry run) and stops the sync with the check's error otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// Windows: the tunnel service of this name is deleted (waited for, bounded), since
    /// `/installtunnelservice` fails while the old one is still stopping.
    ServiceGone(InterfaceName),
    /// Windows: the just-installed tunnel service has created its adapter (waited for,
    /// bounded), so `wg.exe set` can reach it.
    TunnelUp(InterfaceName),
    /// Windows: the configuration folder is protected (owner Administrators or SYSTEM, only
    /// they have access, nothing inherited), checked before the private key is written.
    ConfigDirProtected,
}

impl Step {
    pub(super) fn run(plan: Plan) -> Step {
        Step {
            plan,
            record: None,
            note: None,
            check: None,
        }
    }

    /// A step that only checks the host.
    pub(super) fn check(check: HostCheck) -> Step {
        Step {
            check: Some(check),
            ..Step::run(Plan::default())
        }
    }

    pub(super) fn note(mut self, note: String) -> Step {
        self.note = Some(note);
        self
    }
}

/// The decision for one sync.
#[derive(Debug)]
pub struct SyncPlan {
    /// What to run and record, in order.
    pub steps: Vec<Step>,
    /// What is recorded as applied once every step ran.
    pub applied: Option<Applied>,
    /// What the sync changes, for `sync --json`.
    pub summary: SyncSummary,
    /// macOS only: the steps end with creating interface NAME, whose real `utunN` name
    /// wireguard-go writes to its name file. Run the steps, read the name into
    /// [`HostFacts::created_name`](crate::agent::observe::host::HostFacts::created_name), and plan again.
    pub awaiting_name: Option<InterfaceName>,
    /// A refusal met after `steps`: run them (they were decided before it), then fail with
    /// this, as a straight sequence stopping at its first error would.
    pub failure: Option<AgentError>,
}
