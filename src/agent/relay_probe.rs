//! The socket edge of [`super::relay_health`]: sends STUN binding requests to the replica
//! relays in use and reads their answers, feeding the pure health state. `up` asks without
//! waiting (answers are read on the next one-second tick); a one-shot `sync` waits up to a
//! second for one round, with two retries, because it runs once a minute at best.

use super::engine::Engine;
use super::relay_health::RelayHealth;
use crate::proto::stun::{self, TransactionId};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a one-shot `sync` waits for a round of answers.
pub const ROUND_WAIT: Duration = Duration::from_millis(900);

/// The probing socket (bound on first use) and the requests still unanswered.
#[derive(Debug, Default)]
pub struct RelayProbe {
    socket: Option<UdpSocket>,
    pending: HashMap<TransactionId, SocketAddr>,
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
        // Bounded: an unanswered request is dropped when the next one to that relay goes out.
        self.pending.retain(|_, r| *r != relay);
        self.pending.insert(id, relay);
        Ok(())
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
            if let Some(relay) = self.pending.remove(&answer.transaction_id()) {
                if health.answered(relay, now_ms()) {
                    back.push(relay);
                }
            }
        }
    }
}

impl Engine {
    /// Asks the replica relays our relayed peers use (and those down) whether they still
    /// answer, and takes the down ones out of the rendezvous ([`super::path::PathTable::relay_for`]).
    /// `wait` zero: `up`'s tick, which reads the previous tick's answers and sends; else a
    /// one-shot round that waits that long. Nothing to do with fewer than two replicas.
    pub(super) fn watch_relays(&mut self, wait: Duration) {
        let listed: BTreeSet<SocketAddr> = self.paths.relays.values().copied().collect();
        self.paths.health.retain(&listed);
        if listed.len() < 2 {
            return;
        }
        let mut back = self
            .relay_probe
            .collect(&mut self.paths.health, Instant::now());
        let in_use = self.paths.relays_in_use();
        let due = self.paths.health.due(&in_use, now_ms());
        for relay in &due {
            match self.relay_probe.send(*relay) {
                Ok(()) => self.paths.health.probe_sent(*relay, now_ms()),
                Err(e) => log::debug!("cannot ask relay {relay} whether it answers: {e}"),
            }
        }
        let mut gone = Vec::new();
        if !wait.is_zero() && !due.is_empty() {
            let start = Instant::now();
            for retry in 1..=3u32 {
                back.extend(
                    self.relay_probe
                        .collect(&mut self.paths.health, start + wait * retry / 3),
                );
                let unanswered: Vec<SocketAddr> =
                    self.relay_probe.pending.values().copied().collect();
                if unanswered.is_empty() {
                    break;
                }
                for relay in unanswered {
                    if retry == 3 {
                        self.relay_probe.pending.retain(|_, r| *r != relay);
                        if self.paths.health.round_failed(relay) {
                            gone.push(relay);
                        }
                    } else {
                        let _ = self.relay_probe.send(relay);
                    }
                }
            }
        } else {
            gone = self.paths.health.expire(now_ms());
        }
        for relay in gone {
            log::warn!(
                "the relay at {relay} stopped answering: relayed pairs that met there move to \
                 another replica's relay"
            );
        }
        for relay in back {
            log::info!("the relay at {relay} answers again: it rejoins the rendezvous");
        }
    }
}
