//! The relay's decisions: which member a WireGuard datagram is for and where to send it, for
//! unmodified WireGuard peers whose endpoint is the server's UDP port. Pure state over
//! `(datagram, source, now)`; the socket loop lives in `stun_service`.
//!
//! How it learns, with zero bytes added to any packet (the design `wpex` uses):
//! - A handshake message's MAC1 is keyed by its *recipient's* public key, so checking it
//!   against every online member's precomputed MAC1 key names the member it is for.
//! - An initiation is forwarded to the recipient's bound address, or, before one is known, to
//!   the addresses at the recipient's own public IP (the IP the server sees its authenticated
//!   HTTP requests come from) that have sent us WireGuard traffic. Its sender index is noted.
//! - The response names the initiator by MAC1 and the initiation by its receiver index: both
//!   ends are then bound (key <-> address, each checked against that member's IP) and both
//!   indexes routed. Transport data and cookie replies follow the indexes.
//!
//! What keeps it from being an open relay or a reflector:
//! - Datagrams from IPs that are not an online member's are dropped before any state is made.
//! - A handshake must be addressed (MAC1) to an online member, and a response completes only
//!   if both ends sit at their members' IPs and the policy lets the pair see each other.
//! - Transport data and cookie replies are forwarded only on a known index, and only from the
//!   other end of it: the address at the other end of a completed handshake, or (a cookie
//!   answering an initiation still pending) an address at the recipient member's IPs.
//! - No amplification: an initiation goes to an address not yet proven (by completing a
//!   handshake here) only within the credit that address earned by sending us datagrams
//!   (packets and bytes, capped); a response goes only to the sender of its initiation, once;
//!   cookie replies are paid from credit. Each source IP's handshakes are rate limited.
//!   Every table is bounded and idle entries expire.

mod limits;
pub mod service;
mod sources;
mod stats;
mod view;

pub use limits::RelayLimits;
pub use stats::{Drop, RelayStats};
pub use view::{Member, MemberView};

use sources::Sources;

use crate::keys::PublicKey;
use crate::proto::wg_wire::{self, Message};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most addresses one handshake is forwarded to while the recipient's address is unknown.
pub const MAX_FANOUT: usize = 4;

/// Where to send a datagram: up to [`MAX_FANOUT`] addresses, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    addrs: [Option<SocketAddr>; MAX_FANOUT],
}

impl Targets {
    fn one(addr: SocketAddr) -> Targets {
        let mut addrs = [None; MAX_FANOUT];
        addrs[0] = Some(addr);
        Targets { addrs }
    }

    /// The addresses, in order.
    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().flatten().copied()
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it, unchanged, to these addresses.
    Forward(Targets),
    /// Send nothing.
    Drop(Drop),
}

/// A source address at a member IP, and what it has earned.
#[derive(Debug, Clone, Copy)]
enum IndexState {
    /// An initiation's sender index, waiting for the response; the recipient by MAC1.
    Pending { recipient: PublicKey },
    /// A completed handshake's index: data for it comes from `from`.
    Established { from: SocketAddr },
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    dest: SocketAddr,
    state: IndexState,
    pair: Option<(PublicKey, PublicKey)>,
    last: Instant,
}

/// The relay's tables. Not thread-safe by itself: the service keeps it behind one mutex.
#[derive(Debug)]
pub struct Relay {
    view: Arc<MemberView>,
    limits: RelayLimits,
    stats: Arc<RelayStats>,
    sources: Sources,
    indexes: HashMap<u32, IndexEntry>,
    bindings: HashMap<PublicKey, SocketAddr>,
    /// `bindings` the other way round.
    bound_at: HashMap<SocketAddr, PublicKey>,
    last_sweep: Instant,
}

impl Relay {
    /// An empty relay over a member view.
    pub fn new(view: Arc<MemberView>, limits: RelayLimits, stats: Arc<RelayStats>) -> Relay {
        Relay {
            view,
            limits,
            stats,
            sources: Sources::default(),
            indexes: HashMap::new(),
            bindings: HashMap::new(),
            bound_at: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// The current member view (to tell whether a new one is worth swapping in).
    pub fn view(&self) -> &Arc<MemberView> {
        &self.view
    }

    /// Swaps in a new member view: sources no longer at a member IP and bindings of members
    /// gone are forgotten; sessions of a pair that may no longer see each other are cut.
    pub fn set_view(&mut self, view: Arc<MemberView>) {
        self.sources.retain_ips(|ip| view.at_member_ip(ip));
        self.bindings.retain(|key, _| view.index_of(key).is_some());
        self.reindex_bindings();
        self.indexes.retain(|_, e| match e.pair {
            Some((a, b)) => match (view.index_of(&a), view.index_of(&b)) {
                (Some(a), Some(b)) => view.sees(a, b),
                _ => false,
            },
            None => true,
        });
        self.view = view;
        self.publish_gauges();
    }

    /// Decides the fate of one datagram from `from`, counting it.
    pub fn handle(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.sweep(now);
        }
        let verdict = self.decide(datagram, from, now);
        match verdict {
            Verdict::Forward(targets) => {
                let handshake =
                    !matches!(wg_wire::parse(datagram), Some(Message::Transport { .. }));
                self.stats
                    .forwarded(handshake, datagram.len(), targets.iter().count());
            }
            Verdict::Drop(why) => {
                self.stats.dropped(why);
                if datagram.first().is_some_and(|t| *t != 4) {
                    log::debug!(
                        "relay: dropped a type-{} message from {from}: {}",
                        datagram[0],
                        why.label()
                    );
                }
            }
        }
        verdict
    }

    fn decide(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        let Some(message) = wg_wire::parse(datagram) else {
            return Verdict::Drop(Drop::Malformed);
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if !self.view.at_member_ip(from.ip()) {
            return Verdict::Drop(Drop::Stranger);
        }
        if let Err(why) = self.sources.earn(from, datagram.len(), now, &self.limits) {
            return Verdict::Drop(why);
        }
        match message {
            Message::Transport { receiver } => {
                let Some(entry) = self.indexes.get_mut(&receiver) else {
                    return Verdict::Drop(Drop::NoRoute);
                };
                match entry.state {
                    IndexState::Established { from: peer } if peer == from => {
                        entry.last = now;
                        Verdict::Forward(Targets::one(entry.dest))
                    }
                    IndexState::Established { .. } => Verdict::Drop(Drop::WrongSource),
                    IndexState::Pending { .. } => Verdict::Drop(Drop::NoRoute),
                }
            }
            Message::Initiation { sender } => {
                if !self.sources.within_rate(from.ip(), now, &self.limits) {
                    return Verdict::Drop(Drop::RateLimited);
                }
                self.initiation(datagram, from, sender, now)
            }
            Message::Response { sender, receiver } => {
                if !self.sources.within_rate(from.ip(), now, &self.limits) {
                    return Verdict::Drop(Drop::RateLimited);
                }
                self.response(datagram, from, sender, receiver, now)
            }
            Message::CookieReply { receiver } => {
                if !self.sources.within_rate(from.ip(), now, &self.limits) {
                    return Verdict::Drop(Drop::RateLimited);
                }
                let Some(entry) = self.indexes.get(&receiver).copied() else {
                    return Verdict::Drop(Drop::NoRoute);
                };
                if !self.cookie_from_other_end(&entry, from) {
                    return Verdict::Drop(Drop::WrongSource);
                }
                let dest = entry.dest;
                if !self.sources.charge(dest, datagram.len()) {
                    return Verdict::Drop(Drop::NoCredit);
                }
                Verdict::Forward(Targets::one(dest))
            }
        }
    }

    /// Whether a cookie reply on `entry`'s index comes from the other end of its session,
    /// checked like transport data: for a completed handshake the address at the other end;
    /// for a pending initiation (a responder under load answers it with a cookie) an address
    /// at the recipient member's own IPs, the only place the initiation was forwarded to.
    fn cookie_from_other_end(&self, entry: &IndexEntry, from: SocketAddr) -> bool {
        match entry.state {
            IndexState::Established { from: peer } => peer == from,
            IndexState::Pending { recipient } => {
                from != entry.dest
                    && self
                        .view
                        .index_of(&recipient)
                        .is_some_and(|m| self.view.members[m].ips.contains(&from.ip()))
            }
        }
    }

    fn initiation(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        sender: u32,
        now: Instant,
    ) -> Verdict {
        let view = Arc::clone(&self.view);
        let guesses = self.sources.recent(from);
        let Some(recipient) = view.recipient_of(datagram, guesses.into_iter().flatten()) else {
            return Verdict::Drop(Drop::NotForMember);
        };
        let recipient_key = view.members[recipient].key;
        self.sources.remember(from, recipient_key);
        // When the source is a known member, the policy can refuse at once.
        if let Some(initiator) = self.bound_key(from).and_then(|k| view.index_of(&k)) {
            if !view.sees(initiator, recipient) {
                return Verdict::Drop(Drop::Policy);
            }
        }
        let mut addrs = [None; MAX_FANOUT];
        let mut n = 0;
        let mut push = |addr: SocketAddr, addrs: &mut [Option<SocketAddr>; MAX_FANOUT]| {
            if n < MAX_FANOUT && addr != from && !addrs.contains(&Some(addr)) {
                addrs[n] = Some(addr);
                n += 1;
            }
        };
        let bound = self.bindings.get(&recipient_key).copied();
        let bound_live = bound.filter(|a| self.sources.is_live(*a, now, self.limits.live));
        if let Some(addr) = bound_live {
            push(addr, &mut addrs);
        } else {
            // Not bound, or the bound address went quiet (the member moved): try the
            // addresses at the member's own IPs that are talking to us, newest first.
            if let Some(addr) = bound {
                push(addr, &mut addrs);
            }
            let mut candidates: Vec<(Instant, SocketAddr)> = view.members[recipient]
                .ips
                .iter()
                .flat_map(|ip| self.sources.live_at(*ip, now, self.limits.live))
                .collect();
            candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
            for (_, addr) in candidates {
                push(addr, &mut addrs);
            }
        }
        if n == 0 {
            return Verdict::Drop(Drop::NoRoute);
        }
        // A live bound address proved it wants this by completing a handshake here; any
        // other address is sent only what it has earned.
        let mut paid = [None; MAX_FANOUT];
        let mut m = 0;
        for addr in addrs.into_iter().flatten() {
            if Some(addr) == bound_live || self.sources.charge(addr, datagram.len()) {
                paid[m] = Some(addr);
                m += 1;
            }
        }
        if m == 0 {
            return Verdict::Drop(Drop::NoCredit);
        }
        let entry = IndexEntry {
            dest: from,
            state: IndexState::Pending {
                recipient: recipient_key,
            },
            pair: None,
            last: now,
        };
        if !self.put_index(sender, entry) {
            return Verdict::Drop(Drop::TableFull);
        }
        Verdict::Forward(Targets { addrs: paid })
    }

    fn response(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        now: Instant,
    ) -> Verdict {
        let view = Arc::clone(&self.view);
        let Some(pending) = self.indexes.get(&receiver).copied() else {
            return Verdict::Drop(Drop::NoRoute);
        };
        let IndexState::Pending { recipient } = pending.state else {
            return Verdict::Drop(Drop::NoRoute);
        };
        // The initiator is most likely the member already bound where the initiation came from.
        let guess = self.bound_key(pending.dest);
        let Some(initiator) = view.recipient_of(datagram, guess) else {
            return Verdict::Drop(Drop::NotForMember);
        };
        let Some(responder) = view.index_of(&recipient) else {
            return Verdict::Drop(Drop::NoRoute);
        };
        let at_own_ip =
            |member: usize, addr: SocketAddr| view.members[member].ips.contains(&addr.ip());
        if !at_own_ip(initiator, pending.dest) || !at_own_ip(responder, from) {
            return Verdict::Drop(Drop::Unauthenticated);
        }
        if !view.sees(initiator, responder) {
            return Verdict::Drop(Drop::Policy);
        }
        // The initiation pays for its one response: the pending entry is consumed below.
        let pair = Some((view.members[initiator].key, recipient));
        let initiator_side = IndexEntry {
            dest: pending.dest,
            state: IndexState::Established { from },
            pair,
            last: now,
        };
        let responder_side = IndexEntry {
            dest: from,
            state: IndexState::Established { from: pending.dest },
            pair,
            last: now,
        };
        self.indexes.insert(receiver, initiator_side);
        if !self.put_index(sender, responder_side) {
            return Verdict::Drop(Drop::TableFull);
        }
        self.bind(view.members[initiator].key, pending.dest);
        self.bind(recipient, from);
        Verdict::Forward(Targets::one(pending.dest))
    }

    /// Inserts an index unless the table is full or the index belongs to a live session of
    /// another address (a 32-bit collision, or someone trying to steal it).
    fn put_index(&mut self, index: u32, entry: IndexEntry) -> bool {
        match self.indexes.get(&index) {
            Some(old)
                if old.dest != entry.dest
                    && matches!(old.state, IndexState::Established { .. }) =>
            {
                false
            }
            Some(_) => {
                self.indexes.insert(index, entry);
                true
            }
            None if self.indexes.len() >= self.limits.max_indexes => false,
            None => {
                self.indexes.insert(index, entry);
                true
            }
        }
    }

    fn bound_key(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.bound_at.get(&addr).copied()
    }

    /// Records that `key` is at `addr`, both ways.
    fn bind(&mut self, key: PublicKey, addr: SocketAddr) {
        if let Some(old) = self.bindings.insert(key, addr) {
            if self.bound_at.get(&old) == Some(&key) {
                self.bound_at.remove(&old);
            }
        }
        self.bound_at.insert(addr, key);
    }

    /// Rebuilds `bound_at` after `bindings` lost entries.
    fn reindex_bindings(&mut self) {
        self.bound_at = self.bindings.iter().map(|(k, a)| (*a, *k)).collect();
    }

    /// Sweeps if a second has passed since the last sweep.
    pub fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.sweep(now);
        }
    }

    /// Forgets idle addresses and indexes, and refreshes the gauges.
    pub fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let l = &self.limits;
        self.sources.sweep(now, l.port_idle);
        self.indexes.retain(|_, e| {
            let idle = now.saturating_duration_since(e.last);
            match e.state {
                IndexState::Pending { .. } => idle < l.pending_idle,
                IndexState::Established { .. } => idle < l.session_idle,
            }
        });
        let sources = &self.sources;
        self.bindings.retain(|_, addr| sources.knows(*addr));
        self.reindex_bindings();
        self.publish_gauges();
    }

    /// Recounts the gauges: once a second (the sweep) and on a new view, never per packet.
    fn publish_gauges(&self) {
        let mut pairs = std::collections::HashSet::new();
        let mut active = std::collections::HashSet::new();
        let mut sessions = 0u64;
        for e in self.indexes.values() {
            if let Some((a, b)) = e.pair {
                sessions += 1;
                let pair = if a <= b { (a, b) } else { (b, a) };
                pairs.insert(pair);
                if self.last_sweep.saturating_duration_since(e.last) < stats::ACTIVE_PAIR {
                    active.insert(pair);
                }
            }
        }
        self.stats
            .active_pairs
            .store(active.len() as u64, Ordering::Relaxed);
        self.stats.sessions.store(sessions, Ordering::Relaxed);
        self.stats
            .pairs
            .store(pairs.len() as u64, Ordering::Relaxed);
        self.stats
            .bound
            .store(self.bindings.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::proto::wg_wire::Mac1Key;
    use crate::proto::wg_wire::{fake_initiation, fake_response, fake_transport};
    use crate::server::policy::Policy;

    struct Node {
        key: PublicKey,
        mac1: Mac1Key,
        addr: SocketAddr,
    }

    fn node(addr: &str) -> Node {
        let key = PrivateKey::generate().public_key();
        Node {
            mac1: Mac1Key::new(&key),
            key,
            addr: addr.parse().unwrap(),
        }
    }

    fn member(n: &Node, tags: &[&str]) -> Member {
        Member {
            public_key: n.key,
            ips: vec![n.addr.ip()],
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            routes: Vec::new(),
        }
    }

    fn relay(members: Vec<Member>, policy: &Policy) -> Relay {
        Relay::new(
            Arc::new(MemberView::new(members, policy)),
            RelayLimits::default(),
            Arc::new(RelayStats::default()),
        )
    }

    fn to(v: Verdict) -> Vec<SocketAddr> {
        match v {
            Verdict::Forward(t) => t.iter().collect(),
            Verdict::Drop(why) => panic!("dropped: {why:?}"),
        }
    }

    #[test]
    fn a_member_that_just_registered_is_no_stranger_for_long() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let views = Arc::new(std::sync::Mutex::new(Arc::new(MemberView::new(
            vec![member(&a, &[])],
            &Policy::allow_all(),
        ))));
        let source = Arc::clone(&views);
        let service = service::RelayService::new(
            Box::new(move || Arc::clone(&source.lock().unwrap())),
            RelayLimits::default(),
        );
        let now = Instant::now();
        // B registers: the registry has it, the relay's view (read a moment ago) not yet.
        *views.lock().unwrap() = Arc::new(MemberView::new(
            vec![member(&a, &[]), member(&b, &[])],
            &Policy::allow_all(),
        ));
        assert_eq!(
            service.handle(&fake_initiation(&a.mac1, 1, 0), b.addr, now),
            Verdict::Drop(Drop::Stranger),
            "within the same instant the view is not read again"
        );
        // A tenth of a second later (not a whole second) B's handshake is taken.
        let later = now + service::NEWCOMER_LOOK;
        assert_ne!(
            service.handle(&fake_initiation(&a.mac1, 2, 0), b.addr, later),
            Verdict::Drop(Drop::Stranger)
        );
    }

    /// A and B each send an initiation; A's reaches B, B responds: the relay binds both.
    fn handshake(r: &mut Relay, a: &Node, b: &Node, now: Instant) -> (u32, u32) {
        // B has been talking to the relay (its own initiation towards A, not answered yet).
        assert_eq!(
            r.handle(&fake_initiation(&a.mac1, 900, 1), b.addr, now),
            Verdict::Drop(Drop::NoRoute)
        );
        assert_eq!(
            to(r.handle(&fake_initiation(&b.mac1, 100, 2), a.addr, now)),
            vec![b.addr]
        );
        assert_eq!(
            to(r.handle(&fake_response(&a.mac1, 200, 100), b.addr, now)),
            vec![a.addr]
        );
        (100, 200)
    }

    #[test]
    fn a_handshake_binds_both_ends_and_routes_data_both_ways() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        let now = Instant::now();
        let (ia, ib) = handshake(&mut r, &a, &b, now);
        assert_eq!(
            to(r.handle(&fake_transport(ib, 4), a.addr, now)),
            vec![b.addr]
        );
        assert_eq!(
            to(r.handle(&fake_transport(ia, 0), b.addr, now)),
            vec![a.addr]
        );
        // Data on A's index from anyone but B goes nowhere.
        let c: SocketAddr = "198.18.1.1:40001".parse().unwrap();
        assert_eq!(
            r.handle(&fake_transport(ia, 0), c, now),
            Verdict::Drop(Drop::WrongSource)
        );
        assert_eq!(
            r.handle(&fake_transport(12345, 0), a.addr, now),
            Verdict::Drop(Drop::NoRoute)
        );
        // Later initiations go straight to the bound address.
        assert_eq!(
            to(r.handle(&fake_initiation(&a.mac1, 300, 3), b.addr, now)),
            vec![a.addr]
        );
        // Gauges are recounted by the sweep, once a second.
        r.sweep(now);
        assert_eq!(r.stats.pairs.load(Ordering::Relaxed), 1);
        assert_eq!(r.stats.active_pairs.load(Ordering::Relaxed), 1);
        assert_eq!(r.stats.bound.load(Ordering::Relaxed), 2);
        // A pair that went direct sends nothing here: no longer active, though its
        // session lingers until it expires.
        r.sweep(now + stats::ACTIVE_PAIR);
        assert_eq!(r.stats.pairs.load(Ordering::Relaxed), 1);
        assert_eq!(r.stats.active_pairs.load(Ordering::Relaxed), 0);
    }

    /// A cookie reply (type 3) built byte by byte: reserved zeros, the receiver index
    /// (little-endian), a 24-byte nonce and a 32-byte encrypted cookie.
    fn raw_cookie_reply(receiver: u32) -> Vec<u8> {
        let mut d = vec![3, 0, 0, 0];
        d.extend_from_slice(&receiver.to_le_bytes());
        d.extend_from_slice(&[0x5a; 24 + 32]);
        assert_eq!(d.len(), 64);
        d
    }

    #[test]
    fn cookie_replies_are_forwarded_only_from_the_other_end_of_their_session() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let c = node("198.18.3.1:40000");
        let members = vec![member(&a, &[]), member(&b, &[]), member(&c, &[])];
        let mut r = relay(members, &Policy::allow_all());
        let now = Instant::now();
        // c talks to the relay too (so it has credit and is no stranger).
        let _ = r.handle(&fake_initiation(&a.mac1, 700, 9), c.addr, now);
        let (ia, ib) = handshake(&mut r, &a, &b, now);
        // Completed session: a cookie on a's index only from b, on b's only from a.
        assert_eq!(
            to(r.handle(&raw_cookie_reply(ia), b.addr, now)),
            vec![a.addr]
        );
        assert_eq!(
            to(r.handle(&raw_cookie_reply(ib), a.addr, now)),
            vec![b.addr]
        );
        for (index, from) in [(ia, c.addr), (ib, c.addr), (ia, a.addr)] {
            assert_eq!(
                r.handle(&raw_cookie_reply(index), from, now),
                Verdict::Drop(Drop::WrongSource),
                "cookie on {index} from {from}"
            );
        }
        // A pending initiation from a to b (index 300): b may answer it with a cookie,
        // another member may not, nor a itself.
        assert_eq!(
            to(r.handle(&fake_initiation(&b.mac1, 300, 4), a.addr, now)),
            vec![b.addr]
        );
        for from in [c.addr, a.addr] {
            assert_eq!(
                r.handle(&raw_cookie_reply(300), from, now),
                Verdict::Drop(Drop::WrongSource),
                "pending cookie from {from}"
            );
        }
        assert_eq!(
            to(r.handle(&raw_cookie_reply(300), b.addr, now)),
            vec![a.addr]
        );
    }

    #[test]
    fn strangers_and_unaddressed_handshakes_reach_nobody() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        let now = Instant::now();
        handshake(&mut r, &a, &b, now);
        let stranger: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        // Even a stranger who knows B's public key gets nothing forwarded.
        for junk in [
            fake_initiation(&b.mac1, 1, 0).to_vec(),
            fake_response(&a.mac1, 1, 100).to_vec(),
            fake_transport(100, 2),
        ] {
            assert_eq!(
                r.handle(&junk, stranger, now),
                Verdict::Drop(Drop::Stranger)
            );
        }
        assert_eq!(
            r.handle(b"hello", a.addr, now),
            Verdict::Drop(Drop::Malformed)
        );
        let nobody = Mac1Key::new(&PrivateKey::generate().public_key());
        assert_eq!(
            r.handle(&fake_initiation(&nobody, 5, 0), a.addr, now),
            Verdict::Drop(Drop::NotForMember)
        );
        assert_eq!(r.stats.drops(Drop::Stranger), 3);
    }

    #[test]
    fn a_policy_denied_pair_never_completes_a_handshake() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let policy = Policy::from_json(r#"{"allow":[{"from":["tag:x"],"to":["tag:x"]}]}"#).unwrap();
        let mut r = relay(
            vec![member(&a, &["tag:x"]), member(&b, &["tag:y"])],
            &policy,
        );
        let now = Instant::now();
        r.handle(&fake_initiation(&a.mac1, 900, 1), b.addr, now);
        to(r.handle(&fake_initiation(&b.mac1, 100, 2), a.addr, now));
        assert_eq!(
            r.handle(&fake_response(&a.mac1, 200, 100), b.addr, now),
            Verdict::Drop(Drop::Policy)
        );
        assert_eq!(
            r.handle(&fake_transport(200, 1), a.addr, now),
            Verdict::Drop(Drop::NoRoute)
        );
    }

    #[test]
    fn a_response_from_the_wrong_ip_binds_nothing() {
        let (a, b, c) = (
            node("198.18.1.1:40000"),
            node("198.18.2.1:50000"),
            node("198.18.3.1:50000"),
        );
        let mut r = relay(
            vec![member(&a, &[]), member(&b, &[]), member(&c, &[])],
            &Policy::allow_all(),
        );
        let now = Instant::now();
        r.handle(&fake_initiation(&a.mac1, 900, 1), b.addr, now);
        to(r.handle(&fake_initiation(&b.mac1, 100, 2), a.addr, now));
        // C saw nothing, but guesses the index and answers as if it were B.
        assert_eq!(
            r.handle(&fake_response(&a.mac1, 200, 100), c.addr, now),
            Verdict::Drop(Drop::Unauthenticated)
        );
    }

    #[test]
    fn never_sends_more_than_an_address_sent() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        r.limits = RelayLimits {
            handshakes_per_second: 0,
            ..RelayLimits::default()
        };
        let now = Instant::now();
        // B sent one keepalive (32 bytes): not enough for a 148-byte initiation.
        r.handle(&fake_transport(1, 0), b.addr, now);
        assert_eq!(
            r.handle(&fake_initiation(&b.mac1, 100, 2), a.addr, now),
            Verdict::Drop(Drop::NoCredit)
        );
        // Five keepalives (160 bytes) pay for exactly one initiation.
        for _ in 0..4 {
            r.handle(&fake_transport(1, 0), b.addr, now);
        }
        to(r.handle(&fake_initiation(&b.mac1, 101, 2), a.addr, now));
        assert_eq!(
            r.handle(&fake_initiation(&b.mac1, 102, 2), a.addr, now),
            Verdict::Drop(Drop::NoCredit)
        );
        // A flood of initiations from A reaches B at most as often as B spoke.
        let mut forwarded = 0;
        for i in 0..1000 {
            if let Verdict::Forward(_) =
                r.handle(&fake_initiation(&b.mac1, 1000 + i, 2), a.addr, now)
            {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, 0);
    }

    #[test]
    fn handshakes_are_rate_limited_per_source_ip() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        let now = Instant::now();
        let limited = (0..200)
            .filter(|i| {
                r.handle(&fake_initiation(&b.mac1, *i, 2), a.addr, now)
                    == Verdict::Drop(Drop::RateLimited)
            })
            .count();
        assert_eq!(limited, 200 - 50);
    }

    #[test]
    fn tables_expire_and_stay_bounded() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        r.limits.ports_per_ip = 8;
        let now = Instant::now();
        let (_, ib) = handshake(&mut r, &a, &b, now);
        for port in 1..100u16 {
            r.handle(
                &fake_transport(1, 0),
                SocketAddr::new(a.addr.ip(), port),
                now,
            );
        }
        assert_eq!(r.sources.ports_at(a.addr.ip()), 8);
        let later = now + Duration::from_secs(300);
        r.sweep(later);
        assert!(r.sources.is_empty() && r.indexes.is_empty() && r.bindings.is_empty());
        assert_eq!(
            r.handle(&fake_transport(ib, 0), a.addr, later),
            Verdict::Drop(Drop::NoRoute)
        );
    }

    #[test]
    fn a_new_view_cuts_pairs_the_policy_now_denies() {
        let (a, b) = (node("198.18.1.1:40000"), node("198.18.2.1:50000"));
        let mut r = relay(vec![member(&a, &[]), member(&b, &[])], &Policy::allow_all());
        let now = Instant::now();
        let (_, ib) = handshake(&mut r, &a, &b, now);
        let deny = Policy::from_json(r#"{"allow":[]}"#).unwrap();
        r.set_view(Arc::new(MemberView::new(
            vec![member(&a, &[]), member(&b, &[])],
            &deny,
        )));
        assert_eq!(
            r.handle(&fake_transport(ib, 0), a.addr, now),
            Verdict::Drop(Drop::NoRoute)
        );
        // A member that went offline is a stranger.
        r.set_view(Arc::new(MemberView::new(
            vec![member(&a, &[])],
            &Policy::allow_all(),
        )));
        assert_eq!(
            r.handle(&fake_transport(ib, 0), b.addr, now),
            Verdict::Drop(Drop::Stranger)
        );
    }

    #[test]
    fn metrics_name_every_drop_reason() {
        let stats = RelayStats::default();
        stats.dropped(Drop::Policy);
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        assert!(out.contains("wgmesh_relay_dropped_total{reason=\"policy\"} 1\n"));
        for d in Drop::ALL {
            assert!(out.contains(&format!("reason=\"{}\"", d.label())));
        }
    }
}
