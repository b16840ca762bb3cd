//! Bad input against the evidence formats, in plain `cargo test`: the
//! Wycheproof ECDSA P-256/SHA-256 vectors through the verification path,
//! proptest properties (byte changes to signed packages are refused; parse
//! of serialise is the identity), and the fuzz targets' seeds and kept
//! crashes (`fuzz/`) run through the same checks as the fuzzer.

/// The fuzz targets' checks and seed generator, compiled here too.
#[path = "../../../../fuzz/src/lib.rs"]
mod fuzz_checks;

mod fuzz_regressions;
mod properties;
mod wycheproof_vectors;
