//! Fuzz harnesses: one function per untrusted-input parser, taking raw bytes.
//!
//! Why they live in the library rather than in `fuzz/`: the cargo-fuzz targets (which need
//! nightly features and run for minutes) and the corpus-replay test in `cargo test` (which
//! CI runs on stable) call the very same functions, so a seed that once found a bug keeps
//! exercising the exact code it found it in. Each harness panics only on a real bug: a
//! parser that panics, or an invariant below that does not hold.

use crate::os::wgdump;
use crate::proto::model::{DeregisterRequest, HeartbeatRequest, RegisterRequest};
use crate::proto::stun;
use crate::server::api;
use crate::server::http::{self, Limits};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;

/// Deserializes a request body with the API's own parser ([`api::error::parse_json`]), checks a
/// refusal is a 400 that says something, and that an accepted value survives a
/// serialize/parse round trip unchanged: a request the server accepts must mean one thing.
fn json_body<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let value: T = match api::error::parse_json(data) {
        Ok(value) => value,
        Err(refusal) => {
            assert_eq!(refusal.status, 400, "{}", refusal.message);
            assert!(!refusal.message.is_empty());
            return;
        }
    };
    let once = serde_json::to_vec(&value).expect("accepted requests serialize");
    let again: T = serde_json::from_slice(&once).expect("a serialized request parses again");
    let twice = serde_json::to_vec(&again).expect("accepted requests serialize");
    assert_eq!(once, twice, "request round trip changed the request");
}

/// The API's JSON request bodies: register, heartbeat and deregister, each tried on `data`.
pub fn request_json(data: &[u8]) {
    json_body::<RegisterRequest>(data);
    json_body::<HeartbeatRequest>(data);
    json_body::<DeregisterRequest>(data);
}

/// Small limits so the fuzzer reaches the 413/431 refusals with small inputs.
fn fuzz_limits() -> Limits {
    Limits {
        max_header_bytes: 2048,
        max_body_bytes: 1024,
        ..Limits::default()
    }
}

/// The HTTP connection layer's request framing (head parsing, Content-Length, keep-alive,
/// pipelining, size limits) on `data` as the bytes of one connection, then each parsed
/// request's accessors, and the JSON bodies of those requests as the API would parse them.
pub fn http_requests(data: &[u8]) {
    let limits = fuzz_limits();
    let (requests, refusal) = http::parse_requests(data, &limits);
    let mut consumed = 0;
    for request in &requests {
        assert!(request.body.len() <= limits.max_body_bytes);
        consumed += request.body.len();
        let _ = (request.path(), request.query_param("peer_id"));
        let _ = request.header("content-type");
        if request.method == "POST" && !request.body.is_empty() {
            request_json(&request.body);
        }
    }
    assert!(consumed <= data.len());
    if let Some((status, message)) = refusal {
        assert!((400..500).contains(&status), "refused with {status}");
        assert!(!message.is_empty());
    }
}

/// STUN: the server's request parser and the client's response parser on `data`, and for an
/// accepted RFC 5389 request, the answers the server would send parse back to the same
/// transaction and address on the client side.
pub fn stun_messages(data: &[u8]) {
    let _ = stun::parse_binding_response(data);
    let Ok(request) = stun::parse_binding_request(data) else {
        return;
    };
    let _ = (request.unknown_attributes(), request.wants_address_change());
    let Some(id) = request.transaction_id() else {
        return;
    };
    let mapped: SocketAddr = ([198, 51, 100, 7], 51820).into();
    let opts = stun::ResponseOptions {
        mapped_address_for_modern_clients: true,
        software: Some("wgmesh"),
        fingerprint: true,
    };
    let mut out = [0u8; stun::MAX_RESPONSE_LEN];
    let len = stun::encode_binding_success(&mut out, &request, mapped, &opts)
        .expect("a MAX_RESPONSE_LEN buffer always suffices");
    match stun::parse_binding_response(&out[..len]) {
        Ok(stun::BindingResponse::Success {
            transaction_id,
            mapped: seen,
        }) => {
            assert_eq!(transaction_id, id);
            assert_eq!(seen, mapped);
        }
        other => panic!("our own success answer parsed as {other:?}"),
    }
    let unknown = request.unknown_attributes();
    let len =
        stun::encode_binding_error(&mut out, &request, 420, "Unknown Attribute", unknown, &opts)
            .expect("a MAX_RESPONSE_LEN buffer always suffices");
    match stun::parse_binding_response(&out[..len]) {
        Ok(stun::BindingResponse::Error {
            transaction_id,
            code,
        }) => {
            assert_eq!(transaction_id, id);
            assert_eq!(code, 420);
        }
        other => panic!("our own error answer parsed as {other:?}"),
    }
}

/// `wg show NAME dump` output: parsed (when it is UTF-8, as `wg` prints it), and an
/// accepted dump has exactly one entry per peer line.
pub fn wg_dump(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match wgdump::parse(text) {
        Ok(dump) => {
            let lines = text.trim_end_matches('\n').split('\n').count();
            assert_eq!(
                dump.peers.len() + 1,
                lines,
                "one peer per line after the first"
            );
        }
        Err(e) => {
            assert!(e.line >= 1);
            let _ = e.to_string();
        }
    }
}

/// A DNS datagram as the agent's `.mesh` resolver receives it: the answer (if any) must be a
/// well-formed response to the same id, carrying only records of the zone and only for a
/// query that parsed; a datagram that does not parse must be dropped, never answered.
pub fn dns_query(data: &[u8]) {
    use crate::agent::dns::resolver::{answer, Addresses, Table};
    use simple_dns::{Packet, PacketFlag, RCODE};
    let mut table = Table::default();
    table.insert(
        &"web".parse().expect("literal"),
        Addresses {
            v4: std::net::Ipv4Addr::new(10, 100, 0, 2),
            v6: Some("fd00::a64:2".parse().expect("literal")),
        },
    );
    let Some(reply) = answer(&table, data) else {
        return;
    };
    let query = Packet::parse(data).expect("only a parsed query is answered");
    let parsed = Packet::parse(&reply).expect("our answers parse");
    assert!(parsed.has_flags(PacketFlag::RESPONSE));
    assert_eq!(parsed.id(), query.id());
    assert!(parsed.answers.len() <= 2);
    if !parsed.answers.is_empty() {
        assert_eq!(parsed.rcode(), RCODE::NoError);
    }
    assert!(reply.len() <= 512, "an answer fits a classic UDP message");
}

/// The relay (`server::relay`) on a stream of datagrams from a small fixed mesh: each record
/// is `[source, flags, len (2 bytes, little-endian, at most 2048), bytes...]`. `source` picks one of three members' addresses (two
/// ports each) or a stranger's; a set bit 0 of `flags` stamps a valid MAC1 for member
/// `flags >> 1 & 3` onto a handshake-sized datagram, so the fuzzer reaches the binding and
/// session paths. Checked on every verdict: nothing is ever sent to a stranger, back to the
/// source, or because of a stranger's datagram.
pub fn relay_datagrams(data: &[u8]) {
    use crate::keys::PublicKey;
    use crate::proto::wg_wire::{self, Mac1Key};
    use crate::server::relay::{Member, MemberView, Relay, RelayLimits, RelayStats, Verdict};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let keys: Vec<PublicKey> = (1..=3u8).map(|n| PublicKey::from_bytes([n; 32])).collect();
    let ips: Vec<std::net::IpAddr> = (1..=3u8)
        .map(|n| std::net::IpAddr::from([198, 18, n, 1]))
        .collect();
    let members = keys
        .iter()
        .zip(&ips)
        .map(|(k, ip)| Member {
            public_key: *k,
            ips: vec![*ip],
            tags: Vec::new(),
            routes: Vec::new(),
        })
        .collect();
    let view = Arc::new(MemberView::new(
        members,
        &crate::server::policy::Policy::allow_all(),
    ));
    let mut relay = Relay::new(
        view,
        RelayLimits::default(),
        Arc::new(RelayStats::default()),
    );
    let macs: Vec<Mac1Key> = keys.iter().map(Mac1Key::new).collect();
    let start = Instant::now();
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 4 {
        let (source, flags) = (rest[0], rest[1]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(2048);
        let body = &rest[4..];
        let take = len.min(body.len());
        let mut datagram = body[..take].to_vec();
        rest = &body[take..];
        let from = match source % 7 {
            6 => SocketAddr::from(([203, 0, 113, 9], 4000)),
            n => SocketAddr::new(ips[usize::from(n / 2)], 40000 + u16::from(n % 2)),
        };
        if flags & 1 == 1 {
            let mac = &macs[usize::from(flags >> 1 & 3) % macs.len()];
            let at = match datagram.len() {
                wg_wire::INITIATION_LEN => Some(116),
                wg_wire::RESPONSE_LEN => Some(60),
                _ => None,
            };
            if let Some(at) = at {
                datagram[..4].copy_from_slice(&[if at == 116 { 1 } else { 2 }, 0, 0, 0]);
                let m = mac.compute(&datagram[..at]);
                datagram[at..at + 16].copy_from_slice(&m);
            }
        }
        step += 1;
        let now = start + Duration::from_millis(step * u64::from(flags >> 3) * 50);
        if let Verdict::Forward(targets) = relay.handle(&datagram, from, now) {
            assert!(
                !ips.iter().all(|ip| *ip != from.ip()),
                "forwarded a stranger's datagram"
            );
            for to in targets.iter() {
                assert!(ips.contains(&to.ip()), "sent to a stranger: {to}");
                assert_ne!(to, from, "sent back to the source");
            }
        }
    }
}
