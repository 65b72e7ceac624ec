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
fn wg_dump_seeds() {
    replay("wg_dump", wgmesh::fuzzing::wg_dump);
}
