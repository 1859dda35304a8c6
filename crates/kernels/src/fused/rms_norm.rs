//! RMS norm over the last dimension with a backward (LLaMA's norm: no centring, no bias).
//!
//! `x̂ = x·r`, `r = 1/√(mean(x²) + ε)`, `y = x̂⊙w`. Backward with `ĝ = g⊙w`:
//! `dx = r·(ĝ − x̂·mean(ĝ⊙x̂))`, `dw = Σ_rows g⊙x̂`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{check_width, f32_slice, fused_applies, hsum, rows_per_task, simd_entry};
use crate::error::Result;
use crate::simd::{Isa, Simd, LANES};

/// `1/√(mean(x²) + eps)` of one row.
#[inline(always)]
fn inv_rms<S: Simd>(s: S, x: &[f32], eps: f32) -> f32 {
    let n = x.len() / LANES * LANES;
    let mut acc = s.zero();
    for i in (0..n).step_by(LANES) {
        let v = s.load_slice(&x[i..]);
        acc = s.fma(v, v, acc);
    }
    let sq = hsum(s, acc) + x[n..].iter().map(|v| v * v).sum::<f32>();
    1.0 / (sq / x.len() as f32 + eps).sqrt()
}

#[inline(always)]
fn fwd_kernel<S: Simd>(s: S, x: &[f32], w: &[f32], y: &mut [f32], eps: f32) {
    let width = w.len();
    let n = width / LANES * LANES;
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        let r = inv_rms(s, xr, eps);
        let rv = s.splat(r);
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.load_slice(&xr[i..]), rv);
            s.store_slice(&mut yr[i..], s.mul(xh, s.load_slice(&w[i..])));
        }
        for i in n..width {
            yr[i] = xr[i] * r * w[i];
        }
    }
}

/// dx for the rows of `x`, and this chunk's partial `dw` added into `dw`.
#[inline(always)]
fn bwd_kernel<S: Simd>(
    s: S,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    eps: f32,
) {
    let width = w.len();
    let n = width / LANES * LANES;
    let inv_w = 1.0 / width as f32;
    for ((xr, gr), dr) in x
        .chunks_exact(width)
        .zip(g.chunks_exact(width))
        .zip(dx.chunks_exact_mut(width))
    {
        let r = inv_rms(s, xr, eps);
        let rv = s.splat(r);
        let mut sgx = s.zero();
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.load_slice(&xr[i..]), rv);
            let gv = s.load_slice(&gr[i..]);
            sgx = s.fma(s.mul(gv, s.load_slice(&w[i..])), xh, sgx);
            let dwv = s.fma(gv, xh, s.load_slice(&dw[i..]));
            s.store_slice(&mut dw[i..], dwv);
        }
        let mut tgx = hsum(s, sgx);
        for i in n..width {
            let xh = xr[i] * r;
            tgx += gr[i] * w[i] * xh;
            dw[i] += gr[i] * xh;
        }
        let mgx = tgx * inv_w;
        let mgxv = s.splat(mgx);
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.load_slice(&xr[i..]), rv);
            let gh = s.mul(s.load_slice(&gr[i..]), s.load_slice(&w[i..]));
            s.store_slice(&mut dr[i..], s.mul(rv, s.sub(gh, s.mul(xh, mgxv))));
        }
        for i in n..width {
            dr[i] = r * (gr[i] * w[i] - xr[i] * r * mgx);
        }
    }
}

simd_entry!(fwd => fwd_kernel(x: &[f32], w: &[f32], y: &mut [f32], eps: f32));
simd_entry!(bwd => bwd_kernel(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], eps: f32));

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "distillery-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let width = check_width(self.name(), l1, w.len())?;
        let mut y = super::par_zeroed(x.len());
        let isa = Isa::detect();
        let chunk = rows_per_task(width) * width;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| fwd(isa, xc, w, yc, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let width = w.elem_count();
        let rows = x.elem_count() / width;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwdOp { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows * width)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows * width, width)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Inputs `x`, `w` and the gradient; output: flat `[dx (rows·width) | dw (width)]`.
struct RmsNormBwdOp {
    eps: f32,
}

impl CustomOp3 for RmsNormBwdOp {
    fn name(&self) -> &'static str {
        "distillery-rms-norm-bwd"
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
        let (x, w, g) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let width = check_width(self.name(), l1, w.len())?;
        if g.len() != x.len() {
            candle_core::bail!(
                "{}: gradient has {} elements, input {}",
                self.name(),
                g.len(),
                x.len()
            );
        }
        let mut out = super::par_zeroed(x.len() + width);
        let (dx, tail) = out.split_at_mut(x.len());
        let isa = Isa::detect();
        let chunk = rows_per_task(width) * width;
        // Partial dw per chunk, summed afterwards in chunk order: bit-identical run to run.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dxc, (xc, gc))| {
                let mut dw = vec![0f32; width];
                bwd(isa, xc, w, gc, dxc, &mut dw, self.eps);
                dw
            })
            .collect();
        super::sum_partials(tail, &partials);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[len])))
    }
}

/// RMS norm over the last dim with a backward for `x` and `w`: fused on f32 CPU tensors,
/// [`rms_norm_slow`] otherwise.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !(fused_applies(x) && fused_applies(w)) {
        return rms_norm_slow(x, w, eps);
    }
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps })?)
}

/// The reference from elementary ops (has a backward); half precision is normalised in f32.
pub fn rms_norm_slow(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(ms + f64::from(eps))?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}
