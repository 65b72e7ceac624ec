//! The socket edge of [`crate::agent::decide::relay_health`]: sends STUN binding requests to the replica
//! relays in use and reads their answers, feeding the pure health state. `up` asks without
//! waiting (answers are read on the next one-second tick); a one-shot `sync` waits up to a
//! second for one round, with two retries, because it runs once a minute at best. The
//! engine's step that uses it is `Engine::watch_relays` (`agent/run/relays.rs`).

use crate::agent::decide::relay_health::RelayHealth;
use crate::proto::stun::{self, TransactionId};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a one-shot `sync` waits for a round of answers.
pub const ROUND_WAIT: Duration = Duration::from_millis(900);

/// How long an unanswered request is remembered: a later answer counts as silence.
const FORGET_AFTER: Duration = Duration::from_secs(3);

/// How often an agent with relayed peers re-reads the replica list between syncs, so a
/// replica that joins the cluster is in both ends' rendezvous within seconds of each other
/// rather than a sync interval apart.
pub const LIST_EVERY: Duration = Duration::from_secs(10);

/// The probing socket (bound on first use), the requests still unanswered, and when the
/// replica list was last read.
#[derive(Debug, Default)]
pub struct RelayProbe {
    socket: Option<UdpSocket>,
    pending: HashMap<TransactionId, (SocketAddr, Instant)>,
    /// When `GET /replicas` was last asked (see [`LIST_EVERY`]).
    pub listed_at: Option<Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RelayProbe {
    fn socket(&mut self) -> std::io::Result<&UdpSocket> {
        if self.socket.is_none() {
            let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
            socket.set_nonblocking(true)?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_ref().expect("bound above"))
    }

    fn send(&mut self, relay: SocketAddr) -> std::io::Result<()> {
        let id = TransactionId::random();
        self.socket()?.send_to(&stun::binding_request(&id), relay)?;
        // Bounded: a few requests per relay at most (one a second, forgotten after 3 s).
        let now = Instant::now();
        self.pending
            .retain(|_, (_, sent)| now.duration_since(*sent) < FORGET_AFTER);
        self.pending.insert(id, (relay, now));
        Ok(())
    }

    /// The relays with a request still unanswered.
    fn unanswered(&self) -> BTreeSet<SocketAddr> {
        self.pending.values().map(|(relay, _)| *relay).collect()
    }

    /// Reads every answer waiting on the socket (until `deadline`, or none waiting when it
    /// has passed) and reports each answering relay to `health`. Returns the relays that came
    /// back.
    fn collect(&mut self, health: &mut RelayHealth, deadline: Instant) -> Vec<SocketAddr> {
        let mut back = Vec::new();
        let Some(socket) = &self.socket else {
            return back;
        };
        let mut buf = [0u8; 1500];
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let blocking = !wait.is_zero() && !self.pending.is_empty();
            if socket.set_nonblocking(!blocking).is_err()
                || (blocking && socket.set_read_timeout(Some(wait)).is_err())
            {
                return back;
            }
            let Ok((len, _from)) = socket.recv_from(&mut buf) else {
                return back;
            };
            let Ok(answer) = stun::parse_binding_response(&buf[..len]) else {
                continue;
            };
            // Matched by the unguessable id alone: a multi-homed replica may answer from
            // another of its addresses than the one asked.
            if let Some((relay, _)) = self.pending.remove(&answer.transaction_id()) {
                // Any answer settles every request to that relay (a retry's or the first's).
                self.pending.retain(|_, (r, _)| *r != relay);
                if health.answered(relay, now_ms()) {
                    back.push(relay);
                }
            }
        }
    }
    /// One watch step over `in_use` (and the relays already down): reads answers, asks
    /// those due, and with a `wait` above zero waits that long for this round's answers
    /// (retrying twice), failing the relays that stay silent. Returns the relays that went
    /// down and those that came back.
    pub fn watch(
        &mut self,
        health: &mut RelayHealth,
        in_use: &BTreeSet<SocketAddr>,
        wait: Duration,
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut back = self.collect(health, Instant::now());
        let due = health.due(in_use, now_ms());
        for relay in &due {
            match self.send(*relay) {
                Ok(()) => health.probe_sent(*relay, now_ms()),
                Err(e) => log::debug!("cannot ask relay {relay} whether it answers: {e}"),
            }
        }
        if wait.is_zero() || due.is_empty() {
            return (health.expire(now_ms()), back);
        }
        let mut gone = Vec::new();
        let start = Instant::now();
        for retry in 1..=3u32 {
            back.extend(self.collect(health, start + wait * retry / 3));
            let unanswered = self.unanswered();
            if unanswered.is_empty() {
                break;
            }
            for relay in unanswered {
                if retry == 3 {
                    self.pending.retain(|_, (r, _)| *r != relay);
                    if health.round_failed(relay) {
                        gone.push(relay);
                    }
                } else {
                    let _ = self.send(relay);
                }
            }
        }
        (gone, back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::decide::relay_health::DOWN_AFTER;
    use crate::proto::stun::{encode_binding_success, parse_binding_request, ResponseOptions};

    /// A STUN server on loopback that answers every request until dropped, and a socket
    /// that never answers (a dead relay whose host still exists).
    fn relays() -> (SocketAddr, SocketAddr, std::thread::JoinHandle<()>) {
        let live = UdpSocket::bind("127.0.0.1:0").unwrap();
        live.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (live_addr, silent_addr) = (live.local_addr().unwrap(), silent.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let _silent = silent;
            let mut buf = [0u8; 1500];
            let mut out = [0u8; 1500];
            // Bounded: stops after 3 s without a request.
            while let Ok((len, from)) = live.recv_from(&mut buf) {
                let Ok(req) = parse_binding_request(&buf[..len]) else {
                    continue;
                };
                let n = encode_binding_success(&mut out, &req, from, &ResponseOptions::default())
                    .unwrap();
                live.send_to(&out[..n], from).unwrap();
            }
        });
        (live_addr, silent_addr, server)
    }

    #[test]
    fn a_one_shot_round_fails_the_silent_relay_and_keeps_the_live_one() {
        let (live, silent, server) = relays();
        let mut probe = RelayProbe::default();
        let mut health = RelayHealth::default();
        let in_use = BTreeSet::from([live, silent]);
        let (gone, back) = probe.watch(&mut health, &in_use, Duration::from_millis(600));
        assert_eq!(gone, vec![silent]);
        assert!(back.is_empty());
        assert!(!health.is_down(&live));
        assert!(health.is_down(&silent));
        assert!(probe.pending.is_empty(), "the round settles every request");
        drop(probe);
        server.join().unwrap();
    }

    #[test]
    fn ticks_without_waiting_fail_a_relay_silent_for_five_seconds_only() {
        let (live, silent, server) = relays();
        let mut probe = RelayProbe::default();
        let mut health = RelayHealth::default();
        let in_use = BTreeSet::from([live, silent]);
        let start = Instant::now();
        let mut went_down = None;
        // Bounded: eight one-second ticks, as `up` runs them.
        for _ in 0..8 {
            let (gone, _) = probe.watch(&mut health, &in_use, Duration::ZERO);
            assert!(!gone.contains(&live), "the live relay answers every tick");
            if gone.contains(&silent) {
                went_down.get_or_insert(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1000));
        }
        let after = went_down.expect("the silent relay went down");
        assert!(
            after >= DOWN_AFTER,
            "not before five seconds of silence: {after:?}"
        );
        assert!(
            health.relays[&live].last_answer_ms.is_some(),
            "answers were read"
        );
        assert!(!health.is_down(&live));
        drop(probe);
        server.join().unwrap();
    }
}
