//! Fuzz target: see `wgmesh::fuzzing::dns_query` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::dns_query(data));
