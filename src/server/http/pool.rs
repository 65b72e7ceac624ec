//! An elastic pool of worker threads for connections that have something to do.
//!
//! Why elastic rather than fixed: a worker reads the rest of a request with blocking reads
//! (bounded by the request timeout), so a few slow clients must not hold up everyone else.
//! When every worker is busy a new one starts, up to `max`: freely up to `core` workers,
//! past that at most one per [`SPAWN_GAP`] while jobs keep waiting (a worker that takes a
//! job and still sees a backlog starts the next one), so a burst of quick jobs (one notify
//! resuming 10,000 long-polls) is absorbed by a few dozen threads, not thousands, while
//! clients that block their workers still get fresh ones within milliseconds. Workers idle
//! for [`IDLE_EXIT`] exit, so a server at rest keeps none. Queued jobs are counted against
//! waiting workers, so a burst cannot strand a job the way tiny_http's pool did (spawn
//! racing with workers about to go idle).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a worker waits for work before it exits.
pub(super) const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Past `core` workers, the least time between two new ones.
pub(super) const SPAWN_GAP: Duration = Duration::from_millis(1);

/// Stack size of workers: they parse small requests and run handlers, so 256 KiB is plenty.
const WORKER_STACK: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers blocked waiting for a job.
    idle: usize,
    /// Workers alive (including those starting).
    total: usize,
    /// Workers started but not yet looking for a job.
    starting: usize,
    /// When the last worker past `core` was due to start.
    last_spawn: Option<Instant>,
    /// A worker past `core` is waiting for its turn to start (at most one at a time).
    helper_pending: bool,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    more: Condvar,
    core: usize,
    max: usize,
}

/// The pool; cloning shares it.
#[derive(Clone)]
pub(super) struct Pool(Arc<Shared>);

impl Pool {
    /// A pool of at most `max` workers (at least one), started freely up to `core`.
    pub(super) fn new(core: usize, max: usize) -> Pool {
        Pool(Arc::new(Shared {
            state: Mutex::new(State::default()),
            more: Condvar::new(),
            core: core.max(1),
            max: max.max(1),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new worker should start, and after how long (`Some((delay, paced))`): jobs outnumber waiting and
    /// starting workers, and either the pool is below `core` (start now) or no paced start
    /// is pending (start [`SPAWN_GAP`] after the previous one). Counts it.
    fn claim_spawn(&self, state: &mut State) -> Option<(Duration, bool)> {
        if state.jobs.len() <= state.idle + state.starting || state.total >= self.0.max {
            return None;
        }
        let paced = state.total >= self.0.core;
        let delay = if !paced {
            Duration::ZERO
        } else if state.helper_pending {
            return None;
        } else {
            let now = Instant::now();
            let due = state.last_spawn.map_or(now, |t| (t + SPAWN_GAP).max(now));
            state.last_spawn = Some(due);
            state.helper_pending = true;
            due - now
        };
        state.total += 1;
        state.starting += 1;
        Some((delay, paced))
    }

    fn spawn(&self, (delay, paced): (Duration, bool)) {
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("http-worker".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                std::thread::sleep(delay);
                pool.work(paced);
            });
        if let Err(e) = spawned {
            log::error!("cannot start an HTTP worker thread: {e}");
            let mut state = self.lock();
            state.total -= 1;
            state.starting -= 1;
            state.helper_pending &= !paced;
        }
    }

    /// Runs `job` on a worker, starting one if every worker is busy.
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.lock();
        if state.stopping {
            return;
        }
        state.jobs.push_back(Box::new(job));
        if let Some(start) = self.claim_spawn(&mut state) {
            drop(state);
            self.spawn(start);
        } else {
            drop(state);
            self.0.more.notify_one();
        }
    }

    fn work(&self, paced: bool) {
        let mut state = self.lock();
        state.starting -= 1;
        state.helper_pending &= !paced;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                // Still a backlog behind this job: start a helper (paced past `core`).
                let helper = self.claim_spawn(&mut state);
                drop(state);
                if let Some(start) = helper {
                    self.spawn(start);
                }
                job();
                state = self.lock();
                continue;
            }
            if state.stopping {
                break;
            }
            state.idle += 1;
            let (guard, timeout) = self
                .0
                .more
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            state = guard;
            state.idle -= 1;
            if timeout.timed_out() && state.jobs.is_empty() {
                break;
            }
        }
        state.total -= 1;
    }

    /// Workers alive right now (for tests and figures).
    pub(super) fn threads(&self) -> usize {
        self.lock().total
    }

    /// Drops queued jobs and lets workers exit once their current job is done.
    pub(super) fn stop(&self) {
        let jobs = {
            let mut state = self.lock();
            state.stopping = true;
            std::mem::take(&mut state.jobs)
        };
        drop(jobs);
        self.0.more.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_blocked_worker_never_delays_the_next_job_and_idle_workers_exit() {
        let pool = Pool::new(8, 64);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // Two jobs that block until released.
        for _ in 0..2 {
            let rx = release_rx.clone();
            pool.submit(move || {
                let _ = rx.lock().unwrap().recv();
            });
        }
        let (done_tx, done_rx) = mpsc::channel();
        pool.submit(move || done_tx.send(()).unwrap());
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("third job ran while two workers were blocked");
        assert_eq!(pool.threads(), 3);
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        let start = Instant::now();
        while pool.threads() > 0 {
            assert!(start.elapsed() < IDLE_EXIT * 4, "idle workers never exited");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn a_burst_of_quick_jobs_needs_few_threads_and_blocked_ones_still_get_help() {
        let pool = Pool::new(4, 10_000);
        let (tx, rx) = mpsc::channel();
        for _ in 0..10_000 {
            let tx = tx.clone();
            pool.submit(move || tx.send(()).unwrap());
        }
        for _ in 0..10_000 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(
            pool.threads() < 200,
            "{} threads for quick jobs",
            pool.threads()
        );
        // Past `core`, jobs blocked for a while still get fresh workers, paced.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let started = Instant::now();
        for _ in 0..pool.threads() + 20 {
            let rx = release_rx.clone();
            pool.submit(move || {
                let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
            });
        }
        let (done_tx, done_rx) = mpsc::channel();
        pool.submit(move || done_tx.send(()).unwrap());
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a job behind blocked workers still ran");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(release_tx);
    }
}
