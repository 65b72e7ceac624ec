//! Who sees whom: the access policy that decides which peers appear in each peer's list.
//!
//! A policy is JSON, written by an operator:
//!
//! ```json
//! {"allow": [{"from": ["tag:dev"], "to": ["tag:db"]},
//!            {"from": ["tag:admin"], "to": ["*"]}]}
//! ```
//!
//! Each entry of `from`/`to` is a [`Tag`] or `"*"` (any peer, tagged or not). Peers get their
//! tags from the join token they registered with (`crate::server::tokens`). A `to` list may
//! also hold IP prefixes (`"192.168.10.0/24"`): see "Subnet routes" below.
//!
//! # Visibility is symmetric
//!
//! A rule is written with a direction, but a WireGuard tunnel is bidirectional: once A has B
//! as a peer and B has A, packets flow both ways, and a tunnel configured on only one side
//! does not work at all. So wgmesh treats rules as symmetric: **A sees B (and B sees A) iff
//! some rule allows A -> B or B -> A.** Read `from`/`to` as documentation of who initiates;
//! restricting direction (e.g. "dev may open connections to db but not the reverse") is a job
//! for a firewall on the hosts, not for the peer list.
//!
//! Consequences worth knowing: peers that share a tag do *not* see each other unless a rule
//! says so (`{"from": ["tag:db"], "to": ["tag:db"]}`); untagged peers are matched only by
//! `"*"`; a policy with an empty `allow` list isolates everybody. Having no policy at all means
//! everyone sees everyone, which is [`Policy::allow_all`].
//!
//! # Subnet routes
//!
//! Who may use an approved subnet route is directional, as in Tailscale's ACLs: a peer
//! matching a rule's `from` may reach the part of any approved route that a prefix in its
//! `to` covers (the whole route when the prefix contains it, the prefix when the route
//! contains it), and `"*"` in `to` grants every approved route. Matching the router by tag
//! grants nothing of its routes. A grant implies the tunnel: the granted peer and every
//! router of a route the grant overlaps see each other, which is why a peer's [`Party`]
//! holds its approved routes as well as its tags. [`Policy::grants`] says what a peer may
//! reach; the server lists only those parts of routes (`crate::server::route_access`), and
//! the router's filter enforces them.
//!
//! # Cost
//!
//! A policy is compiled once into per-tag bitsets of the rules each tag appears in. A peer's
//! tag set is turned into a [`Membership`] (two small bitsets) once; after that, deciding
//! whether two memberships see each other is a few word-wide ANDs. The server groups peers by
//! tag set and asks [`Policy::group_visibility`] once per policy or membership change, so
//! thousands of peers in a handful of groups cost a handful of comparisons.

use crate::proto::subnet_routes::Grants;
use crate::server::sso::rules::IdentityRules;
use crate::types::Tag;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One entry of a rule's `from` or `to` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `"*"`: every peer, including peers without tags.
    Any,
    /// A peer carrying this tag.
    Tag(Tag),
    /// In `to` only: the addresses of approved subnet routes inside this prefix.
    Prefix(IpNet),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Tag(t) => t.fmt(f),
            Selector::Prefix(net) => net.fmt(f),
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "*" {
            return Ok(Selector::Any);
        }
        if let Some(net) = parse_prefix(&text).map_err(serde::de::Error::custom)? {
            return Ok(Selector::Prefix(net));
        }
        text.parse().map(Selector::Tag).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}; or write \"*\" for any peer, or (in `to`) a prefix such as \
                 192.168.10.0/24"
            ))
        })
    }
}

/// Reads `text` as a prefix (`192.168.10.0/24`, or a bare address for one host) when it
/// looks like one; a prefix with host bits set is refused with the network it probably means.
fn parse_prefix(text: &str) -> Result<Option<IpNet>, PolicyError> {
    let net = match (text.parse::<IpNet>(), text.parse::<std::net::IpAddr>()) {
        (Ok(net), _) => net,
        (_, Ok(ip)) => IpNet::from(ip),
        _ if text.contains('/') => {
            return Err(PolicyError(format!(
                "{:?} is not a prefix: write a network such as 192.168.10.0/24 or fd00:10::/64",
                crate::types::describe(text)
            )))
        }
        _ => return Ok(None),
    };
    if net != net.trunc() {
        return Err(PolicyError(format!(
            "{net} is not a network (it has host bits set): write {}",
            net.trunc()
        )));
    }
    if net.prefix_len() == 0 {
        return Err(PolicyError(format!(
            "{net} is a default route: write \"*\" to grant every approved subnet route (the \
             internet is what exit nodes are for)"
        )));
    }
    Ok(Some(net))
}

/// One `allow` entry: peers matching any `from` selector and peers matching any `to`
/// selector see each other (symmetrically; see the module docs). Prefixes in `to` grant the
/// `from` peers those parts of approved subnet routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Who the rule is written from.
    pub from: Vec<Selector>,
    /// Who the rule is written to.
    pub to: Vec<Selector>,
}

/// One `routes` entry: subnet routes that peers matching `advertisers` announce inside one
/// of `prefixes` are approved without an operator (see
/// `crate::server::storage::subnet_routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Who may advertise: tags or `"*"`.
    pub advertisers: Vec<Selector>,
    /// What they may advertise: a route is covered when one of these contains it.
    pub prefixes: Vec<ipnet::IpNet>,
}

impl RouteRule {
    /// Whether a peer with `tags` advertising `prefix` is approved by this rule.
    pub fn approves(&self, tags: &[Tag], prefix: &ipnet::IpNet) -> bool {
        let who = self.advertisers.iter().any(|s| match s {
            Selector::Any => true,
            Selector::Tag(t) => tags.contains(t),
            Selector::Prefix(_) => false,
        });
        who && self.prefixes.iter().any(|p| p.contains(prefix))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    allow: Vec<Rule>,
    /// Subnet routes approved by the policy (absent: every route needs an operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteRule>,
    /// Single sign-on: who may join and log in (see [`crate::server::sso::rules`]).
    #[serde(default, skip_serializing_if = "IdentityRules::is_empty")]
    identities: IdentityRules,
}

/// Why a policy was refused. The message names the offending entry by its JSON path (e.g.
/// `allow[2].from[0]`) so the operator can find it, and the server keeps its old policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

/// A fixed-width bitset over rule indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn intersects(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// What the policy looks at in a peer: its tags, and its approved subnet routes (a router is
/// seen by the peers granted a part of one of them); and whether it advertises routes at
/// all, since only a subnet router is told what each peer may reach. Peers with equal
/// parties see and are seen alike, so the server caches lists per party.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Party {
    /// Its tags, sorted.
    pub tags: Vec<Tag>,
    /// Its approved subnet routes, sorted (empty for all but subnet routers).
    pub routes: Vec<IpNet>,
    /// Whether it advertises subnet routes (approved or not): its list then says what each
    /// peer may reach, for its filter.
    pub serves: bool,
}

impl Party {
    /// A party of these tags and approved routes (sorted here, so equal sets are equal keys).
    pub fn new(tags: &[Tag], routes: &[IpNet]) -> Party {
        let (mut tags, mut routes) = (tags.to_vec(), routes.to_vec());
        tags.sort();
        tags.dedup();
        routes.sort();
        routes.dedup();
        let serves = !routes.is_empty();
        Party {
            tags,
            routes,
            serves,
        }
    }

    /// The same party, advertising routes or not (approved ones always count).
    pub fn serving(mut self, advertises: bool) -> Party {
        self.serves = advertises || !self.routes.is_empty();
        self
    }

    /// A party of tags alone (a peer that routes nothing).
    pub fn tagged(tags: &[Tag]) -> Party {
        Party::new(tags, &[])
    }
}

/// A parsed, validated and compiled access policy.
#[derive(Debug, Clone)]
pub struct Policy {
    file: PolicyFile,
    any_from: Bits,
    any_to: Bits,
    tag_from: HashMap<Tag, Bits>,
    tag_to: HashMap<Tag, Bits>,
    /// Every prefix of every rule's `to`, with the rule's index.
    prefixes: Vec<(usize, IpNet)>,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.file == other.file
    }
}

impl Eq for Policy {}

/// Which rules a given tag set matches, on each side: computed once per distinct tag set with
/// [`Policy::membership`], then compared cheaply with [`Membership::sees`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Membership {
    from: Bits,
    to: Bits,
}

impl Membership {
    /// Whether peers with these two memberships see each other. Symmetric by construction:
    /// `a.sees(b) == b.sees(a)`.
    pub fn sees(&self, other: &Membership) -> bool {
        self.from.intersects(&other.to) || other.from.intersects(&self.to)
    }
}

impl Policy {
    /// The policy equivalent to having none: everyone sees everyone (`"*"` -> `"*"`). Lets
    /// the server always hold a `Policy` instead of special-casing `None`.
    pub fn allow_all() -> Policy {
        Policy::compile(PolicyFile {
            allow: vec![Rule {
                from: vec![Selector::Any],
                to: vec![Selector::Any],
            }],
            routes: Vec::new(),
            identities: IdentityRules::default(),
        })
    }

    /// Parses a policy strictly: unknown fields, malformed tags, wrong types and empty
    /// `from`/`to` lists are refused with the JSON path of the bad entry.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: PolicyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                PolicyError(format!("policy is not valid: {inner}"))
            } else {
                PolicyError(format!("policy entry {path} is not valid: {inner}"))
            }
        })?;
        for (i, rule) in file.allow.iter().enumerate() {
            for (side, list) in [("from", &rule.from), ("to", &rule.to)] {
                if list.is_empty() {
                    return Err(PolicyError(format!(
                        "policy entry allow[{i}].{side} is empty: a rule needs at least one \
                         tag or \"*\" on each side (to allow nothing, delete the rule)"
                    )));
                }
            }
            no_prefix(&rule.from, &format!("allow[{i}].from"), "who may reach it")?;
        }
        for (i, rule) in file.routes.iter().enumerate() {
            for (side, empty) in [
                ("advertisers", rule.advertisers.is_empty()),
                ("prefixes", rule.prefixes.is_empty()),
            ] {
                if empty {
                    return Err(PolicyError(format!(
                        "policy entry routes[{i}].{side} is empty: a route rule needs at least \
                         one advertiser (tag or \"*\") and one prefix (to approve nothing, \
                         delete the rule)"
                    )));
                }
            }
            no_prefix(
                &rule.advertisers,
                &format!("routes[{i}].advertisers"),
                "which peers may advertise it",
            )?;
        }
        file.identities
            .validate()
            .map_err(|e| PolicyError(e.to_string()))?;
        Ok(Policy::compile(file))
    }

    /// Refuses prefixes in `to` lists that overlap the mesh's own networks (`mesh`, the IPv4
    /// network and the IPv6 prefix), whose addresses are peers, not subnet routes. Checked
    /// wherever a policy is put in force: at start and on every reload.
    pub fn check_mesh(&self, mesh: &[IpNet]) -> Result<(), PolicyError> {
        for (i, rule) in self.file.allow.iter().enumerate() {
            for (j, selector) in rule.to.iter().enumerate() {
                let Selector::Prefix(net) = selector else {
                    continue;
                };
                if let Some(m) = mesh
                    .iter()
                    .find(|m| m.contains(net) || net.contains(&m.network()))
                {
                    return Err(PolicyError(format!(
                        "policy entry allow[{i}].to[{j}] is not valid: {net} overlaps the mesh \
                         network {m}, whose addresses are peers (grant them by tag); a prefix \
                         in `to` must name part of an advertised subnet route"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads and parses a policy file; errors name the file as well as the entry.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError(format!("cannot read policy file {}: {e}", path.display())))?;
        Policy::from_json(&text).map_err(|e| PolicyError(format!("{}: {e}", path.display())))
    }

    fn compile(file: PolicyFile) -> Policy {
        let n = file.allow.len();
        let mut any_from = Bits::new(n);
        let mut any_to = Bits::new(n);
        let mut tag_from: HashMap<Tag, Bits> = HashMap::new();
        let mut tag_to: HashMap<Tag, Bits> = HashMap::new();
        let mut prefixes = Vec::new();
        for (i, rule) in file.allow.iter().enumerate() {
            for (list, any, by_tag) in [
                (&rule.from, &mut any_from, &mut tag_from),
                (&rule.to, &mut any_to, &mut tag_to),
            ] {
                for selector in list {
                    match selector {
                        Selector::Any => any.set(i),
                        Selector::Tag(t) => by_tag
                            .entry(t.clone())
                            .or_insert_with(|| Bits::new(n))
                            .set(i),
                        Selector::Prefix(net) => prefixes.push((i, *net)),
                    }
                }
            }
        }
        Policy {
            file,
            any_from,
            any_to,
            tag_from,
            tag_to,
            prefixes,
        }
    }

    /// The rules, as written, for display (`wgmesh policy show`).
    pub fn rules(&self) -> &[Rule] {
        &self.file.allow
    }

    /// The subnet-route rules (`routes`), which approve advertised routes automatically.
    pub fn route_rules(&self) -> &[RouteRule] {
        &self.file.routes
    }

    /// The single sign-on rules (the `identities` section; empty when absent).
    pub fn identities(&self) -> &IdentityRules {
        &self.file.identities
    }

    /// The policy as pretty JSON, e.g. for the audit log's policy-change detail.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.file).expect("a policy always serializes")
    }

    /// Computes which rules a peer with `tags` matches on each side. Tags the policy never
    /// mentions are simply ignored.
    pub fn membership(&self, tags: &[Tag]) -> Membership {
        let mut from = self.any_from.clone();
        let mut to = self.any_to.clone();
        for tag in tags {
            if let Some(bits) = self.tag_from.get(tag) {
                from.or(bits);
            }
            if let Some(bits) = self.tag_to.get(tag) {
                to.or(bits);
            }
        }
        Membership { from, to }
    }

    /// Like [`Policy::membership`], for a peer that may route subnets: a router also matches
    /// the `to` side of every rule with a prefix overlapping one of its approved routes, so
    /// the peers that rule grants a part of its routes see it (and it sees them).
    pub fn membership_of(&self, party: &Party) -> Membership {
        self.membership_routed(&party.tags, &party.routes)
    }

    /// [`Policy::membership_of`] of a peer with `tags` and approved `routes`, in any order.
    pub fn membership_routed(&self, tags: &[Tag], routes: &[IpNet]) -> Membership {
        let mut m = self.membership(tags);
        for (i, grant) in &self.prefixes {
            if routes
                .iter()
                .any(|r| crate::proto::subnet_routes::intersection(grant, r).is_some())
            {
                m.to.set(*i);
            }
        }
        m
    }

    /// What a peer of membership `m` may reach of the approved subnet routes: everything
    /// when a rule it matches on the `from` side has `"*"` in `to`, else the prefixes in the
    /// `to` lists of the rules it matches on the `from` side.
    pub fn grants(&self, m: &Membership) -> Grants {
        if m.from.intersects(&self.any_to) {
            return Grants::All;
        }
        let mut list: Vec<IpNet> = self
            .prefixes
            .iter()
            .filter(|(i, _)| m.from.get(*i))
            .map(|(_, net)| *net)
            .collect();
        list.sort();
        list.dedup();
        Grants::Only(list)
    }

    /// Whether the policy grants subnet routes by prefix anywhere (only then do a peer's
    /// routes change whom it sees).
    pub fn has_prefixes(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// Whether a peer with tags `a` and a peer with tags `b` see each other: true iff some
    /// rule allows a -> b or b -> a. Symmetric: swapping the arguments never changes the
    /// answer. For many peers, prefer [`Policy::membership`] or [`Policy::group_visibility`].
    pub fn visible(&self, a: &[Tag], b: &[Tag]) -> bool {
        self.membership(a).sees(&self.membership(b))
    }

    /// For the server's per-group peer-list cache: given the distinct tag sets of registered
    /// peers, returns for each group the indices of the groups it sees (itself included when
    /// peers of that group see each other). The relation is symmetric. Costs one membership
    /// per group and one bitset comparison per pair of groups.
    pub fn group_visibility<T: AsRef<[Tag]>>(&self, groups: &[T]) -> Vec<Vec<usize>> {
        let members: Vec<Membership> = groups.iter().map(|g| self.membership(g.as_ref())).collect();
        members
            .iter()
            .map(|m| {
                members
                    .iter()
                    .enumerate()
                    .filter(|(_, other)| m.sees(other))
                    .map(|(j, _)| j)
                    .collect()
            })
            .collect()
    }
}

impl fmt::Display for Policy {
    /// One line per rule, e.g. `tag:dev <-> tag:db, tag:cache` (and `tag:dev ->
    /// 192.168.10.0/24` for prefixes, reached one way), for logs and status output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.allow.is_empty() {
            return f.write_str("(no rules: every peer is isolated)");
        }
        let join = |list: &[Selector]| {
            list.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, rule) in self.file.allow.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            // Peers see each other both ways; prefixes are reached one way only.
            let (prefixes, peers): (Vec<Selector>, Vec<Selector>) = rule
                .to
                .iter()
                .cloned()
                .partition(|s| matches!(s, Selector::Prefix(_)));
            if !peers.is_empty() {
                write!(f, "{} <-> {}", join(&rule.from), join(&peers))?;
            }
            if !prefixes.is_empty() {
                let sep = if peers.is_empty() { "" } else { "; " };
                write!(f, "{sep}{} -> {}", join(&rule.from), join(&prefixes))?;
            }
        }
        Ok(())
    }
}

/// Refuses prefixes in a list that selects peers (`what` says what the list decides).
fn no_prefix(list: &[Selector], path: &str, what: &str) -> Result<(), PolicyError> {
    match list.iter().position(|s| matches!(s, Selector::Prefix(_))) {
        Some(j) => Err(PolicyError(format!(
            "policy entry {path}[{j}] is not valid: {} is a prefix, but this list decides {what} \
             and takes tags or \"*\" (prefixes go in a rule's `to`)",
            list[j]
        ))),
        None => Ok(()),
    }
}

/// Describes a tag list for log and error messages (`[tag:a, tag:b]`, or `untagged`), so an
/// operator can see why two peers do or do not see each other. Tags are validated, so they
/// need no quoting.
pub fn describe_tags(tags: &[Tag]) -> String {
    if tags.is_empty() {
        "untagged".to_owned()
    } else {
        let inner: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        format!("[{}]", inner.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn policy(json: &str) -> Policy {
        Policy::from_json(json).unwrap()
    }

    #[test]
    fn allow_and_deny() {
        let p = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}"#);
        let (dev, db, web) = (tags(&["tag:dev"]), tags(&["tag:db"]), tags(&["tag:web"]));
        assert!(p.visible(&dev, &db));
        assert!(!p.visible(&dev, &web));
        assert!(!p.visible(&web, &db));
        // Sharing a tag is not enough.
        assert!(!p.visible(&dev, &dev));
        assert!(!p.visible(&db, &db));
    }

    #[test]
    fn visibility_is_symmetric() {
        let p = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}"#);
        let (dev, db) = (tags(&["tag:dev"]), tags(&["tag:db"]));
        assert!(p.visible(&db, &dev));
        let sets = [
            tags(&[]),
            dev.clone(),
            db.clone(),
            tags(&["tag:dev", "tag:db"]),
            tags(&["tag:x"]),
        ];
        for a in &sets {
            for b in &sets {
                assert_eq!(p.visible(a, b), p.visible(b, a), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn wildcard_matches_everyone_including_untagged() {
        let p = policy(r#"{"allow": [{"from": ["tag:admin"], "to": ["*"]}]}"#);
        let admin = tags(&["tag:admin"]);
        assert!(p.visible(&admin, &tags(&[])));
        assert!(p.visible(&admin, &tags(&["tag:db"])));
        assert!(p.visible(&admin, &admin));
        assert!(p.visible(&tags(&[]), &admin));
        assert!(!p.visible(&tags(&[]), &tags(&["tag:db"])));

        let everyone = Policy::allow_all();
        assert!(everyone.visible(&tags(&[]), &tags(&[])));
        assert!(everyone.visible(&tags(&["tag:a"]), &tags(&[])));
    }

    #[test]
    fn untagged_peers_match_only_the_wildcard() {
        let p = policy(r#"{"allow": [{"from": ["tag:a"], "to": ["tag:b"]}]}"#);
        assert!(!p.visible(&tags(&[]), &tags(&[])));
        assert!(!p.visible(&tags(&[]), &tags(&["tag:b"])));
    }

    #[test]
    fn multiple_tags_and_rules_combine() {
        let p = policy(
            r#"{"allow": [
                {"from": ["tag:dev", "tag:ops"], "to": ["tag:db"]},
                {"from": ["tag:db"], "to": ["tag:db"]}
            ]}"#,
        );
        assert!(p.visible(&tags(&["tag:ops"]), &tags(&["tag:db"])));
        assert!(p.visible(&tags(&["tag:db"]), &tags(&["tag:db"])));
        assert!(p.visible(&tags(&["tag:web", "tag:dev"]), &tags(&["tag:db"])));
        assert!(!p.visible(&tags(&["tag:dev"]), &tags(&["tag:ops"])));
    }

    #[test]
    fn empty_allow_list_isolates_everyone() {
        let p = policy(r#"{"allow": []}"#);
        assert!(!p.visible(&tags(&[]), &tags(&[])));
        assert!(p.to_string().contains("isolated"));
    }

    #[test]
    fn more_than_64_rules_use_multiword_bitsets() {
        let rules: Vec<String> = (0..150)
            .map(|i| format!(r#"{{"from": ["tag:a{i}"], "to": ["tag:b{i}"]}}"#))
            .collect();
        let p = policy(&format!(r#"{{"allow": [{}]}}"#, rules.join(",")));
        assert!(p.visible(&tags(&["tag:a149"]), &tags(&["tag:b149"])));
        assert!(p.visible(&tags(&["tag:b70"]), &tags(&["tag:a70"])));
        assert!(!p.visible(&tags(&["tag:a149"]), &tags(&["tag:b148"])));
    }

    #[test]
    fn group_visibility_matches_pairwise_visible() {
        let p = policy(
            r#"{"allow": [
                {"from": ["tag:dev"], "to": ["tag:db"]},
                {"from": ["tag:admin"], "to": ["*"]}
            ]}"#,
        );
        let groups = vec![
            tags(&[]),
            tags(&["tag:dev"]),
            tags(&["tag:db"]),
            tags(&["tag:admin"]),
        ];
        let vis = p.group_visibility(&groups);
        assert_eq!(vis, vec![vec![3], vec![2, 3], vec![1, 3], vec![0, 1, 2, 3]]);
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                assert_eq!(vis[i].contains(&j), p.visible(a, b));
            }
        }
    }

    #[test]
    fn malformed_policies_name_the_bad_entry() {
        let cases = [
            (
                r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}, {"from": ["tag:Dev"], "to": ["*"]}]}"#,
                &["allow[1].from[0]", "\"tag:Dev\" is not a tag", "\"*\""][..],
            ),
            (
                r#"{"allow": [{"from": ["*"], "to": ["*"], "ports": [22]}]}"#,
                &["allow[0]", "unknown field `ports`"][..],
            ),
            (
                r#"{"allow": [], "deny": []}"#,
                &["unknown field `deny`"][..],
            ),
            (r#"{}"#, &["missing field `allow`"][..]),
            (
                r#"{"allow": [{"from": [], "to": ["*"]}]}"#,
                &["allow[0].from is empty"][..],
            ),
            (
                r#"{"allow": [{"from": "tag:dev", "to": ["*"]}]}"#,
                &["allow[0].from", "expected a sequence"][..],
            ),
            (r#"{"allow": [}"#, &["allow[0]", "line 1 column 12"][..]),
            ("", &["policy is not valid"][..]),
        ];
        for (json, wanted) in cases {
            let err = Policy::from_json(json).unwrap_err().to_string();
            for w in wanted {
                assert!(err.contains(w), "{json}: {err:?} lacks {w:?}");
            }
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    const LAN_POLICY: &str = r#"{"allow": [
        {"from": ["tag:a"], "to": ["192.168.10.0/24"]},
        {"from": ["tag:b"], "to": ["192.168.10.10"]},
        {"from": ["tag:c"], "to": ["tag:router"]},
        {"from": ["tag:admin"], "to": ["*"]}
    ]}"#;

    #[test]
    fn prefixes_in_to_grant_parts_of_routes_and_the_wildcard_grants_all() {
        let p = policy(LAN_POLICY);
        let grants = |t: &[&str]| p.grants(&p.membership(&tags(t)));
        assert_eq!(grants(&["tag:a"]), Grants::Only(nets(&["192.168.10.0/24"])));
        assert_eq!(
            grants(&["tag:b"]),
            Grants::Only(nets(&["192.168.10.10/32"]))
        );
        assert_eq!(
            grants(&["tag:a", "tag:b"]),
            Grants::Only(nets(&["192.168.10.0/24", "192.168.10.10/32"]))
        );
        // Seeing the router by tag grants none of its routes.
        assert_eq!(grants(&["tag:c"]), Grants::Only(Vec::new()));
        assert_eq!(grants(&["tag:router"]), Grants::Only(Vec::new()));
        assert_eq!(grants(&["tag:admin"]), Grants::All);
        // No policy at all keeps everyone reaching every route.
        let all = Policy::allow_all();
        assert_eq!(all.grants(&all.membership(&[])), Grants::All);
    }

    #[test]
    fn a_grant_makes_the_granted_peer_and_the_router_see_each_other() {
        let p = policy(LAN_POLICY);
        let router = Party::new(&tags(&["tag:router"]), &nets(&["192.168.10.0/24"]));
        let elsewhere = Party::new(&tags(&["tag:router"]), &nets(&["192.168.99.0/24"]));
        let inside = Party::new(&tags(&["tag:other"]), &nets(&["192.168.10.16/28"]));
        let r = p.membership_of(&router);
        for t in [&["tag:a"][..], &["tag:b"], &["tag:c"], &["tag:admin"]] {
            let m = p.membership_of(&Party::tagged(&tags(t)));
            assert!(m.sees(&r) && r.sees(&m), "{t:?}");
        }
        let untagged = p.membership_of(&Party::default());
        assert!(!untagged.sees(&r));
        // A router whose routes no grant touches is seen only as its tags allow.
        let e = p.membership_of(&elsewhere);
        assert!(!p.membership_of(&Party::tagged(&tags(&["tag:a"]))).sees(&e));
        assert!(p.membership_of(&Party::tagged(&tags(&["tag:c"]))).sees(&e));
        // A grant wider than the route still reaches it (the route inside the grant).
        let i = p.membership_of(&inside);
        assert!(p.membership_of(&Party::tagged(&tags(&["tag:a"]))).sees(&i));
        assert!(!p.membership_of(&Party::tagged(&tags(&["tag:b"]))).sees(&i));
        assert!(p.has_prefixes() && !Policy::allow_all().has_prefixes());
    }

    #[test]
    fn bad_prefixes_are_refused_with_the_entry_and_the_fix() {
        let cases = [
            (
                r#"{"allow": [{"from": ["*"], "to": ["192.168.10.5/24"]}]}"#,
                &["allow[0].to[0]", "host bits", "write 192.168.10.0/24"][..],
            ),
            (
                r#"{"allow": [{"from": ["*"], "to": ["192.168.300.0/24"]}]}"#,
                &["allow[0].to[0]", "is not a prefix"][..],
            ),
            (
                r#"{"allow": [{"from": ["*"], "to": ["0.0.0.0/0"]}]}"#,
                &["allow[0].to[0]", "default route", "exit nodes"][..],
            ),
            (
                r#"{"allow": [{"from": ["tag:a", "10.1.0.0/16"], "to": ["*"]}]}"#,
                &[
                    "allow[0].from[1]",
                    "10.1.0.0/16 is a prefix",
                    "prefixes go in",
                ][..],
            ),
            (
                r#"{"allow": [], "routes": [{"advertisers": ["10.1.0.0/16"], "prefixes": ["10.1.0.0/16"]}]}"#,
                &["routes[0].advertisers[0]", "is a prefix"][..],
            ),
        ];
        for (json, wanted) in cases {
            let err = Policy::from_json(json).unwrap_err().to_string();
            for w in wanted {
                assert!(err.contains(w), "{json}: {err:?} lacks {w:?}");
            }
        }
        let p = policy(r#"{"allow": [{"from": ["*"], "to": ["tag:x", "10.0.0.0/8"]}]}"#);
        let mesh = nets(&["10.100.0.0/16", "fd7a:1::/64"]);
        let err = p.check_mesh(&mesh).unwrap_err().to_string();
        assert!(err.contains("allow[0].to[1]"), "{err}");
        assert!(
            err.contains("overlaps the mesh network 10.100.0.0/16"),
            "{err}"
        );
        let inside = policy(r#"{"allow": [{"from": ["*"], "to": ["fd7a:1::5"]}]}"#);
        assert!(inside.check_mesh(&mesh).is_err());
        assert!(policy(LAN_POLICY).check_mesh(&mesh).is_ok());
        let shown = policy(r#"{"allow": [{"from": ["tag:a"], "to": ["tag:gw", "10.1.0.0/16"]}]}"#);
        assert_eq!(shown.to_string(), "tag:a <-> tag:gw; tag:a -> 10.1.0.0/16");
    }

    #[test]
    fn load_names_the_file() {
        let err = Policy::load(Path::new("/nonexistent/wgmesh-policy.json")).unwrap_err();
        assert!(err.0.contains("/nonexistent/wgmesh-policy.json"), "{err}");
    }

    #[test]
    fn round_trips_through_json_and_displays() {
        let p = policy(r#"{"allow": [{"from": ["tag:dev"], "to": ["tag:db", "*"]}]}"#);
        let again = Policy::from_json(&p.to_json_pretty()).unwrap();
        assert_eq!(p, again);
        assert_eq!(p.to_string(), "tag:dev <-> tag:db, *");
        assert_eq!(describe_tags(&[]), "untagged");
        assert_eq!(describe_tags(&tags(&["tag:a", "tag:b"])), "[tag:a, tag:b]");
    }
}
