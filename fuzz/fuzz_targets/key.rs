//! cargo-fuzz target `key`: see `tallyhouse_fuzz::key` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tallyhouse_fuzz::key(data));
