//! The shared utilities: the hash against XXH64's reference vectors, the writer's atomicity
//! and durability contract, and the generator's pinned streams.
#![allow(clippy::unwrap_used)]

use distillery_util::fs::{write_atomic, write_atomic_with, WriteError};
use distillery_util::hash::{xxh64, xxh64_file, Hasher};
use distillery_util::rng::SplitMix64;

#[test]
fn xxh64_matches_the_reference_vectors_in_one_piece_and_streamed() {
    let vectors: [(&[u8], u64); 7] = [
        (b"", 0xEF46_DB37_51D8_E999),
        (b"a", 0xD24E_C4F1_A98C_6E5B),
        (b"abc", 0x44BC_2CF5_AD77_0999),
        (
            b"Nobody inspects the spammish repetition",
            0xFBCE_A83C_8A37_8BF1,
        ),
        (
            b"The quick brown fox jumps over the lazy dog",
            0x0B24_2D36_1FDA_71BC,
        ),
        (&[b'a'; 32], 0x856E_8432_98F9_9AD7),
        (&[b'b'; 64], 0xECBA_F4BD_F26B_6349),
    ];
    for (data, want) in vectors {
        assert_eq!(xxh64(data, 0), want, "{:?}", String::from_utf8_lossy(data));
        for split in [1, 3, 7, 31, 33] {
            let mut h = Hasher::new();
            for chunk in data.chunks(split) {
                h.write(chunk);
            }
            assert_eq!(h.finish(), want, "split {split}");
        }
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.bin");
    std::fs::write(&p, &big).unwrap();
    assert_eq!(xxh64_file(&p).unwrap(), (xxh64(&big, 0), big.len() as u64));
}

#[test]
fn length_prefixed_strings_keep_their_boundaries() {
    let h = |parts: &[&str]| {
        let mut h = Hasher::new();
        for p in parts {
            h.write_str(p);
        }
        h.finish()
    };
    assert_ne!(h(&["ab", "c"]), h(&["a", "bc"]));
    assert_eq!(h(&["ab", "c"]), h(&["ab", "c"]));
}

#[test]
fn an_atomic_write_replaces_the_file_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/out.json");
    write_atomic(&p, b"first").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"first");
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    // A writer that fails halfway leaves the old file and no temporary behind.
    let r: Result<(), WriteError> = write_atomic_with(&p, |tmp| {
        std::fs::write(tmp, b"half").unwrap();
        Err(WriteError {
            path: tmp.to_path_buf(),
            source: std::io::Error::other("disk full"),
        })
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("disk full") && e.contains("out.json"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    let names: Vec<String> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out.json"]);
    // The writer's value comes back once the file is in place.
    let n = write_atomic_with(&p, |tmp| -> Result<usize, WriteError> {
        std::fs::write(tmp, b"third").unwrap();
        Ok(5)
    })
    .unwrap();
    assert_eq!((n, std::fs::read(&p).unwrap()), (5, b"third".to_vec()));
    // Output files are readable by others, unlike owner-only temporaries.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "{mode:o}");
    }
}

#[test]
fn a_write_into_a_missing_place_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = write_atomic(&blocker.join("out.json"), b"y")
        .unwrap_err()
        .to_string();
    assert!(e.contains("file"), "{e}");
}

/// Every seeded weight, dropout mask, split and shuffle comes from these streams: a change to
/// the generator or to how a label derives a stream changes them all, and fails here.
#[test]
fn the_generator_streams_are_pinned() {
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    let d = SplitMix64::derive(7, "dropout/0").next_u64();
    assert_eq!(d, SplitMix64::derive(7, "dropout/0").next_u64());
    assert_ne!(d, SplitMix64::derive(7, "dropout/1").next_u64());
    assert_ne!(d, SplitMix64::derive(8, "dropout/0").next_u64());
    assert_eq!(d, PINNED_DROPOUT_0);
}

/// `SplitMix64::derive(7, "dropout/0").next_u64()` as every release so far has drawn it.
const PINNED_DROPOUT_0: u64 = 0x1802_c659_3abd_ee8f;
