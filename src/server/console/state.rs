//! The console's own state on a running server: the sessions, the auditor's secret,
//! whether cookies are Secure, and the samples the server page's per-minute figures come
//! from.

use super::session::Sessions;
use crate::server::trust::AdminSecret;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How far back the per-minute figures on the server page look.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One counter sample: when, registrations so far, heartbeats so far.
type Sample = (Instant, u64, u64);

/// The console of one server.
pub struct Console {
    /// The logged-in browsers.
    pub sessions: Sessions,
    /// The read-only role's secret (`auditor.secret`).
    pub auditor: AdminSecret,
    /// Served over TLS: cookies get `Secure`.
    pub secure: bool,
    /// One a second, the last [`RATE_WINDOW`].
    samples: Mutex<VecDeque<Sample>>,
}

impl Console {
    /// A console checking auditors against `auditor`; `secure` when served over TLS.
    pub fn new(auditor: AdminSecret, secure: bool) -> Console {
        Console {
            sessions: Sessions::default(),
            auditor,
            secure,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    fn samples(&self) -> MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the counters at `now`, forgetting samples older than [`RATE_WINDOW`].
    pub fn sample(&self, now: Instant, registrations: u64, heartbeats: u64) {
        let mut samples = self.samples();
        samples.push_back((now, registrations, heartbeats));
        while samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Registrations and heartbeats over the sampled window, and its length in seconds.
    pub fn per_minute(&self) -> (u64, u64, u64) {
        let samples = self.samples();
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) => (
                last.1 - first.1,
                last.2 - first.2,
                last.0.duration_since(first.0).as_secs(),
            ),
            _ => (0, 0, 0),
        }
    }
}
