//! Relayed or direct: the agent's choice of where WireGuard sends each peer's packets, as a
//! pure state machine fed by `wg show dump` (latest handshake, bytes received and sent, the
//! endpoint WireGuard uses now), the peer's published endpoint and the time.
//!
//! Relay first, direct when proven, as Tailscale's magicsock does (`wgengine/magicsock/
//! endpoint.go`: packets go through DERP until `bestAddr` holds a path a pong proved, and a
//! proven path is trusted while it keeps answering, `trustBestAddrUntil`):
//!
//! - A peer with no proven direct path talks through the relay from its first packet, so a
//!   pair connects as soon as its handshake crosses the relay, whatever the NATs.
//! - Once the relayed session is up, the direct path is probed without taking the live path
//!   away for long: the endpoint points at the peer's direct address for [`PROBE_WINDOW`]
//!   while the agent sends one datagram through the tunnel (its "disco ping"), then goes
//!   back to the relay. Probes come at [`EARLY_PROBES`] after the session's handshake (both
//!   ends see the same handshake, so both probe at the same moments without talking: a path
//!   through two NATs opens only when both ends have sent), then once per `probe_interval`
//!   at the same wall-clock moments on both ends (offset by a hash of the pair's keys), and
//!   again from the start when the peer's published endpoint changes (it moved).
//! - Proof is a packet from the peer arriving from a direct address: WireGuard follows the
//!   source of every authenticated packet, so the end that receives the other's probe
//!   answers directly, and both ends see it. A peer whose packets arrive directly is direct.
//! - A direct path stays while it answers. It is left when the peer's packets arrive
//!   through the relay again (the other end chose the relay; ignored for [`DIRECT_GRACE`]
//!   after going direct, when they are the tail of the other end's probe), when a check
//!   fails, when data goes out and nothing comes back for `relay_after` (WireGuard itself
//!   answers data within 10 s with at least a keepalive; the backstop, and all a one-shot
//!   `sync` has), when the handshake goes stale (180 s), or when the peer moves.
//! - A check is how a direct path that dies (a NAT mapping expired or flushed, a middlebox
//!   dropping the UDP, a rebooted router) is noticed within seconds instead of after
//!   `relay_after`: when data has gone out and nothing has come back for [`CHECK_AFTER`],
//!   the agent sends the probe's datagram through the tunnel (the peer's kernel answers it,
//!   as it answers a probe), and a check with nothing back within [`CHECK_WINDOW`] sends the
//!   pair to the relay, its session restarted there. This is magicsock's heartbeat ping and
//!   `trustBestAddrUntil` made lazy: Tailscale pings a proven path every 3 s while traffic
//!   flows and stops trusting it 6.5 s after its last pong; WireGuard here already tells us
//!   when anything arrives, so only a path that has gone quiet under traffic is asked, and
//!   asked at once rather than at the next heartbeat.
//! - An idle direct peer is never judged by silence alone: of two idle ends only one sends
//!   keepalives (each one received pushes the other's timer back), so the other may hear
//!   nothing for minutes and still be fine. Checks, too, start only under data.
//! - Byte counters below the last ones seen mean a new interface: the peer starts afresh.
//!
//! Both ends decide alone and reach the same answer, because each follows the other's
//! packets and both probe at the same moments.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keepalive during a nudge: a packet every second.
pub const PROBE_KEEPALIVE: u16 = 1;

/// How long one probe points the endpoint at the direct address: the packets sent in this
/// window are what a probe that fails costs. The daemon ticks every [`PROBE_TICK`] while a
/// probe runs, so the window really is this short.
pub const PROBE_WINDOW: Duration = Duration::from_millis(300);

/// How often paths are re-evaluated while a probe runs (one `wg show dump` each).
pub const PROBE_TICK: Duration = Duration::from_millis(100);

/// When a relayed session's early probes come, in seconds after its handshake (or after
/// the peer moved): six within 25 s, so a pair whose direct path works is direct within
/// 30 s even when the first attempts cross badly.
pub const EARLY_PROBES: [u64; 6] = [0, 1, 3, 7, 15, 25];

/// A direct peer with data going out and nothing back for this long is checked (see the
/// module docs): well inside WireGuard's own 10 s answer to data, so a one-way stream is
/// asked about its path rather than waited out; at least one path tick, so the silence
/// covers a whole tick.
pub const CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long a check's answer may take before the direct path counts as dead: far above any
/// round trip a direct path worth keeping has. The daemon ticks every [`PROBE_TICK`] while a
/// check runs, so the relay takes over this soon after the check began.
pub const CHECK_WINDOW: Duration = Duration::from_secs(1);

/// A one-shot `sync`'s slot mark for "no direct attempt made yet": its first run that sees
/// the relayed session up makes one, whatever the slot.
const SYNC_ATTEMPT_DUE: u64 = u64::MAX;

/// After going direct, packets still arriving through the relay for this long are the
/// other end's probe window closing, not its choice: the direct path is kept (and pointed
/// at again), as magicsock trusts a proven address for `trustUDPAddrDuration` (6.5 s).
pub const DIRECT_GRACE: Duration = Duration::from_secs(3);

/// More than this many bytes sent in one tick is data or a handshake; a keepalive is 32.
const KEEPALIVE_BYTES: u64 = 64;

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
    /// How long data may go out on a direct path with nothing coming back before the
    /// relay takes over.
    pub relay_after: Duration,
    /// Time between probes of the direct path of a relayed peer, after the early ones.
    pub probe_interval: Duration,
    /// How long one probe lasts.
    pub probe_window: Duration,
    /// The keepalive.
    pub keepalive: u16,
    /// Whether probes may start: not in a one-shot `sync`, which would leave the endpoint
    /// pointing at an unproven address until the next run.
    pub may_probe: bool,
}

impl Default for PathSettings {
    fn default() -> Self {
        PathSettings {
            relay_after: Duration::from_secs(15),
            probe_interval: Duration::from_secs(300),
            probe_window: PROBE_WINDOW,
            keepalive: crate::agent::decide::desired::PERSISTENT_KEEPALIVE,
            may_probe: true,
        }
    }
}

/// The path a peer's packets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Straight to the peer's (published or roamed) endpoint.
    Direct,
    /// Through the coordination server's relay: where every peer starts.
    #[default]
    Relay,
}

/// What one peer's path state is, kept between ticks (and saved, so `sync` from a timer
/// continues where it was; `up` starts clean). Times are milliseconds since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The current path.
    pub mode: Mode,
    /// When the current mode began.
    pub since_ms: u64,
    /// Bytes received at the last tick.
    pub last_rx: u64,
    /// Bytes sent at the last tick.
    #[serde(default)]
    pub last_tx: u64,
    /// The published endpoint at the last tick (a change means the peer moved).
    pub published: Option<SocketAddr>,
    /// A probe of the direct path in progress, until this time.
    #[serde(default)]
    pub probe_until_ms: Option<u64>,
    /// Bytes received when the probe began.
    #[serde(default)]
    pub probe_rx: u64,
    /// The last periodic probe slot used (those probes happen once per slot).
    #[serde(default)]
    pub probe_slot: u64,
    /// While relayed: when the session came up (or the peer moved), the zero of
    /// [`EARLY_PROBES`].
    #[serde(default)]
    pub session_ms: Option<u64>,
    /// How many of [`EARLY_PROBES`] are done.
    #[serde(default)]
    pub early_probes: usize,
    /// When bytes last arrived from the peer.
    #[serde(default)]
    pub rx_changed_ms: u64,
    /// Since when data has gone out with nothing coming back.
    #[serde(default)]
    pub unanswered_ms: Option<u64>,
    /// While direct: where the peer's packets came from when the path was proven.
    #[serde(default)]
    pub direct_addr: Option<SocketAddr>,
    /// While direct: whether packets arrived over it (a `sync` attempt starts unproven).
    #[serde(default)]
    pub proven: bool,
    /// While direct: a check of the path in progress (its datagram sent), until this time.
    #[serde(default)]
    pub check_until_ms: Option<u64>,
    /// Bytes received when the check began: anything more is its answer.
    #[serde(default)]
    pub check_rx: u64,
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
    /// This tick's decision to restart the session ([`Choice::restart`]); not kept.
    #[serde(skip)]
    pub restart: bool,
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
    /// Bytes sent to the peer so far.
    pub tx_bytes: u64,
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
    /// Drop the WireGuard session so the next packet starts a handshake through the relay
    /// at once: the pair's relay moved to another replica's, or the server restarted, and
    /// the relay knows neither the old session's indexes nor the peer's address.
    pub restart: bool,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
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

/// What one tick sees, worked out once from the dump and the time.
struct Facts {
    now_ms: u64,
    /// Bytes arrived since the last tick.
    received: bool,
    /// WireGuard sends to the relay now (it was told to, or the peer's packets came from it).
    via_relay: bool,
    /// WireGuard sends somewhere else: the peer's direct address.
    via_direct: bool,
    /// A handshake within [`HANDSHAKE_STALE`]: a session exists.
    connected: bool,
    handshake_ms: Option<u64>,
    /// The peer's published endpoint changed.
    moved: bool,
    /// The periodic probe slot we are in.
    slot: u64,
}

impl Facts {
    fn new(
        st: &PeerPath,
        now: SystemTime,
        published: Option<SocketAddr>,
        relay: SocketAddr,
        seen: &Observed,
        offset: u64,
        settings: &PathSettings,
    ) -> Facts {
        let now_ms = ms(now);
        let via_relay = seen.endpoint == Some(relay);
        Facts {
            now_ms,
            received: seen.rx_bytes > st.last_rx,
            via_relay,
            via_direct: seen.endpoint.is_some() && !via_relay,
            connected: seen
                .latest_handshake
                .is_some_and(|h| now.duration_since(h).unwrap_or_default() < HANDSHAKE_STALE),
            handshake_ms: seen.latest_handshake.map(ms),
            moved: st.published != published && published.is_some(),
            slot: probe_slot(now_ms, offset, settings),
        }
    }
}

/// The periodic probe slot `now_ms` falls in: the same on both ends of a pair.
fn probe_slot(now_ms: u64, offset: u64, settings: &PathSettings) -> u64 {
    let every = settings.probe_interval.as_secs().max(1);
    (now_ms / 1000).wrapping_add(offset % every) / every
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
    let slot = probe_slot(now_ms, offset, settings);
    let mut st = match state {
        // Counters below the last ones: a new interface (a restart), so a new start.
        Some(s) if seen.rx_bytes >= s.last_rx && seen.tx_bytes >= s.last_tx => s.clone(),
        _ => PeerPath::start(now_ms, published, seen, slot, settings),
    };
    let Some(relay) = relay else {
        return direct_only(st, published, seen, settings);
    };
    let f = Facts::new(&st, now, published, relay, seen, offset, settings);
    st.published = published;
    st.track_answers(&f, seen);
    match st.mode {
        Mode::Direct => st.direct_tick(&f, seen, settings),
        Mode::Relay => st.relay_tick(&f, seen, settings),
    }
    if st.mode == Mode::Relay {
        st.nudge_tick(&f);
    }
    st.last_rx = seen.rx_bytes;
    st.last_tx = seen.tx_bytes;
    let choice = st.choose(&f, relay, settings);
    st.restart = false;
    (st, choice)
}

/// Without a relay every peer is direct, at its published endpoint.
fn direct_only(
    mut st: PeerPath,
    published: Option<SocketAddr>,
    seen: &Observed,
    settings: &PathSettings,
) -> (PeerPath, Choice) {
    if st.mode != Mode::Direct {
        st = PeerPath {
            mode: Mode::Direct,
            ..st
        };
    }
    st.published = published;
    st.probe_until_ms = None;
    st.check_until_ms = None;
    st.relay = None;
    st.last_rx = seen.rx_bytes;
    st.last_tx = seen.tx_bytes;
    let choice = Choice {
        endpoint: published,
        keepalive: settings.keepalive,
        mode: Mode::Direct,
        restart: false,
    };
    (st, choice)
}

impl PeerPath {
    /// A peer seen for the first time (or on a new interface): relayed, its early probes
    /// waiting for the session, the current periodic slot counted as done. A one-shot
    /// `sync` starts relayed too (its first packet goes through, and the relay learns where
    /// this end is); it cannot probe, so its first run that sees the relayed session up
    /// makes a direct attempt instead (the slot counted as not done).
    fn start(
        now_ms: u64,
        published: Option<SocketAddr>,
        seen: &Observed,
        slot: u64,
        settings: &PathSettings,
    ) -> PeerPath {
        PeerPath {
            mode: Mode::Relay,
            since_ms: now_ms,
            last_rx: seen.rx_bytes,
            last_tx: seen.tx_bytes,
            published,
            probe_until_ms: None,
            probe_rx: 0,
            probe_slot: if settings.may_probe {
                slot
            } else {
                SYNC_ATTEMPT_DUE
            },
            session_ms: None,
            early_probes: 0,
            rx_changed_ms: now_ms,
            unanswered_ms: None,
            direct_addr: None,
            proven: false,
            restart: false,
            check_until_ms: None,
            check_rx: 0,
            nudge_until_ms: None,
            nudged_ms: 0,
            relay: None,
        }
    }

    /// Whether what goes out gets answers: bytes arriving clear it; data (more than a
    /// keepalive in a tick) going out while nothing arrives starts the clock. A probe's
    /// own datagram is not counted (a failed probe is answered by nobody, by design).
    fn track_answers(&mut self, f: &Facts, seen: &Observed) {
        if f.received {
            self.rx_changed_ms = f.now_ms;
            self.unanswered_ms = None;
        } else if self.probe_until_ms.is_none()
            && seen.tx_bytes.saturating_sub(self.last_tx) > KEEPALIVE_BYTES
        {
            self.unanswered_ms.get_or_insert(f.now_ms);
        }
    }

    fn direct_tick(&mut self, f: &Facts, seen: &Observed, settings: &PathSettings) {
        if f.moved {
            self.go_relay(f, true);
            return;
        }
        if f.via_relay && f.received {
            // The other end's packets come through the relay: it chose the relay, unless
            // this is the tail of its probe window right after we went direct.
            if f.now_ms.saturating_sub(self.since_ms) >= millis(DIRECT_GRACE) {
                self.go_relay(f, false);
            }
            return;
        }
        if f.via_direct && f.received {
            self.direct_addr = seen.endpoint;
            self.proven = true;
        }
        let waited = |since: u64| f.now_ms.saturating_sub(since) >= millis(settings.relay_after);
        let unanswered = self.unanswered_ms.is_some_and(waited);
        // No session (a stale handshake), or an attempt (`sync`) nothing came back over.
        let unproven = !f.connected || !self.proven;
        if unanswered || (unproven && waited(self.since_ms)) || self.check_failed(f, seen) {
            self.go_relay(f, true);
        } else if !unproven && settings.may_probe {
            self.check_if_quiet(f, seen);
        }
    }

    /// Whether the running check got nothing back in its window (anything arriving since it
    /// began answers it and ends it).
    fn check_failed(&mut self, f: &Facts, seen: &Observed) -> bool {
        let Some(until) = self.check_until_ms else {
            return false;
        };
        if seen.rx_bytes > self.check_rx {
            self.check_until_ms = None;
            return false;
        }
        f.now_ms >= until
    }

    /// Starts a check when data goes out and nothing has come back for [`CHECK_AFTER`]
    /// (never on silence alone: `unanswered_ms` is set only by data going out).
    fn check_if_quiet(&mut self, f: &Facts, seen: &Observed) {
        let quiet = f.now_ms.saturating_sub(self.rx_changed_ms) >= millis(CHECK_AFTER);
        if self.check_until_ms.is_none() && self.unanswered_ms.is_some() && quiet {
            self.check_until_ms = Some(f.now_ms + millis(CHECK_WINDOW));
            self.check_rx = seen.rx_bytes;
        }
    }

    fn relay_tick(&mut self, f: &Facts, seen: &Observed, settings: &PathSettings) {
        if f.moved {
            // Probe the new address from the start of the ladder, and restart the session:
            // the relay dropped the peer's packets from its new address as from a wrong
            // source until a handshake binds it there.
            self.session_ms = f.connected.then_some(f.now_ms);
            self.early_probes = 0;
            self.restart = f.connected;
            self.probe_until_ms = None;
        } else if f.connected && self.session_ms.is_none() {
            self.session_ms = Some(f.handshake_ms.unwrap_or(0).max(self.since_ms));
        }
        if let Some(until) = self.probe_until_ms {
            if f.via_direct && seen.rx_bytes > self.probe_rx {
                self.go_direct(f, seen);
            } else if f.now_ms >= until {
                self.probe_until_ms = None;
            }
            return;
        }
        if f.via_direct && f.received {
            // The other end probed, and its packets got through directly.
            self.go_direct(f, seen);
        } else if self.restart {
            // The new session's handshake goes through the relay; probes follow it.
        } else if !settings.may_probe
            && self.published.is_some()
            && f.connected
            && f.slot != self.probe_slot
        {
            // A one-shot `sync` cannot probe: a direct attempt instead, once the relayed
            // session is up, then once per slot. Nothing is lost while the other end sends:
            // WireGuard follows its packets back to the relay, and so does the next run.
            self.go_direct(f, seen);
            self.direct_addr = self.published;
            self.proven = false;
            self.probe_slot = f.slot;
        } else if self.probe_due(f, settings) {
            self.probe_until_ms = Some(f.now_ms + millis(settings.probe_window));
            self.probe_rx = seen.rx_bytes;
            self.probe_slot = f.slot;
        }
    }

    /// Whether a probe starts now: with a session to carry it and an address to try, at
    /// the next of [`EARLY_PROBES`] or in a new periodic slot. Counts the early one used.
    fn probe_due(&mut self, f: &Facts, settings: &PathSettings) -> bool {
        if !settings.may_probe || self.published.is_none() || !f.connected {
            return false;
        }
        let mut early = false;
        if let Some(zero) = self.session_ms {
            while EARLY_PROBES
                .get(self.early_probes)
                .is_some_and(|s| f.now_ms >= zero + s * 1000)
            {
                self.early_probes += 1;
                early = true;
            }
        }
        early || f.slot != self.probe_slot
    }

    /// Silence through the relay (a healthy peer sends at least a keepalive every 25 s):
    /// maybe the relay restarted and forgot us. A few quick keepalives earn the credit it
    /// needs to pass the peer's next handshake to us.
    fn nudge_tick(&mut self, f: &Facts) {
        if self.nudge_until_ms.is_some_and(|until| f.now_ms >= until) {
            self.nudge_until_ms = None;
        }
        let quiet = f
            .now_ms
            .saturating_sub(self.rx_changed_ms.max(self.since_ms));
        if self.nudge_until_ms.is_none()
            && quiet >= millis(NUDGE_AFTER)
            && f.now_ms.saturating_sub(self.nudged_ms) >= millis(NUDGE_EVERY)
        {
            self.nudge_until_ms = Some(f.now_ms + millis(NUDGE_LENGTH));
            self.nudged_ms = f.now_ms;
        }
    }

    fn go_direct(&mut self, f: &Facts, seen: &Observed) {
        *self = PeerPath {
            mode: Mode::Direct,
            since_ms: f.now_ms,
            probe_until_ms: None,
            session_ms: None,
            early_probes: 0,
            unanswered_ms: None,
            direct_addr: seen.endpoint,
            proven: true,
            check_until_ms: None,
            nudge_until_ms: None,
            relay: None,
            ..self.clone()
        };
    }

    /// To the relay. `restart`: the session was made on the direct path, so the relay
    /// never saw its handshake and cannot route it: start a new one through the relay at
    /// once instead of losing data until WireGuard rekeys (not when following the other
    /// end's relayed packets: the relay knows that session).
    fn go_relay(&mut self, f: &Facts, restart: bool) {
        *self = PeerPath {
            mode: Mode::Relay,
            restart: restart && f.connected,
            since_ms: f.now_ms,
            probe_until_ms: None,
            // The early probes start again once the session is seen (at once if it is up).
            session_ms: None,
            early_probes: 0,
            probe_slot: f.slot,
            rx_changed_ms: f.now_ms,
            unanswered_ms: None,
            direct_addr: None,
            check_until_ms: None,
            ..self.clone()
        };
    }

    /// What to configure: the relay (the direct address during a probe), or the direct
    /// path (left as WireGuard has it while it works there).
    fn choose(&self, f: &Facts, relay: SocketAddr, settings: &PathSettings) -> Choice {
        let (endpoint, keepalive) = match (self.mode, self.probe_until_ms) {
            // The direct address once, as the probe begins; then WireGuard is left alone, so
            // a packet through the relay moves it back at once and only a packet from the
            // direct address can leave it there (the proof).
            (Mode::Relay, Some(until)) if until == f.now_ms + millis(settings.probe_window) => {
                (self.published, settings.keepalive)
            }
            (Mode::Relay, Some(_)) => (None, settings.keepalive),
            (Mode::Relay, None) if self.nudge_until_ms.is_some() => (Some(relay), PROBE_KEEPALIVE),
            (Mode::Relay, None) => (Some(relay), settings.keepalive),
            // A working path WireGuard roamed to (a NAT that moved the peer's port) is kept.
            (Mode::Direct, _) if f.connected && f.via_direct => (None, settings.keepalive),
            (Mode::Direct, _) => (self.direct_addr.or(self.published), settings.keepalive),
        };
        Choice {
            endpoint,
            keepalive,
            mode: self.mode,
            restart: self.restart,
        }
    }
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
    /// Set when the server restarted: the next tick restarts every relayed session.
    #[serde(skip)]
    pub restart_relayed: bool,
    /// Relayed sessions to restart at these times (ms since the epoch), by base64 key: the
    /// end whose key sorts above the other's restarts [`RESTART_STAGGER`] after the other.
    #[serde(skip)]
    pub restarts_due: std::collections::BTreeMap<String, u64>,
    /// Relayed sessions restarted and waiting for their handshake, by base64 key: when and
    /// how many times ([`HANDSHAKE_RETRY`]).
    #[serde(skip)]
    pub awaiting_handshake: std::collections::BTreeMap<String, (u64, u8)>,
}

/// A restarted relayed session with no handshake this long after is restarted again (at
/// most [`HANDSHAKE_RETRIES`] times), instead of waiting WireGuard's 5 s: its first
/// initiation may have reached the relay before the relay knew where the other end is now
/// (a node that moved is bound at its old address until its new one is known). The end
/// whose key sorts above retries a second later still, so the two never cross.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(1500);
/// How many times [`HANDSHAKE_RETRY`] applies to one restart.
pub const HANDSHAKE_RETRIES: u8 = 3;

/// After a server restart, the end of a relayed pair whose key sorts above the other's
/// restarts the session this much later: the first end's new handshake cannot reach it
/// yet (the fresh relay has not heard from it), so the second end's handshake finds the
/// first one known and is answered at once, instead of the two crossing in the relay and
/// both waiting out WireGuard's 5 s retry (as when two nodes meet: `agent::stagger`).
pub const RESTART_STAGGER: Duration = Duration::from_secs(1);

/// The parts of a [`PathTable`] that make a change of path: the relay, and per peer (by key)
/// its mode, whether a probe, a nudge or a check of a direct path runs and which relay it
/// meets at; and the relays that are down.
pub type Material<'a> = (
    Option<SocketAddr>,
    &'a std::collections::BTreeMap<String, SocketAddr>,
    std::collections::BTreeSet<SocketAddr>,
    Vec<(&'a str, Mode, [bool; 3], Option<SocketAddr>)>,
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
                        [
                            p.probe_until_ms.is_some(),
                            p.nudge_until_ms.is_some(),
                            p.check_until_ms.is_some(),
                        ],
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
        let restart_all = std::mem::take(&mut self.restart_relayed);
        for peer in peers {
            let key = peer.public_key.to_base64();
            let old = self.peers.get(&key).cloned();
            let old = old.as_ref();
            let relay = self.relay_among(&rendezvous, me, &peer.public_key);
            let seen = self.observed(dump, &peer.public_key, relay);
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
                if self.restart_due(restart_all, now, me, &peer.public_key, old) {
                    log::info!(
                        "peer {} ({}): the server restarted; restarting the relayed session",
                        peer.hostname,
                        peer.virtual_ip,
                    );
                    choice.restart = true;
                }
                state.relay = relay;
            }
            choice.restart |= self.retry_handshake(&key, &state, &seen, now, me, peer, choice);
            if choice.restart && state.mode == Mode::Relay {
                // The peer is added again: with the relay as its endpoint, never the "leave
                // it" of a probe in progress (the probe ends; the ladder goes on).
                state.probe_until_ms = None;
                choice.endpoint = relay;
            }
            log_change(peer, old, &state, relay);
            choices.insert(peer.public_key, choice);
            next.insert(key, state);
        }
        self.peers = next;
        choices
    }

    /// Whether the relayed session with `peer` restarts now, after a server restart: at
    /// once if our key sorts first, else [`RESTART_STAGGER`] later.
    fn restart_due(
        &mut self,
        restart_all: bool,
        now: SystemTime,
        me: &crate::keys::PublicKey,
        peer: &crate::keys::PublicKey,
        old: Option<&PeerPath>,
    ) -> bool {
        let key = peer.to_base64();
        let now_ms = ms(now);
        if restart_all && old.is_some_and(|o| o.mode == Mode::Relay) {
            if me.as_bytes() < peer.as_bytes() {
                self.restarts_due.remove(&key);
                return true;
            }
            self.restarts_due
                .insert(key, now_ms + millis(RESTART_STAGGER));
            return false;
        }
        match self.restarts_due.get(&key) {
            Some(at) if now_ms >= *at => {
                self.restarts_due.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Whether to restart the relayed session with `peer` again because the last restart
    /// got no handshake within [`HANDSHAKE_RETRY`] (see there); records restarts.
    #[allow(clippy::too_many_arguments)]
    fn retry_handshake(
        &mut self,
        key: &str,
        state: &PeerPath,
        seen: &Observed,
        now: SystemTime,
        me: &crate::keys::PublicKey,
        peer: &crate::proto::model::PeerInfo,
        choice: Choice,
    ) -> bool {
        let now_ms = ms(now);
        if choice.restart {
            self.awaiting_handshake.insert(key.to_owned(), (now_ms, 0));
            return false;
        }
        let Some(&(at, tries)) = self.awaiting_handshake.get(key) else {
            return false;
        };
        // A restart removes the peer, so any handshake seen since is the new session's.
        let shook = seen.latest_handshake.is_some();
        if shook || state.mode != Mode::Relay || tries >= HANDSHAKE_RETRIES {
            self.awaiting_handshake.remove(key);
            return false;
        }
        let mut wait = millis(HANDSHAKE_RETRY);
        if me.as_bytes() > peer.public_key.as_bytes() {
            wait += millis(RESTART_STAGGER);
        }
        if now_ms < at + wait {
            return false;
        }
        log::debug!(
            "peer {} ({}): no handshake through the relay yet; restarting the session again",
            peer.hostname,
            peer.virtual_ip
        );
        self.awaiting_handshake
            .insert(key.to_owned(), (now_ms, tries + 1));
        true
    }

    /// What the dump says about `key`. Packets through another relay (the pair's old
    /// meeting place, or the one the other end still uses while the replica list reaches
    /// it) are relayed packets, never a sign that a direct path works.
    fn observed(
        &self,
        dump: Option<&crate::os::wgdump::Dump>,
        key: &crate::keys::PublicKey,
        relay: Option<SocketAddr>,
    ) -> Observed {
        let seen = dump
            .and_then(|d| d.peers.iter().find(|p| p.public_key == *key))
            .map(|p| Observed {
                endpoint: p.endpoint,
                latest_handshake: p.latest_handshake,
                rx_bytes: p.transfer_rx,
                tx_bytes: p.transfer_tx,
            })
            .unwrap_or_default();
        Observed {
            endpoint: match seen.endpoint {
                e if e != relay && self.is_relay(e) => relay,
                e => e,
            },
            ..seen
        }
    }

    /// Whether a probe or a check runs for some peer: the daemon then ticks every
    /// [`PROBE_TICK`], so a probe's window and a check's deadline end on time.
    pub fn needs_fast_ticks(&self) -> bool {
        self.peers
            .values()
            .any(|p| p.probe_until_ms.is_some() || p.check_until_ms.is_some())
    }

    /// The peers (by base64 key) whose direct path's check began since `before`: the agent
    /// sends each the probe's datagram through the tunnel, which the peer answers.
    pub fn checks_begun(&self, before: &PathTable) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(k, p)| {
                p.check_until_ms.is_some()
                    && before
                        .peers
                        .get(*k)
                        .is_none_or(|b| b.check_until_ms.is_none())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The peers (by base64 key) whose probe began since `before`: the agent sends each a
    /// datagram through the tunnel, now that its endpoint is the direct address.
    pub fn probes_begun(&self, before: &PathTable) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(k, p)| {
                p.probe_until_ms.is_some()
                    && before
                        .peers
                        .get(*k)
                        .is_none_or(|b| b.probe_until_ms.is_none())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The byte counters just after the probes of `keys` pointed WireGuard at the direct
    /// addresses: only what arrives after this proves a direct path.
    pub fn probe_baseline(&mut self, keys: &[String], dump: &crate::os::wgdump::Dump) {
        for p in &dump.peers {
            if let Some(state) = self
                .peers
                .get_mut(&p.public_key.to_base64())
                .filter(|s| s.probe_until_ms.is_some())
                .filter(|_| keys.contains(&p.public_key.to_base64()))
            {
                state.probe_rx = p.transfer_rx;
            }
        }
    }

    /// Starts every path afresh (a new `up`: the interface's counters start again, and
    /// nothing the last run proved is known to hold).
    pub fn forget_peers(&mut self) {
        self.peers.clear();
    }

    /// The server came back after being unreachable (or answered as if it had restarted):
    /// its relay forgot every session, so the next tick restarts each relayed one.
    pub fn server_restarted(&mut self) {
        self.restart_relayed = true;
    }
}

/// Logs a change of path: changes of mode at info, probes at debug (they come and go).
fn log_change(
    peer: &crate::proto::model::PeerInfo,
    old: Option<&PeerPath>,
    state: &PeerPath,
    relay: Option<SocketAddr>,
) {
    let checked = old.is_some_and(|o| o.check_until_ms.is_some());
    if state.check_until_ms.is_some() && !checked {
        log::debug!(
            "peer {} ({}): data unanswered on the direct path; checking it",
            peer.hostname,
            peer.virtual_ip
        );
    }
    let was = old.map(|o| (o.mode, o.probe_until_ms.is_some()));
    let is = (state.mode, state.probe_until_ms.is_some());
    if was == Some(is) {
        return;
    }
    if checked && state.mode == Mode::Relay {
        log::info!(
            "peer {} ({}): the direct path's check got no answer within {} ms",
            peer.hostname,
            peer.virtual_ip,
            millis(CHECK_WINDOW)
        );
    }
    let what = match is {
        (Mode::Direct, _) => "direct path".to_owned(),
        (Mode::Relay, true) => "probing the direct path (the relay carries traffic)".to_owned(),
        (Mode::Relay, false) => match relay {
            Some(r) => format!("through the relay at {r}"),
            None => "through the relay".to_owned(),
        },
    };
    if old.map(|o| o.mode) == Some(state.mode) {
        log::debug!("peer {} ({}): {what}", peer.hostname, peer.virtual_ip);
    } else if old.is_some() || relay.is_some() {
        log::info!("peer {} ({}): {what}", peer.hostname, peer.virtual_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "198.18.0.1:3478";
    const PEER: &str = "198.18.0.12:51820";

    fn at(secs: u64) -> SystemTime {
        at_ms(secs * 1000)
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms)
    }

    /// One end's path machine against a WireGuard that does what it is told and whose
    /// counters the test moves.
    struct Sim {
        state: Option<PeerPath>,
        seen: Observed,
        published: Option<SocketAddr>,
        settings: PathSettings,
        /// Whether a check of the direct path ever ran.
        checked: bool,
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
                checked: false,
            }
        }

        fn tick(&mut self, secs: u64) -> Choice {
            self.tick_ms(secs * 1000)
        }

        fn tick_ms(&mut self, ms: u64) -> Choice {
            let (st, choice) = step(
                self.state.as_ref(),
                at_ms(ms),
                self.published,
                relay(),
                &self.seen,
                0,
                &self.settings,
            );
            if let Some(e) = choice.endpoint {
                self.seen.endpoint = Some(e);
            }
            self.checked |= st.check_until_ms.is_some();
            self.state = Some(st);
            choice
        }

        fn handshake(&mut self, secs: u64) {
            self.seen.latest_handshake = Some(at(secs));
            self.seen.rx_bytes += 92;
        }

        /// A packet from the peer arriving from `from` (WireGuard roams to it).
        fn packet_from(&mut self, from: Option<SocketAddr>) {
            self.seen.endpoint = from;
            self.seen.rx_bytes += 32;
        }

        fn probing(&self) -> bool {
            self.state.as_ref().unwrap().probe_until_ms.is_some()
        }

        fn checking(&self) -> bool {
            self.state.as_ref().unwrap().check_until_ms.is_some()
        }
    }

    fn relay() -> Option<SocketAddr> {
        Some(RELAY.parse().unwrap())
    }

    /// A relayed pair with its session up at second 1.
    fn relayed_and_connected() -> Sim {
        let mut s = Sim::new();
        s.settings.probe_interval = Duration::from_secs(1 << 30);
        s.tick(0);
        s.handshake(1);
        s
    }

    #[test]
    fn a_new_peer_talks_through_the_relay_from_the_first_packet() {
        let mut s = Sim::new();
        let c = s.tick(0);
        assert_eq!(
            (c.mode, c.endpoint, c.keepalive),
            (Mode::Relay, relay(), 25)
        );
        // No session yet: nothing to probe with, so it stays on the relay.
        for t in 1..10 {
            assert_eq!(s.tick(t).endpoint, relay(), "at {t}");
        }
    }

    #[test]
    fn probes_come_with_the_session_at_the_early_moments_and_each_is_short() {
        let mut s = relayed_and_connected();
        // The tick that sees the handshake probes: the direct address for one window.
        let c = s.tick(1);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, s.published));
        // Then WireGuard is left as it is until the window ends.
        assert_eq!(s.tick_ms(1_200).endpoint, None);
        assert_eq!(s.tick_ms(1_300).endpoint, relay(), "300 ms, then the relay");
        // The next ones at 1 + 1, 1 + 3, 1 + 7, 1 + 15 and 1 + 25 s; nothing between.
        let mut began = Vec::new();
        let mut ms = 1_300;
        while ms < 120_000 {
            ms += if s.probing() { 100 } else { 1000 };
            let was = s.probing();
            s.tick_ms(ms);
            if s.probing() && !was {
                began.push(ms / 1000);
            }
        }
        assert_eq!(began, [2, 4, 8, 16, 26]);
    }

    #[test]
    fn a_pair_whose_direct_path_never_works_stays_relayed_losing_a_window_per_probe() {
        let mut s = Sim::new();
        s.settings.probe_interval = Duration::from_secs(300);
        s.tick(0);
        s.handshake(1);
        // Ten minutes: ticks every second, every 100 ms while probing (as the daemon does);
        // the peer's packets keep coming through the relay.
        let (mut ms, mut last, mut away, mut longest, mut run) = (1_000, 1_000, 0, 0, 0);
        let (mut was_away, mut windows) = (false, 0);
        let (mut next_packet, mut next_handshake) = (10_000, 110_000);
        while ms < 600_000 {
            if ms >= next_packet {
                s.packet_from(relay());
                next_packet += 10_000;
            }
            if ms >= next_handshake {
                s.handshake(ms / 1000);
                next_handshake += 110_000;
            }
            let c = s.tick_ms(ms);
            assert_eq!(c.mode, Mode::Relay, "at {ms} ms");
            if was_away {
                away += ms - last;
                run += ms - last;
                longest = longest.max(run);
            } else {
                run = 0;
            }
            let is_away = c.endpoint != relay();
            if is_away && !was_away {
                windows += 1;
            }
            was_away = is_away;
            last = ms;
            ms += if s.probing() { 100 } else { 1000 };
        }
        // Six early probes and one per 300 s slot, each away from the relay 0.3 s.
        assert_eq!(windows, 7);
        assert!(longest <= 300, "longest probe {longest} ms");
        assert!(
            away <= 7 * 300,
            "{away} ms away from the relay in 10 minutes"
        );
    }

    #[test]
    fn a_probe_that_gets_packets_directly_goes_direct_and_an_idle_direct_pair_stays() {
        let mut s = relayed_and_connected();
        s.tick(1);
        // The peer's answer comes from its direct address while we point there.
        s.packet_from(s.published);
        let c = s.tick_ms(1_100);
        assert_eq!((c.mode, c.endpoint), (Mode::Direct, None));
        // Idle for ten minutes: only the rekeys every 2 minutes arrive (the other end's
        // keepalives may never come: ours push its timer back). Never judged by silence.
        for t in 2..600 {
            if t % 120 == 0 {
                s.handshake(t);
            }
            // Our own keepalive every 25 s (32 bytes): not data, so not "unanswered".
            if t % 25 == 0 {
                s.seen.tx_bytes += 32;
            }
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
        }
    }

    #[test]
    fn packets_through_the_relay_during_a_probe_prove_nothing_and_take_the_path_back() {
        let mut s = relayed_and_connected();
        assert_eq!(s.tick(1).endpoint, s.published);
        // One-way traffic keeps arriving through the relay: WireGuard follows it back.
        s.packet_from(relay());
        let c = s.tick_ms(1_100);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, None), "not re-pointed");
        s.packet_from(relay());
        assert_eq!(s.tick_ms(1_200).mode, Mode::Relay);
        assert_eq!(s.tick_ms(1_300).endpoint, relay());
    }

    #[test]
    fn the_other_ends_probe_getting_through_makes_a_relayed_peer_direct() {
        let mut s = relayed_and_connected();
        s.tick(1);
        assert_eq!(s.tick_ms(1_300).endpoint, relay());
        // Outside our windows: the peer's packet arrives from a roamed direct address.
        let roamed: SocketAddr = "198.18.0.12:40000".parse().unwrap();
        s.packet_from(Some(roamed));
        let c = s.tick_ms(1_500);
        assert_eq!((c.mode, c.endpoint), (Mode::Direct, None));
        // Its relayed tail right after (its window closing) does not take us back...
        s.packet_from(relay());
        let c = s.tick_ms(2_500);
        assert_eq!((c.mode, c.endpoint), (Mode::Direct, Some(roamed)));
        s.packet_from(Some(roamed));
        assert_eq!(s.tick(4).mode, Mode::Direct);
        // ...but relayed packets later mean the other end chose the relay: follow it.
        s.packet_from(relay());
        let c = s.tick(10);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, relay()));
    }

    #[test]
    fn in_a_one_shot_sync_data_unanswered_on_a_direct_path_for_relay_after_moves_to_the_relay() {
        // A `sync` run cannot check a path (no next tick to end the check): relay_after it is.
        let mut s = relayed_and_connected();
        s.settings.may_probe = false;
        s.tick(1);
        s.packet_from(s.published);
        assert_eq!(s.tick(2).mode, Mode::Direct);
        // One-way data is answered (WireGuard's passive keepalive within 10 s): stays.
        for t in 3..=40 {
            s.seen.tx_bytes += 1000;
            if t % 10 == 0 {
                s.seen.rx_bytes += 32;
            }
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
        }
        // The path dies: data goes out, nothing comes back.
        for t in 41..56 {
            s.seen.tx_bytes += 1000;
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
        }
        s.seen.tx_bytes += 1000;
        let c = s.tick(56);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, relay()));
        assert!(!s.checked, "sync never checks");
    }

    /// A pair direct since second 2, both ends sending and answering until second 10.
    fn direct_and_busy() -> Sim {
        let mut s = relayed_and_connected();
        s.tick(1);
        s.packet_from(s.published);
        assert_eq!(s.tick(2).mode, Mode::Direct);
        for t in 3..=10 {
            s.seen.tx_bytes += 1000;
            s.seen.rx_bytes += 1000;
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
            assert!(!s.checking(), "answered data is never checked (at {t})");
        }
        s
    }

    #[test]
    fn data_unanswered_on_a_direct_path_is_checked_and_a_failed_check_moves_to_the_relay_in_two_seconds(
    ) {
        let mut s = direct_and_busy();
        // The path dies just after second 10: data (a ping every 100 ms) goes out, nothing
        // comes back. Ticks every second, every 100 ms while a check runs (as the daemon).
        let mut ms = 11_000;
        let mut began = None;
        let c = loop {
            s.seen.tx_bytes += 980;
            let c = s.tick_ms(ms);
            if s.checking() && began.is_none() {
                began = Some(ms);
                assert_eq!(c.endpoint, None, "a check leaves the direct path in place");
            }
            if c.mode == Mode::Relay {
                break c;
            }
            ms += if s.checking() { 100 } else { 1000 };
            assert!(ms < 20_000, "still direct at {ms} ms");
        };
        // One second of silence under data starts the check; one second without an answer
        // ends it: the relay, with the session restarted there, 2 s after the last answer.
        assert_eq!(began, Some(11_000));
        assert_eq!(ms, 12_000);
        assert_eq!((c.endpoint, c.restart), (relay(), true));
        // Probed again later by the ladder, like any relayed pair.
        s.handshake(12);
        let mut ms = 12_100;
        while !s.probing() {
            s.tick_ms(ms);
            ms += 100;
            assert!(ms < 14_000, "no probe after the fallback");
        }
    }

    #[test]
    fn a_check_answered_keeps_a_one_way_direct_path() {
        let mut s = direct_and_busy();
        // One-way data for a minute (a stream nothing answers but WireGuard's keepalive every
        // 10 s); each check's datagram is answered by the peer's kernel within 100 ms.
        let (mut ms, mut checks) = (11_000, 0);
        while ms < 71_000 {
            s.seen.tx_bytes += if s.checking() { 98 } else { 980 };
            if ms % 10_000 == 0 {
                s.seen.rx_bytes += 32;
            }
            let was = s.checking();
            let c = s.tick_ms(ms);
            assert_eq!((c.mode, c.restart), (Mode::Direct, false), "at {ms} ms");
            if s.checking() && !was {
                checks += 1;
                // The answer, seen at the next tick.
                s.seen.rx_bytes += 70;
            }
            ms += if s.checking() { 100 } else { 1000 };
        }
        // Asked again after each second of unanswered data (one small datagram and its
        // answer, within the peer's ICMP rate limit of one a second); never left.
        assert!((40..=60).contains(&checks), "{checks} checks in 60 s");
    }

    #[test]
    fn an_idle_direct_pair_is_never_checked_nor_left_on_silence() {
        let mut s = direct_and_busy();
        // Ten idle minutes: our keepalive every 25 s, nothing from the peer but its rekeys.
        for t in 11..600 {
            if t % 25 == 0 {
                s.seen.tx_bytes += 32;
            }
            if t % 120 == 0 {
                s.handshake(t);
            }
            assert_eq!(s.tick(t).mode, Mode::Direct, "at {t}");
            assert!(!s.checking(), "silence alone started a check at {t}");
        }
        assert!(!s.checked);
    }

    #[test]
    fn a_direct_path_whose_handshake_goes_stale_moves_to_the_relay() {
        let mut s = relayed_and_connected();
        s.tick(1);
        s.packet_from(s.published);
        assert_eq!(s.tick(2).mode, Mode::Direct);
        assert_eq!(s.tick(180).mode, Mode::Direct);
        assert_eq!(s.tick(181).mode, Mode::Relay);
    }

    #[test]
    fn a_peer_that_moves_is_relayed_and_its_new_address_probed_at_once() {
        let mut s = relayed_and_connected();
        s.tick(1);
        s.packet_from(s.published);
        assert_eq!(s.tick(2).mode, Mode::Direct);
        s.handshake(30);
        s.tick(30);
        s.published = Some("198.18.0.99:51820".parse().unwrap());
        // The session was made on the direct path, unknown to the relay: restarted there.
        let c = s.tick(40);
        assert_eq!(
            (c.mode, c.endpoint, c.restart),
            (Mode::Relay, relay(), true)
        );
        let c = s.tick(41);
        assert_eq!(
            (c.mode, c.endpoint, c.restart),
            (Mode::Relay, s.published, false)
        );
        // While relayed, another move restarts the session (the relay drops the peer's
        // packets from its new address until a handshake binds it) and the early probes.
        s.tick_ms(41_300);
        s.tick(42);
        s.tick_ms(42_300);
        s.published = Some("198.18.0.98:51820".parse().unwrap());
        let c = s.tick(43);
        assert_eq!((c.endpoint, c.restart), (relay(), true));
        assert_eq!(s.tick(44).endpoint, s.published);
        // A move in the middle of a probe ends it: the session restarts at the relay, never
        // re-added with the probe's "leave the endpoint as it is".
        assert_eq!(s.tick_ms(44_100).endpoint, None);
        s.published = Some("198.18.0.97:51820".parse().unwrap());
        let c = s.tick_ms(44_200);
        assert_eq!((c.endpoint, c.restart), (relay(), true));
    }

    #[test]
    fn counters_that_start_again_start_the_path_afresh() {
        // A direct peer from an earlier run of the interface, with big counters.
        let mut s = relayed_and_connected();
        s.tick(1);
        s.seen.rx_bytes = 1_000_000;
        s.seen.tx_bytes = 1_000_000;
        s.packet_from(s.published);
        assert_eq!(s.tick(2).mode, Mode::Direct);
        // A new interface: counters from 0, no handshake yet. A new start (relayed,
        // probing when the session is up), not a direct path judged by old marks.
        s.seen = Observed::default();
        let c = s.tick(100);
        assert_eq!((c.mode, c.endpoint), (Mode::Relay, relay()));
        s.handshake(101);
        assert_eq!(s.tick(101).endpoint, s.published);
        s.packet_from(s.published);
        assert_eq!(s.tick_ms(101_100).mode, Mode::Direct);
    }

    #[test]
    fn a_silent_relayed_peer_is_nudged_briefly_and_not_often() {
        let mut s = Sim::new();
        s.settings.probe_interval = Duration::from_secs(10_000);
        s.published = None;
        s.tick(0);
        s.handshake(16);
        for t in 16..51 {
            assert_eq!(s.tick(t).keepalive, 25, "at {t}");
        }
        // Nothing received since 16 (35 s): five seconds of 1 s keepalives, to the relay.
        let c = s.tick(51);
        assert_eq!((c.endpoint, c.keepalive), (relay(), PROBE_KEEPALIVE));
        assert_eq!(s.tick(55).keepalive, PROBE_KEEPALIVE);
        assert_eq!(s.tick(56).keepalive, 25);
        // Still silent: the next nudge comes a minute after the last one.
        assert_eq!(s.tick(100).keepalive, 25);
        assert_eq!(s.tick(111).keepalive, PROBE_KEEPALIVE);
        // Packets arriving keep it quiet.
        s.seen.rx_bytes += 32;
        assert_eq!(s.tick(117).keepalive, 25);
        assert_eq!(s.tick(140).keepalive, 25);
    }

    #[test]
    fn a_one_shot_sync_starts_relayed_attempts_direct_once_connected_then_once_per_slot() {
        let mut s = Sim::new();
        s.settings.may_probe = false;
        // Relayed from the first packet, and no attempt before the relayed session is up
        // (the relay must know this end first).
        for t in 0..5 {
            assert_eq!(
                s.tick(t).endpoint,
                relay(),
                "at {t}: relayed, no session yet"
            );
        }
        // The first run that sees the session makes a direct attempt; nothing comes back
        // over it: the relay again after relay_after.
        s.handshake(5);
        assert_eq!(s.tick(5).endpoint, s.published);
        assert_eq!(s.tick(19).mode, Mode::Direct);
        assert_eq!(s.tick(20).endpoint, relay());
        for t in 21..60 {
            assert_eq!(
                s.tick(t).endpoint,
                relay(),
                "at {t}: no probe, attempt done"
            );
        }
        // The next slot (60 s) tries direct again; nothing comes back over it: the relay
        // again after relay_after, though the relayed session's handshake is fresh.
        assert_eq!(s.tick(60).endpoint, s.published);
        assert_eq!(s.tick(74).mode, Mode::Direct);
        assert_eq!(s.tick(75).endpoint, relay());
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
    fn after_a_server_restart_relayed_sessions_restart_the_first_key_at_once_the_other_a_second_later(
    ) {
        let keys: Vec<crate::keys::PublicKey> = (0..2)
            .map(|_| crate::keys::PrivateKey::generate().public_key())
            .collect();
        let (lo, hi) = if keys[0].as_bytes() < keys[1].as_bytes() {
            (keys[0], keys[1])
        } else {
            (keys[1], keys[0])
        };
        let info = |k: crate::keys::PublicKey| crate::proto::model::PeerInfo {
            endpoint: Some(PEER.parse().unwrap()),
            ..crate::proto::model::PeerInfo::for_test(k, "n", 9)
        };
        let settings = PathSettings::default();
        // Each end relays the other; the server restarts; each end notices.
        let mut restarts = Vec::new();
        for (me, peer) in [(lo, info(hi)), (hi, info(lo))] {
            let mut table = PathTable {
                relay: relay(),
                ..PathTable::default()
            };
            let peers = std::slice::from_ref(&peer);
            table.step_all(at(0), &me, peers, None, &settings);
            assert!(!table.step_all(at(1), &me, peers, None, &settings)[&peer.public_key].restart);
            table.server_restarted();
            let mut when = Vec::new();
            for ms in (2_000..6_000).step_by(100) {
                if table.step_all(at_ms(ms), &me, peers, None, &settings)[&peer.public_key].restart
                {
                    when.push(ms);
                }
            }
            restarts.push(when);
        }
        // Staggered; and with no handshake coming back (no dump here), tried again every
        // 1.5 s (2.5 s for the second key), so the two ends never initiate together.
        assert_eq!(
            restarts,
            [vec![2_000, 3_500, 5_000], vec![3_000, 5_500]],
            "staggered restarts and retries"
        );
        // A handshake after the restart ends the retries.
        let peer = info(hi);
        let peers = std::slice::from_ref(&peer);
        let mut table = PathTable {
            relay: relay(),
            ..PathTable::default()
        };
        table.step_all(at(0), &lo, peers, None, &settings);
        table.server_restarted();
        assert!(table.step_all(at(1), &lo, peers, None, &settings)[&hi].restart);
        let dump = crate::os::wgdump::Dump {
            interface: crate::os::wgdump::DumpInterface {
                private_key: None,
                public_key: None,
                listen_port: 51820,
                fwmark: None,
            },
            peers: vec![crate::os::wgdump::DumpPeer {
                public_key: hi,
                has_preshared_key: false,
                endpoint: relay(),
                allowed_ips: peer.allowed_ips.clone(),
                latest_handshake: Some(at(1)),
                transfer_rx: 92,
                transfer_tx: 148,
                persistent_keepalive: Some(25),
            }],
        };
        for secs in 2..10 {
            let c = table.step_all(at(secs), &lo, peers, Some(&dump), &settings)[&hi];
            assert!(!c.restart, "at {secs}");
        }
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
            endpoint: Some(format!("198.18.0.{last}:51820").parse().unwrap()),
            ..crate::proto::model::PeerInfo::for_test(k.public_key(), &format!("n{last}"), last)
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
            may_probe: false,
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
        // are relayed packets: the path stays relayed, at the new relay. (This one-shot
        // end's direct attempt counts as made: this test is about relays.)
        let (table, me, peer) = &mut ends[0];
        let slot = probe_slot(ms(at(22)), pair_offset(me, &peer.public_key), &settings);
        table
            .peers
            .get_mut(&peer.public_key.to_base64())
            .expect("the peer's path")
            .probe_slot = slot;
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
