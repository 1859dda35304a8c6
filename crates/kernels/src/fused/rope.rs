//! Rotary position embedding applied to queries or keys, Hugging Face's half-split form:
//! `y = x⊙cos + rotate_half(x)⊙sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]`. The rotation is
//! linear in `x`, so the backward is the transposed rotation: `dx = dy⊙cos + Rᵀ(dy⊙sin)` with
//! `Rᵀ([z₁, z₂]) = [z₂, −z₁]`. `cos` and `sin` are per (batch, position) and shared by every
//! head; they get no gradient (positions are not learned).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, fused_applies};
use crate::error::Result;

/// Rotates the rows of one (batch, head) block: `x` [seq, d], `cos`/`sin` [seq, d].
/// `sign` = 1 applies R, −1 applies Rᵀ (the backward).
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32], d: usize, sign: f32) {
    let half = d / 2;
    for ((xr, yr), (c, s)) in x
        .chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .zip(cos.chunks_exact(d).zip(sin.chunks_exact(d)))
    {
        if sign > 0.0 {
            for j in 0..half {
                yr[j] = xr[j] * c[j] - xr[j + half] * s[j];
                yr[j + half] = xr[j + half] * c[j + half] + xr[j] * s[j + half];
            }
        } else {
            for j in 0..half {
                yr[j] = xr[j] * c[j] + xr[j + half] * s[j + half];
                yr[j + half] = xr[j + half] * c[j + half] - xr[j] * s[j];
            }
        }
    }
}

struct RopeOp {
    sign: f32,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "distillery-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (b, h, l, d) = l1.shape().dims4()?;
        if l2.dims() != [b, l, d] || l3.dims() != [b, l, d] || d % 2 != 0 {
            candle_core::bail!(
                "{}: x {:?} needs cos and sin of [{b}, {l}, {d}] with an even d, got {:?} and {:?}",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut y = super::par_zeroed(x.len());
        let block = l * d;
        y.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(|(i, (yb, xb))| {
                let at = (i / h) * block;
                let (c, s) = (&cos[at..at + block], &sin[at..at + block]);
                rotate(xb, c, s, yb, d, self.sign);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = RopeOp { sign: -self.sign };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(dx), None, None))
    }
}

/// RoPE on `x` [batch, heads, seq, head_dim] with `cos`, `sin` [batch, seq, head_dim] (halves
/// repeated, as Hugging Face builds them), with a backward for `x`: fused on f32 CPU tensors,
/// [`rope_slow`] otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !(fused_applies(x) && fused_applies(cos) && fused_applies(sin)) {
        return rope_slow(x, cos, sin);
    }
    Ok(x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, RopeOp { sign: 1.0 })?)
}

/// The reference from candle ops (has a backward).
pub fn rope_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(3)?;
    let (x1, x2) = (x.narrow(3, 0, d / 2)?, x.narrow(3, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    Ok((x.broadcast_mul(&cos.unsqueeze(1)?)? + rotated.broadcast_mul(&sin.unsqueeze(1)?)?)?)
}
