//! Next-token negative log-likelihood per row: what perplexity is made of.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// One row's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowNll {
    /// Mean −log p(token | prefix) in nats over the predicted tokens; `None` when none is
    /// predicted (a row of fewer than two tokens).
    pub nll: Option<f64>,
    /// Tokens predicted: those whose predecessor is a token too (not padding).
    pub predicted: usize,
}

/// For `logits` [batch, seq, vocab] of `input_ids` [batch, seq] under `mask` [batch, seq]
/// (1 = token), each row's mean next-token NLL. Padding on either side is excluded.
pub fn next_token_nll(logits: &Tensor, input_ids: &Tensor, mask: &Tensor) -> Result<Vec<RowNll>> {
    let (_, l, _) = logits.dims3()?;
    if l < 2 {
        let b = logits.dim(0)?;
        return Ok(vec![
            RowNll {
                nll: None,
                predicted: 0
            };
            b
        ]);
    }
    let logp = candle_nn::ops::log_softmax(
        &logits
            .narrow(1, 0, l - 1)?
            .to_dtype(DType::F32)?
            .contiguous()?,
        D::Minus1,
    )?
    .contiguous()?;
    let next = input_ids
        .narrow(1, 1, l - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?
        .unsqueeze(2)?;
    let picked = logp.gather(&next, 2)?.squeeze(2)?;
    let mask = mask.to_dtype(DType::F32)?;
    let pairs = (mask.narrow(1, 1, l - 1)? * mask.narrow(1, 0, l - 1)?)?;
    let total = (picked * &pairs)?
        .sum(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let counts = pairs.sum(1)?.to_vec1::<f32>()?;
    Ok(total
        .iter()
        .zip(counts)
        .map(|(&t, n)| {
            let predicted = n.round() as usize;
            RowNll {
                nll: (predicted > 0).then(|| -t / predicted as f64),
                predicted,
            }
        })
        .collect())
}
