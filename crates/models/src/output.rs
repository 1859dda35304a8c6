//! The plain output of a forward pass, the same for every model family (BERT encoders,
//! LLaMA-family decoders): everything a distillation loss, the teacher cache or an evaluation
//! may read.

use candle_core::Tensor;
use distillery_kernels::fused;

use crate::error::Result;

/// One layer's attention internals.
#[derive(Debug, Clone)]
pub struct LayerAttention {
    /// Queries, keys and values as the projections produce them, before any scaling:
    /// [batch·seq, heads·head_dim], each token's heads side by side. [`Self::q`], [`Self::k`] and
    /// [`Self::v`] split the heads out when a loss asks, so that layers no loss reads pay
    /// no copy (and their backward no copy either).
    pub query: Tensor,
    pub key: Tensor,
    pub value: Tensor,
    pub batch: usize,
    pub heads: usize,
    /// Key/value heads: `heads` for BERT, fewer under grouped-query attention (query head `i`
    /// reads key/value head `i / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// Pre-softmax scores `q·kᵀ/√d + mask bias`, [batch, heads, seq, seq]; only when asked for.
    pub scores: Option<Tensor>,
    /// Attention probabilities (before dropout), [batch, heads, seq, seq]; only when asked for.
    pub probs: Option<Tensor>,
}

impl LayerAttention {
    /// From queries, keys and values with the heads split out ([batch, heads, seq, head_dim]
    /// each, as another model might hand them over); no maps.
    pub fn from_heads(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Self> {
        let (batch, heads, _, _) = q.dims4()?;
        let kv_heads = k.dim(1)?;
        let pack = |t: &Tensor| -> Result<Tensor> {
            let (b, h, s, d) = t.dims4()?;
            Ok(t.transpose(1, 2)?.reshape((b * s, h * d))?)
        };
        Ok(Self {
            query: pack(q)?,
            key: pack(k)?,
            value: pack(v)?,
            batch,
            heads,
            kv_heads,
            scores: None,
            probs: None,
        })
    }

    /// Queries as [batch, heads, seq, head_dim] (a contiguous copy, with a gradient).
    pub fn q(&self) -> Result<Tensor> {
        self.split(&self.query)
    }

    /// Keys as [batch, kv_heads, seq, head_dim].
    pub fn k(&self) -> Result<Tensor> {
        Ok(fused::split_heads(&self.key, self.batch, self.kv_heads)?)
    }

    /// Values as [batch, kv_heads, seq, head_dim].
    pub fn v(&self) -> Result<Tensor> {
        Ok(fused::split_heads(&self.value, self.batch, self.kv_heads)?)
    }

    /// The attention probabilities [batch, heads, seq, seq], materialised from Q and K: keys
    /// masked by `mask` (f32 [batch, seq], 1 = token) and, when `causal`, every key after its
    /// query too. A reference for losses and tests; the forward itself never builds this.
    pub fn probs_from(&self, mask: &Tensor, causal: bool) -> Result<Tensor> {
        let (q, k) = (self.q()?, self.k()?);
        let (b, heads, l, d) = q.dims4()?;
        let group = heads / self.kv_heads.max(1);
        let k = k
            .unsqueeze(2)?
            .expand((b, self.kv_heads, group, l, d))?
            .reshape((b, heads, l, d))?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let bias = key_bias(mask, l, causal)?;
        Ok(candle_nn::ops::softmax_last_dim(
            &scores.broadcast_add(&bias)?,
        )?)
    }

    pub fn seq(&self) -> usize {
        self.query.dims().first().copied().unwrap_or(0) / self.batch.max(1)
    }

    pub fn head_dim(&self) -> usize {
        self.query.dims().get(1).copied().unwrap_or(0) / self.heads.max(1)
    }

    fn split(&self, t: &Tensor) -> Result<Tensor> {
        Ok(fused::split_heads(t, self.batch, self.heads)?)
    }
}

/// An additive attention bias [batch, 1, seq, seq]: 0 where a query may attend a key, the
/// most negative f32 where the key is padding or (when `causal`) after the query.
pub fn key_bias(mask: &Tensor, seq: usize, causal: bool) -> Result<Tensor> {
    let dev = mask.device();
    let keys = mask
        .to_dtype(candle_core::DType::F32)?
        .reshape((mask.dim(0)?, 1, 1, seq))?;
    let allowed = match causal {
        true => {
            let tri: Vec<f32> = (0..seq)
                .flat_map(|i| (0..seq).map(move |j| f32::from(u8::from(j <= i))))
                .collect();
            let tri = Tensor::from_vec(tri, (1, 1, seq, seq), dev)?;
            keys.broadcast_mul(&tri)?
        }
        false => keys,
    };
    Ok(((allowed - 1.0)? * f64::from(f32::MAX))?)
}

#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `hidden_states[0]` is the embedding output; `hidden_states[l]` is layer l's output
    /// (1-based), as in Hugging Face's `output_hidden_states` (for a decoder the last one after
    /// the final norm, as transformers returns it). Each is [batch, seq, hidden].
    pub hidden_states: Vec<Tensor>,
    /// `attentions[l - 1]` belongs to layer l.
    pub attentions: Vec<LayerAttention>,
    /// tanh(dense(h_[CLS])) when the model has a pooler: [batch, hidden].
    pub pooled: Option<Tensor>,
    /// Classification logits when the model has a head: [batch, num_labels].
    pub logits: Option<Tensor>,
    /// A language model's next-token logits per position: [batch, seq, vocab].
    pub token_logits: Option<Tensor>,
    /// Whether attention was causal (a decoder): a query saw only keys at or before it.
    pub causal: bool,
    /// The key-padding mask the forward used, as f32 [batch, seq] (1 = token, 0 = padding).
    pub mask: Tensor,
}

impl ModelOutput {
    pub fn embedding_output(&self) -> &Tensor {
        &self.hidden_states[0]
    }

    pub fn last_hidden_state(&self) -> &Tensor {
        &self.hidden_states[self.hidden_states.len() - 1]
    }

    pub fn num_layers(&self) -> usize {
        self.attentions.len()
    }
}
