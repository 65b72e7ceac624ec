//! Fuzz target: see `wgmesh::fuzzing::http_requests` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::http_requests(data));
