//! `distillery-losses`: the distillation losses.
//!
//! - [`hidden`] — L_hidden: MSE after a learned projection (TinyBERT) or cosine (DistilBERT),
//!   with the embedding layer as an optional term.
//! - [`attention`] — L_att: streaming attention KL (MiniLM, default), score MSE (TinyBERT),
//!   relation KL (MiniLMv2).
//! - [`logits`] — L_logit: KD KL with T², reverse KL, JSD(β), logit MSE; hard-label CE.
//! - [`mapping`] — which student layer learns from which teacher layer.
//!
//! Conventions: masked (padding) keys are excluded; padded query rows/tokens are excluded from
//! every mean; every loss is a mean (over valid tokens, rows, heads, layer pairs or batch), so
//! weighted sums compose; teacher tensors are detached.
//!
//! This crate knows nothing of schedules or training loops.

pub mod attention;
pub mod error;
pub mod hidden;
pub mod logits;
pub mod mapping;
pub mod projection;

pub use attention::{AttentionKind, AttentionLoss, Relation};
pub use error::{LossError, Result};
pub use hidden::{hidden_cosine, hidden_mse, HiddenKind, HiddenLoss};
pub use logits::{hard_cross_entropy, kl_from_logits, regression_mse, LogitKind, LogitLoss};
pub use mapping::{LayerMap, LayerPair};
pub use projection::Projection;

use candle_core::{DType, Tensor};

/// The key-padding mask as `dtype` [b, l] and the number of valid tokens as a scalar tensor
/// (at least 1, so that an all-padding batch gives 0 rather than NaN).
pub(crate) fn valid_mask(mask: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    let m = mask.ne(0f64)?.to_dtype(dtype)?;
    let n = m.sum_all()?.clamp(1.0, f64::INFINITY)?;
    Ok((m, n))
}
