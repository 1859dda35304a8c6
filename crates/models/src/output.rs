//! The plain output of a forward pass: everything a distillation loss may read.

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
            scores: None,
            probs: None,
        })
    }

    /// Queries as [batch, heads, seq, head_dim] (a contiguous copy, with a gradient).
    pub fn q(&self) -> Result<Tensor> {
        self.split(&self.query)
    }

    /// Keys as [batch, heads, seq, head_dim].
    pub fn k(&self) -> Result<Tensor> {
        self.split(&self.key)
    }

    /// Values as [batch, heads, seq, head_dim].
    pub fn v(&self) -> Result<Tensor> {
        self.split(&self.value)
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

#[derive(Debug, Clone)]
pub struct BertOutput {
    /// `hidden_states[0]` is the embedding output; `hidden_states[l]` is layer l's output
    /// (1-based), as in Hugging Face's `output_hidden_states`. Each is [batch, seq, hidden].
    pub hidden_states: Vec<Tensor>,
    /// `attentions[l - 1]` belongs to layer l.
    pub attentions: Vec<LayerAttention>,
    /// tanh(dense(h_[CLS])) when the model has a pooler: [batch, hidden].
    pub pooled: Option<Tensor>,
    /// Classification logits when the model has a head: [batch, num_labels].
    pub logits: Option<Tensor>,
    /// The key-padding mask the forward used, as f32 [batch, seq] (1 = token, 0 = padding).
    pub mask: Tensor,
}

impl BertOutput {
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
