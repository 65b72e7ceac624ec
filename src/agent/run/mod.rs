//! The long-running agent: building an engine from the config and flags, the engine's one
//! step (observe, plan, apply, save) shared by `sync` and `up`, its relay upkeep, and `up`'s
//! loop with its outstanding long-poll, timers and signals.

pub mod daemon;
pub mod engine;
pub mod instance;
pub mod login;
mod relays;
pub mod setup;
