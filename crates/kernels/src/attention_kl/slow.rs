//! Slow references built from plain candle ops. They materialise the `[b, h, l, l]` score maps
//! and are only meant for tests and small inputs; the conventions are those of the fused op.
//!
//! Masked keys get the score `-1e30` (not `-inf`, which would make fully masked rows NaN), so
//! their probability is exactly 0 and `p·(log p − log q)` is `0·0`. bf16 and f16 inputs are
//! computed in f32 (f16 cannot hold `-1e30`); f32 and f64 in their own dtype. The output is f32,
//! except for f64 student inputs, where it is f64 (for finite-difference checks). The log-softmax is
//! composed of `max_keepdim`/`exp`/`sum_keepdim`/`log`, all of which have a backward (unlike
//! `candle_nn::ops::softmax_last_dim`).

use super::{mean_over_valid_rows, normalize_mask, relation_inputs, validate, AttentionKlConfig};
use crate::error::Result;
use candle_core::{DType, Tensor, D};

const MASKED_SCORE: f64 = -1e30;

fn work_dtype(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::BF16 | DType::F16 => t.to_dtype(DType::F32)?,
        _ => t.clone(),
    })
}

/// `x − logsumexp(x)` over the last dim (the max is detached: it cancels in the gradient).
fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let xm = x.broadcast_sub(&m)?;
    let lse = xm.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(xm.broadcast_sub(&lse)?)
}

fn rows_slow(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask_u8: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Tensor> {
    let (b, h, l, _) = q_s.dims4()?;
    let scores = |q: &Tensor, k: &Tensor, scale: f32| -> Result<Tensor> {
        let (q, k) = (work_dtype(q)?, work_dtype(k)?);
        Ok(q.matmul(&k.t()?.contiguous()?)?.affine(scale as f64, 0.0)?)
    };
    let a = scores(&q_t.detach(), &k_t.detach(), cfg.scale_t)?;
    let s = scores(q_s, k_s, cfg.scale_s)?;
    let keys = mask_u8.reshape((b, 1, 1, l))?.broadcast_as((b, h, l, l))?;
    let masked = |x: &Tensor| -> Result<Tensor> {
        let neg = x.ones_like()?.affine(MASKED_SCORE, 0.0)?;
        Ok(keys.where_cond(x, &neg)?)
    };
    let log_p = log_softmax_last(&masked(&a)?)?;
    let log_q = log_softmax_last(&masked(&s)?)?;
    let kl = (log_p.exp()? * (log_p - log_q)?)?.sum(D::Minus1)?;
    let rows = mask_u8
        .reshape((b, 1, l))?
        .broadcast_as((b, h, l))?
        .to_dtype(kl.dtype())?;
    let out_dtype = if q_s.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    Ok((kl * rows)?.to_dtype(out_dtype)?)
}

/// Slow reference of [`super::attention_kl_rows`]: same inputs, conventions and output
/// (`[b, h, l]` f32), built from plain, differentiable candle ops; materialises `[b, h, l, l]`.
///
/// One difference: with f64 student inputs everything, output included, stays in f64, so that
/// the reference itself can be checked against finite differences.
pub fn attention_kl_rows_slow(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Tensor> {
    validate(q_t, k_t, q_s, k_s, mask, cfg)?;
    rows_slow(q_t, k_t, q_s, k_s, &normalize_mask(mask)?, cfg)
}

/// Slow reference of [`super::attention_kl`] (mean over valid rows; 0 if none).
pub fn attention_kl_slow(
    q_t: &Tensor,
    k_t: &Tensor,
    q_s: &Tensor,
    k_s: &Tensor,
    mask: &Tensor,
    cfg: &AttentionKlConfig,
) -> Result<Tensor> {
    let p = validate(q_t, k_t, q_s, k_s, mask, cfg)?;
    let mask = normalize_mask(mask)?;
    let rows = rows_slow(q_t, k_t, q_s, k_s, &mask, cfg)?;
    mean_over_valid_rows(&rows, &mask, p.h)
}

/// Slow reference of [`super::relation_kl_rows`] (`[b, R, l]` f32).
pub fn relation_kl_rows_slow(
    x_t: &Tensor,
    x_s: &Tensor,
    mask: &Tensor,
    relation_heads: usize,
) -> Result<Tensor> {
    let (xt, xs, cfg) = relation_inputs(x_t, x_s, relation_heads)?;
    attention_kl_rows_slow(&xt, &xt, &xs, &xs, mask, &cfg)
}

/// Slow reference of [`super::relation_kl`] (mean over valid rows and relation heads).
pub fn relation_kl_slow(
    x_t: &Tensor,
    x_s: &Tensor,
    mask: &Tensor,
    relation_heads: usize,
) -> Result<Tensor> {
    let (xt, xs, cfg) = relation_inputs(x_t, x_s, relation_heads)?;
    attention_kl_slow(&xt, &xt, &xs, &xs, mask, &cfg)
}
