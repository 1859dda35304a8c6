//! Splitting attention heads out of a [b·s, h] activation into a contiguous [b, heads, s, d]
//! tensor and merging them back, each one graph node whose backward is the other.
//!
//! As `reshape → transpose → contiguous` it is three nodes, and candle's backward spends a
//! zero-fill and an add on a full-size gradient for every node, views included.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, fused_applies};
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
struct Heads {
    batch: usize,
    seq: usize,
    heads: usize,
    dim: usize,
}

/// `split`: [b·s, h] → [b, heads, s, d]; otherwise the inverse. Each is the other's backward.
#[derive(Debug, Clone, Copy)]
struct HeadsOp {
    heads: Heads,
    split: bool,
}

/// Copies between the token-major [b, s, heads, d] order and the head-major [b, heads, s, d].
fn permute(x: &[f32], g: Heads, split: bool) -> Vec<f32> {
    let Heads {
        seq, heads, dim, ..
    } = g;
    let mut out = super::par_zeroed(x.len());
    let per_batch = seq * heads * dim;
    if per_batch == 0 {
        return out;
    }
    out.par_chunks_mut(per_batch)
        .zip(x.par_chunks(per_batch))
        .for_each(|(o, xb)| {
            for t in 0..seq {
                for h in 0..heads {
                    let token_major = (t * heads + h) * dim;
                    let head_major = (h * seq + t) * dim;
                    let (src, dst) = if split {
                        (token_major, head_major)
                    } else {
                        (head_major, token_major)
                    };
                    o[dst..dst + dim].copy_from_slice(&xb[src..src + dim]);
                }
            }
        });
    out
}

impl CustomOp1 for HeadsOp {
    fn name(&self) -> &'static str {
        if self.split {
            "distillery-split-heads"
        } else {
            "distillery-merge-heads"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.heads;
        let x = f32_slice(s, l, self.name())?;
        if x.len() != g.batch * g.seq * g.heads * g.dim {
            candle_core::bail!("{}: {:?} does not hold {g:?}", self.name(), l.dims());
        }
        let shape: Shape = if self.split {
            (g.batch, g.heads, g.seq, g.dim).into()
        } else {
            (g.batch * g.seq, g.heads * g.dim).into()
        };
        Ok((CpuStorage::F32(permute(x, g, self.split)), shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let inverse = HeadsOp {
            split: !self.split,
            ..*self
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// [b·s, heads·d] → contiguous [b, heads, s, d] for a batch of `batch` sequences.
pub fn split_heads(x: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
    let (rows, h) = x.dims2()?;
    let g = Heads {
        batch,
        seq: rows / batch.max(1),
        heads,
        dim: h / heads.max(1),
    };
    if !fused_applies(x) || g.batch * g.seq != rows || g.heads * g.dim != h {
        return split_heads_slow(x, batch, heads);
    }
    Ok(x.contiguous()?.apply_op1(HeadsOp {
        heads: g,
        split: true,
    })?)
}

/// The reference: reshape, transpose, copy.
pub fn split_heads_slow(x: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
    let (rows, h) = x.dims2()?;
    Ok(
        x.reshape((batch, rows / batch.max(1), heads, h / heads.max(1)))?
            .transpose(1, 2)?
            .contiguous()?,
    )
}

/// [b, heads, s, d] → [b·s, heads·d], the inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, dim) = x.dims4()?;
    if !fused_applies(x) {
        return merge_heads_slow(x);
    }
    let g = Heads {
        batch,
        seq,
        heads,
        dim,
    };
    Ok(x.contiguous()?.apply_op1(HeadsOp {
        heads: g,
        split: false,
    })?)
}

/// The reference: transpose, then reshape (which copies).
pub fn merge_heads_slow(x: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, dim) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((batch * seq, heads * dim))?)
}
