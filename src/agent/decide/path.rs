//! Direct or relayed: the agent's choice of where WireGuard sends each peer's packets, as a
//! pure state machine fed by `wg show dump` (latest handshake, bytes received, the endpoint
//! WireGuard uses now) and the peer's published endpoint.
//!
//! - Direct first. A direct attempt that shows no sign of life (no new handshake, nothing
//!   received) within `relay_after` (15 s: WireGuard retries its handshake every 5 s), or a
//!   direct path whose handshake goes stale (180 s: WireGuard's keys are dead by then, and a
//!   healthy session rekeys every 2 minutes), moves the peer to the relay.
//! - Relayed peers probe the direct path for a short window: at the same wall-clock moments on
//!   both ends (every `probe_interval`, offset by a hash of the pair's two keys), because a
//!   path through two NATs opens only when both ends send at once; and at once when the
//!   peer's published endpoint changes. During a probe the endpoint is the direct one and the
//!   keepalive is 1 s, so the probe carries packets even on an idle tunnel. It succeeds when
//!   bytes arrive while WireGuard still points at the direct address (a packet from the relay
//!   would have moved it back: WireGuard follows the source of every authenticated packet).
//! - WireGuard's own roaming is evidence too, and never fought while it works: a direct peer
//!   whose packets start arriving through the relay (the other end chose the relay) is
//!   relayed; a relayed peer whose packets start arriving from a direct address (the other end
//!   probed and got through) is direct.
//!
//! Both ends decide alone and reach the same answer, because a handshake fails (or works) for
//! both at once, probes happen at the same moments, and each follows the other's packets.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keepalive while a probe runs: a packet every second, so the probe window sees traffic.
pub const PROBE_KEEPALIVE: u16 = 1;

/// A relayed peer silent this long (more than one 25 s keepalive) is nudged.
pub const NUDGE_AFTER: Duration = Duration::from_secs(35);
/// How long a nudge lasts: five 1-second keepalives, 160 bytes, pay for one handshake
/// initiation (148 bytes) forwarded to us by the relay.
pub const NUDGE_LENGTH: Duration = Duration::from_secs(5);
/// At most one nudge per this interval per peer.
pub const NUDGE_EVERY: Duration = Duration::from_secs(60);

/// WireGuard's REJECT_AFTER_TIME: a handshake older than this means no usable session.
pub const HANDSHAKE_STALE: Duration = Duration::from_secs(180);

/// How the path choice is tuned (`wgmesh up --relay-after`, `--direct-probe-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSettings {
    /// Silence on a direct attempt before moving to the relay.
    pub relay_after: Duration,
    /// Time between probes of the direct path of a relayed peer.
    pub probe_interval: Duration,
    /// How long one probe lasts.
    pub probe_window: Duration,
    /// The keepalive outside probes.
    pub keepalive: u16,
}

impl Default for PathSettings {
    fn default() -> Self {
        PathSettings {
            relay_after: Duration::from_secs(15),
            probe_interval: Duration::from_secs(300),
            probe_window: Duration::from_secs(5),
            keepalive: crate::agent::decide::desired::PERSISTENT_KEEPALIVE,
        }
    }
}

/// The path a peer's packets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Straight to the peer's (published or roamed) endpoint.
    Direct,
    /// Through the coordination server's relay.
    Relay,
}

/// What one peer's path state is, kept between ticks (and saved, so `sync` from a timer
/// and a restarted `up` continue where they were). Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The current path.
    pub mode: Mode,
    /// When the current mode (or direct attempt) began.
    pub since_ms: u64,
    /// Bytes received from the peer when the current mode began.
    pub rx_mark: u64,
    /// Bytes received at the last tick.
    pub last_rx: u64,
    /// The published endpoint at the last tick (a change means a new direct attempt).
    pub published: Option<SocketAddr>,
    /// A probe of the direct path in progress, until this time.
    #[serde(default)]
    pub probe_until_ms: Option<u64>,
    /// Bytes received when the probe began.
    #[serde(default)]
    pub probe_rx: u64,
    /// The last probe slot used (probes happen once per slot).
    #[serde(default)]
    pub probe_slot: u64,
    /// When bytes last arrived from the peer while relayed.
    #[serde(default)]
    pub rx_changed_ms: u64,
    /// A nudge (keepalive every second) in progress, until this time.
    #[serde(default)]
    pub nudge_until_ms: Option<u64>,
    /// When the last nudge began.
    #[serde(default)]
    pub nudged_ms: u64,
    /// While relayed: the relay this pair meets at, so a move to another replica's relay
    /// (the old one died) is seen and the session restarted there.
    #[serde(default)]
    pub relay: Option<SocketAddr>,
}

/// What `wg show dump` says about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Where WireGuard sends to now.
    pub endpoint: Option<SocketAddr>,
    /// The latest completed handshake.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received from the peer so far.
    pub rx_bytes: u64,
}

/// What to configure for a peer after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The endpoint to set; None leaves WireGuard's (unknown, or roamed and working).
    pub endpoint: Option<SocketAddr>,
    /// The persistent keepalive to set.
    pub keepalive: u16,
    /// The path this amounts to.
    pub mode: Mode,
    /// The pair's relay moved to another replica's: drop the WireGuard session so the next
    /// packet starts a handshake through the new relay at once, which binds the pair there
    /// (the new relay knows neither the old session's indexes nor the peer's address).
    pub restart: bool,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A number both ends of a pair compute alike, spreading probes of different pairs over the
/// interval: from the two public keys in sorted order.
pub fn pair_offset(a: &crate::keys::PublicKey, b: &crate::keys::PublicKey) -> u64 {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let digest = Sha256::new()
        .chain_update(lo.as_bytes())
        .chain_update(hi.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// One tick for one peer: the new state and what to configure.
///
/// `relay` is the relay's address (None: no relay, always direct); `offset` is the pair's
/// [`pair_offset`].
pub fn step(
    state: Option<&PeerPath>,
    now: SystemTime,
    published: Option<SocketAddr>,
    relay: Option<SocketAddr>,
    seen: &Observed,
    offset: u64,
    settings: &PathSettings,
) -> (PeerPath, Choice) {
    let now_ms = ms(now);
    let fresh = |since_ms: u64| {
        seen.latest_handshake
            .is_some_and(|h| ms(h) >= since_ms.saturating_sub(1000))
    };
    let connected = seen
        .latest_handshake
        .is_some_and(|h| now.duration_since(h).unwrap_or_default() < HANDSHAKE_STALE);
    let direct_attempt = |at: u64| PeerPath {
        mode: Mode::Direct,
        since_ms: at,
        rx_mark: seen.rx_bytes,
        last_rx: seen.rx_bytes,
        published,
        probe_until_ms: None,
        probe_rx: 0,
        probe_slot: state.map_or(0, |s| s.probe_slot),
        rx_changed_ms: at,
        nudge_until_ms: None,
        nudged_ms: 0,
        relay: None,
    };
    let mut st = match state {
        Some(s) => s.clone(),
        None => direct_attempt(now_ms),
    };
    let Some(relay) = relay else {
        let st = direct_attempt(st.since_ms);
        return (
            st,
            Choice {
                endpoint: published,
                keepalive: settings.keepalive,
                mode: Mode::Direct,
                restart: false,
            },
        );
    };
    let received = seen.rx_bytes > st.last_rx;
    let via_relay = seen.endpoint == Some(relay);
    let via_direct = seen.endpoint.is_some() && !via_relay;
    let slot = (now_ms / 1000).wrapping_add(offset % settings.probe_interval.as_secs().max(1))
        / settings.probe_interval.as_secs().max(1);
    let moved = st.published != published && published.is_some();
    st.published = published;
    let relay_after = settings.relay_after.as_millis() as u64;
    match st.mode {
        Mode::Direct => {
            if moved {
                st = direct_attempt(now_ms);
            } else if via_relay && received {
                // The other end chose the relay and its packets now come from there.
                st = relayed(now_ms, seen.rx_bytes, slot, published);
            } else {
                let alive = fresh(st.since_ms) || seen.rx_bytes > st.rx_mark;
                let waited = now_ms.saturating_sub(st.since_ms);
                let failed = if alive {
                    !connected && waited >= HANDSHAKE_STALE.as_millis() as u64
                } else {
                    waited >= relay_after
                };
                if failed {
                    st = relayed(now_ms, seen.rx_bytes, slot, published);
                }
            }
        }
        Mode::Relay => {
            if let Some(until) = st.probe_until_ms {
                if via_direct && seen.rx_bytes > st.probe_rx {
                    st = direct_attempt(now_ms);
                } else if now_ms >= until {
                    st.probe_until_ms = None;
                }
            } else if via_direct && received {
                // The other end probed, and its packets got through directly.
                st = direct_attempt(now_ms);
            } else if published.is_some() && (moved || slot != st.probe_slot) {
                st.probe_until_ms = Some(now_ms + settings.probe_window.as_millis() as u64);
                st.probe_rx = seen.rx_bytes;
                st.probe_slot = slot;
            }
            // Silence through the relay (a healthy peer sends at least a keepalive every
            // 25 s): maybe the relay restarted and forgot us. A few quick keepalives earn the
            // credit it needs to pass the peer's next handshake to us.
            if received {
                st.rx_changed_ms = now_ms;
            }
            if st.nudge_until_ms.is_some_and(|until| now_ms >= until) {
                st.nudge_until_ms = None;
            }
            let quiet = now_ms.saturating_sub(st.rx_changed_ms.max(st.since_ms));
            if st.nudge_until_ms.is_none()
                && quiet >= NUDGE_AFTER.as_millis() as u64
                && now_ms.saturating_sub(st.nudged_ms) >= NUDGE_EVERY.as_millis() as u64
            {
                st.nudge_until_ms = Some(now_ms + NUDGE_LENGTH.as_millis() as u64);
                st.nudged_ms = now_ms;
            }
        }
    }
    st.last_rx = seen.rx_bytes;
    let choice = match (st.mode, st.probe_until_ms) {
        (Mode::Relay, None) => Choice {
            endpoint: Some(relay),
            keepalive: if st.nudge_until_ms.is_some() {
                PROBE_KEEPALIVE
            } else {
                settings.keepalive
            },
            mode: Mode::Relay,
            restart: false,
        },
        (Mode::Relay, Some(_)) => Choice {
            endpoint: published,
            keepalive: PROBE_KEEPALIVE,
            mode: Mode::Relay,
            restart: false,
        },
        (Mode::Direct, _) => Choice {
            // A working path WireGuard roamed to (a NAT that moved the peer's port) is kept.
            endpoint: if connected && via_direct {
                None
            } else {
                published
            },
            keepalive: settings.keepalive,
            mode: Mode::Direct,
            restart: false,
        },
    };
    (st, choice)
}

/// Every peer's path state, and the relay's address: what the agent keeps between ticks,
/// saved beside the config (`client.paths.json`) for `sync` runs and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTable {
    /// Where the server relays WireGuard (its host, the port `/peers` names); None: no relay.
    pub relay: Option<SocketAddr>,
    /// With replicas (issue 11): each live replica's relay, by the URL `GET /replicas` names
    /// it by. A pair meets at [`crate::proto::replicas::meeting_replica`]'s choice, so both
    /// ends send to the same relay without talking; empty: every pair uses `relay`.
    #[serde(default)]
    pub relays: std::collections::BTreeMap<String, SocketAddr>,
    /// Which replica relays still answer ([`crate::agent::decide::relay_health`]): a down one leaves the
    /// rendezvous, so the pairs that met there move within the relay's switch time.
    #[serde(default)]
    pub health: crate::agent::decide::relay_health::RelayHealth,
    /// Each listed peer's state, by base64 public key.
    pub peers: std::collections::BTreeMap<String, PeerPath>,
}

/// The parts of a [`PathTable`] that make a change of path: the relay, and per peer (by key)
/// its mode, whether a probe or a nudge runs and which relay it meets at; and the relays
/// that are down.
pub type Material<'a> = (
    Option<SocketAddr>,
    &'a std::collections::BTreeMap<String, SocketAddr>,
    std::collections::BTreeSet<SocketAddr>,
    Vec<(&'a str, Mode, bool, bool, Option<SocketAddr>)>,
);

/// Where the path table of the config at `config_path` is kept.
pub fn table_path(config_path: &std::path::Path) -> std::path::PathBuf {
    config_path.with_extension("paths.json")
}

impl PathTable {
    /// What a change of path is made of (not the byte counters, which move all the time):
    /// compared to decide whether the table is worth saving.
    pub fn material(&self) -> Material<'_> {
        (
            self.relay,
            &self.relays,
            self.health.down(),
            self.peers
                .iter()
                .map(|(k, p)| {
                    (
                        k.as_str(),
                        p.mode,
                        p.probe_until_ms.is_some(),
                        p.nudge_until_ms.is_some(),
                        p.relay,
                    )
                })
                .collect(),
        )
    }

    /// The relay the pair `me`-`peer` meets at: the replica both ends pick from the same
    /// list (see [`PathTable::relays`]), else the server's own relay.
    pub fn relay_for(
        &self,
        me: &crate::keys::PublicKey,
        peer: &crate::keys::PublicKey,
    ) -> Option<SocketAddr> {
        self.relay_among(&self.rendezvous(), me, peer)
    }

    /// The replicas a pair may meet at: those whose relay answers, or all of them when
    /// none does (there is no better choice). Computed once per tick, not per peer.
    fn rendezvous(&self) -> Vec<String> {
        let live: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, addr)| !self.health.is_down(addr))
            .map(|(url, _)| url.clone())
            .collect();
        if live.is_empty() {
            self.relays.keys().cloned().collect()
        } else {
            live
        }
    }

    /// [`PathTable::relay_for`] over the replicas `urls` ([`PathTable::rendezvous`]).
    fn relay_among(
        &self,
        urls: &[String],
        me: &crate::keys::PublicKey,
        peer: &crate::keys::PublicKey,
    ) -> Option<SocketAddr> {
        match crate::proto::replicas::meeting_replica(me, peer, urls) {
            Some(url) => self.relays.get(url).copied(),
            None => self.relay,
        }
    }

    /// The replica relays some relayed peer meets at now: the ones worth watching.
    pub fn relays_in_use(&self) -> std::collections::BTreeSet<SocketAddr> {
        self.peers
            .values()
            .filter(|p| p.mode == Mode::Relay)
            .filter_map(|p| p.relay)
            .collect()
    }

    /// Whether `endpoint` is a relay's (the server's or a replica's): for `status`.
    pub fn is_relay(&self, endpoint: Option<SocketAddr>) -> bool {
        endpoint.is_some()
            && (endpoint == self.relay || self.relays.values().any(|r| Some(*r) == endpoint))
    }

    /// The saved table (empty if none or unreadable: it is only state to resume from).
    pub fn load(config_path: &std::path::Path) -> PathTable {
        std::fs::read(table_path(config_path))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Saves the table atomically (0600, like the config); a failure is only logged.
    pub fn save(&self, config_path: &std::path::Path) {
        let bytes = serde_json::to_vec_pretty(self).expect("path tables serialize");
        if let Err(e) = crate::fsutil::write_atomic(&table_path(config_path), &bytes, 0o600) {
            log::warn!("cannot save the path table: {e}");
        }
    }

    /// One tick for every listed peer, from the interface's dump; forgets peers no longer
    /// listed, logs every change of path, and returns what to configure per peer.
    pub fn step_all(
        &mut self,
        now: SystemTime,
        me: &crate::keys::PublicKey,
        peers: &[crate::proto::model::PeerInfo],
        dump: Option<&crate::os::wgdump::Dump>,
        settings: &PathSettings,
    ) -> std::collections::HashMap<crate::keys::PublicKey, Choice> {
        let mut choices = std::collections::HashMap::new();
        let mut next = std::collections::BTreeMap::new();
        let rendezvous = self.rendezvous();
        for peer in peers {
            let key = peer.public_key.to_base64();
            let seen = dump
                .and_then(|d| d.peers.iter().find(|p| p.public_key == peer.public_key))
                .map(|p| Observed {
                    endpoint: p.endpoint,
                    latest_handshake: p.latest_handshake,
                    rx_bytes: p.transfer_rx,
                })
                .unwrap_or_default();
            let old = self.peers.get(&key);
            let relay = self.relay_among(&rendezvous, me, &peer.public_key);
            // Packets through another relay (the pair's old meeting place, or the one the
            // other end still uses while the replica list reaches it) are relayed packets,
            // never a sign that a direct path works.
            let seen = Observed {
                endpoint: match seen.endpoint {
                    e if e != relay && self.is_relay(e) => relay,
                    e => e,
                },
                ..seen
            };
            let (mut state, mut choice) = step(
                old,
                now,
                peer.endpoint.map(|e| e.0),
                relay,
                &seen,
                pair_offset(me, &peer.public_key),
                settings,
            );
            if state.mode == Mode::Relay {
                let before = old.filter(|o| o.mode == Mode::Relay).and_then(|o| o.relay);
                if let (Some(was), Some(now)) = (before, relay) {
                    if was != now {
                        log::info!(
                            "peer {} ({}): its relay moves from {was} to {now}",
                            peer.hostname,
                            peer.virtual_ip,
                        );
                        choice.restart = true;
                    }
                }
                state.relay = relay;
            }
            let was = old.map(|o| (o.mode, o.probe_until_ms.is_some()));
            let is = (state.mode, state.probe_until_ms.is_some());
            if was != Some(is) && (was.is_some() || state.mode != Mode::Direct) {
                log::info!(
                    "peer {} ({}): {}",
                    peer.hostname,
                    peer.virtual_ip,
                    match is {
                        (Mode::Direct, _) => "direct path".to_owned(),
                        (Mode::Relay, true) => "probing the direct path".to_owned(),
                        (Mode::Relay, false) => match relay {
                            Some(r) => format!("through the relay at {r}"),
                            None => "through the relay".to_owned(),
                        },
                    }
                );
            }
            choices.insert(peer.public_key, choice);
            next.insert(key, state);
        }
        self.peers = next;
        choices
    }
}

fn relayed(now_ms: u64, rx: u64, slot: u64, published: Option<SocketAddr>) -> PeerPath {
    PeerPath {
        mode: Mode::Relay,
        since_ms: now_ms,
        rx_mark: rx,
        last_rx: rx,
        published,
        probe_until_ms: None,
        probe_rx: 0,
        // The slot we are in counts as probed: the failure just seen was that probe.
        probe_slot: slot,
        rx_changed_ms: now_ms,
        nudge_until_ms: None,
        nudged_ms: 0,
        relay: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "198.18.0.1:3478";
    const PEER: &str = "198.18.0.12:51820";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    struct Sim {
        state: Option<PeerPath>,
        seen: Observed,
        published: Option<SocketAddr>,
        settings: PathSettings,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                state: None,
                seen: Observed::default(),
                published: Some(PEER.parse().unwrap()),
                settings: PathSettings {
                    probe_interval: Duration::from_secs(60),
                    ..PathSettings::default()
                },
            }
        }

        fn tick(&mut self, secs: u64) -> Choice {
            let (st, choice) = step(
                self.state.as_ref(),
                at(secs),
                self.published,
                Some(RELAY.parse().unwrap()),
                &self.seen,
                0,
                &self.settings,
            );
            // WireGuard does what it was told.
            if let Some(e) = choice.endpoint {
                self.seen.endpoint = Some(e);
            }
            self.state = Some(st);
            choice
        }

        fn handshake(&mut self, secs: u64) {
            self.seen.latest_handshake = Some(at(secs));
            self.seen.rx_bytes += 92;
        }
    }

    fn relay() -> Option<SocketAddr> {
        Some(RELAY.parse().unwrap())
    }

    #[test]
    fn a_working_direct_path_stays_direct() {
        let mut s = Sim::new();
        assert_eq!(s.tick(0).endpoint, s.published);
        s.handshake(2);
        for t in (3..600).step_by(5) {
            if t % 120 < 5 {
                s.handshake(t);
            }
            s.seen.rx_bytes += 32;
            let c = s.tick(t);
            assert_eq!(c.mode, Mode::Direct, "at {t}");
            assert_eq!(c.keepalive, 25);
        }
    }

    #[test]
    fn no_handshake_within_relay_after_moves_to_the_relay_and_not_sooner() {
        let mut s = Sim::new();
        s.tick(0);
        assert_eq!(s.tick(14).mode, Mode::Direct);
        let c = s.tick(15);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, relay()));
        // Relayed, it works: stays there until the next probe slot.
        s.handshake(17);
        for t in 16..60 {
            assert_eq!(s.tick(t).endpoint, relay(), "at {t}");
        }
    }

    #[test]
    fn a_direct_path_that_goes_stale_moves_to_the_relay() {
        let mut s = Sim::new();
        s.tick(0);
        s.handshake(1);
        assert_eq!(s.tick(100).mode, Mode::Direct);
        assert_eq!(s.tick(180).mode, Mode::Direct);
        assert_eq!(s.tick(182).mode, Mode::Relay);
    }

    #[test]
    fn probes_on_the_slot_then_returns_to_the_relay_when_direct_fails() {
        let mut s = Sim::new();
        s.tick(0);
        s.tick(15);
        s.handshake(16);
        // Slot boundaries every 60 s (offset 0): the probe starts at 60.
        assert_eq!(s.tick(59).endpoint, relay());
        let c = s.tick(60);
        assert_eq!((c.endpoint, c.keepalive), (s.published, PROBE_KEEPALIVE));
        assert_eq!(c.mode, Mode::Relay);
        // Nothing arrives directly; the window (5 s) ends and the relay is back.
        assert_eq!(s.tick(63).endpoint, s.published);
        let c = s.tick(65);
        assert_eq!((c.endpoint, c.keepalive), (relay(), 25));
        // No second probe in the same slot.
        assert_eq!(s.tick(100).endpoint, relay());
        assert_eq!(s.tick(120).endpoint, s.published);
    }

    #[test]
    fn a_probe_that_gets_packets_directly_goes_direct() {
        let mut s = Sim::new();
        s.tick(0);
        s.tick(15);
        s.tick(60);
        // Bytes arrive and WireGuard still points at the direct address.
        s.seen.rx_bytes += 32;
        let c = s.tick(61);
        assert_eq!(c.mode, Mode::Direct);
        s.handshake(62);
        for t in 62..200 {
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
        }
    }

    #[test]
    fn follows_the_other_end_through_roaming() {
        let mut s = Sim::new();
        s.tick(0);
        s.handshake(1);
        s.tick(2);
        // The peer's packets arrive through the relay: it chose the relay.
        s.seen.endpoint = relay();
        s.seen.rx_bytes += 32;
        assert_eq!(s.tick(3).mode, Mode::Relay);
        // Later they arrive from a direct address: the peer's probe got through.
        s.seen.endpoint = Some("198.18.0.12:40000".parse().unwrap());
        s.seen.rx_bytes += 32;
        let c = s.tick(30);
        assert_eq!(c.mode, Mode::Direct);
        // A roamed, working address is not overwritten with the published one.
        s.handshake(31);
        assert_eq!(s.tick(32).endpoint, None);
    }

    #[test]
    fn a_silent_relayed_peer_is_nudged_briefly_and_not_often() {
        let mut s = Sim::new();
        s.settings.probe_interval = Duration::from_secs(10_000);
        s.tick(0);
        s.tick(15);
        s.handshake(16);
        for t in 17..52 {
            assert_eq!(s.tick(t).keepalive, 25, "at {t}");
        }
        // Nothing received since 17 (35 s): five seconds of 1 s keepalives, to the relay.
        let c = s.tick(52);
        assert_eq!((c.endpoint, c.keepalive), (relay(), PROBE_KEEPALIVE));
        assert_eq!(s.tick(56).keepalive, PROBE_KEEPALIVE);
        assert_eq!(s.tick(57).keepalive, 25);
        // Still silent: the next nudge comes a minute after the last one.
        assert_eq!(s.tick(100).keepalive, 25);
        assert_eq!(s.tick(112).keepalive, PROBE_KEEPALIVE);
        // Packets arriving keep it quiet.
        s.seen.rx_bytes += 32;
        assert_eq!(s.tick(118).keepalive, 25);
        assert_eq!(s.tick(140).keepalive, 25);
    }

    #[test]
    fn a_new_published_endpoint_is_probed_at_once() {
        let mut s = Sim::new();
        s.tick(0);
        s.tick(15);
        s.tick(20);
        s.published = Some("198.18.0.99:51820".parse().unwrap());
        let c = s.tick(21);
        assert_eq!((c.endpoint, c.keepalive), (s.published, PROBE_KEEPALIVE));
    }

    #[test]
    fn without_a_relay_it_is_always_direct() {
        let seen = Observed::default();
        let (_, c) = step(
            None,
            at(1000),
            Some(PEER.parse().unwrap()),
            None,
            &seen,
            0,
            &PathSettings::default(),
        );
        assert_eq!(
            (c.mode, c.endpoint),
            (Mode::Direct, Some(PEER.parse().unwrap()))
        );
    }

    #[test]
    fn both_ends_probe_in_the_same_slot() {
        let a = crate::keys::PrivateKey::generate().public_key();
        let b = crate::keys::PrivateKey::generate().public_key();
        assert_eq!(pair_offset(&a, &b), pair_offset(&b, &a));
    }

    #[test]
    fn with_replicas_both_ends_meet_at_the_same_relay() {
        let a = crate::keys::PrivateKey::generate().public_key();
        let b = crate::keys::PrivateKey::generate().public_key();
        let mut table = PathTable {
            relay: relay(),
            ..PathTable::default()
        };
        // A single server (no replica list): the server's own relay.
        assert_eq!(table.relay_for(&a, &b), relay());
        table.relays = (1..=3u8)
            .map(|i| {
                (
                    format!("http://198.18.0.{i}:8080"),
                    SocketAddr::from(([198, 18, 0, i], 3478)),
                )
            })
            .collect();
        let urls: Vec<String> = table.relays.keys().cloned().collect();
        let chosen = table.relay_for(&a, &b);
        assert_eq!(chosen, table.relay_for(&b, &a), "both ends agree");
        let url = crate::proto::replicas::meeting_replica(&a, &b, &urls).unwrap();
        assert_eq!(chosen, table.relays.get(url).copied());
        assert!(table.is_relay(chosen));
        assert!(table.is_relay(relay()));
        assert!(!table.is_relay(Some(PEER.parse().unwrap())));
        assert!(!table.is_relay(None));
        // A relayed peer's endpoint is the meeting replica's relay.
        let (st, c) = step(
            None,
            at(0),
            Some(PEER.parse().unwrap()),
            chosen,
            &Observed::default(),
            0,
            &PathSettings::default(),
        );
        let (_, c2) = step(
            Some(&st),
            at(20),
            Some(PEER.parse().unwrap()),
            chosen,
            &Observed {
                endpoint: c.endpoint,
                ..Observed::default()
            },
            0,
            &PathSettings::default(),
        );
        assert_eq!((c2.mode, c2.endpoint), (Mode::Relay, chosen));
    }

    #[test]
    fn when_the_meeting_replica_stops_answering_both_ends_move_to_the_same_next_relay() {
        let keys: Vec<crate::keys::PrivateKey> = (0..2)
            .map(|_| crate::keys::PrivateKey::generate())
            .collect();
        let info = |k: &crate::keys::PrivateKey, last: u8| crate::proto::model::PeerInfo {
            id: crate::types::PeerId::for_key(&k.public_key()),
            public_key: k.public_key(),
            virtual_ip: format!("10.100.0.{last}").parse().unwrap(),
            endpoint: Some(format!("198.18.0.{last}:51820").parse().unwrap()),
            hostname: format!("n{last}").parse().unwrap(),
            dns_name: None,
            os: "linux".parse().unwrap(),
            allowed_ips: vec![format!("10.100.0.{last}/32").parse().unwrap()],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
            via: None,
        };
        let relays: std::collections::BTreeMap<String, SocketAddr> = (1..=3u8)
            .map(|i| {
                (
                    format!("http://198.18.0.{i}:8080"),
                    SocketAddr::from(([198, 18, 0, i], 3478)),
                )
            })
            .collect();
        // No probe of the direct path within the test's seconds (a probe slot boundary
        // could otherwise fall among them for some keys).
        let settings = PathSettings {
            probe_interval: Duration::from_secs(1 << 30),
            ..PathSettings::default()
        };
        // Each end: its table, its key, and the other end as its one peer.
        let mut ends: Vec<(
            PathTable,
            crate::keys::PublicKey,
            crate::proto::model::PeerInfo,
        )> = vec![
            (
                PathTable::default(),
                keys[0].public_key(),
                info(&keys[1], 12),
            ),
            (
                PathTable::default(),
                keys[1].public_key(),
                info(&keys[0], 11),
            ),
        ];
        let mut chosen = Vec::new();
        for (table, me, peer) in &mut ends {
            table.relay = Some(relays.values().next().copied().unwrap());
            table.relays = relays.clone();
            // No direct path ever: relayed after relay_after, at the meeting replica.
            table.step_all(at(0), me, std::slice::from_ref(peer), None, &settings);
            let c = table.step_all(at(16), me, std::slice::from_ref(peer), None, &settings);
            let c = c[&peer.public_key];
            assert_eq!((c.mode, c.restart), (Mode::Relay, false));
            assert_eq!(table.relays_in_use(), [c.endpoint.unwrap()].into());
            chosen.push(c.endpoint.unwrap());
        }
        assert_eq!(chosen[0], chosen[1], "both ends meet at one relay");
        // That relay stops answering: both ends mark it down and move to the same next one,
        // restarting the session there once.
        let mut next = Vec::new();
        for (table, me, peer) in &mut ends {
            table.health.round_failed(chosen[0]);
            let c = table.step_all(at(20), me, std::slice::from_ref(peer), None, &settings);
            let c = c[&peer.public_key];
            assert_eq!(c.mode, Mode::Relay);
            assert!(c.restart, "the session restarts at the new relay");
            assert_ne!(c.endpoint, Some(chosen[0]));
            next.push(c.endpoint.unwrap());
            let again = table.step_all(at(21), me, std::slice::from_ref(peer), None, &settings);
            assert!(!again[&peer.public_key].restart, "only once");
        }
        assert_eq!(next[0], next[1], "both ends move to the same relay");
        // Packets still arriving through the old relay (the other end has not moved yet)
        // are relayed packets: the path stays relayed, at the new relay.
        let (table, me, peer) = &mut ends[0];
        let dump = crate::os::wgdump::Dump {
            interface: crate::os::wgdump::DumpInterface {
                private_key: None,
                public_key: None,
                listen_port: 51820,
                fwmark: None,
            },
            peers: vec![crate::os::wgdump::DumpPeer {
                public_key: peer.public_key,
                has_preshared_key: false,
                endpoint: Some(chosen[0]),
                allowed_ips: peer.allowed_ips.clone(),
                latest_handshake: Some(at(21)),
                transfer_rx: 10_000,
                transfer_tx: 10_000,
                persistent_keepalive: Some(25),
            }],
        };
        let c = table.step_all(
            at(22),
            me,
            std::slice::from_ref(peer),
            Some(&dump),
            &settings,
        );
        let c = c[&peer.public_key];
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, Some(next[0])));
        // Every relay down: no better choice than the full list (the first choice again).
        let (table, me, peer) = &mut ends[0];
        for relay in relays.values() {
            table.health.round_failed(*relay);
        }
        assert_eq!(table.relay_for(me, &peer.public_key), Some(chosen[0]));
    }
}
