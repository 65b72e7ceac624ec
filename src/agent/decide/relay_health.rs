//! Whether each replica's relay still answers (issue 11): a relayed pair meets at the replica
//! both ends pick from the same list ([`crate::proto::replicas::meeting_replica`]), and when
//! that replica dies both ends must leave it within the relay's switch time, without talking
//! to each other and without waiting for the replica to age out of `GET /replicas`.
//!
//! Every replica answers STUN on its relay port, so an agent asks each relay it sends a
//! relayed peer to for its mapped address once a second ([`PROBE_EVERY`]). A relay that has
//! not answered for [`DOWN_AFTER`] while being asked is down: it leaves the rendezvous, and
//! every pair that met there moves to its next choice. Both ends of such a pair were asking
//! the same relay, so both see it die within a probe or two of each other and move together.
//! A down relay is still asked, more slowly ([`DOWN_PROBE_EVERY`]), and comes back when it
//! answers. Relays nobody here uses are never asked: at 10,000 nodes only agents with relayed
//! peers send probes, one small datagram a second per relay in use.
//!
//! Pure state over `(relay, now)`; the socket is [`crate::agent::observe::relay_probe`]'s.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// How often a relay in use is asked.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often a relay already down is asked (to see it come back).
pub const DOWN_PROBE_EVERY: Duration = Duration::from_secs(3);
/// Silence while being asked after which a relay is down: five probes lost in a row, so a
/// lossy link or a STUN rate limit dropping a few answers does not move anyone, and well
/// inside the relay's own 15 s switch time.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);
/// A pause in asking longer than this starts a new streak (the silence before it is not
/// held against the relay: nobody was asking).
const STREAK_GAP: Duration = Duration::from_secs(4);

/// What is known of one relay. Times are milliseconds since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayState {
    /// When the current streak of probes began.
    pub asking_since_ms: u64,
    /// When the last probe went out.
    pub last_probe_ms: u64,
    /// When the relay last answered.
    pub last_answer_ms: Option<u64>,
    /// Whether the relay is down (left out of the rendezvous).
    pub down: bool,
}

/// Every probed relay's state, by address: saved in the path table so a `sync` run from a
/// timer remembers what the last one found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHealth {
    /// Each relay's state.
    pub relays: BTreeMap<SocketAddr, RelayState>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl RelayHealth {
    /// Whether `relay` is known to be down.
    pub fn is_down(&self, relay: &SocketAddr) -> bool {
        self.relays.get(relay).is_some_and(|s| s.down)
    }

    /// The relays that are down, for logs and status.
    pub fn down(&self) -> BTreeSet<SocketAddr> {
        self.relays
            .iter()
            .filter(|(_, s)| s.down)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Which relays to ask now: those `in_use` (a relayed peer sends there) and those down
    /// (to see them come back), each at its own pace.
    pub fn due(&self, in_use: &BTreeSet<SocketAddr>, now_ms: u64) -> Vec<SocketAddr> {
        let mut wanted: BTreeSet<SocketAddr> = in_use.clone();
        wanted.extend(self.down());
        wanted
            .into_iter()
            .filter(|relay| match self.relays.get(relay) {
                None => true,
                Some(s) => {
                    let every = if s.down {
                        DOWN_PROBE_EVERY
                    } else {
                        PROBE_EVERY
                    };
                    // A little early is fine: ticks are a second apart, give or take.
                    now_ms.saturating_sub(s.last_probe_ms) + 100 >= ms(every)
                }
            })
            .collect()
    }

    /// A probe went out to `relay`.
    pub fn probe_sent(&mut self, relay: SocketAddr, now_ms: u64) {
        let s = self.relays.entry(relay).or_default();
        if now_ms.saturating_sub(s.last_probe_ms) > ms(STREAK_GAP) {
            s.asking_since_ms = now_ms;
        }
        s.last_probe_ms = now_ms;
    }

    /// `relay` answered. Returns whether it was down until now.
    pub fn answered(&mut self, relay: SocketAddr, now_ms: u64) -> bool {
        let s = self.relays.entry(relay).or_default();
        s.last_answer_ms = Some(now_ms);
        std::mem::replace(&mut s.down, false)
    }

    /// A whole probe round (with its retries) went unanswered: for a one-shot `sync`, which
    /// cannot watch a streak. Returns whether the relay was up until now.
    pub fn round_failed(&mut self, relay: SocketAddr) -> bool {
        let s = self.relays.entry(relay).or_default();
        !std::mem::replace(&mut s.down, true)
    }

    /// Marks down every relay asked for [`DOWN_AFTER`] without an answer; returns those that
    /// went down now.
    pub fn expire(&mut self, now_ms: u64) -> Vec<SocketAddr> {
        let mut gone = Vec::new();
        for (relay, s) in &mut self.relays {
            let asking = now_ms.saturating_sub(s.last_probe_ms) <= ms(STREAK_GAP);
            let heard = s.last_answer_ms.unwrap_or(0).max(s.asking_since_ms);
            if asking && !s.down && now_ms.saturating_sub(heard) >= ms(DOWN_AFTER) {
                s.down = true;
                gone.push(*relay);
            }
        }
        gone
    }

    /// Forgets relays that are no longer any replica's.
    pub fn retain(&mut self, relays: &BTreeSet<SocketAddr>) {
        self.relays.retain(|r, _| relays.contains(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 3478))
    }

    /// Drives one relay through `seconds` one-second ticks, answering when `answers(t)`.
    fn run(h: &mut RelayHealth, relay: SocketAddr, from: u64, seconds: u64, answers: bool) {
        let in_use = BTreeSet::from([relay]);
        for t in from..from + seconds {
            let now = t * 1000;
            for r in h.due(&in_use, now) {
                h.probe_sent(r, now);
                if answers {
                    h.answered(r, now + 20);
                }
            }
            h.expire(now);
        }
    }

    #[test]
    fn a_relay_that_stops_answering_is_down_after_five_seconds_and_back_when_it_answers() {
        let mut h = RelayHealth::default();
        let r = addr(1);
        run(&mut h, r, 1000, 30, true);
        assert!(!h.is_down(&r));
        // It dies at t=1030: still up four seconds later, down by the sixth.
        run(&mut h, r, 1030, 5, false);
        assert!(!h.is_down(&r), "four lost probes are not a death");
        run(&mut h, r, 1035, 2, false);
        assert!(h.is_down(&r), "silence past DOWN_AFTER is");
        assert_eq!(h.down(), BTreeSet::from([r]));
        // Down relays are asked every DOWN_PROBE_EVERY, not every second.
        let asked: Vec<u64> = (1037..1046)
            .filter(|t| {
                let due = h.due(&BTreeSet::new(), t * 1000);
                if !due.is_empty() {
                    h.probe_sent(r, t * 1000);
                }
                !due.is_empty()
            })
            .collect();
        assert_eq!(asked.len(), 3, "asked at {asked:?}");
        assert!(h.answered(r, 1_046_000), "it was down and answers again");
        assert!(!h.is_down(&r));
    }

    #[test]
    fn only_relays_in_use_or_down_are_asked_and_a_pause_is_not_silence() {
        let mut h = RelayHealth::default();
        let (a, b) = (addr(1), addr(2));
        assert_eq!(h.due(&BTreeSet::from([a]), 5_000), vec![a]);
        assert!(
            h.due(&BTreeSet::new(), 5_000).is_empty(),
            "b is never asked"
        );
        run(&mut h, a, 5, 3, true);
        // Nobody asks for a minute (no relayed peer), then asks again: the minute without
        // answers was nobody asking, not the relay's silence.
        h.probe_sent(a, 70_000);
        assert!(h.expire(71_000).is_empty());
        assert!(!h.is_down(&a));
        h.retain(&BTreeSet::from([b]));
        assert!(h.relays.is_empty(), "a is no replica's any more");
    }

    #[test]
    fn a_failed_one_shot_round_marks_down_at_once() {
        let mut h = RelayHealth::default();
        assert!(h.round_failed(addr(3)), "it went down now");
        assert!(!h.round_failed(addr(3)), "and was down already");
        assert!(h.is_down(&addr(3)));
    }
}
