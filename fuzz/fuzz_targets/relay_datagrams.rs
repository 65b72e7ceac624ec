//! Fuzz target: see `wgmesh::fuzzing::relay_datagrams` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::relay_datagrams(data));
