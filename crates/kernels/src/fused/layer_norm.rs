//! Layer norm over the last dimension with a backward.
//!
//! `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` (two-pass μ and σ², as candle's `layer_norm_slow`),
//! `y = x̂⊙w + b`. Backward with `ĝ = g⊙w`:
//! `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))`, `dw = Σ_rows g⊙x̂`, `db = Σ_rows g`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{check_width, f32_slice, fused_applies, hsum, rows_per_task, simd_entry};
use crate::error::Result;
use crate::simd::{Isa, Simd, LANES};

/// Mean and `1/√(var + eps)` of one row.
#[inline(always)]
fn stats<S: Simd>(s: S, x: &[f32], eps: f32) -> (f32, f32) {
    let w = x.len();
    let n = w / LANES * LANES;
    let mut acc = s.zero();
    for i in (0..n).step_by(LANES) {
        acc = s.add(acc, s.load_slice(&x[i..]));
    }
    let mean = (hsum(s, acc) + x[n..].iter().sum::<f32>()) / w as f32;
    let (mv, mut acc) = (s.splat(mean), s.zero());
    for i in (0..n).step_by(LANES) {
        let d = s.sub(s.load_slice(&x[i..]), mv);
        acc = s.fma(d, d, acc);
    }
    let var =
        (hsum(s, acc) + x[n..].iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / w as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

#[inline(always)]
fn fwd_kernel<S: Simd>(s: S, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32) {
    let width = w.len();
    let n = width / LANES * LANES;
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        let (mean, r) = stats(s, xr, eps);
        let (mv, rv) = (s.splat(mean), s.splat(r));
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.sub(s.load_slice(&xr[i..]), mv), rv);
            s.store_slice(
                &mut yr[i..],
                s.fma(xh, s.load_slice(&w[i..]), s.load_slice(&b[i..])),
            );
        }
        for i in n..width {
            yr[i] = (xr[i] - mean) * r * w[i] + b[i];
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// dx for the rows of `x`, and this chunk's partial `dw`, `db` added into `dw`, `db`.
#[inline(always)]
fn bwd_kernel<S: Simd>(
    s: S,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
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
        let (mean, r) = stats(s, xr, eps);
        let (mv, rv) = (s.splat(mean), s.splat(r));
        // Means of ĝ and ĝ⊙x̂; dw, db accumulate on the way.
        let (mut sg, mut sgx) = (s.zero(), s.zero());
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.sub(s.load_slice(&xr[i..]), mv), rv);
            let gv = s.load_slice(&gr[i..]);
            let gh = s.mul(gv, s.load_slice(&w[i..]));
            sg = s.add(sg, gh);
            sgx = s.fma(gh, xh, sgx);
            let (dwv, dbv) = (
                s.fma(gv, xh, s.load_slice(&dw[i..])),
                s.add(gv, s.load_slice(&db[i..])),
            );
            s.store_slice(&mut dw[i..], dwv);
            s.store_slice(&mut db[i..], dbv);
        }
        let (mut tg, mut tgx) = (hsum(s, sg), hsum(s, sgx));
        for i in n..width {
            let xh = (xr[i] - mean) * r;
            let gh = gr[i] * w[i];
            tg += gh;
            tgx += gh * xh;
            dw[i] += gr[i] * xh;
            db[i] += gr[i];
        }
        let (mg, mgx) = (tg * inv_w, tgx * inv_w);
        let (mgv, mgxv) = (s.splat(mg), s.splat(mgx));
        for i in (0..n).step_by(LANES) {
            let xh = s.mul(s.sub(s.load_slice(&xr[i..]), mv), rv);
            let gh = s.mul(s.load_slice(&gr[i..]), s.load_slice(&w[i..]));
            let v = s.mul(rv, s.sub(s.sub(gh, mgv), s.mul(xh, mgxv)));
            s.store_slice(&mut dr[i..], v);
        }
        for i in n..width {
            let xh = (xr[i] - mean) * r;
            dr[i] = r * (gr[i] * w[i] - mg - xh * mgx);
        }
    }
}

simd_entry!(fwd => fwd_kernel(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], eps: f32));
simd_entry!(bwd => bwd_kernel(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], db: &mut [f32], eps: f32));

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "distillery-layer-norm"
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
        let (x, w, b) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let width = check_width(self.name(), l1, w.len())?;
        if b.len() != width {
            candle_core::bail!(
                "{}: bias has {} elements, expected {width}",
                self.name(),
                b.len()
            );
        }
        let mut y = super::par_zeroed(x.len());
        let isa = Isa::detect();
        let chunk = rows_per_task(width) * width;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| fwd(isa, xc, w, b, yc, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = w.elem_count();
        let rows = x.elem_count() / width;
        let packed =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBwdOp { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows * width)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows * width, width)?.reshape(w.shape())?;
        let db = packed
            .narrow(0, rows * width + width, width)?
            .reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Output: flat `[dx (rows·width) | dw (width) | db (width)]`.
struct LayerNormBwdOp {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "distillery-layer-norm-bwd"
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
        let mut out = super::par_zeroed(x.len() + 2 * width);
        let (dx, tail) = out.split_at_mut(x.len());
        let isa = Isa::detect();
        let chunk = rows_per_task(width) * width;
        // Partial dw/db per chunk, summed afterwards in chunk order: bit-identical run to run.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dxc, (xc, gc))| {
                let mut p = vec![0f32; 2 * width];
                let (dw, db) = p.split_at_mut(width);
                bwd(isa, xc, w, gc, dxc, dw, db, self.eps);
                p
            })
            .collect();
        super::sum_partials(tail, &partials);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[len])))
    }
}

/// Layer norm over the last dim with a backward for `x`, `w` and `b`: fused on f32 CPU tensors,
/// [`layer_norm_slow`] otherwise.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    if !(fused_applies(x) && fused_applies(w) && fused_applies(b)) {
        return layer_norm_slow(x, w, b, eps);
    }
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp { eps })?)
}

/// The reference from elementary ops (has a backward); half precision is normalised in f32.
pub fn layer_norm_slow(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let centred = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + f64::from(eps))?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?.broadcast_add(b)?)
}
