//! The change log behind live sync (`GET /peers?since=N`): a global version that grows with
//! every change any caller could see, and a bounded ring of which peer changed at which
//! version, so a caller that has version N is sent only what changed after N.
//!
//! Pure state, no I/O and no serialization: the registry records here whenever what `/peers`
//! shows changes (a peer joined, changed, went offline, left), the API records a policy
//! reload with the policy it replaced, and [`delta`] turns "what changed since N" into the
//! entries one tag group must get again and the ids it must drop. One change at 10,000 peers
//! therefore costs each caller O(changes), never a whole list.
//!
//! On the JSON store (one server), versions start at the server's start time in
//! microseconds since the Unix epoch (below 2^53, so JavaScript clients read them exactly)
//! and grow by one per change: a version from before a restart is older than everything
//! this process can answer, and a version from the future (another server) is unknown.
//! Both are answered with the full list.
//!
//! Replicas on PostgreSQL ([`ChangeLog::following`]) take their versions from the database
//! instead: a change's version is its sequence number, handed out under the cluster's write
//! lock, so commit order is version order and every replica gives one change one version.
//! A version taken from any replica is then answerable by every other one as a delta. A
//! replica's log starts (its floor) at the sequence its registry was loaded at, so older
//! versions get the full list; a version ahead of it makes the replica catch up with the
//! database first (`crate::server::api`).

use crate::server::policy::{Membership, Party, Policy};
use crate::types::PeerId;
use crate::types::Tag;
use ipnet::IpNet;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// Changes remembered by default: enough for a laptop asleep through a busy hour of a
/// 10,000-node mesh's churn; older callers get the full list, which is always correct.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// One recorded change: at `version`, peer `peer` changed in a way `/peers` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    version: u64,
    peer: PeerId,
}

/// What a caller holding version `since` must be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Nothing changed: the caller is current (a long-poll waits here).
    Current,
    /// `since` is unknown or too old to answer as a delta: send the whole list.
    Full,
    /// The peers that changed after `since` (each once, in order of their last change),
    /// and the policy that was in force at `since` if the policy was reloaded since.
    Delta {
        /// Peers changed after `since`.
        peers: Vec<PeerId>,
        /// The policy in force at `since`, when another one is in force now.
        policy_then: Option<Arc<Policy>>,
    },
}

/// The version counter and the bounded ring of recent changes.
#[derive(Debug)]
pub struct ChangeLog {
    version: u64,
    /// The oldest `since` still answerable as a delta: every change after it is in the ring.
    floor: u64,
    changes: VecDeque<Change>,
    /// Policy reloads: the version of the reload and the policy it replaced.
    policies: VecDeque<(u64, Arc<Policy>)>,
    capacity: usize,
    /// Versions are set from outside ([`ChangeLog::advance_to`], a replica's database
    /// sequence) instead of counted here.
    following: bool,
}

/// The first version of a process: its start time in microseconds (see the module docs).
pub fn start_version(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

impl ChangeLog {
    /// An empty log at version `start`, remembering up to `capacity` changes.
    pub fn new(start: u64, capacity: usize) -> ChangeLog {
        ChangeLog {
            version: start,
            floor: start,
            changes: VecDeque::new(),
            policies: VecDeque::new(),
            capacity: capacity.max(1),
            following: false,
        }
    }

    /// An empty log at version `start` whose versions come from elsewhere: each change is
    /// recorded at the version last given to [`ChangeLog::advance_to`] (a replica's database
    /// sequence number), so replicas that apply the same changes agree on every version.
    pub fn following(start: u64, capacity: usize) -> ChangeLog {
        ChangeLog {
            following: true,
            ..ChangeLog::new(start, capacity)
        }
    }

    /// Following the database: the changes recorded from now on happen at version `v` (the
    /// sequence number of the change being applied), or nothing visible changed up to `v`.
    /// Versions never go back: an older `v` is ignored. A counting log ignores it too.
    pub fn advance_to(&mut self, v: u64) {
        if self.following && v > self.version {
            self.version = v;
        }
    }

    /// The next change's version: one more when counting, the given one when following.
    fn next_version(&mut self) -> u64 {
        if !self.following {
            self.version += 1;
        }
        self.version
    }

    /// The current version: what a caller that has seen everything holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records that `peer` changed (joined, changed, went offline or left); returns the new
    /// version.
    pub fn record(&mut self, peer: PeerId) -> u64 {
        self.next_version();
        if self.changes.len() == self.capacity {
            if let Some(old) = self.changes.pop_front() {
                self.forget_up_to(old.version);
            }
        }
        self.changes.push_back(Change {
            version: self.version,
            peer,
        });
        self.version
    }

    /// Records a policy reload, keeping the policy it replaced so deltas across it can tell
    /// who entered or left each caller's view; returns the new version.
    pub fn record_policy(&mut self, replaced: Arc<Policy>) -> u64 {
        self.next_version();
        self.policies.push_back((self.version, replaced));
        self.version
    }

    /// Makes every earlier version unanswerable as a delta (something changed for everyone,
    /// e.g. the IPv6 mesh prefix at start); returns the new version. Counting logs only: a
    /// following log has no version of its own to move to (a replica starts a new log).
    pub fn reset(&mut self) -> u64 {
        self.next_version();
        self.forget_up_to(self.version);
        self.version
    }

    fn forget_up_to(&mut self, version: u64) {
        self.floor = self.floor.max(version);
        while self.changes.front().is_some_and(|c| c.version <= version) {
            self.changes.pop_front();
        }
        while self.policies.front().is_some_and(|(v, _)| *v <= version) {
            self.policies.pop_front();
        }
    }

    /// What a caller holding `since` needs.
    pub fn since(&self, since: u64) -> Since {
        if since == self.version {
            return Since::Current;
        }
        if since < self.floor || since > self.version {
            return Since::Full;
        }
        // Newest first, so each peer is listed once at its last change; then back in order.
        let start = self.changes.partition_point(|c| c.version <= since);
        let mut seen = HashSet::new();
        let mut peers: Vec<PeerId> = self
            .changes
            .range(start..)
            .rev()
            .filter(|c| seen.insert(&c.peer))
            .map(|c| c.peer.clone())
            .collect();
        peers.reverse();
        let policy_then = self
            .policies
            .iter()
            .find(|(v, _)| *v > since)
            .map(|(_, p)| p.clone());
        Since::Delta { peers, policy_then }
    }
}

/// What the registry knows of one peer, as [`delta`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct PeerState<'a> {
    /// Its tags (which decide who sees it).
    pub tags: &'a [Tag],
    /// Its approved subnet routes (the peers granted a part of one see it too).
    pub routes: &'a [IpNet],
    /// Whether it is online (only online peers are listed).
    pub online: bool,
}

/// A delta for one tag group: ids to send again (their current entries) and ids to drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Peers to (re)send, as the caller's list must now show them.
    pub changed: Vec<PeerId>,
    /// Peers the caller must drop (some may never have been in its list: dropping an
    /// unknown id is a no-op, and cheaper than remembering what each caller had).
    pub removed: Vec<PeerId>,
}

/// A peer's tags and approved routes, as borrowed from the registry: the memo key of
/// [`delta`] (routes in the registry's order; equal sets in another order only cost a
/// second evaluation).
type Looked<'a> = (&'a [Tag], &'a [IpNet]);

/// Turns the peers changed since a caller's version into what a caller of party `caller`
/// must apply: a changed peer it may see now is sent again, any other changed peer is
/// dropped. Across a policy reload (`policy_then`), every online peer whose visibility
/// differs between the old and new policy is sent or dropped too, and a visible one whose
/// entry the policy shapes is sent again: a subnet router (the parts of its routes the caller
/// is granted may have moved) and, to a caller that serves routes, a peer whose own grants
/// (`reach`) moved. Other peers that
/// did not change keep the data the caller already has, so only their visibility matters.
///
/// `lookup` answers for a registered peer (None once deregistered); `online` lists every
/// online peer with its tags and approved routes, and is only walked across a policy reload.
pub fn delta<'a>(
    changed: &[PeerId],
    policy_then: Option<&Policy>,
    policy_now: &Policy,
    caller: &Party,
    lookup: impl Fn(&PeerId) -> Option<PeerState<'a>>,
    online: impl Iterator<Item = (&'a PeerId, &'a [Tag], &'a [IpNet])>,
) -> Delta {
    let mine = policy_now.membership_of(caller);
    let mut out = Delta::default();
    for id in changed {
        match lookup(id) {
            Some(state)
                if state.online
                    && policy_now
                        .membership_routed(state.tags, state.routes)
                        .sees(&mine) =>
            {
                out.changed.push(id.clone())
            }
            _ => out.removed.push(id.clone()),
        }
    }
    if let Some(then) = policy_then {
        let mine_then = then.membership_of(caller);
        let done: HashSet<&PeerId> = changed.iter().collect();
        let mut memo: std::collections::HashMap<Looked<'a>, (bool, bool, bool)> =
            std::collections::HashMap::new();
        for (id, tags, routes) in online {
            if done.contains(id) {
                continue;
            }
            let (before, now, grants_moved) = *memo.entry((tags, routes)).or_insert_with(|| {
                let (m_now, m_then): (Membership, Membership) = (
                    policy_now.membership_routed(tags, routes),
                    then.membership_routed(tags, routes),
                );
                let moved: bool = policy_now.grants(&m_now) != then.grants(&m_then);
                (m_then.sees(&mine_then), m_now.sees(&mine), moved)
            });
            match (before, now) {
                (false, true) => out.changed.push(id.clone()),
                (true, false) => out.removed.push(id.clone()),
                (true, true) if !routes.is_empty() || (caller.serves && grants_moved) => {
                    out.changed.push(id.clone())
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(n: u32) -> PeerId {
        format!("peer-{n:016x}").parse().unwrap()
    }

    fn tag(t: &str) -> Tag {
        t.parse().unwrap()
    }

    fn policy(json: &str) -> Arc<Policy> {
        Arc::new(Policy::from_json(json).unwrap())
    }

    fn peers_of(s: Since) -> Vec<PeerId> {
        match s {
            Since::Delta { peers, .. } => peers,
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn versions_grow_with_every_change_and_start_at_the_given_time() {
        let mut log = ChangeLog::new(1000, 8);
        assert_eq!(log.version(), 1000);
        assert_eq!(log.record(id(1)), 1001);
        assert_eq!(log.record_policy(Arc::new(Policy::allow_all())), 1002);
        assert_eq!(log.reset(), 1003);
        assert!(start_version(SystemTime::now()) > 1_600_000_000_000_000);
        assert!(start_version(SystemTime::now()) < 1 << 53);
    }

    #[test]
    fn the_current_version_needs_nothing() {
        let mut log = ChangeLog::new(10, 8);
        assert_eq!(log.since(10), Since::Current);
        log.record(id(1));
        assert_eq!(log.since(11), Since::Current);
    }

    #[test]
    fn a_delta_lists_each_changed_peer_once_in_order_of_last_change() {
        let mut log = ChangeLog::new(0, 100);
        log.record(id(1));
        log.record(id(2));
        log.record(id(1));
        log.record(id(3));
        assert_eq!(peers_of(log.since(0)), vec![id(2), id(1), id(3)]);
        assert_eq!(peers_of(log.since(1)), vec![id(2), id(1), id(3)]);
        assert_eq!(peers_of(log.since(2)), vec![id(1), id(3)]);
        assert_eq!(peers_of(log.since(3)), vec![id(3)]);
    }

    #[test]
    fn unknown_or_too_old_versions_get_the_full_list() {
        let mut log = ChangeLog::new(100, 3);
        // A version from before this process started (a restart) or from the future.
        assert_eq!(log.since(99), Since::Full);
        assert_eq!(log.since(101), Since::Full);
        for n in 0..5 {
            log.record(id(n));
        }
        // Versions 101..=105 were recorded; the ring holds 103..=105, so 102 is the oldest
        // answerable `since`.
        assert_eq!(log.since(101), Since::Full);
        assert_eq!(peers_of(log.since(102)), vec![id(2), id(3), id(4)]);
        assert_eq!(peers_of(log.since(104)), vec![id(4)]);
        assert_eq!(log.since(106), Since::Full);
    }

    #[test]
    fn a_reset_makes_every_earlier_version_full() {
        let mut log = ChangeLog::new(0, 8);
        log.record(id(1));
        let v = log.reset();
        assert_eq!(log.since(0), Since::Full);
        assert_eq!(log.since(1), Since::Full);
        assert_eq!(log.since(v), Since::Current);
        log.record(id(2));
        assert_eq!(peers_of(log.since(v)), vec![id(2)]);
    }

    #[test]
    fn a_delta_across_a_policy_reload_carries_the_policy_then() {
        let old = policy(r#"{"allow": []}"#);
        let mut log = ChangeLog::new(0, 8);
        log.record(id(1));
        log.record_policy(old.clone());
        log.record(id(2));
        match log.since(0) {
            Since::Delta { peers, policy_then } => {
                assert_eq!(peers, vec![id(1), id(2)]);
                assert_eq!(policy_then.as_deref(), Some(&*old));
            }
            other => panic!("{other:?}"),
        }
        match log.since(2) {
            Since::Delta { policy_then, .. } => assert!(policy_then.is_none()),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(log.since(1), Since::Delta { ref peers, policy_then: Some(_) } if *peers == [id(2)])
        );
        // Only a policy change: a delta with no peer, but the old policy.
        let mut log = ChangeLog::new(0, 8);
        log.record_policy(old);
        assert!(
            matches!(log.since(0), Since::Delta { ref peers, policy_then: Some(_) } if peers.is_empty())
        );
    }

    #[test]
    fn the_first_policy_after_since_is_the_one_in_force_then() {
        let first = policy(r#"{"allow": []}"#);
        let second = Arc::new(Policy::allow_all());
        let mut log = ChangeLog::new(0, 8);
        log.record_policy(first.clone());
        log.record_policy(second.clone());
        let then = |s| match log.since(s) {
            Since::Delta { policy_then, .. } => policy_then,
            other => panic!("{other:?}"),
        };
        assert_eq!(then(0).as_deref(), Some(&*first));
        assert_eq!(then(1).as_deref(), Some(&*second));
    }

    #[test]
    fn policies_are_forgotten_with_the_changes_around_them() {
        let mut log = ChangeLog::new(0, 2);
        log.record_policy(Arc::new(Policy::allow_all()));
        log.record(id(1));
        log.record(id(2));
        log.record(id(3));
        assert!(log.policies.is_empty());
        assert_eq!(log.since(0), Since::Full);
    }

    #[test]
    fn a_following_log_takes_its_versions_from_the_database() {
        let mut log = ChangeLog::following(40, 8);
        assert_eq!(log.version(), 40);
        // Sequence 41 went to a change this replica did not need to show (an unchanged
        // record), 42 and 45 to peers, 46 to a policy reload; 43 and 44 were never committed.
        log.advance_to(41);
        log.advance_to(42);
        assert_eq!(log.record(id(1)), 42);
        log.advance_to(45);
        assert_eq!(log.record(id(2)), 45);
        log.advance_to(46);
        assert_eq!(log.record_policy(Arc::new(Policy::allow_all())), 46);
        // Never backwards.
        log.advance_to(44);
        assert_eq!(log.version(), 46);
        assert_eq!(log.since(46), Since::Current);
        assert_eq!(peers_of(log.since(40)), vec![id(1), id(2)]);
        assert_eq!(peers_of(log.since(41)), vec![id(1), id(2)]);
        // A version another replica gave out between two changes means the same here.
        assert_eq!(peers_of(log.since(43)), vec![id(2)]);
        assert!(
            matches!(log.since(45), Since::Delta { ref peers, policy_then: Some(_) } if peers.is_empty())
        );
        // Before the load (the floor) or not reached yet: the full list.
        assert_eq!(log.since(39), Since::Full);
        assert_eq!(log.since(47), Since::Full);
    }

    #[test]
    fn a_counting_log_ignores_versions_from_outside() {
        let mut log = ChangeLog::new(100, 8);
        log.advance_to(500);
        assert_eq!(log.version(), 100);
        assert_eq!(log.record(id(1)), 101);
    }

    #[test]
    fn two_following_logs_fed_the_same_changes_in_batches_agree() {
        // Replica A applies each change as it happens; replica B catches up in two batches
        // and, like a replica whose own record was already current, records change 3 at
        // its version without a visible change. Every version answers alike on both.
        let changes = [(3u64, 1u32), (4, 2), (7, 1), (9, 3)];
        let mut a = ChangeLog::following(2, 16);
        for (seq, peer) in changes {
            a.advance_to(seq);
            a.record(id(peer));
        }
        let mut b = ChangeLog::following(2, 16);
        b.advance_to(3);
        b.advance_to(4);
        b.record(id(2));
        for (seq, peer) in &changes[2..] {
            b.advance_to(*seq);
            b.record(id(*peer));
        }
        assert_eq!(a.version(), b.version());
        for since in 2..=9 {
            assert_eq!(a.since(since), b.since(since), "since {since}");
        }
    }

    /// A little registry for `delta`: id -> (tags, online), and the approved routes of
    /// the subnet routers among them.
    struct World(
        HashMap<PeerId, (Vec<Tag>, bool)>,
        HashMap<PeerId, Vec<IpNet>>,
    );

    impl World {
        fn new(peers: &[(u32, &[&str], bool)]) -> World {
            World(
                peers
                    .iter()
                    .map(|(n, tags, online)| {
                        (id(*n), (tags.iter().map(|t| tag(t)).collect(), *online))
                    })
                    .collect(),
                HashMap::new(),
            )
        }

        fn routing(mut self, n: u32, routes: &[&str]) -> World {
            self.1
                .insert(id(n), routes.iter().map(|r| r.parse().unwrap()).collect());
            self
        }

        fn delta(
            &self,
            changed: &[u32],
            then: Option<&Policy>,
            now: &Policy,
            caller: &[&str],
        ) -> Delta {
            let caller: Vec<Tag> = caller.iter().map(|t| tag(t)).collect();
            self.delta_of(changed, then, now, &Party::tagged(&caller))
        }

        fn delta_of(
            &self,
            changed: &[u32],
            then: Option<&Policy>,
            now: &Policy,
            caller: &Party,
        ) -> Delta {
            let routes = |p: &PeerId| self.1.get(p).map_or(&[][..], |r| r.as_slice());
            let changed: Vec<PeerId> = changed.iter().map(|n| id(*n)).collect();
            let mut d = delta(
                &changed,
                then,
                now,
                caller,
                |p| {
                    self.0.get(p).map(|(tags, online)| PeerState {
                        tags,
                        routes: routes(p),
                        online: *online,
                    })
                },
                self.0
                    .iter()
                    .filter(|(_, (_, online))| *online)
                    .map(|(p, (tags, _))| (p, tags.as_slice(), routes(p))),
            );
            d.changed.sort();
            d.removed.sort();
            d
        }
    }

    fn ids(list: &[u32]) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = list.iter().map(|n| id(*n)).collect();
        v.sort();
        v
    }

    #[test]
    fn changed_peers_in_view_are_sent_and_others_dropped() {
        let world = World::new(&[(1, &[], true), (2, &[], false)]);
        let all = Policy::allow_all();
        // 3 was deregistered: gone from the registry.
        let d = world.delta(&[1, 2, 3], None, &all, &[]);
        assert_eq!(d.changed, ids(&[1]));
        assert_eq!(d.removed, ids(&[2, 3]));
    }

    #[test]
    fn a_changed_peer_the_policy_hides_is_dropped() {
        let p = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}"#);
        let world = World::new(&[(1, &["tag:db"], true), (2, &["tag:web"], true)]);
        let d = world.delta(&[1, 2], None, &p, &["tag:dev"]);
        assert_eq!(d.changed, ids(&[1]));
        assert_eq!(d.removed, ids(&[2]));
        // The db sees dev (symmetric), but not web.
        let d = world.delta(&[1, 2], None, &p, &["tag:web"]);
        assert!(d.changed.is_empty());
        assert_eq!(d.removed, ids(&[1, 2]));
    }

    #[test]
    fn without_a_policy_reload_unchanged_peers_are_not_touched() {
        let world = World::new(&[(1, &[], true), (2, &[], true)]);
        let d = world.delta(&[], None, &Policy::allow_all(), &[]);
        assert_eq!(d, Delta::default());
    }

    #[test]
    fn a_policy_reload_drops_peers_that_left_the_view_and_sends_those_that_entered() {
        let then = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}"#);
        let now = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:web"]}]}"#);
        let world = World::new(&[
            (1, &["tag:db"], true),
            (2, &["tag:web"], true),
            (3, &["tag:dev"], true),
            (4, &["tag:web"], false),
        ]);
        let d = world.delta(&[], Some(&then), &now, &["tag:dev"]);
        assert_eq!(d.changed, ids(&[2]));
        assert_eq!(d.removed, ids(&[1]));
        // Seen from the db: dev left its view, nobody entered.
        let d = world.delta(&[], Some(&then), &now, &["tag:db"]);
        assert!(d.changed.is_empty());
        assert_eq!(d.removed, ids(&[3]));
        // Seen from web: dev entered.
        let d = world.delta(&[], Some(&then), &now, &["tag:web"]);
        assert_eq!(d.changed, ids(&[3]));
        assert!(d.removed.is_empty());
    }

    #[test]
    fn a_peer_both_changed_and_moved_by_a_reload_is_listed_once() {
        let then = policy(r#"{"allow": []}"#);
        let now = Policy::allow_all();
        let world = World::new(&[(1, &[], true), (2, &[], true), (3, &[], false)]);
        let d = world.delta(&[1, 3], Some(&then), &now, &[]);
        assert_eq!(d.changed, ids(&[1, 2]));
        assert_eq!(d.removed, ids(&[3]));
        // The other way round: everyone leaves.
        let d = world.delta(&[1], Some(&now), &then, &[]);
        assert!(d.changed.is_empty());
        assert_eq!(d.removed, ids(&[1, 2]));
    }

    #[test]
    fn a_reload_resends_routers_and_peers_whose_grants_moved_and_shows_granted_routers() {
        // 1: a router of 192.168.10.0/24 (tag:gw); 2: tag:b; 3: untagged.
        let world = World::new(&[
            (1, &["tag:gw"], true),
            (2, &["tag:b"], true),
            (3, &[], true),
        ])
        .routing(1, &["192.168.10.0/24"]);
        let by_tag = policy(
            r#"{"allow": [{"from": ["tag:b"], "to": ["tag:gw"]}, {"from": ["*"], "to": ["tag:b"]}]}"#,
        );
        let by_prefix = policy(
            r#"{"allow": [{"from": ["tag:b"], "to": ["192.168.10.10"]}, {"from": ["*"], "to": ["tag:b"]}]}"#,
        );
        // tag:b saw the router before and still does, but the part of its route moved.
        let d = world.delta(&[], Some(&by_tag), &by_prefix, &["tag:b"]);
        assert_eq!(d.changed, ids(&[1]));
        // The router sees tag:b both times, whose grants moved (its `reach`).
        let gw = Party::new(&[tag("tag:gw")], &["192.168.10.0/24".parse().unwrap()]);
        let d = world.delta_of(&[], Some(&by_tag), &by_prefix, &gw);
        assert_eq!(d.changed, ids(&[2]));
        // The untagged peer's view of tag:b is unchanged, and it is not told what tag:b may
        // reach (it routes nothing): nothing to send.
        let d = world.delta(&[], Some(&by_tag), &by_prefix, &[]);
        assert!(d.changed.is_empty() && d.removed.is_empty(), "{d:?}");
        // A node that advertises a route still waiting for approval is told.
        let waiting = Party::tagged(&[]).serving(true);
        let d = world.delta_of(&[], Some(&by_tag), &by_prefix, &waiting);
        assert_eq!(d.changed, ids(&[2]));
        // A grant alone makes the router and the granted peer see each other.
        let only_prefix = policy(r#"{"allow": [{"from": ["tag:b"], "to": ["192.168.10.0/25"]}]}"#);
        let none = policy(r#"{"allow": []}"#);
        let d = world.delta(&[], Some(&none), &only_prefix, &["tag:b"]);
        assert_eq!(d.changed, ids(&[1]));
        let d = world.delta_of(&[], Some(&only_prefix), &none, &gw);
        assert_eq!(d.removed, ids(&[2]));
        // A changed router is judged with its routes.
        let d = world.delta(&[1], None, &only_prefix, &["tag:b"]);
        assert_eq!(d.changed, ids(&[1]));
    }

    #[test]
    fn replaying_a_delta_onto_the_old_view_gives_the_new_view() {
        // Exhaustive over small worlds: every subset of 4 peers online then and now, every
        // subset changed, two policies either way round, every caller group.
        let dev_db = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}"#);
        let all = Arc::new(Policy::allow_all());
        let tags: [&[&str]; 4] = [&["tag:dev"], &["tag:db"], &[], &["tag:dev", "tag:db"]];
        for (then_p, now_p) in [(&dev_db, &all), (&all, &dev_db), (&all, &all)] {
            let reload = !Arc::ptr_eq(then_p, now_p);
            for caller in tags {
                for online_then in 0u32..16 {
                    for online_now in 0u32..16 {
                        for changed in 0u32..16 {
                            // A peer whose online state differs must have changed.
                            if (online_then ^ online_now) & !changed != 0 {
                                continue;
                            }
                            let view = |p: &Policy, online: u32| -> Vec<PeerId> {
                                let me = p
                                    .membership(&caller.iter().map(|t| tag(t)).collect::<Vec<_>>());
                                (0..4)
                                    .filter(|i| online & (1 << i) != 0)
                                    .filter(|i| {
                                        let t: Vec<Tag> =
                                            tags[*i as usize].iter().map(|t| tag(t)).collect();
                                        p.membership(&t).sees(&me)
                                    })
                                    .map(id)
                                    .collect()
                            };
                            let before = view(then_p, online_then);
                            let after = view(now_p, online_now);
                            let world = World::new(&[
                                (0, tags[0], online_now & 1 != 0),
                                (1, tags[1], online_now & 2 != 0),
                                (2, tags[2], online_now & 4 != 0),
                                (3, tags[3], online_now & 8 != 0),
                            ]);
                            let changed_ids: Vec<u32> =
                                (0..4).filter(|i| changed & (1 << i) != 0).collect();
                            let d = world.delta(
                                &changed_ids,
                                reload.then_some(&**then_p),
                                now_p,
                                caller,
                            );
                            let mut got: Vec<PeerId> = before
                                .into_iter()
                                .filter(|p| !d.removed.contains(p) && !d.changed.contains(p))
                                .chain(d.changed.iter().cloned())
                                .collect();
                            got.sort();
                            let mut want = after.clone();
                            want.sort();
                            assert_eq!(got, want, "caller {caller:?} then {online_then:b} now {online_now:b} changed {changed:b} reload {reload}");
                        }
                    }
                }
            }
        }
    }
}
