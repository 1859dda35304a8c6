//! erf-GELU, `gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2))`, and its derivative `Φ(x) + x·φ(x)`.
//!
//! erf uses Abramowitz & Stegun 7.1.26: `erf(z) = 1 − t·P(t)·e^{−z²}`, `t = 1/(1 + p·z)` for
//! `z ≥ 0` (absolute error ≤ 1.5e-7), which shares `e^{−z²} = e^{−x²/2}` with `φ(x)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{f32_slice, fused_applies, par_rows, simd_entry};
use crate::error::Result;
use crate::simd::{exp_scalar, Simd, LANES};

const P: f32 = 0.327_591_1;
const A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152_1,
    1.061_405_4,
];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `(Φ(x), e^{−x²/2})` for one lane vector.
#[inline(always)]
fn phi_parts<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    let ax = s.max(x, s.sub(s.zero(), x));
    let z = s.mul(ax, s.splat(FRAC_1_SQRT_2));
    let t = s.div(s.splat(1.0), s.fma(s.splat(P), z, s.splat(1.0)));
    let mut poly = s.splat(A[4]);
    for a in A[..4].iter().rev() {
        poly = s.fma(poly, t, s.splat(*a));
    }
    poly = s.mul(poly, t);
    let e = s.exp(s.sub(s.zero(), s.mul(z, z)));
    let erf_abs = s.sub(s.splat(1.0), s.mul(poly, e));
    // sign(x) ∈ {−1, 0, 1} without a select: x / max(|x|, tiny).
    let sgn = s.div(x, s.max(ax, s.splat(f32::MIN_POSITIVE)));
    let cdf = s.mul(s.splat(0.5), s.fma(sgn, erf_abs, s.splat(1.0)));
    (cdf, e)
}

#[inline(always)]
fn phi_parts_scalar(x: f32) -> (f32, f32) {
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / (P * z + 1.0);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp_scalar(-z * z);
    let erf_abs = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), e)
}

#[inline(always)]
fn fwd_kernel<S: Simd>(s: S, x: &[f32], y: &mut [f32]) {
    let n = x.len() / LANES * LANES;
    for i in (0..n).step_by(LANES) {
        let v = s.load_slice(&x[i..]);
        let (cdf, _) = phi_parts(s, v);
        s.store_slice(&mut y[i..], s.mul(v, cdf));
    }
    for i in n..x.len() {
        y[i] = x[i] * phi_parts_scalar(x[i]).0;
    }
}

#[inline(always)]
fn bwd_kernel<S: Simd>(s: S, x: &[f32], g: &[f32], dx: &mut [f32]) {
    let n = x.len() / LANES * LANES;
    for i in (0..n).step_by(LANES) {
        let v = s.load_slice(&x[i..]);
        let (cdf, e) = phi_parts(s, v);
        let d = s.fma(s.mul(v, s.splat(FRAC_1_SQRT_2PI)), e, cdf);
        s.store_slice(&mut dx[i..], s.mul(d, s.load_slice(&g[i..])));
    }
    for i in n..x.len() {
        let (cdf, e) = phi_parts_scalar(x[i]);
        dx[i] = g[i] * (cdf + x[i] * FRAC_1_SQRT_2PI * e);
    }
}

simd_entry!(fwd => fwd_kernel(x: &[f32], y: &mut [f32]));
simd_entry!(bwd => bwd_kernel(x: &[f32], g: &[f32], dx: &mut [f32]));

/// Elementwise ops are treated as rows of this width for parallel chunking.
const WIDTH: usize = 1024;

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "distillery-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = super::par_zeroed(x.len());
        par_rows(&[x], &mut y, WIDTH, |isa, ins, out| fwd(isa, ins[0], out));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwdOp)?))
    }
}

struct GeluBwdOp;

impl CustomOp2 for GeluBwdOp {
    fn name(&self) -> &'static str {
        "distillery-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        if x.len() != g.len() {
            candle_core::bail!(
                "{}: gradient has {} elements, input {}",
                self.name(),
                g.len(),
                x.len()
            );
        }
        let mut dx = super::par_zeroed(x.len());
        par_rows(&[x, g], &mut dx, WIDTH, |isa, ins, out| {
            bwd(isa, ins[0], ins[1], out)
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// erf-GELU with a backward: fused on f32 CPU tensors, [`gelu_erf_slow`] otherwise.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fused_applies(x) {
        return gelu_erf_slow(x);
    }
    Ok(x.contiguous()?.apply_op1(GeluOp)?)
}

/// The reference: candle's `gelu_erf` (exact erf, scalar loop; has a backward).
pub fn gelu_erf_slow(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}
