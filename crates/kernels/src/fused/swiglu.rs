//! SwiGLU, the LLaMA MLP's gate: `y = silu(g)⊙u`, `silu(g) = g·σ(g)`. Backward:
//! `dg = dy⊙u⊙σ(g)·(1 + g·(1 − σ(g)))`, `du = dy⊙silu(g)`. One pass instead of candle's
//! sigmoid, multiply, multiply and their three saved intermediates.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{f32_slice, fused_applies, par_rows, simd_entry};
use crate::error::Result;
use crate::simd::{exp_scalar, Simd, LANES};

#[inline(always)]
fn sigmoid<S: Simd>(s: S, g: S::V) -> S::V {
    let one = s.splat(1.0);
    s.div(one, s.add(one, s.exp(s.sub(s.zero(), g))))
}

#[inline(always)]
fn sigmoid_scalar(g: f32) -> f32 {
    1.0 / (1.0 + exp_scalar(-g))
}

#[inline(always)]
fn fwd_kernel<S: Simd>(s: S, g: &[f32], u: &[f32], y: &mut [f32]) {
    let n = g.len() / LANES * LANES;
    for i in (0..n).step_by(LANES) {
        let gv = s.load_slice(&g[i..]);
        let silu = s.mul(gv, sigmoid(s, gv));
        s.store_slice(&mut y[i..], s.mul(silu, s.load_slice(&u[i..])));
    }
    for i in n..g.len() {
        y[i] = g[i] * sigmoid_scalar(g[i]) * u[i];
    }
}

/// `dg` for the chunk.
#[inline(always)]
fn bwd_gate_kernel<S: Simd>(s: S, g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32]) {
    let n = g.len() / LANES * LANES;
    let one = s.splat(1.0);
    for i in (0..n).step_by(LANES) {
        let gv = s.load_slice(&g[i..]);
        let sg = sigmoid(s, gv);
        let d = s.mul(sg, s.fma(gv, s.sub(one, sg), one));
        let up = s.mul(s.load_slice(&dy[i..]), s.load_slice(&u[i..]));
        s.store_slice(&mut dg[i..], s.mul(up, d));
    }
    for i in n..g.len() {
        let sg = sigmoid_scalar(g[i]);
        dg[i] = dy[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
    }
}

/// `du` for the chunk.
#[inline(always)]
fn bwd_up_kernel<S: Simd>(s: S, g: &[f32], dy: &[f32], du: &mut [f32]) {
    let n = g.len() / LANES * LANES;
    for i in (0..n).step_by(LANES) {
        let gv = s.load_slice(&g[i..]);
        let silu = s.mul(gv, sigmoid(s, gv));
        s.store_slice(&mut du[i..], s.mul(silu, s.load_slice(&dy[i..])));
    }
    for i in n..g.len() {
        du[i] = dy[i] * g[i] * sigmoid_scalar(g[i]);
    }
}

simd_entry!(fwd => fwd_kernel(g: &[f32], u: &[f32], y: &mut [f32]));
simd_entry!(bwd_gate => bwd_gate_kernel(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32]));
simd_entry!(bwd_up => bwd_up_kernel(g: &[f32], dy: &[f32], du: &mut [f32]));

/// Elementwise ops are treated as rows of this width for parallel chunking.
const WIDTH: usize = 1024;

fn same_len(op: &str, a: &[f32], b: &[f32]) -> candle_core::Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs have {} and {} elements", a.len(), b.len());
    }
    Ok(())
}

struct SwigluOp;

impl CustomOp2 for SwigluOp {
    fn name(&self) -> &'static str {
        "distillery-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        same_len(self.name(), g, u)?;
        let mut y = super::par_zeroed(g.len());
        par_rows(&[g, u], &mut y, WIDTH, |isa, ins, out| {
            fwd(isa, ins[0], ins[1], out)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = g.elem_count();
        let packed = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SwigluBwdOp)?;
        let dg = packed.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = packed.narrow(0, n, n)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// Output: flat `[dg | du]`.
struct SwigluBwdOp;

impl CustomOp3 for SwigluBwdOp {
    fn name(&self) -> &'static str {
        "distillery-swiglu-bwd"
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
        let (g, u, dy) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        same_len(self.name(), g, u)?;
        same_len(self.name(), g, dy)?;
        let mut out = super::par_zeroed(2 * g.len());
        let (dg, du) = out.split_at_mut(g.len());
        par_rows(&[g, u, dy], dg, WIDTH, |isa, ins, o| {
            bwd_gate(isa, ins[0], ins[1], ins[2], o)
        });
        par_rows(&[g, dy], du, WIDTH, |isa, ins, o| {
            bwd_up(isa, ins[0], ins[1], o)
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from_dims(&[len])))
    }
}

/// `silu(gate)⊙up` with a backward for both: fused on f32 CPU tensors of one shape,
/// [`swiglu_slow`] otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !(fused_applies(gate) && fused_applies(up)) || gate.shape() != up.shape() {
        return swiglu_slow(gate, up);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwigluOp)?)
}

/// The reference from candle ops (has a backward).
pub fn swiglu_slow(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}
