//! cargo-fuzz target `signature`: see `tallyhouse_fuzz::signature` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tallyhouse_fuzz::signature(data));
