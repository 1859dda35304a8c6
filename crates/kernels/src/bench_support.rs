//! Helpers to benchmark the kernels from criterion benches and `cargo xtask bench`.

use crate::attention_kl::{attention_kl_rows, attention_kl_rows_slow, AttentionKlConfig};
use crate::error::Result;
use candle_core::{DType, Device, Tensor, Var};
use std::time::{Duration, Instant};

/// An attention-KL problem size (teacher and student share `l`; head dims may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length.
    pub seq: usize,
    /// Teacher head dim.
    pub d_t: usize,
    /// Student head dim.
    pub d_s: usize,
}

impl AttnShape {
    /// A shape with equal teacher and student head dims.
    pub fn new(batch: usize, heads: usize, seq: usize, dim: usize) -> Self {
        Self {
            batch,
            heads,
            seq,
            d_t: dim,
            d_s: dim,
        }
    }

    /// Floating-point operations of one forward + backward, counting the score products in the
    /// forward (`2·b·h·l²·(d_t+d_s)`), their recomputation in the backward (the same again) and
    /// the `dQ_s`, `dK_s` products (`2·2·b·h·l²·d_s`); the softmax arithmetic is not counted.
    pub fn fwd_bwd_flops(&self) -> f64 {
        let pairs = (self.batch * self.heads) as f64 * (self.seq as f64).powi(2);
        pairs * (2.0 * 2.0 * (self.d_t + self.d_s) as f64 + 4.0 * self.d_s as f64)
    }
}

/// Which implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnImpl {
    /// The fused streaming op.
    Fused,
    /// The slow reference (materialises `[b, h, l, l]`).
    Slow,
}

/// Random f32 inputs on the CPU for a shape: `(q_t, k_t, q_s, k_s, mask)` where `q_s`, `k_s` are
/// [`Var`]s and the mask pads the last eighth of every other batch item.
#[derive(Debug)]
pub struct AttnInputs {
    /// Teacher queries `[b, h, l, d_t]`.
    pub q_t: Tensor,
    /// Teacher keys `[b, h, l, d_t]`.
    pub k_t: Tensor,
    /// Student queries `[b, h, l, d_s]`.
    pub q_s: Var,
    /// Student keys `[b, h, l, d_s]`.
    pub k_s: Var,
    /// Key-padding mask `[b, l]` (f32, 1 = valid).
    pub mask: Tensor,
    /// Upstream weights of the rows `[b, h, l]`.
    pub row_weights: Tensor,
    /// The shape.
    pub shape: AttnShape,
}

impl AttnInputs {
    /// Random normal inputs for `shape`.
    pub fn random(shape: AttnShape) -> Result<Self> {
        let dev = Device::Cpu;
        let AttnShape {
            batch: b,
            heads: h,
            seq: l,
            d_t,
            d_s,
        } = shape;
        let randn = |d: usize| Tensor::randn(0f32, 1f32, (b, h, l, d), &dev);
        let mask: Vec<f32> = (0..b)
            .flat_map(|bi| {
                (0..l).map(move |j| {
                    if bi % 2 == 1 && j >= l - l / 8 {
                        0.0
                    } else {
                        1.0
                    }
                })
            })
            .collect();
        Ok(Self {
            q_t: randn(d_t)?,
            k_t: randn(d_t)?,
            q_s: Var::from_tensor(&randn(d_s)?)?,
            k_s: Var::from_tensor(&randn(d_s)?)?,
            mask: Tensor::from_vec(mask, (b, l), &dev)?,
            row_weights: Tensor::rand(0f32, 1f32, (b, h, l), &dev)?,
            shape,
        })
    }

    /// One forward + backward of the weighted sum of per-row KLs; returns the loss value.
    pub fn fwd_bwd(&self, which: AttnImpl) -> Result<f32> {
        let s = self.shape;
        let cfg = AttentionKlConfig::for_head_dims(s.d_t, s.d_s);
        let f = match which {
            AttnImpl::Fused => attention_kl_rows,
            AttnImpl::Slow => attention_kl_rows_slow,
        };
        let rows = f(
            &self.q_t,
            &self.k_t,
            self.q_s.as_tensor(),
            self.k_s.as_tensor(),
            &self.mask,
            &cfg,
        )?;
        let loss = (rows * &self.row_weights)?.sum_all()?;
        let grads = loss.backward()?;
        // Touch the gradients so that nothing is optimised away.
        for v in [&self.q_s, &self.k_s] {
            if let Some(g) = grads.get(v.as_tensor()) {
                std::hint::black_box(g.dtype());
            }
        }
        Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }
}

/// Runs [`AttnInputs::fwd_bwd`] `iters` times after one warm-up and returns the median time.
pub fn time_fwd_bwd(shape: AttnShape, which: AttnImpl, iters: usize) -> Result<Duration> {
    let inputs = AttnInputs::random(shape)?;
    inputs.fwd_bwd(which)?;
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        std::hint::black_box(inputs.fwd_bwd(which)?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}
