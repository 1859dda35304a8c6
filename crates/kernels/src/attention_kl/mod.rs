//! Streaming attention-KL: `KL(softmax(a) ‖ softmax(b))` per query row between a teacher's and a
//! student's attention distributions, without materialising either attention map.
//!
//! For batch `b`, head `h` and query row `i`, over the keys `j` with `mask[b, j] ≠ 0`:
//!
//! ```text
//! a_j = (q_t,i · k_t,j)·scale_t        b_j = (q_s,i · k_s,j)·scale_s
//! KL_i = Σ_j p_j (a_j − b_j) − lse(a) + lse(b),      p = softmax(a)
//! ```
//!
//! The teacher and student head dims (`d_t`, `d_s`) may differ. The fused op
//! ([`attention_kl_rows`], [`attention_kl`]) makes one streaming pass over key tiles keeping only
//! running maxima and sums per row and saves `lse(a)`, `lse(b)` per row (O(B·H·L)); the backward
//! recomputes the scores tile by tile (`∂KL_i/∂b_j = softmax(b)_j − p_j`). It is differentiable with
//! respect to `q_s` and `k_s`; the teacher side is detached.
//!
//! # Conventions
//!
//! - Keys with mask 0 are excluded from both distributions.
//! - Padded query rows (`mask[b, i] = 0`) have KL 0 and zero gradients; in particular a batch item
//!   with no valid position at all gives zeros, never NaN.
//! - [`attention_kl`] is the mean over valid rows across batch and heads (0 if there are none).
//! - Inputs may be f32, f64, bf16 or f16 (teacher and student dtypes may differ; `q_s` and `k_s`
//!   must share one), all arithmetic accumulates in f32, the per-row output is f32 and the
//!   gradients have the dtype of `q_s`/`k_s`. Non-contiguous inputs are made contiguous first.
//! - The mask is `[b, l]` of any dtype; nonzero means valid.
//!
//! Every fused function has a `_slow` twin built from plain candle ops (it materialises the
//! `[b, h, l, l]` score maps) with the same conventions, used as the reference in the tests.
//!
//! # Devices
//!
//! CPU (module `cpu`: rayon over `(batch, head, row block)`, AVX2+FMA selected at run time with
//! a portable fallback) and, with the `cuda` feature, CUDA (module `cuda`, kernels in
//! `crates/kernels/cuda/attention_kl.cu`) as the `cpu_fwd` / `cuda_fwd` of the two custom ops of
//! this module: the forward `AttentionKlOp` (a `CustomOp2` on `(q_s, k_s)`
//! holding the detached teacher inputs, the `u8` mask and the problem dims, output `[b, h, l]`
//! f32, saving per-row statistics for the backward) and the backward `AttentionKlBwdOp` (a
//! `CustomOp3` on `(q_s, k_s, grad_rows)`, output `[2, b, h, l, d_s]` = `[dQ_s; dK_s]`).

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod slow;

#[cfg(feature = "cuda")]
pub use cuda::{cuda_tensor_cores, set_cuda_tensor_cores};

pub use slow::{
    attention_kl_rows_slow, attention_kl_slow, relation_kl_rows_slow, relation_kl_slow,
};

use crate::error::{KernelError, Result};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Score scales of the attention-KL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionKlConfig {
    /// Multiplies the teacher scores `q_t · k_t` (usually `1/sqrt(d_t)`).
    pub scale_t: f32,
    /// Multiplies the student scores `q_s · k_s` (usually `1/sqrt(d_s)`).
    pub scale_s: f32,
}

impl AttentionKlConfig {
    /// A configuration with explicit scales.
    pub fn new(scale_t: f32, scale_s: f32) -> Self {
        Self { scale_t, scale_s }
    }

    /// The usual scaled-dot-product scales `1/sqrt(d_t)` and `1/sqrt(d_s)` for the given head
    /// dims.
    pub fn for_head_dims(d_t: usize, d_s: usize) -> Self {
        Self {
            scale_t: 1.0 / (d_t as f32).sqrt(),
            scale_s: 1.0 / (d_s as f32).sqrt(),
        }
    }

    fn check(&self) -> Result<()> {
        if !self.scale_t.is_finite() || !self.scale_s.is_finite() {
            return Err(KernelError::Config(format!(
                "attention-KL scales must be finite, got scale_t = {}, scale_s = {}",
                self.scale_t, self.scale_s
            )));
        }
        Ok(())
    }
}

/// Problem dimensions and scales (device independent).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem {
    pub b: usize,
    pub h: usize,
    pub l: usize,
    pub d_t: usize,
    pub d_s: usize,
    pub scale_t: f32,
    pub scale_s: f32,
}

fn is_float(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
}

/// Checks shapes, dtypes, devices and the config; returns the problem dims.
pub(crate) fn validate(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Problem> {
    cfg.check()?;
    let shape_err = |tensor, expected: String, t: &Tensor| KernelError::Shape {
        tensor,
        expected,
        actual: t.dims().to_vec(),
    };
    let &[b, h, l, d_s] = q_s.dims() else {
        return Err(shape_err("q_s", "[b, h, l, d_s] (rank 4)".into(), q_s));
    };
    let d_t = match q_t.dims() {
        &[b2, h2, l2, d_t] if (b2, h2, l2) == (b, h, l) => d_t,
        _ => {
            return Err(shape_err(
                "q_t",
                format!("[b, h, l, d_t] = [{b}, {h}, {l}, _]"),
                q_t,
            ))
        }
    };
    if k_t.dims() != q_t.dims() {
        return Err(shape_err(
            "k_t",
            format!("{:?} (the shape of q_t)", q_t.dims()),
            k_t,
        ));
    }
    if k_s.dims() != q_s.dims() {
        return Err(shape_err(
            "k_s",
            format!("{:?} (the shape of q_s)", q_s.dims()),
            k_s,
        ));
    }
    if mask.dims() != [b, l] {
        return Err(shape_err("mask", format!("[b, l] = [{b}, {l}]"), mask));
    }
    for (tensor, t) in [("q_t", q_t), ("k_t", k_t), ("q_s", q_s), ("k_s", k_s)] {
        if !is_float(t.dtype()) {
            return Err(KernelError::DType {
                tensor,
                expected: "f32, f64, bf16 or f16",
                actual: t.dtype(),
            });
        }
    }
    if k_s.dtype() != q_s.dtype() {
        return Err(KernelError::DType {
            tensor: "k_s",
            expected: "the dtype of q_s",
            actual: k_s.dtype(),
        });
    }
    let loc = q_s.device().location();
    for (tensor, t) in [("q_t", q_t), ("k_t", k_t), ("k_s", k_s), ("mask", mask)] {
        if t.device().location() != loc {
            return Err(KernelError::Device {
                tensor,
                expected: loc,
                actual: t.device().location(),
            });
        }
    }
    Ok(Problem {
        b,
        h,
        l,
        d_t,
        d_s,
        scale_t: cfg.scale_t,
        scale_s: cfg.scale_s,
    })
}

/// The mask as a contiguous `u8` tensor (1 = valid).
pub(crate) fn normalize_mask(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.ne(0f64)?.to_dtype(DType::U8)?.contiguous()?)
}

/// Mean of the per-row values over the valid rows (`heads` rows per valid position); 0 if none.
pub(crate) fn mean_over_valid_rows(
    rows: &Tensor,
    mask_u8: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let valid = mask_u8
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as f64;
    let count = valid * heads as f64;
    let sum = rows.sum_all()?;
    if count > 0.0 {
        Ok(sum.affine(1.0 / count, 0.0)?)
    } else {
        // Not `affine(0, 0)`: candle drops the gradient of that, we want a zero one.
        Ok(sum.mul(&sum.zeros_like()?)?)
    }
}

/// What forward and backward share: the detached, contiguous teacher inputs, the `u8` mask and
/// the problem.
#[derive(Debug)]
struct Shared {
    q_t: Tensor,
    k_t: Tensor,
    mask: Tensor,
    problem: Problem,
}

fn cpu_src<'a>(s: &'a Storage, l: &Layout, name: &str) -> candle_core::Result<cpu::Src<'a>> {
    match s {
        Storage::Cpu(s) => cpu::Src::new(s, l, name),
        _ => candle_core::bail!(
            "attention-kl: `{name}` is not on the CPU while the student inputs are"
        ),
    }
}

fn cpu_mask<'a>(s: &'a Storage, l: &Layout) -> candle_core::Result<&'a [u8]> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::U8(v)), Some((start, end))) => match v.get(start..end) {
            Some(v) => Ok(v),
            None => candle_core::bail!("attention-kl: mask layout is out of bounds of its storage"),
        },
        _ => candle_core::bail!("attention-kl: mask must be a contiguous u8 CPU tensor"),
    }
}

/// The per-row statistics the forward saves for the backward, on the device that computed them.
#[derive(Debug, Clone)]
enum SavedStats {
    Cpu(Arc<cpu::RowStats>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<cuda::RowStats>),
}

impl SavedStats {
    fn cpu(&self) -> candle_core::Result<&cpu::RowStats> {
        match self {
            SavedStats::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            SavedStats::Cuda(_) => {
                candle_core::bail!("attention-kl: backward on the CPU, statistics on the GPU")
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> candle_core::Result<&cuda::RowStats> {
        match self {
            SavedStats::Cuda(s) => Ok(s),
            SavedStats::Cpu(_) => {
                candle_core::bail!("attention-kl: backward on the GPU, statistics on the CPU")
            }
        }
    }
}

/// The forward op, applied as `q_s.apply_op2(k_s, op)`; output: per-row KL `[b, h, l]` (f32).
/// Saves the per-row log-sum-exps for [`AttentionKlBwdOp`].
struct AttentionKlOp {
    shared: Arc<Shared>,
    stats: Mutex<Option<SavedStats>>,
}

impl AttentionKlOp {
    fn save(&self, stats: SavedStats) -> candle_core::Result<()> {
        match self.stats.lock() {
            Ok(mut s) => *s = Some(stats),
            Err(_) => candle_core::bail!("attention-kl: poisoned statistics lock"),
        }
        Ok(())
    }
}

impl CustomOp2 for AttentionKlOp {
    fn name(&self) -> &'static str {
        "distillery-attention-kl"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let sh = &self.shared;
        let (qt, qt_l) = sh.q_t.storage_and_layout();
        let (kt, kt_l) = sh.k_t.storage_and_layout();
        let (mask, mask_l) = sh.mask.storage_and_layout();
        let inputs = cpu::Inputs {
            q_t: cpu_src(&qt, qt_l, "q_t")?,
            k_t: cpu_src(&kt, kt_l, "k_t")?,
            q_s: cpu::Src::new(s1, l1, "q_s")?,
            k_s: cpu::Src::new(s2, l2, "k_s")?,
            mask: cpu_mask(&mask, mask_l)?,
        };
        let p = &sh.problem;
        let (kl, stats) = cpu::forward(p, &inputs)?;
        self.save(SavedStats::Cpu(Arc::new(stats)))?;
        Ok((CpuStorage::F32(kl), Shape::from_dims(&[p.b, p.h, p.l])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (kl, stats) = cuda::forward_op(&self.shared, (s1, l1), (s2, l2))?;
        self.save(SavedStats::Cuda(Arc::new(stats)))?;
        let p = &self.shared.problem;
        Ok((kl, Shape::from_dims(&[p.b, p.h, p.l])))
    }

    fn bwd(
        &self,
        q_s: &Tensor,
        k_s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let stats = match self.stats.lock() {
            Ok(s) => s.clone(),
            Err(_) => candle_core::bail!("attention-kl: poisoned statistics lock"),
        };
        let Some(stats) = stats else {
            candle_core::bail!("attention-kl: backward called before forward");
        };
        let op = AttentionKlBwdOp {
            shared: self.shared.clone(),
            stats,
        };
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let both = q_s.apply_op3_no_bwd(k_s, &grad, &op)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// The backward op, applied as `q_s.apply_op3_no_bwd(k_s, grad_rows)`; output `[2, b, h, l, d_s]`
/// = `[dQ_s; dK_s]` in the dtype of `q_s`.
struct AttentionKlBwdOp {
    shared: Arc<Shared>,
    stats: SavedStats,
}

impl CustomOp3 for AttentionKlBwdOp {
    fn name(&self) -> &'static str {
        "distillery-attention-kl-bwd"
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
        let sh = &self.shared;
        let (qt, qt_l) = sh.q_t.storage_and_layout();
        let (kt, kt_l) = sh.k_t.storage_and_layout();
        let (mask, mask_l) = sh.mask.storage_and_layout();
        let inputs = cpu::Inputs {
            q_t: cpu_src(&qt, qt_l, "q_t")?,
            k_t: cpu_src(&kt, kt_l, "k_t")?,
            q_s: cpu::Src::new(s1, l1, "q_s")?,
            k_s: cpu::Src::new(s2, l2, "k_s")?,
            mask: cpu_mask(&mask, mask_l)?,
        };
        let grad = match (cpu::Src::new(s3, l3, "grad")?, l3.is_contiguous()) {
            (cpu::Src::F32(g), true) => g,
            _ => candle_core::bail!("attention-kl backward: the gradient must be contiguous f32"),
        };
        let p = &sh.problem;
        let out = cpu::backward(p, &inputs, self.stats.cpu()?, grad)?;
        Ok((out, Shape::from_dims(&[2, p.b, p.h, p.l, p.d_s])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let stats = self.stats.cuda()?;
        let out = cuda::backward_op(&self.shared, stats, (s1, l1), (s2, l2), (s3, l3))?;
        let p = &self.shared.problem;
        Ok((out, Shape::from_dims(&[2, p.b, p.h, p.l, p.d_s])))
    }
}

/// Per-row attention KL, fused and streaming: `[b, h, l]` f32, differentiable w.r.t. `q_s` and
/// `k_s` (the teacher is detached).
///
/// Shapes: `q_t`, `k_t`: `[b, h, l, d_t]`; `q_s`, `k_s`: `[b, h, l, d_s]`; `mask`: `[b, l]` (any
/// dtype, nonzero = valid). See the [module docs](self) for the conventions.
pub fn attention_kl_rows(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Tensor> {
    let problem = validate(q_t, k_t, q_s, k_s, mask, cfg)?;
    let mask = normalize_mask(mask)?;
    rows_with_mask(q_t, k_t, q_s, k_s, mask, problem)
}

fn rows_with_mask(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: Tensor,
    problem: Problem,
) -> Result<Tensor> {
    let shared = Shared {
        q_t: q_t.detach().contiguous()?,
        k_t: k_t.detach().contiguous()?,
        mask,
        problem,
    };
    let op = AttentionKlOp {
        shared: Arc::new(shared),
        stats: Mutex::new(None),
    };
    // `contiguous` keeps the tensor (and its id) when it already is, so passing one tensor as both
    // `q_s` and `k_s` makes candle add the two gradients into it.
    let (q_s, k_s) = (q_s.contiguous()?, k_s.contiguous()?);
    Ok(q_s.apply_op2(&k_s, op)?)
}

/// Mean attention KL over the valid query rows across batch and heads (0 if there are none):
/// a scalar f32 tensor. Fused and streaming; see [`attention_kl_rows`].
pub fn attention_kl(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Tensor> {
    let problem = validate(q_t, k_t, q_s, k_s, mask, cfg)?;
    let mask = normalize_mask(mask)?;
    let rows = rows_with_mask(q_t, k_t, q_s, k_s, mask.clone(), problem)?;
    mean_over_valid_rows(&rows, &mask, problem.h)
}

/// Re-splits `[b, l, H]` (heads concatenated) into `[b, r, l, H / r]`, contiguous.
pub(crate) fn split_relation_heads(
    x: &Tensor,
    relation_heads: usize,
    name: &'static str,
) -> Result<Tensor> {
    let &[b, l, hidden] = x.dims() else {
        return Err(KernelError::Shape {
            tensor: name,
            expected: "[b, l, H] (rank 3)".into(),
            actual: x.dims().to_vec(),
        });
    };
    if relation_heads == 0 {
        return Err(KernelError::Config(
            "relation_heads must be at least 1".into(),
        ));
    }
    if hidden % relation_heads != 0 || hidden == 0 {
        return Err(KernelError::Shape {
            tensor: name,
            expected: format!(
                "[b, l, H] with H a nonzero multiple of relation_heads = {relation_heads}"
            ),
            actual: x.dims().to_vec(),
        });
    }
    Ok(x.reshape((b, l, relation_heads, hidden / relation_heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// Checks the relation-KL inputs; returns the re-split `(x_t, x_s)` (teacher detached) and the
/// config with `1/sqrt(H/R)` scales.
pub(crate) fn relation_inputs(
    x_t: &Tensor,
    x_s: &Tensor,
    relation_heads: usize,
) -> Result<(Tensor, Tensor, AttentionKlConfig)> {
    if let (&[b, l, _], &[b2, l2, _]) = (x_s.dims(), x_t.dims()) {
        if (b, l) != (b2, l2) {
            return Err(KernelError::Shape {
                tensor: "x_t",
                expected: format!("[b, l, H_t] = [{b}, {l}, _]"),
                actual: x_t.dims().to_vec(),
            });
        }
    }
    let xs = split_relation_heads(x_s, relation_heads, "x_s")?;
    let xt = split_relation_heads(&x_t.detach(), relation_heads, "x_t")?;
    let cfg = AttentionKlConfig::for_head_dims(xt.dim(3)?, xs.dim(3)?);
    Ok((xt, xs, cfg))
}

/// MiniLMv2-style relation KL, per row: `[b, R, l]` f32.
///
/// `x_t`: `[b, l, H_t]`, `x_s`: `[b, l, H_s]` — the same projection (Q, K or V, heads
/// concatenated) of teacher and student; `H_t` and `H_s` must be divisible by `relation_heads`
/// (`R`). Both are re-split into `[b, R, l, H/R]` and the relation distributions
/// `softmax(X Xᵀ / sqrt(H/R))` are compared with the fused attention-KL (`q = k = X`). The
/// gradient w.r.t. `x_s` sums both the query and the key side.
pub fn relation_kl_rows(
    x_t: &Tensor,
    x_s: &Tensor,
    mask: &Tensor,
    relation_heads: usize,
) -> Result<Tensor> {
    let (xt, xs, cfg) = relation_inputs(x_t, x_s, relation_heads)?;
    attention_kl_rows(&xt, &xt, &xs, &xs, mask, &cfg)
}

/// MiniLMv2-style relation KL: the mean of [`relation_kl_rows`] over valid rows and relation
/// heads (a scalar f32 tensor, 0 if there is no valid row).
pub fn relation_kl(
    x_t: &Tensor,
    x_s: &Tensor,
    mask: &Tensor,
    relation_heads: usize,
) -> Result<Tensor> {
    let (xt, xs, cfg) = relation_inputs(x_t, x_s, relation_heads)?;
    attention_kl(&xt, &xt, &xs, &xs, mask, &cfg)
}
