//! Inverted dropout whose mask is a pure function of (seed, element index): `y = x ⊙ m / keep`
//! with `m_i = [u(seed, i) < keep]`.
//!
//! A counter-based mask costs nothing to store: the backward multiplies the gradient by the
//! same mask, regenerated, so the op is its own derivative and no mask tensor stays alive until
//! the backward (a dropout on attention probabilities would otherwise keep a b·h·s² f32 mask per
//! layer). Each element's draw depends only on its index, so the mask is the same whatever the
//! chunking across threads, and the reference ([`dropout_mask`] times `x`) is bit-identical.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, fused_applies};
use crate::error::Result;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function at counter `seed + (i + 1)·γ`: the i-th draw of a SplitMix64
/// stream started at `seed`, reachable without drawing the ones before it.
#[inline(always)]
fn draw(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One draw decides four neighbouring elements, 16 bits each: element i is kept when bits
/// `16·(i mod 4)..` of draw `i / 4`, read as a fraction, fall below `keep` (so `keep` is
/// resolved to 1/65536, and the hash, 64-bit multiplies that do not vectorise, runs a quarter as
/// often).
#[inline(always)]
pub(super) fn scale_of(seed: u64, i: u64, keep: u32, scale: f32) -> f32 {
    let u = (draw(seed, i / 4) >> (16 * (i % 4))) as u32 & 0xffff;
    if u < keep {
        scale
    } else {
        0.0
    }
}

/// Calls `f(j, factor)` for elements `base + j`, `j < len`, with the factors [`scale_of`] gives,
/// hashing once per four elements: per element, the compiler keeps the four `draw`s of a group
/// (a quarter of a dropout's time went to hashing).
#[inline(always)]
pub(super) fn for_each_scale(
    seed: u64,
    base: u64,
    len: usize,
    (keep, scale): (u32, f32),
    mut f: impl FnMut(usize, f32),
) {
    let at = |j: usize| base + j as u64;
    let mut j = 0;
    while j < len && at(j) % 4 != 0 {
        f(j, scale_of(seed, at(j), keep, scale));
        j += 1;
    }
    while j + 4 <= len {
        let r = draw(seed, at(j) / 4);
        for lane in 0..4 {
            let u = (r >> (16 * lane)) as u32 & 0xffff;
            f(j + lane, if u < keep { scale } else { 0.0 });
        }
        j += 4;
    }
    while j < len {
        f(j, scale_of(seed, at(j), keep, scale));
        j += 1;
    }
}

/// `keep` as a 16-bit threshold.
pub(super) fn threshold(keep: f32) -> u32 {
    (f64::from(keep) * 65536.0).round() as u32
}

/// Elements per rayon task (a multiple of the four elements one draw decides).
const CHUNK: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct DropoutOp {
    keep: f32,
    seed: u64,
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "distillery-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (keep, seed, scale) = (threshold(self.keep), self.seed, 1.0 / self.keep);
        let mut y = super::par_zeroed(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for_each_scale(seed, (c * CHUNK) as u64, yc.len(), (keep, scale), |j, m| {
                    yc[j] = xc[j] * m;
                });
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d(x ⊙ m/keep)/dx = m/keep: the same op applied to the gradient.
        Ok(Some(grad.contiguous()?.apply_op1(*self)?))
    }
}

/// The mask [`dropout`] uses for `n` elements: `1/keep` where kept, 0 where dropped.
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let keep = (1.0 - p) as f32;
    (0..n as u64)
        .map(|i| scale_of(seed, i, threshold(keep), 1.0 / keep))
        .collect()
}

/// Inverted dropout with drop probability `p` and a mask fixed by `seed` (see the module
/// docs); the identity when `p <= 0`. Fused on f32 CPU tensors; elsewhere the mask is built on
/// the host and multiplied in ([`dropout_slow`]), with the same values.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 || p.is_nan() {
        return Err(crate::KernelError::Config(format!(
            "dropout probability must be below 1, got {p}"
        )));
    }
    if !fused_applies(x) {
        return dropout_slow(x, p, seed);
    }
    Ok(x.contiguous()?.apply_op1(DropoutOp {
        keep: (1.0 - p) as f32,
        seed,
    })?)
}

/// The reference: the same mask as a tensor, multiplied in with candle's `mul` (whose backward
/// also computes an unused gradient for the mask).
pub fn dropout_slow(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = Tensor::from_vec(
        dropout_mask(x.elem_count(), p, seed),
        x.shape(),
        &candle_core::Device::Cpu,
    )?
    .to_dtype(x.dtype())?
    .to_device(x.device())?;
    Ok((x.contiguous()? * mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grouped walk gives exactly `scale_of`'s factors, from any start and for any length.
    #[test]
    fn grouped_scales_are_the_per_element_ones() {
        let (keep, scale) = (threshold(0.7), 1.0 / 0.7);
        for base in [0u64, 1, 2, 3, 5, 169, 1 << 33] {
            for len in [0usize, 1, 3, 4, 7, 64, 169] {
                let mut got = vec![f32::NAN; len];
                for_each_scale(9, base, len, (keep, scale), |j, f| got[j] = f);
                let want: Vec<f32> = (0..len as u64)
                    .map(|j| scale_of(9, base + j, keep, scale))
                    .collect();
                assert_eq!(got, want, "base {base}, len {len}");
            }
        }
    }
}
