//! `wgmesh up`'s foreground loop: one long-poll for peer changes always outstanding (on its
//! own thread, applied here as answers come), heartbeats and a full sync on their own
//! timers, the mesh kept as it is while the server is unreachable (retrying with backoff),
//! and on a signal: tell the server we go offline, then tear down.

use super::client::{ApiClient, ClientError};
use super::dns::MeshDns;
use super::engine::{Engine, Sink};
use super::error::AgentError;
use crate::os::runner::Runner;
use crate::proto::model::PeersDelta;
use crate::types::PeerId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long each long-poll asks the server to hold it: under the server's 60 s cap, and
/// under common proxies' and NATs' idle limits for a quiet TCP connection.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(50);

/// Extra time the client gives a long-poll beyond its wait before calling it lost.
const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

/// The long-poll thread: asked for `(peer id, since)`, it sends back the server's answer.
/// One question at a time, so exactly one long-poll is outstanding.
struct Poller {
    ask: Sender<(PeerId, u64)>,
    answers: Receiver<Result<PeersDelta, ClientError>>,
    outstanding: bool,
    /// After a failure, when to ask again (doubling back-off, like the timers).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Whole-list answers in a row (see [`Poller::answered`]).
    fulls: u32,
}

impl Poller {
    fn spawn(client: ApiClient) -> Poller {
        let (ask, questions) = mpsc::channel::<(PeerId, u64)>();
        let (reply, answers) = mpsc::channel();
        // Detached: a stopping agent does not wait for a held request to come back.
        let _ = std::thread::Builder::new()
            .name("long-poll".into())
            .spawn(move || {
                for (id, since) in questions {
                    let answer = client.peers_since(&id, since, Some(LONG_POLL_WAIT));
                    if reply.send(answer).is_err() {
                        return;
                    }
                }
            });
        Poller {
            ask,
            answers,
            outstanding: false,
            retry_at: None,
            backoff: FIRST_RETRY,
            fulls: 0,
        }
    }

    /// Starts a long-poll from `point` unless one is outstanding or a retry is pending.
    fn keep_one_outstanding(&mut self, point: Option<(PeerId, u64)>, now: Instant) {
        if self.outstanding || self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        if let Some(point) = point {
            self.outstanding = self.ask.send(point).is_ok();
            self.retry_at = None;
        }
    }

    /// Waits up to `wait` for the outstanding long-poll's answer.
    fn next(&mut self, wait: Duration) -> Option<Result<PeersDelta, ClientError>> {
        if !self.outstanding {
            std::thread::sleep(wait);
            return None;
        }
        match self.answers.recv_timeout(wait) {
            Ok(answer) => {
                self.outstanding = false;
                Some(answer)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.outstanding = false;
                None
            }
        }
    }

    fn succeeded(&mut self) {
        self.backoff = FIRST_RETRY;
    }

    /// After an answer: whole lists twice in a row mean the server cannot answer from our
    /// version (a plain load balancer alternating replicas, which number versions each
    /// their own way), so every long-poll would come back at once with the whole list;
    /// pause between them as after a failure instead of spinning. A delta resets it.
    fn answered(&mut self, full: bool, now: Instant) {
        self.fulls = if full { self.fulls + 1 } else { 0 };
        if self.fulls >= 2 {
            let wait = self.failed(now);
            log::debug!(
                "whole peer lists twice in a row: next long-poll in {} s",
                wait.as_secs()
            );
        } else {
            self.succeeded();
        }
    }

    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff;
        self.retry_at = Some(now + wait);
        self.backoff = (self.backoff * 2).min(MAX_POLL_BACKOFF);
        wait
    }
}

/// How long after adding peers with a deferred keepalive `up` turns it on: long enough for
/// the other side's initiation to arrive first (it is usually there in milliseconds), short
/// enough that a lost one costs a second, not WireGuard's 5 s retry.
const FOLLOW_UP: Duration = Duration::from_secs(1);

/// How long `up` keeps a new peer that has not sent anything yet without keepalive (so it
/// does not initiate across the other side's first initiation); after that every keepalive
/// is on, so both sides open their NAT mappings even if the other never initiates.
const HOLD_SILENT: Duration = Duration::from_millis(1500);

/// Whether silent deferred peers are still held (see [`HOLD_SILENT`]).
fn holding(deferred_at: Option<Instant>, now: Instant) -> bool {
    deferred_at.is_none_or(|t| now.duration_since(t) < HOLD_SILENT)
}

/// Longest pause between failed long-polls.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(30);

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

/// Brings the `.mesh` resolver up to date with the peer list. Names are a convenience:
/// trouble with them never stops the mesh.
fn refresh_dns(dns: Option<&mut MeshDns>, engine: &mut Engine, runner: &mut dyn Runner) {
    if let Some(dns) = dns {
        if let Err(e) = dns.refresh(engine, &mut Sink::Run(runner)) {
            log::warn!("DNS: {e}; retrying at the next sync");
        }
    }
}

/// Runs until `stop` is set, then tells the server this node goes offline and removes what
/// it set up. Returns the teardown's result. With `dns`, the `.mesh` resolver follows every
/// successful sync and live update (see [`MeshDns`]).
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
    // A new run starts every path afresh: the interface's counters may start again at 0,
    // and what the last run proved may no longer hold (relay first, direct when proven).
    engine.paths.forget_peers();
    let start = Instant::now();
    let mut sync = Timer::new(intervals.sync, start);
    let mut heartbeat = Timer::new(intervals.heartbeat, start + intervals.heartbeat);
    let mut routes = Timer::new(ROUTE_CHECK, start + ROUTE_CHECK);
    let mut paths = Timer::new(PATH_TICK, start + PATH_TICK);
    let mut poller = Poller::spawn(engine.client.with_timeout(LONG_POLL_WAIT + LONG_POLL_SLACK));
    let mut result = Ok(());
    // When a pass deferred new peers' keepalives, the pass that turns them on, and since
    // when peers have been deferred (silent ones are held only for a while).
    let mut followup: Option<Instant> = None;
    let mut deferred_at: Option<Instant> = None;
    // Whether the server stopped answering: when it answers again, its relay has likely
    // restarted and forgotten every relayed session.
    let mut server_lost = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if followup.is_some_and(|t| now >= t) {
            followup = None;
            let peers = engine.known_peers();
            match engine.reconcile_live(
                &peers,
                holding(deferred_at, now),
                &mut Sink::Run(&mut *runner),
            ) {
                Ok(summary) if summary.keepalive_deferred => followup = Some(now + FOLLOW_UP),
                Ok(_) => deferred_at = None,
                Err(e) if retryable(&e) => log::warn!("turning keepalives on failed: {e}"),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if sync.due(now) {
            match engine.sync_live(holding(deferred_at, now), &mut Sink::Run(&mut *runner)) {
                Ok(summary) => {
                    sync.succeeded(now);
                    if std::mem::take(&mut server_lost) {
                        engine.server_back();
                    }
                    if summary.keepalive_deferred {
                        followup = Some(now + FOLLOW_UP);
                        deferred_at.get_or_insert(now);
                    }
                    log::debug!("sync ok: {} peers", summary.peers);
                    refresh_dns(dns.as_deref_mut(), engine, &mut *runner);
                }
                Err(e) if retryable(&e) => {
                    server_lost |= matches!(e, AgentError::Server(_));
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
        if engine.probing() {
            // A probe (begun by any pass) ends on time: paths are looked at every 100 ms.
            paths.next = paths.next.min(now + super::path::PROBE_TICK);
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
        let mut wake = sync
            .next
            .min(heartbeat.next)
            .min(paths.next)
            .min(followup.unwrap_or(sync.next));
        if watching {
            wake = wake.min(routes.next);
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < wake {
            let now = Instant::now();
            poller.keep_one_outstanding(engine.poll_point(), now);
            let answer = poller.next(Duration::from_millis(50).min(wake - now));
            match answer {
                None => {}
                Some(Ok(delta)) => {
                    poller.answered(delta.full, Instant::now());
                    if std::mem::take(&mut server_lost) {
                        engine.server_back();
                    }
                    if engine.apply_answer(delta) {
                        let peers = engine.known_peers();
                        let now = Instant::now();
                        let hold = holding(deferred_at, now);
                        match engine.reconcile_live(&peers, hold, &mut Sink::Run(&mut *runner)) {
                            Ok(summary) => {
                                if summary.keepalive_deferred && followup.is_none() {
                                    followup = Some(now + FOLLOW_UP);
                                    deferred_at.get_or_insert(now);
                                    break;
                                }
                                log::debug!("live update: {} peers", summary.peers);
                                refresh_dns(dns.as_deref_mut(), engine, &mut *runner);
                                if engine.probing() {
                                    break; // the outer loop ends the probe on time
                                }
                            }
                            Err(e) if retryable(&e) => {
                                log::warn!(
                                    "applying a live update failed: {e}; a full sync follows"
                                );
                                sync.next = Instant::now();
                                break;
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                }
                Some(Err(ClientError::UnknownPeer)) => {
                    // The server forgot us: the sync registers again.
                    sync.next = Instant::now();
                    break;
                }
                Some(Err(e)) => {
                    server_lost = true;
                    let wait = poller.failed(Instant::now());
                    log::warn!(
                        "waiting for peer changes failed: {e}; retrying in {} s",
                        wait.as_secs()
                    );
                }
            }
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        engine.go_offline();
    }
    log::info!("stopping: removing what this agent set up");
    let teardown = engine.teardown(&mut Sink::Run(runner)).map(drop);
    if let Some(dns) = dns {
        dns.shutdown();
    }
    result.and(teardown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller() -> Poller {
        let (ask, _questions) = mpsc::channel();
        let (_reply, answers) = mpsc::channel();
        Poller {
            ask,
            answers,
            outstanding: false,
            retry_at: None,
            backoff: FIRST_RETRY,
            fulls: 0,
        }
    }

    #[test]
    fn whole_lists_in_a_row_pause_the_long_poll_and_a_delta_resumes_it() {
        let mut p = poller();
        let now = Instant::now();
        // One whole list (after a restart or a fail-over) is normal: poll again at once.
        p.answered(true, now);
        assert_eq!(p.retry_at, None);
        // Again and again: the server cannot follow our version; back off, doubling.
        p.answered(true, now);
        assert_eq!(p.retry_at, Some(now + FIRST_RETRY));
        p.answered(true, now);
        assert_eq!(p.retry_at, Some(now + 2 * FIRST_RETRY));
        // A delta means versions work again.
        p.answered(false, now);
        assert_eq!((p.fulls, p.backoff), (0, FIRST_RETRY));
    }
}
