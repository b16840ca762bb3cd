//! Benchmarks (arriving in the next commits).
