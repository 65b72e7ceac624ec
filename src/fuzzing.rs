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
use crate::server::http::{self, Limits};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;

/// Deserializes a request body exactly as the API does (serde_path_to_error over
/// serde_json, then `end()` so trailing garbage is refused), and checks that an accepted
/// value survives a serialize/parse round trip unchanged: a request the server accepts must
/// mean one thing.
fn json_body<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(data);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let Ok(value) = parsed else {
        // The error message is what the client gets back: building it must not panic.
        if let Err(e) = parsed {
            let _ = (e.path().to_string(), e.into_inner().to_string());
        }
        return;
    };
    if de.end().is_err() {
        return;
    }
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
