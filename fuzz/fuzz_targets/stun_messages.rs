//! Fuzz target: see `wgmesh::fuzzing::stun_messages` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::stun_messages(data));
