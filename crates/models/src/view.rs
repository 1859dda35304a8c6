//! The family-agnostic view of a model that the rest of the workspace talks to: losses, the
//! teacher cache, the trainer and evaluation see a [`Model`] (its [`ModelShape`] and a forward
//! returning the one [`ModelOutput`]), never `BertModel` or `LlamaModel`.
//!
//! What it deliberately does not cover: building a model (loading, students, heads — each family
//! has its own constructors and the runner chooses), saving (formats differ per family), and
//! family-specific inference (the decoder's KV-cache generation). Those stay on the concrete
//! types.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::bert::{BertModel, ForwardOptions};
use crate::config::BertConfig;
use crate::error::Result;
use crate::llama::{LlamaConfig, LlamaModel};
use crate::output::ModelOutput;
use crate::tokenizer::BatchTensors;

/// Which kind of transformer: it decides how attention is masked and what the logits mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Bidirectional encoder (BERT): `logits` are per-example classification logits.
    Encoder,
    /// Causal decoder (LLaMA family): `token_logits` are next-token logits per position.
    Decoder,
}

/// The sizes a loss or the cache checks a model against (plain data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Key/value heads (`heads` unless grouped-query attention).
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Classification labels (0 without a classification head; always 0 for decoders).
    pub labels: usize,
}

impl BertConfig {
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            family: Family::Encoder,
            layers: self.num_hidden_layers,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim: self.head_dim(),
            vocab: self.vocab_size,
            labels: self.num_labels(),
        }
    }
}

impl LlamaConfig {
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            family: Family::Decoder,
            layers: self.num_hidden_layers,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            vocab: self.vocab_size,
            labels: 0,
        }
    }
}

/// A model as training and evaluation use it.
pub trait Model: std::fmt::Debug + Send + Sync {
    fn shape(&self) -> ModelShape;
    /// One forward over a tokenised batch. Families ignore what they do not have (decoders:
    /// token types, dropout, materialised attention maps).
    fn forward_batch(&self, batch: &BatchTensors, opts: &ForwardOptions) -> Result<ModelOutput>;
    fn device(&self) -> &Device;
    /// The trainable parameters (`None` for a frozen model such as a teacher).
    fn varmap(&self) -> Option<&VarMap>;
    /// Every parameter under its Hugging Face name, in a fixed order.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
}

impl Model for BertModel {
    fn shape(&self) -> ModelShape {
        self.config.shape()
    }

    fn forward_batch(&self, batch: &BatchTensors, opts: &ForwardOptions) -> Result<ModelOutput> {
        self.forward(
            &batch.input_ids,
            Some(&batch.token_type_ids),
            &batch.attention_mask,
            opts,
        )
    }

    fn device(&self) -> &Device {
        BertModel::device(self)
    }

    fn varmap(&self) -> Option<&VarMap> {
        BertModel::varmap(self)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        BertModel::named_tensors(self)
    }
}

impl Model for LlamaModel {
    fn shape(&self) -> ModelShape {
        self.config.shape()
    }

    fn forward_batch(&self, batch: &BatchTensors, _opts: &ForwardOptions) -> Result<ModelOutput> {
        self.forward(&batch.input_ids, &batch.attention_mask)
    }

    fn device(&self) -> &Device {
        LlamaModel::device(self)
    }

    fn varmap(&self) -> Option<&VarMap> {
        LlamaModel::varmap(self)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        LlamaModel::named_tensors(self)
    }
}
