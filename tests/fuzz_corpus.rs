//! Replays the committed fuzz seeds (`fuzz/seeds/TARGET/*`) through the same harnesses the
//! cargo-fuzz targets run (`wgmesh::fuzzing`), so `cargo test` on stable, and so CI,
//! exercises every input that ever mattered to a fuzzer, including past crashes, without
//! needing nightly or minutes of fuzzing.

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 3,
        "{}: expected at least 3 seeds, found {}",
        dir.display(),
        entries.len()
    );
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "seed {} failed", path.display());
    }
}

#[test]
fn request_json_seeds() {
    replay("request_json", wgmesh::fuzzing::request_json);
}

#[test]
fn http_requests_seeds() {
    replay("http_requests", wgmesh::fuzzing::http_requests);
}

#[test]
fn stun_messages_seeds() {
    replay("stun_messages", wgmesh::fuzzing::stun_messages);
}

#[test]
fn relay_datagrams_seeds() {
    replay("relay_datagrams", wgmesh::fuzzing::relay_datagrams);
}

#[test]
fn wg_dump_seeds() {
    replay("wg_dump", wgmesh::fuzzing::wg_dump);
}

#[test]
fn dns_query_seeds() {
    replay("dns_query", wgmesh::fuzzing::dns_query);
}

/// The DNS seeds reach the resolver's decisions: the well-formed ones are answered, the
/// broken ones dropped.
#[test]
fn the_dns_seeds_are_answered_or_dropped_as_meant() {
    let table = wgmesh::agent::dns::resolver::Table::default();
    for name in [
        "a_web",
        "aaaa_upper",
        "nxdomain",
        "refused_example",
        "edns_any",
    ] {
        assert!(
            wgmesh::agent::dns::resolver::answer(&table, &seed("dns_query", name)).is_some(),
            "{name}"
        );
    }
    for name in ["pointer_loop", "truncated"] {
        assert!(
            wgmesh::agent::dns::resolver::answer(&table, &seed("dns_query", name)).is_none(),
            "{name}"
        );
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds are only useful if they get past the first check of each parser: these are
/// meant to be accepted, so the fuzzer starts from deep inside the code.
#[test]
fn the_valid_seeds_are_accepted() {
    let limits = wgmesh::server::http::Limits::default();
    let (requests, refusal) =
        wgmesh::server::http::parse_requests(&seed("http_requests", "post_register"), &limits);
    assert_eq!((requests.len(), refusal), (1, None));
    serde_json::from_slice::<wgmesh::proto::model::RegisterRequest>(&requests[0].body).unwrap();
    let (requests, _) =
        wgmesh::server::http::parse_requests(&seed("http_requests", "pipelined_get"), &limits);
    assert_eq!(requests.len(), 2, "both pipelined requests");

    for name in ["register_full", "register_minimal"] {
        serde_json::from_slice::<wgmesh::proto::model::RegisterRequest>(&seed(
            "request_json",
            name,
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    serde_json::from_slice::<wgmesh::proto::model::HeartbeatRequest>(&seed(
        "request_json",
        "heartbeat",
    ))
    .unwrap();

    for name in ["request_5389", "request_fingerprint", "request_3489_change"] {
        wgmesh::proto::stun::parse_binding_request(&seed("stun_messages", name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["response_success", "response_error"] {
        wgmesh::proto::stun::parse_binding_response(&seed("stun_messages", name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let dump = wgmesh::os::wgdump::parse(&String::from_utf8(seed("wg_dump", "two_peers")).unwrap())
        .unwrap();
    assert_eq!(dump.peers.len(), 2);
    wgmesh::os::wgdump::parse(&String::from_utf8(seed("wg_dump", "fwmark_crlf")).unwrap()).unwrap();
}
