//! The plain output of a forward pass: everything a distillation loss may read.

use candle_core::Tensor;

/// One layer's attention internals, heads split out.
#[derive(Debug, Clone)]
pub struct LayerAttention {
    /// Queries, keys and values as [batch, heads, seq, head_dim], before any scaling.
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Pre-softmax scores `q·kᵀ/√d + mask bias`, [batch, heads, seq, seq]; only when asked for.
    pub scores: Option<Tensor>,
    /// Attention probabilities (before dropout), [batch, heads, seq, seq]; only when asked for.
    pub probs: Option<Tensor>,
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
