//! What the console's pages show, decided without any HTML or I/O: a row per peer built
//! from its registration and its agent's latest report, the peers page's search, filters,
//! sort order and paging, and the policy's "who can reach whom" matrix.

use crate::keys::PublicKey;
use crate::proto::report::{AgentReport, ReportedPath};
use crate::server::policy::{Policy, Selector};
use crate::server::store::PeerRecord;
use crate::types::{PeerId, Tag};
use ipnet::Ipv6Net;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// Peers shown per page: a page of 10,000 peers stays small and fast.
pub const PAGE_SIZE: usize = 50;

/// An agent's report with when it arrived.
#[derive(Debug, Clone)]
pub struct StoredReport {
    /// When the server received it.
    pub at: SystemTime,
    /// What the agent said.
    pub report: AgentReport,
}

/// One peer as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    /// The peer id (the detail page's URL).
    pub id: PeerId,
    /// Its key.
    pub public_key: PublicKey,
    /// Its hostname, as it registered.
    pub hostname: String,
    /// Its `.mesh` name.
    pub dns_name: Option<String>,
    /// Its mesh addresses.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 mesh address.
    pub ipv6: Option<Ipv6Addr>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Online now.
    pub online: bool,
    /// The last sign of life (offline since about then).
    pub last_heartbeat: SystemTime,
    /// When it registered last.
    pub registered_at: SystemTime,
    /// The endpoint others dial.
    pub endpoint: Option<String>,
    /// Its operating system.
    pub os: String,
    /// It offers to be an exit node.
    pub exit_offered: bool,
    /// The exit node it uses (hostname), from its report.
    pub exit_used: Option<String>,
    /// Its agent's version, from its report.
    pub version: Option<String>,
    /// Whether any of its peers is reached through a relay, from its report.
    pub relayed: Option<bool>,
    /// Its single sign-on owner (email, else subject), with " (logged out)" once an admin
    /// ended the login; None for token peers.
    pub owner: Option<String>,
}

/// The row of one registered peer, with its agent's latest report; `name_of` gives the
/// hostname of a key (the exit node it uses).
pub fn row_of(
    r: &PeerRecord,
    report: Option<&AgentReport>,
    name_of: &dyn Fn(&PublicKey) -> Option<String>,
    mesh6: Ipv6Net,
) -> PeerRow {
    PeerRow {
        id: r.id.clone(),
        public_key: r.public_key,
        hostname: r.hostname.to_string(),
        dns_name: r.dns_name.as_ref().map(|n| format!("{n}.mesh")),
        ipv4: r.virtual_ip,
        ipv6: Some(crate::proto::mesh6::address(mesh6, r.virtual_ip)),
        tags: r.tags.iter().map(|t| t.to_string()).collect(),
        online: r.online,
        last_heartbeat: r.last_heartbeat,
        registered_at: r.registered_at,
        endpoint: r.published_endpoint().map(|e| e.to_string()),
        os: r.os.to_string(),
        exit_offered: r.exit_node,
        exit_used: report.and_then(|rep| {
            rep.exit_node
                .map(|k| name_of(&k).unwrap_or_else(|| k.to_string()))
        }),
        version: report.map(|rep| rep.version.clone()),
        relayed: report.map(relayed),
        owner: r.owner.as_ref().map(|o| match o.logged_out_at {
            Some(_) => format!("{} (logged out)", o.label()),
            None => o.label().to_owned(),
        }),
    }
}

/// Whether a report shows any peer reached through a relay.
fn relayed(report: &AgentReport) -> bool {
    report.paths.iter().any(|p| p.path == ReportedPath::Relay)
}

/// Whether `needle` (lowercase ASCII) occurs in `hay`, ignoring ASCII case, without
/// allocating: the search runs over every peer.
fn contains_folded(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || hay.windows(needle.len()).any(|w| {
            w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

/// How the peers page is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// By hostname.
    Hostname,
    /// By mesh address.
    Address,
    /// Most recently seen first.
    LastSeen,
    /// Online first.
    Status,
}

impl SortKey {
    /// The query value naming this order.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Hostname => "hostname",
            SortKey::Address => "address",
            SortKey::LastSeen => "last_seen",
            SortKey::Status => "status",
        }
    }
}

/// The peers page's search, filters, order and page, from its query string. Unknown
/// values fall back to "no filter", so a hand-edited URL still shows a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFilter {
    /// Text to find in hostname, `.mesh` name, addresses, tags or endpoint.
    pub q: String,
    /// Only online (true) or offline (false) peers.
    pub online: Option<bool>,
    /// Only peers with this tag.
    pub tag: Option<String>,
    /// Only peers offering (true) or not offering (false) an exit node.
    pub exit: Option<bool>,
    /// Only peers that reported a relayed path.
    pub relayed: bool,
    /// The order.
    pub sort: SortKey,
    /// The page, from 1.
    pub page: usize,
}

impl PeerFilter {
    /// Reads the filter from query fields.
    pub fn parse(fields: &HashMap<String, String>) -> PeerFilter {
        let get = |k: &str| fields.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let yes_no = |k: &str| match get(k) {
            Some("yes") => Some(true),
            Some("no") => Some(false),
            _ => None,
        };
        PeerFilter {
            q: get("q").unwrap_or_default().to_owned(),
            online: yes_no("online"),
            tag: get("tag").map(str::to_owned),
            exit: yes_no("exit"),
            relayed: get("relayed") == Some("yes"),
            sort: match get("sort") {
                Some("address") => SortKey::Address,
                Some("last_seen") => SortKey::LastSeen,
                Some("status") => SortKey::Status,
                _ => SortKey::Hostname,
            },
            page: get("page")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(1),
        }
    }

    /// Whether peer `r` (with its agent's report) passes every filter. `q` is the search
    /// text lowercased; `buf` is scratch space for formatting addresses.
    fn keeps(
        &self,
        r: &PeerRecord,
        report: Option<&AgentReport>,
        q: &str,
        buf: &mut String,
    ) -> bool {
        if self.online.is_some_and(|want| want != r.online)
            || self.exit.is_some_and(|want| want != r.exit_node)
            || (self.relayed && !report.is_some_and(relayed))
        {
            return false;
        }
        if let Some(tag) = &self.tag {
            if !r.tags.iter().any(|t| t.as_str() == tag) {
                return false;
            }
        }
        if q.is_empty() {
            return true;
        }
        use std::fmt::Write as _;
        let mut formatted = |value: &dyn std::fmt::Display| {
            buf.clear();
            let _ = write!(buf, "{value}");
            contains_folded(buf, q)
        };
        contains_folded(r.hostname.as_str(), q)
            || r.dns_name
                .as_ref()
                .is_some_and(|n| contains_folded(n.as_str(), q))
            || r.tags.iter().any(|t| contains_folded(t.as_str(), q))
            || contains_folded(r.id.as_str(), q)
            || formatted(&r.virtual_ip)
            || r.published_endpoint().is_some_and(|e| formatted(&e))
    }

    /// The query string for this filter on another page or order (for links).
    pub fn query(&self, page: usize, sort: SortKey) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            out.append_pair("q", &self.q);
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        if let Some(o) = self.online {
            out.append_pair("online", yes_no(o));
        }
        if let Some(t) = &self.tag {
            out.append_pair("tag", t);
        }
        if let Some(e) = self.exit {
            out.append_pair("exit", yes_no(e));
        }
        if self.relayed {
            out.append_pair("relayed", "yes");
        }
        out.append_pair("sort", sort.as_str());
        out.append_pair("page", &page.to_string());
        out.finish()
    }
}

/// One page of the filtered, sorted peers.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerPage {
    /// The rows on this page.
    pub rows: Vec<PeerRow>,
    /// How many peers match the filter.
    pub matching: usize,
    /// How many peers there are in all.
    pub total: usize,
    /// This page (from 1, clamped to the last page).
    pub page: usize,
    /// How many pages there are.
    pub pages: usize,
}

/// Filters, sorts and cuts one page out of `records` (every registered peer, any order),
/// building rows only for the page: the work per request is one pass over references
/// and one sort of the matches, whatever the registry's size.
pub fn select<'a>(
    records: impl Iterator<Item = &'a PeerRecord>,
    reports: &HashMap<PeerId, StoredReport>,
    name_of: &dyn Fn(&PublicKey) -> Option<String>,
    mesh6: Ipv6Net,
    filter: &PeerFilter,
) -> PeerPage {
    let q = filter.q.to_ascii_lowercase();
    let mut buf = String::new();
    let mut total = 0;
    let report = |r: &PeerRecord| reports.get(&r.id).map(|s| &s.report);
    let mut kept: Vec<&PeerRecord> = records
        .inspect(|_| total += 1)
        .filter(|r| filter.keeps(r, report(r), &q, &mut buf))
        .collect();
    let by_name = |a: &&PeerRecord, b: &&PeerRecord| {
        a.hostname
            .as_str()
            .cmp(b.hostname.as_str())
            .then(a.virtual_ip.cmp(&b.virtual_ip))
    };
    match filter.sort {
        SortKey::Hostname => kept.sort_unstable_by(by_name),
        SortKey::Address => kept.sort_unstable_by_key(|r| r.virtual_ip),
        SortKey::LastSeen => kept
            .sort_unstable_by(|a, b| b.last_heartbeat.cmp(&a.last_heartbeat).then(by_name(a, b))),
        SortKey::Status => {
            kept.sort_unstable_by(|a, b| b.online.cmp(&a.online).then(by_name(a, b)))
        }
    }
    let matching = kept.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = filter.page.min(pages);
    let rows = kept
        .into_iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|r| row_of(r, report(r), name_of, mesh6))
        .collect();
    PeerPage {
        rows,
        matching,
        total,
        page,
        pages,
    }
}

/// Every tag the registry or the policy names, sorted, with `(untagged)` peers as the empty
/// group first: the rows and columns of the access matrix.
pub fn tag_groups(records: &[PeerRecord], policy: &Policy) -> Vec<Vec<Tag>> {
    let mut tags: BTreeSet<Tag> = records.iter().flat_map(|r| r.tags.clone()).collect();
    for rule in policy.rules() {
        for selector in rule.from.iter().chain(&rule.to) {
            if let Selector::Tag(tag) = selector {
                tags.insert(tag.clone());
            }
        }
    }
    std::iter::once(Vec::new())
        .chain(tags.into_iter().map(|t| vec![t]))
        .collect()
}

/// The access matrix: for each group (row), whether it sees each group (column).
pub fn matrix(groups: &[Vec<Tag>], policy: &Policy) -> Vec<Vec<bool>> {
    groups
        .iter()
        .map(|a| groups.iter().map(|b| policy.visible(a, b)).collect())
        .collect()
}

/// What each group may reach of the approved subnet routes under `policy`, in words: "every
/// approved route", the granted prefixes, or "none" (seeing a router grants nothing).
pub fn group_networks(groups: &[Vec<Tag>], policy: &Policy) -> Vec<String> {
    groups
        .iter()
        .map(|g| match policy.grants(&policy.membership(g)) {
            crate::proto::subnet_routes::Grants::All => "every approved route".to_owned(),
            crate::proto::subnet_routes::Grants::Only(list) if list.is_empty() => "none".into(),
            crate::proto::subnet_routes::Grants::Only(list) => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect()
}

/// Which peers one peer (by its tags, and its approved routes for a subnet router) may reach
/// under `policy`, by hostname.
pub fn reachable_from(me: &PeerRecord, records: &[PeerRecord], policy: &Policy) -> Vec<String> {
    let mine = policy.membership_routed(&me.tags, &me.approved_routes);
    let mut names: Vec<String> = records
        .iter()
        .filter(|r| {
            r.id != me.id
                && policy
                    .membership_routed(&r.tags, &r.approved_routes)
                    .sees(&mine)
        })
        .map(|r| r.hostname.to_string())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_is_told_the_networks_its_rules_grant() {
        let policy = Policy::from_json(
            r#"{"allow": [{"from": ["tag:admin"], "to": ["*"]},
                          {"from": ["tag:dev"], "to": ["tag:router", "198.18.20.0/24", "198.18.30.5"]}]}"#,
        )
        .unwrap();
        let groups: Vec<Vec<Tag>> = ["tag:admin", "tag:dev", "tag:router"]
            .iter()
            .map(|t| vec![t.parse().unwrap()])
            .collect();
        assert_eq!(
            group_networks(&groups, &policy),
            [
                "every approved route",
                "198.18.20.0/24, 198.18.30.5/32",
                "none"
            ]
        );
    }

    fn record(name: &str, ip: u8, online: bool, tags: &[&str]) -> PeerRecord {
        let key = crate::keys::PrivateKey::generate().public_key();
        PeerRecord {
            id: PeerId::for_key(&key),
            public_key: key,
            virtual_ip: Ipv4Addr::new(10, 100, 0, ip),
            endpoint: None,
            observed_ip: None,
            listen_port: None,
            hostname: name.parse().unwrap(),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![],
            exit_node: ip == 3,
            registered_at: SystemTime::UNIX_EPOCH,
            last_heartbeat: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(ip as u64),
            online,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            dns_name: Some(name.parse().unwrap()),
            approved_routes: Vec::new(),
            owner: None,
            via: None,
            gateway_port: None,
        }
    }

    fn relayed_report(r: &PeerRecord) -> StoredReport {
        StoredReport {
            at: SystemTime::UNIX_EPOCH,
            report: AgentReport {
                peer_id: r.id.clone(),
                version: "0.1.0".into(),
                exit_node: None,
                paths: vec![crate::proto::report::PeerPath {
                    public_key: r.public_key,
                    path: ReportedPath::Relay,
                    handshake_age_secs: Some(1),
                    rx_bytes: 0,
                    tx_bytes: 0,
                }],
            },
        }
    }

    fn filter(q: &str) -> PeerFilter {
        PeerFilter::parse(&fields_of(q))
    }

    fn fields_of(q: &str) -> HashMap<String, String> {
        crate::server::console::form::fields(q.as_bytes())
    }

    fn mesh6() -> Ipv6Net {
        "fd00::/96".parse().unwrap()
    }

    fn page(records: &[PeerRecord], reports: &HashMap<PeerId, StoredReport>, q: &str) -> PeerPage {
        select(records.iter(), reports, &|_| None, mesh6(), &filter(q))
    }

    #[test]
    fn filters_combine_and_search_matches_names_addresses_and_tags() {
        let records = vec![
            record("alpha", 1, true, &["tag:dev"]),
            record("beta", 2, false, &["tag:ops"]),
            record("gamma", 3, true, &["tag:dev", "tag:ops"]),
        ];
        let reports: HashMap<PeerId, StoredReport> =
            std::iter::once((records[1].id.clone(), relayed_report(&records[1]))).collect();
        let names = |f: &str| -> Vec<String> {
            page(&records, &reports, f)
                .rows
                .into_iter()
                .map(|r| r.hostname)
                .collect()
        };
        assert_eq!(names(""), ["alpha", "beta", "gamma"]);
        assert_eq!(names("online=yes"), ["alpha", "gamma"]);
        assert_eq!(names("online=no"), ["beta"]);
        assert_eq!(names("tag=tag%3Aops"), ["beta", "gamma"]);
        assert_eq!(names("exit=yes"), ["gamma"]);
        assert_eq!(names("relayed=yes"), ["beta"]);
        assert_eq!(names("q=10.100.0.1"), ["alpha"]);
        assert_eq!(names("q=GAM"), ["gamma"]);
        assert_eq!(names("q=dev&online=yes&sort=last_seen"), ["gamma", "alpha"]);
        assert_eq!(names("sort=status"), ["alpha", "gamma", "beta"]);
        assert_eq!(page(&records, &reports, "online=no").total, 3);
    }

    #[test]
    fn pages_hold_page_size_rows_and_clamp_to_the_last() {
        let records: Vec<PeerRecord> = (0..(PAGE_SIZE * 2 + 3))
            .map(|i| record(&format!("h{i:04}"), (i % 250) as u8, true, &[]))
            .collect();
        let reports = HashMap::new();
        let first = page(&records, &reports, "");
        assert_eq!(
            (first.rows.len(), first.pages, first.matching),
            (PAGE_SIZE, 3, 103)
        );
        assert_eq!(first.rows[0].hostname, "h0000");
        let last = page(&records, &reports, "page=3");
        assert_eq!(last.rows.len(), 3);
        assert_eq!(page(&records, &reports, "page=99").page, 3);
    }

    #[test]
    fn filter_links_keep_every_filter() {
        let f = filter("q=a b&online=yes&tag=tag%3Adev&relayed=yes");
        let q = f.query(2, SortKey::Address);
        assert_eq!(
            PeerFilter::parse(&fields_of(&q)),
            PeerFilter {
                page: 2,
                sort: SortKey::Address,
                ..f
            }
        );
    }

    #[test]
    fn search_ignores_ascii_case_without_allocating() {
        assert!(contains_folded("Host-42", "host-4"));
        assert!(!contains_folded("host", "hostname"));
        assert!(contains_folded("anything", ""));
    }
}
