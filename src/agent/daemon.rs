//! `wgmesh up`'s foreground loop: heartbeat and sync on their own timers, keep the mesh as it
//! is while the server is unreachable (retrying with backoff), and tear down on a signal.

use super::dns::MeshDns;
use super::engine::{Engine, Sink};
use super::error::AgentError;
use crate::os::runner::Runner;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often each job runs.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    /// Between heartbeats (design: 30 s).
    pub heartbeat: Duration,
    /// Between peer syncs (design: 60 s).
    pub sync: Duration,
}

/// How often each peer's path (direct or relayed) is re-evaluated between syncs: fine
/// enough for `--relay-after` and a probe window of a few seconds, cheap (one `wg show`).
pub const PATH_TICK: Duration = Duration::from_secs(1);

/// One periodic job with exponential backoff after failures.
struct Timer {
    every: Duration,
    next: Instant,
    backoff: Duration,
}

/// First retry delay after a failure; doubles up to the job's own interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

impl Timer {
    fn new(every: Duration, first: Instant) -> Timer {
        Timer {
            every,
            next: first,
            backoff: FIRST_RETRY,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    fn succeeded(&mut self, now: Instant) {
        self.next = now + self.every;
        self.backoff = FIRST_RETRY;
    }

    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff.min(self.every);
        self.next = now + wait;
        self.backoff = (self.backoff * 2).min(self.every);
        wait
    }
}

/// How often `up` re-reads the routing table on macOS and Windows while a full tunnel is in
/// place, so a network change (new default gateway) or lost routes are repaired within
/// seconds rather than at the next sync; one `netstat`/`route print` is cheap.
pub const ROUTE_CHECK: Duration = Duration::from_secs(2);

/// Whether an error is worth retrying (server or command trouble) or fatal (bad config).
fn retryable(e: &AgentError) -> bool {
    matches!(e, AgentError::Server(_) | AgentError::Command(_))
}

/// Runs until `stop` is set, then removes what it set up. Returns the teardown's result.
/// With `dns`, the `.mesh` resolver follows every successful sync (see [`MeshDns`]).
pub fn run(
    engine: &mut Engine,
    runner: &mut dyn Runner,
    intervals: Intervals,
    stop: &AtomicBool,
    mut dns: Option<&mut MeshDns>,
) -> Result<(), AgentError> {
    if engine.config.assignment.is_some() {
        // Registering again (idempotent) publishes what changed since the last run (hostname,
        // and with it the mesh name; exit-node offer; endpoint) and learns our mesh name.
        if let Err(e) = engine.register() {
            log::warn!("cannot register again at start: {e}; carrying on with the last assignment");
        }
    }
    let start = Instant::now();
    let mut sync = Timer::new(intervals.sync, start);
    let mut heartbeat = Timer::new(intervals.heartbeat, start + intervals.heartbeat);
    let mut routes = Timer::new(ROUTE_CHECK, start + ROUTE_CHECK);
    let mut paths = Timer::new(PATH_TICK, start + PATH_TICK);
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if sync.due(now) {
            match engine.sync(&mut Sink::Run(&mut *runner)) {
                Ok(summary) => {
                    sync.succeeded(now);
                    log::debug!("sync ok: {} peers", summary.peers);
                    if let Some(dns) = dns.as_deref_mut() {
                        // Names are a convenience: trouble with them never stops the mesh.
                        if let Err(e) = dns.refresh(engine, &mut Sink::Run(&mut *runner)) {
                            log::warn!("DNS: {e}; retrying at the next sync");
                        }
                    }
                }
                Err(e) if retryable(&e) => {
                    let wait = sync.failed(now);
                    log::warn!(
                        "sync failed: {e}; the mesh stays as it is, retrying in {} s",
                        wait.as_secs()
                    );
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if heartbeat.due(now) {
            match engine.heartbeat() {
                Ok(()) => heartbeat.succeeded(now),
                Err(e) if retryable(&e) => {
                    let wait = heartbeat.failed(now);
                    log::warn!("missed heartbeat: {e}; retrying in {} s", wait.as_secs());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if paths.due(now) {
            // Between syncs, only the paths move: observe the interface and re-plan from
            // the last list (a relay switch or a probe must not wait for the next sync).
            match engine.refresh_paths(&mut Sink::Run(&mut *runner)) {
                Ok(()) => paths.succeeded(now),
                Err(e) if retryable(&e) => {
                    paths.failed(now);
                    log::warn!("path update failed: {e}");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let watching = engine.watches_routes();
        if watching && routes.due(now) {
            match engine.check_routes(&mut Sink::Run(&mut *runner)) {
                Ok(()) => routes.succeeded(now),
                Err(e) => {
                    let wait = routes.failed(now);
                    log::warn!("route check failed: {e}; retrying in {} s", wait.as_secs());
                }
            }
        }
        let mut wake = sync.next.min(heartbeat.next).min(paths.next);
        if watching {
            wake = wake.min(routes.next);
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < wake {
            std::thread::sleep(Duration::from_millis(50).min(wake - Instant::now()));
        }
    }
    log::info!("stopping: removing what this agent set up");
    let teardown = engine.teardown(&mut Sink::Run(runner)).map(drop);
    if let Some(dns) = dns {
        dns.shutdown();
    }
    result.and(teardown)
}
