//! cargo-fuzz target `jwt`: see `tallyhouse_fuzz::jwt` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tallyhouse_fuzz::jwt(data));
