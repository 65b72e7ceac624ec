//! Fuzz target: see `wgmesh::fuzzing::request_json` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::request_json(data));
