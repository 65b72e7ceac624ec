//! The agent's DNS server for the `.mesh` zone: `NAME.mesh` answers with the addresses of the
//! peer the server named NAME (A and AAAA), for the peers this node can see and itself.
//!
//! It is authoritative for `mesh.` and nothing else: other `.mesh` names are NXDOMAIN, every
//! other name is REFUSED (it is not an open recursive resolver), and a malformed datagram, or
//! one that is not a query, is dropped without an answer. Messages are parsed and written by
//! `simple-dns`, never by hand. [`answer`] is pure (and fuzzed); [`Resolver`] is the thin I/O
//! edge: one blocking UDP socket and thread per address it serves, answering from a [`Table`]
//! that the agent swaps in after each sync.

use super::{arrival, edns};
use crate::proto::model::PeerInfo;
use crate::types::DnsName;
use ipnet::{IpNet, Ipv6Net};
use simple_dns::rdata::{RData, A, AAAA};
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
    // (systemd-resolved) keep using EDNS with us; a version above 0 is BADVERS. Read and
    // written by `edns` from the raw bytes, not by simple-dns (see there why).
    let (edns, outcome) = match edns::read(datagram) {
        Ok(Some(e)) if e.version > 0 => (Some(e), Outcome::BadVersion),
        Ok(e) => (e, decide(table, &query)),
        Err(e) => {
            log::debug!("DNS: EDNS part unusable: {e}");
            (None, Outcome::FormatError)
        }
    };
    let mut reply = Packet::new_reply(query.id());
    *reply.opcode_mut() = query.opcode();
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if outcome != Outcome::FormatError {
        reply.questions = query.questions.clone();
    }
    let rcode = match &outcome {
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
    // The header holds the RCODE's low 4 bits, the OPT record the rest (BADVERS is 16).
    let code = rcode as u16;
    *reply.rcode_mut() = RCODE::from(code & 0xF);
    let mut bytes = reply.build_bytes_vec_compressed().ok()?;
    if let Some(e) = edns {
        edns::append_opt(&mut bytes, code, e.dnssec_ok, EDNS_UDP_SIZE);
    }
    Some(bytes)
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
    /// The mesh interface: only datagrams arriving on it (or on loopback) are answered.
    interface: Option<String>,
    /// A gateway's devices' interface, answered too.
    devices: Option<String>,
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
            interface: None,
            devices: None,
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

    /// Answers datagrams arriving on `interface` (the mesh interface) and loopback only; until
    /// called, loopback only. A change rebinds at the next [`Resolver::serve_on`].
    pub fn set_mesh_interface(&mut self, interface: &str) {
        if self.interface.as_deref() != Some(interface) {
            self.shutdown();
            self.interface = Some(interface.to_owned());
        }
    }

    /// Also answers datagrams arriving on a gateway's devices' interface (`up --gateway`:
    /// its devices' configurations name this resolver). A change rebinds like
    /// [`Resolver::set_mesh_interface`].
    pub fn set_device_interface(&mut self, interface: Option<&str>) {
        if self.devices.as_deref() != interface {
            self.shutdown();
            self.devices = interface.map(str::to_owned);
        }
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
        arrival::enable(&socket, bound)?;
        let gate =
            arrival::Gate::new(self.interface.as_deref()).with_devices(self.devices.as_deref());
        let stop = Arc::new(AtomicBool::new(false));
        let table = self.table.clone();
        let flag = stop.clone();
        let forward = self
            .devices
            .as_ref()
            .and_then(|_| super::forward::Forwarder::from_system());
        let thread = std::thread::Builder::new()
            .name(format!("dns {bound}"))
            .spawn(move || serve(&socket, (gate, forward), &table, &flag))?;
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

/// One listener's loop: read a datagram, answer it if it arrived on the mesh interface or
/// loopback (or a gateway's devices' interface, forwarding their names outside `.mesh`),
/// until told to stop. Errors on one datagram never end the loop.
fn serve(
    socket: &UdpSocket,
    (mut gate, forward): (arrival::Gate, Option<super::forward::Forwarder>),
    table: &Shared,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; MAX_QUERY];
    while !stop.load(Ordering::Relaxed) {
        let (len, from, arrived) = match arrival::recv(socket, &mut buf) {
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
        if !gate.admits(arrived) {
            log::debug!("DNS: ignored a query from {from}: it arrived on interface {arrived:?}, not the mesh");
            continue;
        }
        let current = table.read().unwrap_or_else(|p| p.into_inner()).clone();
        match answer(&current, &buf[..len]) {
            // A gateway's device asking for a name outside .mesh: its upstream answers.
            Some(reply)
                if super::forward::is_refused(&reply)
                    && gate.arrived_from_devices(arrived)
                    && forward
                        .as_ref()
                        .is_some_and(|f| f.forward(socket, &buf[..len], from)) => {}
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

    /// A query built byte by byte (not by simple-dns): id 0xabcd, RD, one question, and
    /// `opt_ttl` as the TTL of an OPT record (UDP size 4096) when given.
    fn raw_query(name: &[u8], qtype: u16, opt_ttl: Option<[u8; 4]>) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if let Some(ttl) = opt_ttl {
            q[11] = 1;
            q.extend_from_slice(&[0, 0, 41, 0x10, 0x00]);
            q.extend_from_slice(&ttl);
            q.extend_from_slice(&[0, 0]);
        }
        q
    }

    const WEB_MESH: &[u8] = b"\x03web\x04mesh\x00";

    /// The OPT record we must send back: size 1232, this TTL, no options.
    fn opt_back(ttl: [u8; 4]) -> Vec<u8> {
        let mut rr = vec![0, 0, 41, 0x04, 0xd0];
        rr.extend_from_slice(&ttl);
        rr.extend_from_slice(&[0, 0]);
        rr
    }

    #[test]
    fn a_do_bit_query_gets_the_record_and_the_do_bit_back_byte_for_byte() {
        let reply = answer(&table(), &raw_query(WEB_MESH, 1, Some([0, 0, 0x80, 0]))).unwrap();
        let mut want = vec![0xab, 0xcd, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 1];
        want.extend_from_slice(WEB_MESH);
        want.extend_from_slice(&[0, 1, 0, 1]);
        // web.mesh (a pointer to the question's name) A IN, TTL 10, 10.100.0.2
        want.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 10, 100, 0, 2]);
        want.extend_from_slice(&opt_back([0, 0, 0x80, 0]));
        assert_eq!(reply, want);
    }

    #[test]
    fn edns_queries_keep_their_rcodes_and_unknown_versions_get_badvers() {
        // (query name, OPT TTL sent, header flags byte 3 back, OPT TTL back)
        type Case<'a> = (&'a [u8], [u8; 4], u8, [u8; 4]);
        let cases: [Case<'_>; 6] = [
            // nosuch.mesh with DO: NXDOMAIN (3), DO copied back.
            (
                b"\x06nosuch\x04mesh\x00",
                [0, 0, 0x80, 0],
                3,
                [0, 0, 0x80, 0],
            ),
            // example.com with and without DO: REFUSED (5), as without EDNS.
            (
                b"\x07example\x03com\x00",
                [0, 0, 0x80, 0],
                5,
                [0, 0, 0x80, 0],
            ),
            (b"\x07example\x03com\x00", [0, 0, 0, 0], 5, [0, 0, 0, 0]),
            // EDNS version 1: BADVERS = 16, header RCODE 0, extended RCODE 1, version 0.
            (WEB_MESH, [0, 1, 0, 0], 0, [1, 0, 0, 0]),
            (WEB_MESH, [0, 1, 0x80, 0], 0, [1, 0, 0x80, 0]),
            // Z bits other than DO are not echoed (RFC 6891: MBZ).
            (WEB_MESH, [0, 0, 0x7f, 0xff], 0, [0, 0, 0, 0]),
        ];
        for (name, sent, rcode, back) in cases {
            let reply = answer(&table(), &raw_query(name, 1, Some(sent))).unwrap();
            let what = format!("{name:?} with OPT TTL {sent:?}");
            assert_eq!(reply[3] & 0x0f, rcode, "{what}");
            assert_eq!(&reply[10..12], &[0, 1], "{what}: one additional record");
            assert_eq!(reply[reply.len() - 11..], opt_back(back)[..], "{what}");
        }
        // BADVERS answers nothing; version 0 with Z bits answers the record.
        let bad = answer(&table(), &raw_query(WEB_MESH, 1, Some([0, 1, 0, 0]))).unwrap();
        assert_eq!(&bad[6..8], &[0, 0]);
        let z = answer(&table(), &raw_query(WEB_MESH, 1, Some([0, 0, 0x7f, 0xff]))).unwrap();
        assert_eq!(&z[6..8], &[0, 1]);
        // Without EDNS in the query, none in the answer.
        let plain = answer(&table(), &raw_query(WEB_MESH, 1, None)).unwrap();
        assert_eq!(&plain[10..12], &[0, 0]);
        // Two OPT records: FORMERR.
        let mut two = raw_query(WEB_MESH, 1, Some([0, 0, 0, 0]));
        two[11] = 2;
        two.extend_from_slice(&opt_back([0, 0, 0, 0]));
        assert_eq!(answer(&table(), &two).unwrap()[3] & 0x0f, 1);
    }

    /// The amplification README states: an answer is at most 44 bytes longer than its query
    /// (ANY for a name with both addresses: an A record of 16 bytes and an AAAA of 28 bytes,
    /// the name compressed), so the smallest query (24 bytes, `a.mesh ANY`) gets at most
    /// 68 bytes back, 2.8 times its size; every other answer echoes the query or less.
    #[test]
    fn an_answer_is_at_most_44_bytes_longer_than_its_query() {
        let mut t = table();
        t.insert(
            &"a".parse().unwrap(),
            Addresses {
                v4: "10.100.0.9".parse().unwrap(),
                v6: Some("fd00::a64:9".parse().unwrap()),
            },
        );
        let mut worst = 0;
        for name in [
            &b"\x01a\x04mesh\x00"[..],
            WEB_MESH,
            b"\x04mesh\x00",
            b"\x01x\x00",
        ] {
            for qtype in [1u16, 28, 255, 15] {
                for opt in [None, Some([0, 0, 0x80, 0])] {
                    let q = raw_query(name, qtype, opt);
                    let reply = answer(&t, &q).unwrap();
                    assert!(reply.len() <= q.len() + 44, "{name:?} {qtype}");
                    worst = worst.max(reply.len() - q.len().min(reply.len()));
                }
            }
        }
        assert_eq!(
            worst, 44,
            "the bound is reached, so README's figure is exact"
        );
        let smallest = raw_query(b"\x01a\x04mesh\x00", 255, None);
        assert_eq!(
            (smallest.len(), answer(&t, &smallest).unwrap().len()),
            (24, 68)
        );
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
            dns_name: Some("host-b".parse().unwrap()),
            allowed_ips: vec![
                "10.100.0.7/32".parse().unwrap(),
                "fd00::a64:7/128".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ],
            ..PeerInfo::for_test(key, "b", 7)
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
