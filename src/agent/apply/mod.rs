//! Carrying out plans: where a plan goes (run, or printed for `--dry-run`) and how steps are
//! applied and recorded, and taking the agent down (offline notice, undoing what is
//! recorded as applied).

pub mod path_probe;
pub mod sink;
pub mod teardown;
