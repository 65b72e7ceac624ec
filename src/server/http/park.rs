//! Long-polls without a thread each: a handler may answer a request later by returning a
//! [`Park`]; the connection then waits in the readiness loop (no thread) until the
//! [`Notifier`] it was parked on changes or its deadline passes, and a worker runs the
//! resume closure to produce the answer.
//!
//! No lost wake-up: the handler reads [`Notifier::version`] *before* it looks at the state it
//! decides on and passes it as `seen`; if the notifier has moved past `seen` by the time the
//! layer parks the request, it is resumed at once.

use super::message::Response;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// What a handler answers: a response now, or a request held open until something changes.
pub enum Reply {
    /// Answer at once.
    Now(Response),
    /// Hold the request (a long-poll) and answer when resumed.
    Park(Park),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Now(response)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(&r.status).finish(),
            Reply::Park(p) => f.debug_tuple("Park").field(p).finish(),
        }
    }
}

/// Why a parked request is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The notifier it was parked on moved past the version it saw.
    Changed,
    /// Its deadline passed first.
    Deadline,
}

type Resume = Box<dyn FnOnce(Wake) -> Reply + Send>;

/// A request held open, without a thread, until its notifier changes or its deadline passes.
pub struct Park {
    pub(super) notifier: Notifier,
    pub(super) seen: u64,
    pub(super) deadline: Instant,
    pub(super) resume: Resume,
}

impl Park {
    /// Parks a request on `notifier`. `seen` is `notifier.version()` read before the handler
    /// looked at its state; `resume` runs later on a worker thread (inside a handler slot)
    /// and returns the answer, or another `Park` when the change did not concern this caller.
    /// Dropped without being called if the client goes away or the server stops.
    pub fn new(
        notifier: &Notifier,
        seen: u64,
        deadline: Instant,
        resume: impl FnOnce(Wake) -> Reply + Send + 'static,
    ) -> Park {
        Park {
            notifier: notifier.clone(),
            seen,
            deadline,
            resume: Box::new(resume),
        }
    }

    /// Whether the notifier moved past what the handler saw.
    pub(super) fn changed(&self) -> bool {
        self.notifier.version() > self.seen
    }
}

impl fmt::Debug for Park {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Park")
            .field("seen", &self.seen)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Something to call when a notifier moves: the readiness loop's wake-up.
pub(super) type Subscriber = dyn Fn() + Send + Sync;

#[derive(Default)]
struct NotifierInner {
    version: AtomicU64,
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
}

/// Wakes parked requests when what they wait on changes. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Notifier(Arc<NotifierInner>);

impl Notifier {
    /// A notifier at version 0 that no request waits on yet.
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// Grows by one on every [`Notifier::notify`]. Read it before reading your state.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::SeqCst)
    }

    /// Call after every committed change: every request parked here with an older `seen` is
    /// resumed with [`Wake::Changed`] right away. Several notifies in a row may resume a
    /// request once, with the newest state.
    pub fn notify(&self) {
        self.0.version.fetch_add(1, Ordering::SeqCst);
        let live: Vec<Arc<Subscriber>> = {
            let mut subs = self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for wake in live {
            wake();
        }
    }

    /// Registers a readiness loop to be woken by [`Notifier::notify`] (once per loop).
    pub(super) fn subscribe(&self, subscriber: &Arc<Subscriber>) {
        let weak = Arc::downgrade(subscriber);
        let mut subs = self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if !subs.iter().any(|w| Weak::ptr_eq(w, &weak)) {
            subs.push(weak);
        }
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("version", &self.version())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn notify_bumps_the_version_and_wakes_each_live_subscriber_once() {
        let notifier = Notifier::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let sub: Arc<Subscriber> = {
            let hits = hits.clone();
            Arc::new(move || {
                hits.fetch_add(1, Ordering::SeqCst);
            })
        };
        notifier.subscribe(&sub);
        notifier.subscribe(&sub);
        let park = Park::new(&notifier, notifier.version(), Instant::now(), |_| {
            Reply::Now(Response::json(200, b"{}".to_vec()))
        });
        assert!(!park.changed());
        notifier.notify();
        assert!(park.changed());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        drop(sub);
        notifier.notify();
        assert_eq!(notifier.version(), 2);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
