//! The agent's DNS server for the `.mesh` zone: `NAME.mesh` answers with the addresses of the
//! peer the server named NAME (A and AAAA), for the peers this node can see and itself.
//!
//! It is authoritative for `mesh.` and nothing else: other `.mesh` names are NXDOMAIN, every
//! other name is REFUSED (it is not an open recursive resolver), and a malformed datagram, or
//! one that is not a query, is dropped without an answer. Messages are parsed and written by
//! `simple-dns`, never by hand. [`answer`] is pure (and fuzzed); [`Resolver`] is the thin I/O
//! edge: one blocking UDP socket and thread per address it serves, answering from a [`Table`]
//! that the agent swaps in after each sync.

use crate::proto::model::PeerInfo;
use crate::types::DnsName;
use ipnet::{IpNet, Ipv6Net};
use simple_dns::rdata::{RData, A, AAAA, OPT};
use simple_dns::{
    Name, Packet, PacketFlag, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE,
};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The zone every mesh name lives in: `web.mesh`.
pub const ZONE: &str = "mesh";

/// The DNS port the resolver serves on (the OS's stub resolvers cannot be told another one
/// on every platform: macOS `/etc/resolver` can, NRPT and resolv.conf cannot).
pub const DNS_PORT: u16 = 53;

/// Seconds an answer may be cached: short, because names follow peers that re-register and
/// the table changes at every sync (60 s by default).
pub const TTL: u32 = 10;

/// The largest datagram read: a query is a few dozen bytes; 1232 bytes (the EDNS size DNS
/// flag day 2020 settled on) leaves room for EDNS options and padding. A longer datagram is
/// cut there, fails to parse and is dropped.
const MAX_QUERY: usize = 1232;

/// The UDP payload size we advertise in EDNS answers (DNS flag day 2020's value).
const EDNS_UDP_SIZE: u16 = 1232;

/// How often a serving thread looks at its stop flag while no query arrives.
const POLL: Duration = Duration::from_millis(200);

/// One name's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Its IPv4 mesh address (an A record).
    pub v4: Ipv4Addr,
    /// Its IPv6 mesh address (an AAAA record), when the mesh has IPv6.
    pub v6: Option<Ipv6Addr>,
}

/// What the resolver knows: mesh name (one lowercase label) to addresses. Built from the
/// peer list the server sent, which holds only the peers this node may see, so a peer hidden
/// by the policy has no name here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    names: HashMap<String, Addresses>,
}

impl Table {
    /// Adds (or replaces) one name.
    pub fn insert(&mut self, name: &DnsName, addresses: Addresses) {
        self.names.insert(name.as_str().to_owned(), addresses);
    }

    /// The table for this node (`own`: its name and addresses) and the peers it sees; each
    /// peer's IPv6 address is the /128 it is routed under inside `mesh6`. Peers without a
    /// name (an older server) are left out.
    pub fn build(
        own: Option<(&DnsName, Addresses)>,
        peers: &[PeerInfo],
        mesh6: Option<Ipv6Net>,
    ) -> Table {
        let mut table = Table::default();
        for peer in peers {
            let Some(name) = &peer.dns_name else {
                continue;
            };
            let v6 = peer.allowed_ips.iter().find_map(|net| match net {
                IpNet::V6(v6)
                    if v6.prefix_len() == 128 && mesh6.is_some_and(|m| m.contains(v6)) =>
                {
                    Some(v6.addr())
                }
                _ => None,
            });
            table.insert(
                name,
                Addresses {
                    v4: peer.virtual_ip,
                    v6,
                },
            );
        }
        // Our own name last: nobody else can hold it (the server keeps names unique).
        if let Some((name, addresses)) = own {
            table.insert(name, addresses);
        }
        table
    }

    /// The addresses of `label` (already lowercase).
    pub fn lookup(&self, label: &str) -> Option<Addresses> {
        self.names.get(label).copied()
    }

    /// How many names the table holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table holds no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name and its addresses, sorted by name (for `status` and hosts files).
    pub fn entries(&self) -> Vec<(String, Addresses)> {
        let mut all: Vec<(String, Addresses)> =
            self.names.iter().map(|(n, a)| (n.clone(), *a)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// What a query gets: the pure decision, before it is written as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Records for a mesh name (possibly none: the name exists, the type does not).
    Found(Vec<IpAddr>),
    /// A `.mesh` name nobody holds (or that the policy hides).
    NoSuchName,
    /// A name outside the zone, or a class other than IN.
    Refused,
    /// Not exactly one question.
    FormatError,
    /// An opcode other than a standard query.
    NotImplemented,
    /// An EDNS version this server does not speak (only 0 exists).
    BadVersion,
}

fn decide(table: &Table, query: &Packet<'_>) -> Outcome {
    if query.opcode() != OPCODE::StandardQuery {
        return Outcome::NotImplemented;
    }
    let [question] = query.questions.as_slice() else {
        return Outcome::FormatError;
    };
    if !matches!(question.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY) {
        return Outcome::Refused;
    }
    let labels = question.qname.get_labels();
    let lower = |i: usize| String::from_utf8_lossy(labels[i].as_ref()).to_ascii_lowercase();
    if labels.is_empty() || lower(labels.len() - 1) != ZONE {
        return Outcome::Refused;
    }
    let addresses = match labels.len() {
        // The zone apex exists and holds no address.
        1 => return Outcome::Found(Vec::new()),
        2 => table.lookup(&lower(0)),
        _ => None,
    };
    let Some(addresses) = addresses else {
        return Outcome::NoSuchName;
    };
    let (want_v4, want_v6) = match question.qtype {
        QTYPE::TYPE(TYPE::A) => (true, false),
        QTYPE::TYPE(TYPE::AAAA) => (false, true),
        QTYPE::ANY => (true, true),
        _ => (false, false),
    };
    let mut records = Vec::new();
    if want_v4 {
        records.push(IpAddr::V4(addresses.v4));
    }
    if let (true, Some(v6)) = (want_v6, addresses.v6) {
        records.push(IpAddr::V6(v6));
    }
    Outcome::Found(records)
}

/// The answer to one datagram, or None to drop it (unparseable, or not a query). Pure: the
/// server's whole behaviour on the wire, and what the fuzz target drives.
pub fn answer(table: &Table, datagram: &[u8]) -> Option<Vec<u8>> {
    let query = Packet::parse(datagram).ok()?;
    if query.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    // EDNS (RFC 6891): answer an EDNS query with an OPT record of our own, so stub resolvers
    // (systemd-resolved) keep using EDNS with us; a version above 0 is BADVERS.
    let edns_version = query.opt().map(|o| o.version);
    let outcome = match edns_version {
        Some(v) if v > 0 => Outcome::BadVersion,
        _ => decide(table, &query),
    };
    let mut reply = Packet::new_reply(query.id());
    if edns_version.is_some() {
        *reply.opt_mut() = Some(OPT {
            opt_codes: Vec::new(),
            udp_packet_size: EDNS_UDP_SIZE,
            version: 0,
        });
    }
    *reply.opcode_mut() = query.opcode();
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if outcome != Outcome::FormatError {
        reply.questions = query.questions.clone();
    }
    *reply.rcode_mut() = match &outcome {
        Outcome::Found(records) => {
            reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            let name: Name<'_> = query.questions[0].qname.clone();
            for ip in records {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A::from(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA::from(*v6)),
                };
                reply
                    .answers
                    .push(ResourceRecord::new(name.clone(), CLASS::IN, TTL, rdata));
            }
            RCODE::NoError
        }
        Outcome::NoSuchName => {
            reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            RCODE::NameError
        }
        Outcome::Refused => RCODE::Refused,
        Outcome::FormatError => RCODE::FormatError,
        Outcome::NotImplemented => RCODE::NotImplemented,
        Outcome::BadVersion => RCODE::BADVERS,
    };
    reply.build_bytes_vec_compressed().ok()
}

/// The table the serving threads read; swapped whole, so a reader sees one sync's view.
type Shared = Arc<RwLock<Arc<Table>>>;

/// One bound address and the thread serving it.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The running DNS server: bound to this node's mesh addresses, answering from the latest
/// table. Dropping it stops every thread and closes every socket.
pub struct Resolver {
    table: Shared,
    listeners: Vec<Listener>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new()
    }
}

impl Resolver {
    /// A resolver with an empty table, serving nowhere yet.
    pub fn new() -> Resolver {
        Resolver {
            table: Arc::new(RwLock::new(Arc::new(Table::default()))),
            listeners: Vec::new(),
        }
    }

    /// Replaces the table every answer comes from.
    pub fn set_table(&self, table: Table) {
        let mut slot = self.table.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(table);
    }

    /// The table answers come from now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves on exactly `addrs`: stops listeners on addresses no longer wanted, and binds
    /// those not bound yet. Returns the addresses that could not be bound, with why (port 53
    /// taken, or the address not on an interface yet); the caller retries at its next sync.
    pub fn serve_on(&mut self, addrs: &[SocketAddr]) -> Vec<(SocketAddr, io::Error)> {
        for listener in self
            .listeners
            .iter_mut()
            .filter(|l| !addrs.contains(&l.addr))
        {
            listener.stop();
            log::info!("DNS: stopped answering on {}", listener.addr);
        }
        self.listeners.retain(|l| addrs.contains(&l.addr));
        let mut failed = Vec::new();
        for addr in addrs {
            if self.listeners.iter().any(|l| l.addr == *addr) {
                continue;
            }
            match self.spawn(*addr) {
                Ok(listener) => {
                    log::info!("DNS: answering for .{ZONE} on {}", listener.addr);
                    self.listeners.push(listener);
                }
                Err(e) => failed.push((*addr, e)),
            }
        }
        failed
    }

    /// Where it answers now (with the real port when asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    fn spawn(&self, addr: SocketAddr) -> io::Result<Listener> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(POLL))?;
        let bound = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let table = self.table.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dns {bound}"))
            .spawn(move || serve(&socket, &table, &flag))?;
        Ok(Listener {
            // Asked for port 0 (tests): record the port the kernel picked, so
            // `local_addrs` says where to send queries.
            addr: if addr.port() == 0 { bound } else { addr },
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering everywhere.
    pub fn shutdown(&mut self) {
        for listener in &mut self.listeners {
            listener.stop();
        }
        self.listeners.clear();
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One listener's loop: read a datagram, answer it, until told to stop. Errors on one
/// datagram never end the loop.
fn serve(socket: &UdpSocket, table: &Shared, stop: &AtomicBool) {
    let mut buf = [0u8; MAX_QUERY];
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                log::debug!("DNS: receive failed: {e}");
                continue;
            }
        };
        let current = table.read().unwrap_or_else(|p| p.into_inner()).clone();
        match answer(&current, &buf[..len]) {
            Some(reply) => {
                if let Err(e) = socket.send_to(&reply, from) {
                    log::debug!("DNS: cannot answer {from}: {e}");
                }
            }
            None => log::debug!("DNS: dropped a malformed datagram of {len} bytes from {from}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::default();
        t.insert(
            &"web".parse().unwrap(),
            Addresses {
                v4: "10.100.0.2".parse().unwrap(),
                v6: Some("fd00::a64:2".parse().unwrap()),
            },
        );
        t.insert(
            &"old".parse().unwrap(),
            Addresses {
                v4: "10.100.0.3".parse().unwrap(),
                v6: None,
            },
        );
        t
    }

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(0x1234);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(
            Name::new(name).unwrap(),
            qtype.into(),
            CLASS::IN.into(),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    /// (rcode, answers as text, authoritative) of the reply to `bytes`.
    fn ask(bytes: &[u8]) -> (RCODE, Vec<String>, bool) {
        let reply = answer(&table(), bytes).expect("an answer");
        let packet = Packet::parse(&reply).unwrap();
        assert_eq!(packet.id(), 0x1234);
        assert!(packet.has_flags(PacketFlag::RESPONSE));
        let answers = packet
            .answers
            .iter()
            .map(|rr| match &rr.rdata {
                RData::A(a) => Ipv4Addr::from(a.address).to_string(),
                RData::AAAA(a) => Ipv6Addr::from(a.address).to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        (
            packet.rcode(),
            answers,
            packet.has_flags(PacketFlag::AUTHORITATIVE_ANSWER),
        )
    }

    #[test]
    fn mesh_names_answer_a_and_aaaa_case_insensitively() {
        assert_eq!(
            ask(&query("web.mesh", TYPE::A)),
            (RCODE::NoError, vec!["10.100.0.2".into()], true)
        );
        assert_eq!(
            ask(&query("WEB.Mesh.", TYPE::AAAA)),
            (RCODE::NoError, vec!["fd00::a64:2".into()], true)
        );
        // A peer without IPv6, and a type it has no record of: the name exists, no data.
        assert_eq!(
            ask(&query("old.mesh", TYPE::AAAA)),
            (RCODE::NoError, vec![], true)
        );
        assert_eq!(
            ask(&query("web.mesh", TYPE::MX)),
            (RCODE::NoError, vec![], true)
        );
        assert_eq!(ask(&query("mesh", TYPE::A)), (RCODE::NoError, vec![], true));
    }

    #[test]
    fn unknown_mesh_names_are_nxdomain_and_everything_else_is_refused() {
        for name in ["nobody.mesh", "a.web.mesh"] {
            assert_eq!(ask(&query(name, TYPE::A)).0, RCODE::NameError, "{name}");
        }
        for name in ["example.com", "web.mesh.example.com", "mesh.example", "web"] {
            let (rcode, answers, aa) = ask(&query(name, TYPE::A));
            assert_eq!(
                (rcode, answers.len(), aa),
                (RCODE::Refused, 0, false),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_datagrams_and_responses_are_dropped() {
        let good = query("web.mesh", TYPE::A);
        for cut in 0..good.len() {
            assert_eq!(answer(&table(), &good[..cut]), None, "cut at {cut}");
        }
        let mut response = good.clone();
        response[2] |= 0x80; // QR: a response is never answered (no loops between servers)
        assert_eq!(answer(&table(), &response), None);
        assert_eq!(answer(&table(), &[0xff; 40]), None);
    }

    #[test]
    fn mutated_queries_never_panic_and_answers_always_parse() {
        // A bounded, deterministic smoke test between fuzzing runs: flip, cut and splice
        // bytes of real queries (xorshift, fixed seed) and check what the fuzz target checks.
        let seeds = [
            query("web.mesh", TYPE::A),
            query("WEB.mesh", TYPE::AAAA),
            query("example.com", TYPE::A),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, next() as u8),
                }
            }
            crate::fuzzing::dns_query(&bytes);
        }
    }

    #[test]
    fn edns_queries_get_an_opt_record_back_and_unknown_versions_badvers() {
        let with_opt = |version: u8| {
            let mut q = Packet::new_query(0x1234);
            q.questions.push(simple_dns::Question::new(
                Name::new("web.mesh").unwrap(),
                TYPE::A.into(),
                CLASS::IN.into(),
                false,
            ));
            *q.opt_mut() = Some(OPT {
                opt_codes: Vec::new(),
                udp_packet_size: 4096,
                version,
            });
            q.build_bytes_vec().unwrap()
        };
        let reply = answer(&table(), &with_opt(0)).unwrap();
        let parsed = Packet::parse(&reply).unwrap();
        assert_eq!(parsed.rcode(), RCODE::NoError);
        assert_eq!(parsed.answers.len(), 1);
        assert_eq!(parsed.opt().map(|o| o.udp_packet_size), Some(EDNS_UDP_SIZE));
        let reply = answer(&table(), &with_opt(1)).unwrap();
        let parsed = Packet::parse(&reply).unwrap();
        assert_eq!(parsed.rcode(), RCODE::BADVERS);
        assert!(parsed.answers.is_empty());
        // Without EDNS in the query, none in the answer.
        let plain = answer(&table(), &query("web.mesh", TYPE::A)).unwrap();
        assert!(Packet::parse(&plain).unwrap().opt().is_none());
    }

    #[test]
    fn odd_but_well_formed_queries_get_error_codes() {
        // Two questions: FORMERR without echoing them.
        let mut q = Packet::new_query(0x1234);
        for _ in 0..2 {
            q.questions.push(simple_dns::Question::new(
                Name::new("web.mesh").unwrap(),
                TYPE::A.into(),
                CLASS::IN.into(),
                false,
            ));
        }
        assert_eq!(ask(&q.build_bytes_vec().unwrap()).0, RCODE::FormatError);
        // Chaos class (version.bind and friends): refused.
        let mut q = Packet::new_query(0x1234);
        q.questions.push(simple_dns::Question::new(
            Name::new("web.mesh").unwrap(),
            TYPE::TXT.into(),
            CLASS::CH.into(),
            false,
        ));
        assert_eq!(ask(&q.build_bytes_vec().unwrap()).0, RCODE::Refused);
        // An UPDATE: not implemented.
        let mut bytes = query("web.mesh", TYPE::A);
        bytes[2] = (bytes[2] & 0x87) | (5 << 3);
        assert_eq!(ask(&bytes).0, RCODE::NotImplemented);
    }

    #[test]
    fn the_table_holds_visible_peers_and_ourselves() {
        let mesh6: Ipv6Net = "fd00::/96".parse().unwrap();
        let key = crate::keys::PrivateKey::generate().public_key();
        let peer = PeerInfo {
            id: crate::types::PeerId::for_key(&key),
            public_key: key,
            virtual_ip: "10.100.0.7".parse().unwrap(),
            endpoint: None,
            hostname: "b".parse().unwrap(),
            dns_name: Some("host-b".parse().unwrap()),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![
                "10.100.0.7/32".parse().unwrap(),
                "fd00::a64:7/128".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
        };
        let unnamed = PeerInfo {
            dns_name: None,
            ..peer.clone()
        };
        let me: DnsName = "host-a".parse().unwrap();
        let mine = Addresses {
            v4: "10.100.0.6".parse().unwrap(),
            v6: None,
        };
        let t = Table::build(Some((&me, mine)), &[peer, unnamed], Some(mesh6));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup("host-a"), Some(mine));
        assert_eq!(
            t.lookup("host-b"),
            Some(Addresses {
                v4: "10.100.0.7".parse().unwrap(),
                v6: Some("fd00::a64:7".parse().unwrap()),
            })
        );
    }

    #[test]
    fn the_server_answers_on_its_sockets_and_follows_table_swaps() {
        let mut resolver = Resolver::new();
        resolver.set_table(table());
        let failed = resolver.serve_on(&["127.0.0.1:0".parse().unwrap()]);
        assert!(failed.is_empty(), "{failed:?}");
        let addr = resolver.local_addrs()[0];
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let ask_live = |name: &str| {
            client.send_to(&query(name, TYPE::A), addr).unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = client.recv_from(&mut buf).unwrap();
            Packet::parse(&buf[..n]).unwrap().rcode()
        };
        // Garbage first: it is dropped and the server keeps serving.
        client.send_to(b"\x00garbage", addr).unwrap();
        assert_eq!(ask_live("web.mesh"), RCODE::NoError);
        resolver.set_table(Table::default());
        assert_eq!(ask_live("web.mesh"), RCODE::NameError);
        assert_eq!(ask_live("example.com"), RCODE::Refused);
        resolver.shutdown();
        assert!(resolver.local_addrs().is_empty());
    }
}
