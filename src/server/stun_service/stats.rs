//! The STUN responder's counters: relaxed atomics bumped by every worker thread, a plain
//! snapshot for tests, logs and status pages, and their Prometheus text for `/metrics`.

use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by all worker threads. Relaxed atomics: each is an independent tally read
/// only for metrics, so no ordering between them is needed.
#[derive(Debug, Default)]
pub struct StunStats {
    pub(super) answered: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) send_errors: AtomicU64,
    pub(super) recv_errors: AtomicU64,
}

/// A plain copy of [`StunStats`] at one moment, for tests, logs and JSON status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StunCounters {
    /// Binding Requests answered with a success response.
    pub answered: u64,
    /// Binding Requests answered with an error response (420: CHANGE-REQUEST or another
    /// attribute we do not support).
    pub refused: u64,
    /// Datagrams dropped because they were not a well-formed STUN message (or were too big).
    pub malformed: u64,
    /// Well-formed STUN messages dropped because they are not Binding Requests (indications,
    /// responses, other methods): RFC 8489 gives them no answer.
    pub ignored: u64,
    /// Binding Requests dropped because their source was over its rate limit.
    pub rate_limited: u64,
    /// Rate-limit table entries replaced by a new source because the table was full.
    pub rate_limit_evictions: u64,
    /// Answers the kernel refused to send.
    pub send_errors: u64,
    /// Receive errors other than the shutdown poll's timeouts.
    pub recv_errors: u64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl StunStats {
    /// Reads every counter once.
    pub fn snapshot(&self) -> StunCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StunCounters {
            answered: get(&self.answered),
            refused: get(&self.refused),
            malformed: get(&self.malformed),
            ignored: get(&self.ignored),
            rate_limited: get(&self.rate_limited),
            rate_limit_evictions: get(&self.evictions),
            send_errors: get(&self.send_errors),
            recv_errors: get(&self.recv_errors),
        }
    }

    /// Appends the counters to `out` in Prometheus text exposition format, so the server's
    /// `/metrics` page can concatenate every subsystem into one buffer.
    pub fn render_prometheus(&self, out: &mut String) {
        self.snapshot().render_prometheus(out);
    }
}

impl StunCounters {
    /// Adds another service's counters, so a server listening on two STUN ports (for the
    /// mapping-behaviour check) exports one set of metrics.
    pub fn merge(mut self, other: StunCounters) -> StunCounters {
        self.answered += other.answered;
        self.refused += other.refused;
        self.malformed += other.malformed;
        self.ignored += other.ignored;
        self.rate_limited += other.rate_limited;
        self.rate_limit_evictions += other.rate_limit_evictions;
        self.send_errors += other.send_errors;
        self.recv_errors += other.recv_errors;
        self
    }

    /// Appends these counters to `out` in Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let c = self;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP wgmesh_stun_responses_total STUN Binding responses sent, by outcome.\n\
             # TYPE wgmesh_stun_responses_total counter\n\
             wgmesh_stun_responses_total{{result=\"success\"}} {}\n\
             wgmesh_stun_responses_total{{result=\"error\"}} {}\n\
             # HELP wgmesh_stun_dropped_total Datagrams received on the STUN port and not answered, by reason.\n\
             # TYPE wgmesh_stun_dropped_total counter\n\
             wgmesh_stun_dropped_total{{reason=\"malformed\"}} {}\n\
             wgmesh_stun_dropped_total{{reason=\"not_binding_request\"}} {}\n\
             wgmesh_stun_dropped_total{{reason=\"rate_limited\"}} {}\n\
             # HELP wgmesh_stun_rate_limit_evictions_total Sources forgotten by the full per-source rate-limit table.\n\
             # TYPE wgmesh_stun_rate_limit_evictions_total counter\n\
             wgmesh_stun_rate_limit_evictions_total {}\n\
             # HELP wgmesh_stun_socket_errors_total STUN socket errors, by direction.\n\
             # TYPE wgmesh_stun_socket_errors_total counter\n\
             wgmesh_stun_socket_errors_total{{op=\"send\"}} {}\n\
             wgmesh_stun_socket_errors_total{{op=\"recv\"}} {}\n",
            c.answered,
            c.refused,
            c.malformed,
            c.ignored,
            c.rate_limited,
            c.rate_limit_evictions,
            c.send_errors,
            c.recv_errors,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_counter() {
        let stats = StunStats::default();
        bump(&stats.answered);
        bump(&stats.rate_limited);
        bump(&stats.rate_limited);
        let mut out = String::from("# earlier metrics\n");
        stats.render_prometheus(&mut out);
        assert!(out.starts_with("# earlier metrics\n"));
        assert!(out.contains("\nwgmesh_stun_responses_total{result=\"success\"} 1\n"));
        assert!(out.contains("\nwgmesh_stun_dropped_total{reason=\"rate_limited\"} 2\n"));
        assert!(out.contains("\nwgmesh_stun_dropped_total{reason=\"malformed\"} 0\n"));
        for line in out.lines().skip(1) {
            assert!(
                line.starts_with("# HELP wgmesh_stun_")
                    || line.starts_with("# TYPE wgmesh_stun_")
                    || line.starts_with("wgmesh_stun_"),
                "{line}"
            );
        }
        assert!(out.ends_with('\n'));
    }
}
