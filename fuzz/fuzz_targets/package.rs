//! cargo-fuzz target `package`: see `tallyhouse_fuzz::package` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tallyhouse_fuzz::package(data));
