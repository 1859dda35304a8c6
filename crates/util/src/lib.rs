//! `distillery-util`: the small utilities every crate shares and no domain owns, so that domain
//! crates never depend on each other for them (as rust-analyzer's `stdx`).
//!
//! - [`rng`] — the seeded generator behind every random choice (initialisation, dropout, splits,
//!   shuffles): same seed, same bits, on every platform.
//! - [`fs`] — the one durable atomic writer: temporary file beside the target, fsync, rename,
//!   fsync of the folder. A failure leaves the previous file intact.
//! - [`hash`] — the one hash, XXH64 (from the maintained `xxhash-rust` crate): cache checksums,
//!   run fingerprints, data digests.
//!
//! This crate knows nothing of tensors, models, data or training.

pub mod fs;
pub mod hash;
pub mod rng;
