//! Two GEMM shapes candle's CPU backend handles poorly, with backward:
//!
//! - [`linear`]: `y = x·Wᵀ + b` in one GEMM that starts from the bias rows. As `matmul` then
//!   `broadcast_add`, the bias costs a second pass and allocation, the pre-bias product stays
//!   alive until the backward, and the backward of `broadcast_add` adds two more full-size
//!   tensors.
//! - [`bmm`]: a batched product of many small matrices (attention's b·h products of s×d by d×s).
//!   candle loops over the batch and asks gemm to parallelise each small product, which it
//!   does not, so one core idles; here the batch is split across threads instead.
//!
//! Both run large products on OpenBLAS when [`crate::blas`] could load it, on the gemm crate
//! otherwise. f32 on the CPU only; other dtypes and devices use candle's ops ([`linear_slow`],
//! `Tensor::matmul`), which are also the references in the tests.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::fused_applies;
use crate::blas;
use crate::error::Result;

/// The f32 data of a storage and a bounds-checked view of one operand: `batch` matrices of
/// rows × cols at `offset + i·batch_stride + r·rs + c·cs`.
pub(super) struct View<'a> {
    data: &'a [f32],
    offset: usize,
    batch_stride: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn new(
        s: &'a CpuStorage,
        l: &Layout,
        op: &str,
        dims: [usize; 3],
    ) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("{op}: expected an f32 tensor")
        };
        let (st, dl) = (l.stride(), l.dims());
        let rank = st.len();
        if rank < 2 || !leading_dims_merge(l) {
            candle_core::bail!("{op}: expected a matrix or a stack of them, got {dl:?} / {st:?}");
        }
        let (rs, cs) = (st[rank - 2], st[rank - 1]);
        let batch_stride = if rank > 2 { st[rank - 3] } else { 0 };
        let offset = l.start_offset();
        let last = offset
            + dims[0].saturating_sub(1) * batch_stride
            + dims[1].saturating_sub(1) * rs
            + dims[2].saturating_sub(1) * cs;
        if dims.iter().any(|&d| d > 0) && last >= data.len() {
            candle_core::bail!("{op}: layout out of bounds");
        }
        Ok(Self {
            data,
            offset,
            batch_stride,
            rs,
            cs,
        })
    }

    pub(super) fn ptr(&self, batch: usize) -> *const f32 {
        // In bounds: checked in `new` for every batch < dims[0].
        self.data[self.offset + batch * self.batch_stride..].as_ptr()
    }
}

/// Whether the dims before the last two index matrices at one regular stride.
fn leading_dims_merge(l: &Layout) -> bool {
    let (st, d) = (l.stride(), l.dims());
    let rank = st.len();
    if rank < 4 {
        return true;
    }
    // Matrix index j of dims 0..rank-2 must sit at j·st[rank-3].
    let mut span = st[rank - 3] * d[rank - 3];
    for i in (0..rank - 3).rev() {
        if d[i] > 1 && st[i] != span {
            return false;
        }
        span *= d[i];
    }
    true
}

/// How many threads one product may use.
#[derive(Debug, Clone, Copy)]
enum Threads {
    /// The caller already runs products in parallel (one per batch item).
    One,
    /// All of rayon's threads.
    All,
}

/// Products below this many multiply-adds stay on the gemm crate: on attention's 128×128×32
/// blocks OpenBLAS's per-call set-up outweighs its faster kernel (71 vs 76 GFLOP/s measured).
const BLAS_MIN_MACS: usize = 1 << 22;

/// Rows of a product per thread below which splitting it is not worth a task.
const MIN_SPLIT_ROWS: usize = 64;

/// `dst (m×n, contiguous) = [dst +] scale·a·b` for one matrix of each view: OpenBLAS for large
/// products when it is loaded ([`crate::blas`]), the gemm crate otherwise.
///
/// # Safety
/// `dst` holds m·n floats; `a` and `b` were bounds-checked for (m, k) and (k, n).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: &mut [f32],
    read_dst: bool,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    a_strides: (usize, usize),
    b: *const f32,
    b_strides: (usize, usize),
    scale: f32,
    threads: Threads,
) {
    debug_assert_eq!(dst.len(), m * n);
    if m.saturating_mul(n).saturating_mul(k) >= BLAS_MIN_MACS
        && blas::expressible((m, n, k), a_strides, b_strides)
    {
        if let Some(lib) = blas::openblas() {
            // Single-threaded OpenBLAS, rows of `dst` split across rayon's threads (one part
            // per thread, so results are reproducible for a given thread count).
            let beta = if read_dst { 1.0 } else { 0.0 };
            let parts = match threads {
                Threads::One => 1,
                Threads::All => rayon::current_num_threads().min(m / MIN_SPLIT_ROWS).max(1),
            };
            let rows = m.div_ceil(parts);
            // Raw pointers are not Send; the views outlive the parallel loop.
            let (a, b) = (a as usize, b as usize);
            dst.par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(i, part)| {
                    let a = (a as *const f32).wrapping_add(i * rows * a_strides.0);
                    // SAFETY: the caller's contract; rows i·rows.. of a are within its checked
                    // view, part holds whole rows, and the layout is `blas::expressible`.
                    let done = unsafe {
                        lib.sgemm(
                            part.as_mut_ptr(),
                            n,
                            beta,
                            (part.len() / n, n, k),
                            a,
                            a_strides,
                            b as *const f32,
                            b_strides,
                            scale,
                        )
                    };
                    debug_assert!(done, "layout checked by blas::expressible");
                });
            return;
        }
    }
    let par = match (threads, rayon::current_num_threads()) {
        (Threads::One, _) | (_, 0 | 1) => Parallelism::None,
        (Threads::All, t) => Parallelism::Rayon(t),
    };
    let (a_rs, a_cs) = a_strides;
    let (b_rs, b_cs) = b_strides;
    // SAFETY: the caller's contract; strides are element counts within the checked views.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if read_dst { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `rows` copies of `bias`, written by all threads straight into fresh memory (no zeroing first).
fn bias_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let n = rows * bias.len();
    let mut y: Vec<f32> = Vec::with_capacity(n);
    if !bias.is_empty() {
        let per_task = super::rows_per_task(bias.len()) * bias.len();
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(per_task)
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(bias.len()) {
                    for (d, &b) in row.iter_mut().zip(bias) {
                        d.write(b);
                    }
                }
            });
    }
    // SAFETY: every element was written above (n = 0 when the bias is empty).
    unsafe { y.set_len(n) };
    y
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "distillery-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (rows, input) = xl.shape().dims2()?;
        let (output, w_in) = wl.shape().dims2()?;
        if w_in != input || bl.dims() != [output] {
            candle_core::bail!(
                "{name}: x {:?}, weight {:?}, bias {:?} do not line up",
                xl.dims(),
                wl.dims(),
                bl.dims()
            );
        }
        let x = View::new(xs, xl, name, [1, rows, input])?;
        let w = View::new(ws, wl, name, [1, output, input])?;
        let bias = super::f32_slice(bs, bl, name)?;
        let mut y = bias_rows(bias, rows);
        if rows > 0 && output > 0 && input > 0 {
            // y (rows×out) += x (rows×in) · Wᵀ (in×out): Wᵀ is W's view with strides swapped.
            // SAFETY: views bounds-checked above; y is rows·output.
            unsafe {
                gemm_into(
                    &mut y,
                    true,
                    (rows, output, input),
                    x.ptr(0),
                    (x.rs, x.cs),
                    w.ptr(0),
                    (w.cs, w.rs),
                    1.0,
                    Threads::All,
                );
            }
        }
        Ok((CpuStorage::F32(y), (rows, output).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let product = |a: &Tensor, b: &Tensor| a.apply_op2_no_bwd(b, &BmmOp { scale: 1.0 });
        let dx = product(grad, w)?;
        let dw = product(&grad.t()?, x)?;
        // The bias gradient is a column sum; as a 1×rows GEMM it runs in parallel, where
        // candle's reduction over dim 0 is a strided serial loop.
        let ones = Tensor::ones((1, grad.dim(0)?), grad.dtype(), grad.device())?;
        let db = product(&ones, grad)?.squeeze(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `x·Wᵀ + b` for `x` [rows, in], `W` [out, in], `b` [out]: one GEMM accumulating onto the
/// bias on f32 CPU tensors, [`linear_slow`] otherwise.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(fused_applies(x) && fused_applies(w) && fused_applies(b)) {
        return linear_slow(x, w, b);
    }
    Ok(x.apply_op3(w, &b.contiguous()?, LinearOp)?)
}

/// The reference: `matmul` then `broadcast_add`.
pub fn linear_slow(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// `scale·a·b`; the scale rides on the GEMM (attention's 1/√d) instead of a separate pass.
#[derive(Debug, Clone, Copy)]
struct BmmOp {
    scale: f32,
}

impl CustomOp2 for BmmOp {
    fn name(&self) -> &'static str {
        "distillery-bmm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (d1, d2) = (l1.dims(), l2.dims());
        let r = d1.len();
        if r < 2 || d2.len() != r || d1[..r - 2] != d2[..r - 2] || d1[r - 1] != d2[r - 2] {
            candle_core::bail!("{name}: cannot multiply {:?} by {:?}", l1.dims(), l2.dims());
        }
        let batch: usize = d1[..r - 2].iter().product();
        let (m, k, n) = (d1[r - 2], d1[r - 1], d2[r - 1]);
        let a = View::new(s1, l1, name, [batch, m, k])?;
        let b = View::new(s2, l2, name, [batch, k, n])?;
        let mut out = super::par_zeroed(batch * m * n);
        if m * n > 0 && k > 0 {
            // SAFETY (both arms): views bounds-checked for every batch index; dst is m·n.
            let product = |i: usize, dst: &mut [f32], threads| unsafe {
                gemm_into(
                    dst,
                    false,
                    (m, n, k),
                    a.ptr(i),
                    (a.rs, a.cs),
                    b.ptr(i),
                    (b.rs, b.cs),
                    self.scale,
                    threads,
                )
            };
            if batch >= rayon::current_num_threads() {
                // Attention's many small products: one whole product per task.
                out.par_chunks_mut(m * n)
                    .enumerate()
                    .for_each(|(i, dst)| product(i, dst, Threads::One));
            } else {
                for (i, dst) in out.chunks_mut(m * n).enumerate() {
                    product(i, dst, Threads::All);
                }
            }
        }
        let mut shape = d1[..r - 2].to_vec();
        shape.extend([m, n]);
        Ok((CpuStorage::F32(out), shape.into()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Transposes are views: the op reads any strides.
        let r = a.rank();
        let grad = if leading_dims_merge(grad.layout()) {
            grad.clone()
        } else {
            grad.contiguous()?
        };
        let da = grad.apply_op2_no_bwd(&b.transpose(r - 2, r - 1)?, self)?;
        let db = a.transpose(r - 2, r - 1)?.apply_op2_no_bwd(&grad, self)?;
        Ok((Some(da), Some(db)))
    }
}

/// Batched `a·b` for `a` [.., m, k] and `b` [.., k, n] with equal leading dims, or plain
/// matrices (any strides in the last two): split across threads by batch (or, for fewer
/// products than threads, by rows) on f32 CPU tensors, `Tensor::matmul` otherwise.
/// No reshapes: each would be a graph node costing two full-size passes in the backward.
pub fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    bmm_scaled(a, b, 1.0)
}

/// `scale · a·b` as [`bmm`], the scale applied inside the GEMM.
pub fn bmm_scaled(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let r = a.rank();
    if !(fused_applies(a) && fused_applies(b))
        || r < 2
        || b.rank() != r
        || a.dims()[..r - 2] != b.dims()[..r - 2]
    {
        return bmm_scaled_slow(a, b, scale);
    }
    let merged = |t: &Tensor| -> Result<Tensor> {
        Ok(if leading_dims_merge(t.layout()) {
            t.clone()
        } else {
            t.contiguous()?
        })
    };
    let op = BmmOp {
        scale: scale as f32,
    };
    Ok(merged(a)?.apply_op2(&merged(b)?, op)?)
}

/// The reference: scale `a`, then candle's `matmul`.
pub fn bmm_scaled_slow(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(if scale == 1.0 {
        a.matmul(b)?
    } else {
        (a * scale)?.matmul(b)?
    })
}
