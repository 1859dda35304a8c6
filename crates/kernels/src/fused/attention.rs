//! Multi-head attention's core as one op, per (batch, head) item in cache-sized blocks:
//! `ctx = dropout(softmax(scale·q·kᵀ + key_bias)) · v`, with heads packed in the rows of q, k, v
//! and ctx (the layout the Q/K/V projections produce and the output projection reads).
//!
//! As separate ops (split heads ×3, scores GEMM, masked softmax, dropout, GEMM, merge heads) a
//! layer writes and reads several b·h·s² tensors (25 MB each at batch 32, 12 heads, seq 128);
//! candle's backward then zero-fills and adds a gradient of that size for each of them. Here
//! one item's s×s scores never leave a per-thread scratch buffer. The backward recomputes
//! them (one extra s×s×d product per item) rather than keeping b·h·s² floats alive, like
//! FlashAttention; the dropout mask is the counter-based one of [`super::dropout`], at the
//! indices it would have in the [batch, heads, seq, seq] probabilities, so values match the
//! separate ops (the reference, [`attention_slow`]).
//!
//! Decoders: `causal` hides every key after its query (on top of the key bias), and grouped-
//! query attention gives k and v their own, smaller head count (query head h reads key/value
//! head h / (heads / kv_heads)). The backward then runs one task per (batch, key/value head),
//! looping over the query heads that share it, so dk and dv accumulate without races.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::dropout::{for_each_scale, threshold};
use super::matmul::View;
use super::{fused_applies, softmax};
use crate::error::{KernelError, Result};
use crate::simd::Isa;

/// The shape and randomness of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    pub batch: usize,
    pub heads: usize,
    /// Key/value heads (= `heads` without grouped-query attention); must divide `heads`.
    pub kv_heads: usize,
    /// Hide keys after each query (a decoder's self-attention).
    pub causal: bool,
    /// Multiplies q·kᵀ (usually 1/√head_dim).
    pub scale: f64,
    /// Dropout probability on the attention probabilities (0 = none).
    pub dropout: f64,
    /// The dropout mask's seed, as [`super::dropout`] takes it.
    pub seed: u64,
}

/// What the kernels need, resolved from the config and the shapes.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    causal: bool,
    seq: usize,
    head_dim: usize,
    scale: f32,
    /// `None` without dropout; else the 16-bit keep threshold and 1/keep.
    drop: Option<(u32, f32)>,
    seed: u64,
}

impl Dims {
    fn items(&self) -> usize {
        self.batch * self.heads
    }

    /// Offset of item `item`'s block (its batch's rows, its head's columns) in a packed tensor.
    fn block(&self, item: usize, rs: usize) -> usize {
        let (b, h) = (item / self.heads, item % self.heads);
        b * self.seq * rs + h * self.head_dim
    }

    /// Offset of item `item`'s key/value block: its batch's rows, the columns of the
    /// key/value head its query head reads.
    fn kv_block(&self, item: usize, rs: usize) -> usize {
        let (b, h) = (item / self.heads, item % self.heads);
        b * self.seq * rs + h / (self.heads / self.kv_heads) * self.head_dim
    }

    /// Applies dropout to item `item`'s s×s probabilities in place.
    fn dropout(&self, item: usize, p: &mut [f32]) {
        if let Some((keep, inv)) = self.drop {
            let base = (item * self.seq * self.seq) as u64;
            for_each_scale(self.seed, base, p.len(), (keep, inv), |j, f| p[j] *= f);
        }
    }

    /// Item `item`'s dropout factors (0 or 1/keep) into `m`, for a backward that applies them
    /// twice; `false` (nothing written) without dropout.
    fn mask(&self, item: usize, m: &mut [f32]) -> bool {
        let Some((keep, inv)) = self.drop else {
            return false;
        };
        let base = (item * self.seq * self.seq) as u64;
        for_each_scale(self.seed, base, m.len(), (keep, inv), |j, f| m[j] = f);
        true
    }
}

/// `dst (m×n at row stride dst_rs) = alpha · a·b`, single-threaded (the caller runs items in
/// parallel; every operand here fits in cache).
///
/// # Safety
/// The pointers are valid for the given dims and strides, and `dst` is not read by anyone else.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    dst: *mut f32,
    dst_rs: usize,
    mnk: (usize, usize, usize),
    a: *const f32,
    a_strides: (usize, usize),
    b: *const f32,
    b_strides: (usize, usize),
    alpha: f32,
) {
    // SAFETY: the caller's contract.
    unsafe { product_into(dst, dst_rs, mnk, a, a_strides, b, b_strides, alpha, false) }
}

/// As [`product`], adding to `dst` when `accumulate` (grouped heads' dk and dv).
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn product_into(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    alpha: f32,
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Item `item`'s probabilities `softmax(scale·q_i·k_iᵀ + bias_b)` into `p`, using `s` as scratch.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    dims: &Dims,
    isa: Isa,
    item: usize,
    q: &View<'_>,
    k: &View<'_>,
    bias: &[f32],
    s: &mut [f32],
    p: &mut [f32],
    row_bias: &mut [f32],
) {
    let (n, d) = (dims.seq, dims.head_dim);
    // SAFETY: q and k were bounds-checked for [batch·seq, heads·d]; s holds n·n floats.
    unsafe {
        product(
            s.as_mut_ptr(),
            n,
            (n, n, d),
            q.ptr(0).add(dims.block(item, q.rs)),
            (q.rs, 1),
            k.ptr(0).add(dims.kv_block(item, k.rs)),
            (1, k.rs),
            dims.scale,
        );
    }
    let b = item / dims.heads;
    let keys = &bias[b * n..(b + 1) * n];
    if !dims.causal {
        softmax::rows_fwd(isa, s, keys, p, n);
        return;
    }
    // Row i: the key bias, and the most negative f32 for keys after i (as the reference's
    // combined mask gives it; a key both padded and in the future gets it once).
    row_bias.copy_from_slice(keys);
    for i in (0..n).rev() {
        let (from, to) = (i * n, (i + 1) * n);
        softmax::rows_fwd(isa, &s[from..to], row_bias, &mut p[from..to], n);
        if i > 0 {
            row_bias[i] = f32::MIN;
        }
    }
}

/// A raw pointer that may cross threads: each item writes a disjoint block through it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used for writes to blocks that no two items share.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `offset` floats in (a method, so that closures capture the Send wrapper
    /// rather than its raw field).
    ///
    /// # Safety
    /// `offset` is within the allocation.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

#[derive(Debug, Clone)]
struct AttentionOp {
    dims: Dims,
    /// The key bias, [batch, seq].
    bias: Arc<Vec<f32>>,
}

impl AttentionOp {
    fn views<'a>(
        &self,
        op: &str,
        ins: [(&'a CpuStorage, &Layout); 3],
    ) -> candle_core::Result<[View<'a>; 3]> {
        let rows = self.dims.batch * self.dims.seq;
        let view = |(s, l): (&'a CpuStorage, &Layout), cols: usize| {
            // (A column stride is meaningless for one column; candle leaves it as it was.)
            if l.dims() != [rows, cols] || (l.stride()[1] != 1 && cols > 1) {
                candle_core::bail!(
                    "{op}: expected [{rows}, {cols}] with unit column stride, got {:?} / {:?}",
                    l.dims(),
                    l.stride()
                );
            }
            View::new(s, l, op, [1, rows, cols])
        };
        let [q, k, v] = ins;
        let (q_cols, kv_cols) = (
            self.dims.heads * self.dims.head_dim,
            self.dims.kv_heads * self.dims.head_dim,
        );
        Ok([view(q, q_cols)?, view(k, kv_cols)?, view(v, kv_cols)?])
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "distillery-attention"
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
        let [q, k, v] = self.views(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let dims = self.dims;
        let (n, d) = (dims.seq, dims.head_dim);
        let cols = dims.heads * d;
        let mut ctx = super::par_zeroed(dims.batch * n * cols);
        if n == 0 || d == 0 {
            return Ok((CpuStorage::F32(ctx), l1.shape().clone()));
        }
        let out = SharedMut(ctx.as_mut_ptr());
        let isa = Isa::detect();
        (0..dims.items()).into_par_iter().for_each_init(
            || vec![0f32; 2 * n * n + n],
            |buf, item| {
                let (s, rest) = buf.split_at_mut(n * n);
                let (p, row_bias) = rest.split_at_mut(n * n);
                probabilities(&dims, isa, item, &q, &k, &self.bias, s, p, row_bias);
                dims.dropout(item, p);
                // SAFETY: ctx is [batch·seq, heads·d]; this item alone writes its block.
                unsafe {
                    product(
                        out.at(dims.block(item, cols)),
                        cols,
                        (n, d, n),
                        p.as_ptr(),
                        (n, 1),
                        v.ptr(0).add(dims.kv_block(item, v.rs)),
                        (v.rs, 1),
                        1.0,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(ctx), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionBwdOp {
            fwd: self.clone(),
            qkv: [q.clone(), k.clone(), v.clone()],
        };
        let all = grad.contiguous()?.apply_op1_no_bwd(&op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The backward of [`AttentionOp`]: takes the output gradient, reads q, k, v from the op, and
/// returns dq, dk, dv flattened one after the other (dk and dv have the key/value heads' width).
struct AttentionBwdOp {
    fwd: AttentionOp,
    qkv: [Tensor; 3],
}

impl CustomOp1 for AttentionBwdOp {
    fn name(&self) -> &'static str {
        "distillery-attention-bwd"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let guards: Vec<_> = self.qkv.iter().map(|t| t.storage_and_layout()).collect();
        let mut cpu = Vec::with_capacity(3);
        for (g, l) in &guards {
            match &**g {
                Storage::Cpu(c) => cpu.push((c, *l)),
                _ => candle_core::bail!("{name}: q, k, v must be CPU tensors"),
            }
        }
        let [q, k, v] = self.fwd.views(name, [cpu[0], cpu[1], cpu[2]])?;
        let dims = self.fwd.dims;
        let (n, d) = (dims.seq, dims.head_dim);
        let cols = dims.heads * d;
        let rows = dims.batch * n;
        let g = View::new(gs, gl, name, [1, rows, cols])?;
        if gl.dims() != [rows, cols] || (g.cs != 1 && cols > 1) {
            candle_core::bail!("{name}: gradient {:?} / {:?}", gl.dims(), gl.stride());
        }
        let kv_cols = dims.kv_heads * d;
        // [dq (rows·cols) | dk (rows·kv_cols) | dv (rows·kv_cols)].
        let (dk_at, dv_at) = (rows * cols, rows * cols + rows * kv_cols);
        let mut grads = super::par_zeroed(rows * cols + 2 * rows * kv_cols);
        let shape = Shape::from_dims(&[grads.len()]);
        if n == 0 || d == 0 {
            return Ok((CpuStorage::F32(grads), shape));
        }
        let out = SharedMut(grads.as_mut_ptr());
        let isa = Isa::detect();
        let group = dims.heads / dims.kv_heads;
        // One task per (batch, key/value head): its query heads run in turn, so the dk and dv
        // they share accumulate in one thread.
        (0..dims.batch * dims.kv_heads)
            .into_par_iter()
            .for_each_init(
                // s, p, dp and (with dropout) the mask, each n×n, and a causal row bias.
                || vec![0f32; (3 + usize::from(dims.drop.is_some())) * n * n + n],
                |buf, kv_item| {
                    let (s, rest) = buf.split_at_mut(n * n);
                    let (p, rest) = rest.split_at_mut(n * n);
                    let (dp, rest) = rest.split_at_mut(n * n);
                    let (mask, row_bias) = rest.split_at_mut(rest.len() - n);
                    let (batch, kv_head) = (kv_item / dims.kv_heads, kv_item % dims.kv_heads);
                    for r in 0..group {
                        let item = batch * dims.heads + kv_head * group + r;
                        let accumulate = r > 0;
                        // Hashed once, used for the dropped probabilities and for their gradient.
                        let dropped = dims.mask(item, mask);
                        probabilities(&dims, isa, item, &q, &k, &self.fwd.bias, s, p, row_bias);
                        let (q_i, k_i, v_i, g_i) = (
                            // SAFETY (all four): offsets of blocks inside bounds-checked views.
                            unsafe { q.ptr(0).add(dims.block(item, q.rs)) },
                            unsafe { k.ptr(0).add(dims.kv_block(item, k.rs)) },
                            unsafe { v.ptr(0).add(dims.kv_block(item, v.rs)) },
                            unsafe { g.ptr(0).add(dims.block(item, g.rs)) },
                        );
                        // SAFETY (these three): grads holds dq, dk, dv; this task alone writes
                        // item's dq block and its key/value head's dk and dv blocks.
                        let dq = unsafe { out.at(dims.block(item, cols)) };
                        let dk = unsafe { out.at(dk_at + dims.kv_block(item, kv_cols)) };
                        let dv = unsafe { out.at(dv_at + dims.kv_block(item, kv_cols)) };
                        // SAFETY (the products below): pointers into checked views and n×n scratch.
                        unsafe {
                            // dv += dropout(p)ᵀ·g, with the dropped probabilities in dp for now.
                            if dropped {
                                for ((o, &x), &f) in dp.iter_mut().zip(p.iter()).zip(mask.iter()) {
                                    *o = x * f;
                                }
                            } else {
                                dp.copy_from_slice(p);
                            }
                            product_into(
                                dv,
                                kv_cols,
                                (n, d, n),
                                dp.as_ptr(),
                                (1, n),
                                g_i,
                                (g.rs, 1),
                                1.0,
                                accumulate,
                            );
                            // d(dropped p) = g·vᵀ, then through the dropout (its own derivative).
                            product(
                                dp.as_mut_ptr(),
                                n,
                                (n, n, d),
                                g_i,
                                (g.rs, 1),
                                v_i,
                                (1, v.rs),
                                1.0,
                            );
                        }
                        if dropped {
                            for (o, &f) in dp.iter_mut().zip(mask.iter()) {
                                *o *= f;
                            }
                        }
                        // Through the softmax: ds = p ⊙ (dp − Σ dp⊙p), into s.
                        softmax::rows_bwd(isa, p, dp, s, n);
                        unsafe {
                            // dq = scale·ds·k, dk += scale·dsᵀ·q.
                            product(
                                dq,
                                cols,
                                (n, d, n),
                                s.as_ptr(),
                                (n, 1),
                                k_i,
                                (k.rs, 1),
                                dims.scale,
                            );
                            product_into(
                                dk,
                                kv_cols,
                                (n, d, n),
                                s.as_ptr(),
                                (1, n),
                                q_i,
                                (q.rs, 1),
                                dims.scale,
                                accumulate,
                            );
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(grads), shape))
    }
}

fn check(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    cfg: &AttentionConfig,
) -> Result<(usize, usize)> {
    let bad = |what: String| Err(KernelError::Config(format!("attention: {what}")));
    let (rows, cols) = q.dims2()?;
    if cfg.batch == 0 || cfg.heads == 0 || rows % cfg.batch != 0 || cols % cfg.heads != 0 {
        return bad(format!(
            "[{rows}, {cols}] is not [batch {} · seq, heads {} · head_dim]",
            cfg.batch, cfg.heads
        ));
    }
    if cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
        return bad(format!(
            "{} key/value heads do not divide {} heads",
            cfg.kv_heads, cfg.heads
        ));
    }
    let kv_dims = [rows, cols / cfg.heads * cfg.kv_heads];
    if k.dims() != kv_dims || v.dims() != kv_dims {
        return bad(format!(
            "q {:?} needs k and v of {kv_dims:?}, got {:?} and {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        ));
    }
    let seq = rows / cfg.batch;
    if key_bias.dims() != [cfg.batch, seq] {
        return bad(format!(
            "key bias {:?}, expected [{}, {seq}]",
            key_bias.dims(),
            cfg.batch
        ));
    }
    // As `dropout`: p <= 0 is none; p >= 1 (or NaN) is an error.
    if cfg.dropout >= 1.0 || cfg.dropout.is_nan() {
        return bad(format!(
            "dropout probability must be below 1, got {}",
            cfg.dropout
        ));
    }
    Ok((seq, cols / cfg.heads))
}

/// Attention over heads packed in rows: q [batch·seq, heads·head_dim] (row b·seq + i, columns
/// h·head_dim.. hold head h of token i of sequence b), k and v likewise with `kv_heads`,
/// `key_bias` [batch, seq] added to every query's scores (0 for keys to attend to, a large
/// negative number for padding; no gradient), and with `causal` the most negative f32 for
/// every key after its query. Returns ctx in the same layout. Fused on f32 CPU tensors, [`attention_slow`]
/// otherwise, which it matches up to float rounding (the dropout mask exactly).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    cfg: &AttentionConfig,
) -> Result<Tensor> {
    let (seq, head_dim) = check(q, k, v, key_bias, cfg)?;
    if ![q, k, v, key_bias].iter().all(|t| fused_applies(t)) {
        return attention_slow(q, k, v, key_bias, cfg);
    }
    let keep = (1.0 - cfg.dropout) as f32;
    let op = AttentionOp {
        dims: Dims {
            batch: cfg.batch,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            causal: cfg.causal,
            seq,
            head_dim,
            scale: cfg.scale as f32,
            drop: (cfg.dropout > 0.0).then(|| (threshold(keep), 1.0 / keep)),
            seed: cfg.seed,
        },
        bias: Arc::new(key_bias.flatten_all()?.to_vec1::<f32>()?),
    };
    let unit_cols = |t: &Tensor| -> Result<Tensor> {
        Ok(if t.stride()[1] == 1 || t.dim(1)? == 1 {
            t.clone()
        } else {
            t.contiguous()?
        })
    };
    Ok(unit_cols(q)?.apply_op3(&unit_cols(k)?, &unit_cols(v)?, op)?)
}

/// The reference: split heads, scaled scores GEMM, masked softmax, dropout, GEMM, merge heads,
/// each as its composite (`*_slow`) op.
pub fn attention_slow(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    cfg: &AttentionConfig,
) -> Result<Tensor> {
    let (seq, d) = check(q, k, v, key_bias, cfg)?;
    let q = super::split_heads_slow(q, cfg.batch, cfg.heads)?;
    // Grouped heads: key/value head g serves query heads g·group .. (g+1)·group.
    let group = cfg.heads / cfg.kv_heads;
    let widen = |t: &Tensor| -> Result<Tensor> {
        let t = super::split_heads_slow(t, cfg.batch, cfg.kv_heads)?;
        Ok(t.unsqueeze(2)?
            .expand((cfg.batch, cfg.kv_heads, group, seq, d))?
            .reshape((cfg.batch, cfg.heads, seq, d))?)
    };
    let (k, v) = (widen(k)?, widen(v)?);
    let scores = super::bmm_scaled_slow(&q, &k.t()?, cfg.scale)?;
    let probs = if cfg.causal {
        // The combined bias: the key bias, and the most negative f32 after each query.
        let future: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let future = Tensor::from_vec(future, (1, 1, seq, seq), q.device())?.to_dtype(q.dtype())?;
        let keys = key_bias
            .detach()
            .reshape((cfg.batch, 1, 1, seq))?
            .to_dtype(q.dtype())?;
        let bias = keys.broadcast_minimum(&future)?;
        super::softmax_last_dim_slow(&scores.broadcast_add(&bias)?)?
    } else {
        super::softmax_last_dim_masked_slow(&scores, key_bias)?
    };
    let probs = super::dropout_slow(&probs, cfg.dropout, cfg.seed)?;
    super::merge_heads_slow(&probs.matmul(&v)?)
}
