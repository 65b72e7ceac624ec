//! `wgmesh up`'s foreground loop: one long-poll for peer changes always outstanding (on its
//! own thread, applied here as answers come), heartbeats and a full sync on their own
//! timers, the mesh kept as it is while the server is unreachable (retrying with backoff),
//! and on a signal: tell the server we go offline, then tear down.

use crate::agent::client::{ApiClient, ClientError};
use crate::agent::decide::path::PROBE_TICK;
use crate::agent::dns::service::MeshDns;
use crate::agent::error::AgentError;
use crate::agent::run::engine::{Engine, Sink};
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
    dns: Option<&mut MeshDns>,
) -> Result<(), AgentError> {
    register_again(engine);
    // A new run starts every path afresh: the interface's counters may start again at 0,
    // and what the last run proved may no longer hold (relay first, direct when proven).
    engine.paths.forget_peers();
    let mut daemon = Daemon::new(engine, runner, intervals, dns);
    let result = daemon.until(stop);
    daemon.finish(result)
}

/// Registering again (idempotent) publishes what changed since the last run (hostname, and
/// with it the mesh name; exit-node offer; endpoint) and learns our mesh name.
fn register_again(engine: &mut Engine) {
    if engine.config.assignment.is_some() {
        if let Err(e) = engine.register() {
            log::warn!("cannot register again at start: {e}; carrying on with the last assignment");
        }
    }
}

/// `up`'s loop state: the engine, where its plans run, mesh DNS, one timer per job, the
/// long-poll, and the pass that turns deferred keepalives on.
struct Daemon<'a> {
    engine: &'a mut Engine,
    runner: &'a mut dyn Runner,
    dns: Option<&'a mut MeshDns>,
    sync: Timer,
    heartbeat: Timer,
    routes: Timer,
    paths: Timer,
    poller: Poller,
    /// When a pass deferred new peers' keepalives, the pass that turns them on.
    followup: Option<Instant>,
    /// Since when peers have been deferred (silent ones are held only for a while).
    deferred_at: Option<Instant>,
    /// Whether the path report still goes out after each heartbeat.
    reports: Reporting,
    /// The devices this node carries with `--gateway`.
    gateway: Option<crate::agent::gateway::Gateway>,
    /// Whether the server stopped answering: when it answers again, its relay has likely
    /// restarted and forgotten every relayed session.
    server_lost: bool,
}

impl<'a> Daemon<'a> {
    fn new(
        engine: &'a mut Engine,
        runner: &'a mut dyn Runner,
        intervals: Intervals,
        dns: Option<&'a mut MeshDns>,
    ) -> Daemon<'a> {
        let start = Instant::now();
        let poller = Poller::spawn(engine.client.with_timeout(LONG_POLL_WAIT + LONG_POLL_SLACK));
        let gateway = engine
            .config
            .gateway
            .clone()
            .map(crate::agent::gateway::Gateway::new);
        Daemon {
            engine,
            runner,
            dns,
            sync: Timer::new(intervals.sync, start),
            heartbeat: Timer::new(intervals.heartbeat, start + intervals.heartbeat),
            routes: Timer::new(ROUTE_CHECK, start + ROUTE_CHECK),
            paths: Timer::new(PATH_TICK, start + PATH_TICK),
            poller,
            followup: None,
            deferred_at: None,
            reports: Reporting::default(),
            gateway,
            server_lost: false,
        }
    }

    /// Runs every job when due and waits for peer changes in between, until `stop` is set
    /// or a job fails in a way retrying cannot fix.
    fn until(&mut self, stop: &AtomicBool) -> Result<(), AgentError> {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.follow_up(now)?;
            self.sync_if_due(now)?;
            self.heartbeat_if_due(now)?;
            self.paths_if_due(now)?;
            if self.engine.needs_fast_path_ticks() {
                // A probe or a check (begun by any pass) ends on time: paths are looked at
                // every 100 ms.
                self.paths.next = self.paths.next.min(now + PROBE_TICK);
            }
            let watching = self.engine.watches_routes();
            if watching && self.routes.due(now) {
                self.check_routes(now);
            }
            let wake = self.next_wake(watching);
            self.wait_for_changes(wake, stop)?;
        }
        Ok(())
    }

    /// The pass after one that deferred new peers' keepalives: turns them on (or holds
    /// silent ones a little longer).
    fn follow_up(&mut self, now: Instant) -> Result<(), AgentError> {
        if self.followup.is_none_or(|t| now < t) {
            return Ok(());
        }
        self.followup = None;
        let peers = self.engine.known_peers();
        match self.engine.reconcile_live(
            &peers,
            holding(self.deferred_at, now),
            &mut Sink::Run(&mut *self.runner),
        ) {
            Ok(summary) if summary.keepalive_deferred => self.followup = Some(now + FOLLOW_UP),
            Ok(_) => self.deferred_at = None,
            Err(e) if retryable(&e) => log::warn!("turning keepalives on failed: {e}"),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The full sync on its timer; a failure the server or a command caused keeps the mesh
    /// as it is and retries with backoff.
    fn sync_if_due(&mut self, now: Instant) -> Result<(), AgentError> {
        if !self.sync.due(now) {
            return Ok(());
        }
        let hold = holding(self.deferred_at, now);
        match self
            .engine
            .sync_live(hold, &mut Sink::Run(&mut *self.runner))
        {
            Ok(summary) => {
                self.sync.succeeded(now);
                self.server_answered();
                if summary.keepalive_deferred {
                    self.followup = Some(now + FOLLOW_UP);
                    self.deferred_at.get_or_insert(now);
                }
                log::debug!("sync ok: {} peers", summary.peers);
                refresh_dns(self.dns.as_deref_mut(), self.engine, &mut *self.runner);
                self.refresh_gateway();
            }
            Err(e) if retryable(&e) => {
                self.server_lost |= matches!(e, AgentError::Server(_));
                let wait = self.sync.failed(now);
                log::warn!(
                    "sync failed: {e}; the mesh stays as it is, retrying in {} s",
                    wait.as_secs()
                );
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The heartbeat on its timer, retried with backoff like the sync.
    fn heartbeat_if_due(&mut self, now: Instant) -> Result<(), AgentError> {
        if !self.heartbeat.due(now) {
            return Ok(());
        }
        let routes_before = self.engine.config.subnet_routes.advertised();
        match self.engine.heartbeat() {
            Ok(()) => {
                self.heartbeat.succeeded(now);
                // The routing daemon's table moved (`--routes-from-table`): serve the new
                // prefixes (filter, NAT) now rather than at the next sync.
                if self.engine.config.subnet_routes.advertised() != routes_before {
                    self.sync.next = now;
                }
                self.reports.send(self.engine);
            }
            Err(e) if retryable(&e) => {
                let wait = self.heartbeat.failed(now);
                log::warn!("missed heartbeat: {e}; retrying in {} s", wait.as_secs());
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Between syncs, only the paths move: observe the interface and re-plan from the last
    /// list (a relay switch or a probe must not wait for the next sync).
    fn paths_if_due(&mut self, now: Instant) -> Result<(), AgentError> {
        if !self.paths.due(now) {
            return Ok(());
        }
        match self.engine.refresh_paths(&mut Sink::Run(&mut *self.runner)) {
            Ok(()) => self.paths.succeeded(now),
            Err(e) if retryable(&e) => {
                self.paths.failed(now);
                log::warn!("path update failed: {e}");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The full tunnel's quick route check (macOS, Windows); never fatal.
    fn check_routes(&mut self, now: Instant) {
        match self.engine.check_routes(&mut Sink::Run(&mut *self.runner)) {
            Ok(()) => self.routes.succeeded(now),
            Err(e) => {
                let wait = self.routes.failed(now);
                log::warn!("route check failed: {e}; retrying in {} s", wait.as_secs());
            }
        }
    }

    /// When the next job is due.
    fn next_wake(&self, watching: bool) -> Instant {
        let wake = self
            .sync
            .next
            .min(self.heartbeat.next)
            .min(self.paths.next)
            .min(self.followup.unwrap_or(self.sync.next));
        if watching {
            wake.min(self.routes.next)
        } else {
            wake
        }
    }

    /// Until `wake` (or earlier, when an answer calls for a pass): keeps one long-poll
    /// outstanding and applies its answers as they come.
    fn wait_for_changes(&mut self, wake: Instant, stop: &AtomicBool) -> Result<(), AgentError> {
        while !stop.load(Ordering::Relaxed) && Instant::now() < wake {
            let now = Instant::now();
            self.poller
                .keep_one_outstanding(self.engine.poll_point(), now);
            let keep_waiting = match self.poller.next(Duration::from_millis(50).min(wake - now)) {
                None => true,
                Some(Ok(delta)) => self.apply_live(delta)?,
                Some(Err(ClientError::UnknownPeer)) => {
                    // The server forgot us: the sync registers again.
                    self.sync.next = Instant::now();
                    false
                }
                Some(Err(e)) => {
                    self.server_lost = true;
                    let wait = self.poller.failed(Instant::now());
                    log::warn!(
                        "waiting for peer changes failed: {e}; retrying in {} s",
                        wait.as_secs()
                    );
                    true
                }
            };
            if !keep_waiting {
                break;
            }
        }
        Ok(())
    }

    /// Applies one long-poll answer. False when the wait should end at once: a follow-up
    /// pass for deferred keepalives, or a full sync after a failed update.
    fn apply_live(&mut self, delta: PeersDelta) -> Result<bool, AgentError> {
        self.poller.answered(delta.full, Instant::now());
        self.server_answered();
        if !self.engine.apply_answer(delta) {
            return Ok(true);
        }
        let peers = self.engine.known_peers();
        let now = Instant::now();
        let hold = holding(self.deferred_at, now);
        match self
            .engine
            .reconcile_live(&peers, hold, &mut Sink::Run(&mut *self.runner))
        {
            Ok(summary) => {
                // Names and devices follow the list at once, also when this pass deferred
                // keepalives (it used to wait for the next sync).
                refresh_dns(self.dns.as_deref_mut(), self.engine, &mut *self.runner);
                self.refresh_gateway();
                if summary.keepalive_deferred && self.followup.is_none() {
                    self.followup = Some(now + FOLLOW_UP);
                    self.deferred_at.get_or_insert(now);
                    return Ok(false);
                }
                log::debug!("live update: {} peers", summary.peers);
                // A probe or a check running: back to the loop, which ends it on time.
                Ok(!self.engine.needs_fast_path_ticks())
            }
            Err(e) if retryable(&e) => {
                log::warn!("applying a live update failed: {e}; a full sync follows");
                self.sync.next = Instant::now();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The server answered: if it had stopped answering, restart the relayed sessions its
    /// relay (probably restarted) forgot.
    fn server_answered(&mut self) {
        if std::mem::take(&mut self.server_lost) {
            self.engine.server_back();
        }
    }

    /// Brings the gateway's devices in line with the server (after each sync and live
    /// update); trouble there is logged and retried, never stops the mesh.
    /// When the subnet routes granted to the devices changed, the mesh interface's peers
    /// are planned again at once (their routers' AllowedIPs carry the routes).
    fn refresh_gateway(&mut self) {
        let Some(gateway) = self.gateway.as_mut() else {
            return;
        };
        match gateway.refresh(self.engine, &mut Sink::Run(&mut *self.runner)) {
            Ok(false) => {}
            Ok(true) => {
                let peers = self.engine.known_peers();
                let hold = holding(self.deferred_at, Instant::now());
                let sink = &mut Sink::Run(&mut *self.runner);
                if let Err(e) = self.engine.reconcile_live(&peers, hold, sink) {
                    log::warn!("gateway: routing devices' subnet routes: {e}; a full sync follows");
                    self.sync.next = Instant::now();
                }
            }
            Err(e) => log::warn!("gateway: {e}; retrying at the next sync"),
        }
    }

    /// Tells the server this node goes offline (unless a fatal error stopped the loop),
    /// removes what this agent set up and stops answering DNS.
    fn finish(self, result: Result<(), AgentError>) -> Result<(), AgentError> {
        if result.is_ok() {
            self.engine.go_offline();
        }
        log::info!("stopping: removing what this agent set up");
        if let Some(mut gateway) = self.gateway {
            if let Err(e) = gateway.teardown(&mut Sink::Run(&mut *self.runner)) {
                log::warn!("gateway: {e}");
            }
        }
        let teardown = self.engine.teardown(&mut Sink::Run(self.runner)).map(drop);
        if let Some(dns) = self.dns {
            dns.shutdown();
        }
        result.and(teardown)
    }
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

/// Whether `up` still sends its path report after each heartbeat: a server older than the
/// console answers 404 and is not asked again.
#[derive(Debug, Default)]
struct Reporting {
    off: bool,
}

impl Reporting {
    /// Sends the report, best effort: a failure costs nothing but this report.
    fn send(&mut self, engine: &mut Engine) {
        if self.off {
            return;
        }
        match Self::report(engine) {
            Ok(()) => {}
            Err(crate::agent::client::ClientError::Refused { status: 404, .. }) => {
                self.off = true;
                log::info!("the server takes no path reports (it predates the console)");
            }
            Err(e) => log::debug!("path report not sent: {e}"),
        }
    }

    /// Tells the server how this node reaches each peer (`POST /report`), from what
    /// `status` would show now. Never in a dry run or without a reader.
    fn report(engine: &mut Engine) -> Result<(), crate::agent::client::ClientError> {
        let (Some(assignment), Some(reader), true) = (
            engine.config.assignment.as_ref(),
            engine.reader.as_mut(),
            engine.persist,
        ) else {
            return Ok(());
        };
        let peer_id = assignment.peer_id.clone();
        let now = std::time::SystemTime::now();
        let status = crate::agent::status::collect(&engine.config_path, reader.as_mut(), now)
            .map_err(|e| crate::agent::client::ClientError::Protocol(e.to_string()))?;
        let report = crate::agent::report::from_status(peer_id, &status.peers);
        engine.client.report(&report)
    }
}
