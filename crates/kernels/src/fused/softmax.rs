//! Softmax over the last dimension with a backward: `y = e^{x−max}/Σe^{x−max}`,
//! `dx = y ⊙ (g − Σ g⊙y)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, fused_applies, hmax, hsum, par_rows, simd_entry};
use crate::error::Result;
use crate::simd::{exp_scalar, Simd, LANES};

/// Softmax of each row of `x` (plus `bias`, one row added to every row, when not empty).
#[inline(always)]
fn fwd_kernel<S: Simd>(s: S, x: &[f32], bias: &[f32], y: &mut [f32], width: usize) {
    let n = width / LANES * LANES;
    let masked = !bias.is_empty();
    let at = |xr: &[f32], i: usize| {
        let v = s.load_slice(&xr[i..]);
        if masked {
            s.add(v, s.load_slice(&bias[i..]))
        } else {
            v
        }
    };
    let at1 = |xr: &[f32], i: usize| if masked { xr[i] + bias[i] } else { xr[i] };
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        let mut mv = s.splat(f32::NEG_INFINITY);
        for i in (0..n).step_by(LANES) {
            mv = s.max(mv, at(xr, i));
        }
        let m = (n..width).map(|i| at1(xr, i)).fold(hmax(s, mv), f32::max);
        // A row of −inf (or empty) would give NaN; the model never produces one, but be safe.
        let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
        let (msplat, mut sv) = (s.splat(m), s.zero());
        for i in (0..n).step_by(LANES) {
            let e = s.exp(s.sub(at(xr, i), msplat));
            sv = s.add(sv, e);
            s.store_slice(&mut yr[i..], e);
        }
        let mut sum = hsum(s, sv);
        for (i, y) in yr.iter_mut().enumerate().skip(n) {
            *y = exp_scalar(at1(xr, i) - m);
            sum += *y;
        }
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        let iv = s.splat(inv);
        for i in (0..n).step_by(LANES) {
            let v = s.mul(s.load_slice(&yr[i..]), iv);
            s.store_slice(&mut yr[i..], v);
        }
        for v in &mut yr[n..] {
            *v *= inv;
        }
    }
}

#[inline(always)]
fn bwd_kernel<S: Simd>(s: S, y: &[f32], g: &[f32], dx: &mut [f32], width: usize) {
    let n = width / LANES * LANES;
    for ((yr, gr), dr) in y
        .chunks_exact(width)
        .zip(g.chunks_exact(width))
        .zip(dx.chunks_exact_mut(width))
    {
        let mut dv = s.zero();
        for i in (0..n).step_by(LANES) {
            dv = s.fma(s.load_slice(&yr[i..]), s.load_slice(&gr[i..]), dv);
        }
        let dot = hsum(s, dv) + (n..width).map(|i| yr[i] * gr[i]).sum::<f32>();
        let dotv = s.splat(dot);
        for i in (0..n).step_by(LANES) {
            let v = s.mul(s.load_slice(&yr[i..]), s.sub(s.load_slice(&gr[i..]), dotv));
            s.store_slice(&mut dr[i..], v);
        }
        for i in n..width {
            dr[i] = yr[i] * (gr[i] - dot);
        }
    }
}

simd_entry!(fwd => fwd_kernel(x: &[f32], bias: &[f32], y: &mut [f32], width: usize));
simd_entry!(bwd => bwd_kernel(y: &[f32], g: &[f32], dx: &mut [f32], width: usize));

/// Softmax of each `width`-wide row of `x` plus `bias` (one row, or empty) into `y`.
pub(super) fn rows_fwd(
    isa: crate::simd::Isa,
    x: &[f32],
    bias: &[f32],
    y: &mut [f32],
    width: usize,
) {
    fwd(isa, x, bias, y, width)
}

/// The softmax backward `dx = y ⊙ (g − Σ g⊙y)` row by row.
pub(super) fn rows_bwd(isa: crate::simd::Isa, y: &[f32], g: &[f32], dx: &mut [f32], width: usize) {
    bwd(isa, y, g, dx, width)
}

struct SoftmaxOp;

fn width_of(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "distillery-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let w = width_of(l);
        let mut y = super::par_zeroed(x.len());
        if w > 0 {
            par_rows(&[x], &mut y, w, |isa, ins, out| {
                fwd(isa, ins[0], &[], out, w)
            });
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?,
        ))
    }
}

struct SoftmaxBwdOp;

impl CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "distillery-softmax-last-dim-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        if y.len() != g.len() {
            candle_core::bail!(
                "{}: gradient has {} elements, output {}",
                self.name(),
                g.len(),
                y.len()
            );
        }
        let w = width_of(l1);
        let mut dx = super::par_zeroed(y.len());
        if w > 0 {
            par_rows(&[y, g], &mut dx, w, |isa, ins, out| {
                bwd(isa, ins[0], ins[1], out, w)
            });
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax of `x + bias` over the last dimension, `bias` [groups, width] added to each of the
/// `rows / groups` consecutive rows of its group; only `x` gets a gradient.
struct MaskedSoftmaxOp;

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "distillery-masked-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let w = width_of(l1);
        let mut y = super::par_zeroed(x.len());
        if w == 0 {
            return Ok((CpuStorage::F32(y), l1.shape().clone()));
        }
        let (rows, groups) = (x.len() / w, bias.len() / w);
        if groups == 0 || bias.len() % w != 0 || rows % groups != 0 {
            candle_core::bail!(
                "{}: bias {:?} does not group the rows of {:?}",
                self.name(),
                l2.dims(),
                l1.dims()
            );
        }
        let per_group = rows / groups;
        let isa = super::Isa::detect();
        let task = super::rows_per_task(w);
        y.par_chunks_mut(task * w)
            .zip(x.par_chunks(task * w))
            .enumerate()
            .for_each(|(t, (yc, xc))| {
                for (j, (yr, xr)) in yc.chunks_exact_mut(w).zip(xc.chunks_exact(w)).enumerate() {
                    let g = (t * task + j) / per_group;
                    fwd(isa, xr, &bias[g * w..(g + 1) * w], yr, w);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?;
        Ok((Some(dx), None))
    }
}

/// Softmax of `x + bias` over the last dimension for `x` [g, .., width] and an additive mask
/// `bias` [g, width] (attention scores and their key-padding mask): fused on f32 CPU tensors,
/// [`softmax_last_dim_masked_slow`] otherwise. The mask gets no gradient.
pub fn softmax_last_dim_masked(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !(fused_applies(x) && fused_applies(bias)) {
        return softmax_last_dim_masked_slow(x, bias);
    }
    let bias = bias.detach().contiguous()?;
    Ok(x.contiguous()?.apply_op2(&bias, MaskedSoftmaxOp)?)
}

/// The reference: broadcast the mask over the middle dims, add, softmax.
pub fn softmax_last_dim_masked_slow(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (g, w) = bias.dims2()?;
    let mut shape = vec![1; x.rank()];
    shape[0] = g;
    shape[x.rank() - 1] = w;
    softmax_last_dim_slow(&x.broadcast_add(&bias.detach().reshape(shape)?)?)
}

/// Softmax over the last dimension with a backward: fused on f32 CPU tensors,
/// [`softmax_last_dim_slow`] otherwise.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused_applies(x) {
        return softmax_last_dim_slow(x);
    }
    Ok(x.contiguous()?.apply_op1(SoftmaxOp)?)
}

/// The reference: candle-nn's composite softmax (max, sub, exp, sum, div; has a backward).
pub fn softmax_last_dim_slow(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}
