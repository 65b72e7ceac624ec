//! Fuzz target: see `wgmesh::fuzzing::wg_dump` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgmesh::fuzzing::wg_dump(data));
