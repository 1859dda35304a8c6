//! The one hash: XXH64 (xxHash, 64-bit, seed 0) from the `xxhash-rust` crate. It checks cache
//! shards (several GB/s on one core, so opening a large cache stays cheap), fingerprints runs
//! and digests data. It detects accidents (truncation, corruption, a changed config), not
//! attackers.

use std::io::Read;
use std::path::Path;

pub use xxhash_rust::xxh64::xxh64;

/// A streaming XXH64: the same value for any split of the same bytes.
#[derive(Clone)]
pub struct Hasher(xxhash_rust::xxh64::Xxh64);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.finish()).finish()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Self {
        Self(xxhash_rust::xxh64::Xxh64::new(0))
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// A string with its length first, so that ("ab", "c") and ("a", "bc") differ.
    pub fn write_str(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// XXH64 of a file's bytes and its length, read in 1 MiB chunks.
pub fn xxh64_file(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finish(), total));
        }
        h.write(&buf[..n]);
        total += n as u64;
    }
}
