//! An elastic pool of worker threads for connections that have something to do.
//!
//! Why elastic rather than fixed: a worker reads the rest of a request with blocking reads
//! (bounded by the request timeout), so a few slow clients must not hold up everyone else.
//! A job never waits behind busy workers: when every worker is busy a new one starts, up to
//! `max`; workers that stay idle for [`IDLE_EXIT`] exit, so a server at rest keeps none.
//! Queued jobs are counted against waiting workers, so a burst cannot strand a job the way
//! tiny_http's pool did (spawn racing with workers about to go idle).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a worker waits for work before it exits.
pub(super) const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Stack size of workers: they parse small requests and run handlers, so 256 KiB is plenty.
const WORKER_STACK: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers blocked waiting for a job.
    idle: usize,
    /// Workers alive.
    total: usize,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    more: Condvar,
    max: usize,
}

/// The pool; cloning shares it.
#[derive(Clone)]
pub(super) struct Pool(Arc<Shared>);

impl Pool {
    /// A pool of at most `max` workers (at least one).
    pub(super) fn new(max: usize) -> Pool {
        Pool(Arc::new(Shared {
            state: Mutex::new(State::default()),
            more: Condvar::new(),
            max: max.max(1),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` on a worker, starting one if every worker is busy.
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.lock();
        if state.stopping {
            return;
        }
        state.jobs.push_back(Box::new(job));
        if state.jobs.len() > state.idle && state.total < self.0.max {
            state.total += 1;
            drop(state);
            let pool = self.clone();
            let spawned = std::thread::Builder::new()
                .name("http-worker".into())
                .stack_size(WORKER_STACK)
                .spawn(move || pool.work());
            if let Err(e) = spawned {
                log::error!("cannot start an HTTP worker thread: {e}");
                self.lock().total -= 1;
            }
        } else {
            drop(state);
            self.0.more.notify_one();
        }
    }

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
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
    use std::time::Instant;

    #[test]
    fn a_blocked_worker_never_delays_the_next_job_and_idle_workers_exit() {
        let pool = Pool::new(8);
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
}
