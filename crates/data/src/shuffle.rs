//! Seeded permutations from `distillery_util::rng::SplitMix64`: the same (length, seed, stream)
//! gives the same order on every platform (integer arithmetic only, no platform RNG).

use distillery_util::rng::SplitMix64;

/// Uniform in `0..n` (`n ≥ 1`) without modulo bias (multiply-shift with rejection).
pub(crate) fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates) drawn from the stream
/// `SplitMix64::derive(seed, stream)`.
pub fn permutation(n: usize, seed: u64, stream: &str) -> Vec<usize> {
    let mut rng = SplitMix64::derive(seed, stream);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // i < n ≤ usize::MAX, so both conversions are lossless.
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The order of `0..n` in `epoch`: file order without a seed, else a fresh permutation per epoch
/// that depends only on (n, seed, epoch), so any epoch can be recomputed on resume.
pub fn epoch_order(n: usize, shuffle_seed: Option<u64>, epoch: u64) -> Vec<usize> {
    match shuffle_seed {
        None => (0..n).collect(),
        Some(seed) => permutation(n, seed, &format!("distillery-data/shuffle/epoch-{epoch}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_hits_every_value() {
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            let v = below(&mut rng, 7) as usize;
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn permutations_are_permutations() {
        for n in [0, 1, 2, 10, 257] {
            let mut p = permutation(n, 9, "x");
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }
}
