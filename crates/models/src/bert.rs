//! The BERT encoder (post-LN) with optional pooler and sequence-classification head.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use distillery_kernels::fused;

use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::layers::{
    activation, bmm, dropout, dropout_seed, masked_softmax, Kernels, LayerNorm, Linear,
};
use crate::output::{LayerAttention, ModelOutput};
use crate::params::{Init, ParamBuilder};

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardOptions {
    /// Apply dropout (with the config's probabilities).
    pub train: bool,
    /// Seed of this pass's dropout masks: same seed, same masks.
    pub seed: u64,
    /// Also return pre-softmax scores and probabilities ([batch, heads, seq, seq] per layer).
    pub attention_maps: bool,
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Tensor,
    pub norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
}

/// A BERT encoder. Parameters are plain tensors; when built trainable they are the tensors of
/// `Var`s held in `varmap`, keyed by Hugging Face names.
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: Embeddings,
    pub layers: Vec<EncoderLayer>,
    pub pooler: Option<Linear>,
    pub classifier: Option<Linear>,
    varmap: Option<VarMap>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .field("trainable", &self.is_trainable())
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl BertModel {
    /// Builds the encoder from a parameter source. A pooler is built when `with_pooler` or a head
    /// is configured; a head when `config.labels` is non-empty.
    pub fn build(config: BertConfig, pb: ParamBuilder, with_pooler: bool) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let std = c.initializer_range;
        let h = c.hidden_size;
        let embeddings = Embeddings {
            word: pb.get(
                "embeddings.word_embeddings.weight",
                &[c.vocab_size, h],
                Init::NormalZeroRow(std, c.pad_token_id),
            )?,
            position: pb.get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
                Init::Normal(std),
            )?,
            token_type: pb.get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
                Init::Normal(std),
            )?,
            norm: LayerNorm::new(&pb, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(EncoderLayer {
                query: Linear::new(&pb, &format!("{p}.attention.self.query"), h, h, std)?,
                key: Linear::new(&pb, &format!("{p}.attention.self.key"), h, h, std)?,
                value: Linear::new(&pb, &format!("{p}.attention.self.value"), h, h, std)?,
                attn_out: Linear::new(&pb, &format!("{p}.attention.output.dense"), h, h, std)?,
                attn_norm: LayerNorm::new(
                    &pb,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                intermediate: Linear::new(
                    &pb,
                    &format!("{p}.intermediate.dense"),
                    h,
                    c.intermediate_size,
                    std,
                )?,
                output: Linear::new(
                    &pb,
                    &format!("{p}.output.dense"),
                    c.intermediate_size,
                    h,
                    std,
                )?,
                out_norm: LayerNorm::new(
                    &pb,
                    &format!("{p}.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
            });
        }
        let has_head = !c.labels.is_empty();
        let pooler = if with_pooler || has_head || pb.has("pooler.dense.weight") {
            Some(Linear::new(&pb, "pooler.dense", h, h, std)?)
        } else {
            None
        };
        let classifier = if has_head {
            Some(Linear::new(&pb, "classifier", h, c.labels.len(), std)?)
        } else {
            None
        };
        let device = embeddings.word.device().clone();
        let dtype = embeddings.word.dtype();
        Ok(Self {
            config,
            embeddings,
            layers,
            pooler,
            classifier,
            varmap: pb.into_varmap(),
            device,
            dtype,
        })
    }

    /// The trainable parameters (None for a frozen model such as a teacher).
    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    pub fn is_trainable(&self) -> bool {
        self.varmap.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs the encoder. `input_ids`, `token_type_ids`: [batch, seq] integer tensors;
    /// `attention_mask`: [batch, seq], 1 for tokens and 0 for padding (any dtype).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<ModelOutput> {
        self.forward_with(
            input_ids,
            token_type_ids,
            attention_mask,
            opts,
            Kernels::Fused,
        )
    }

    /// As `forward`, with the kernel choice explicit (tests compare the two).
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
        kernels: Kernels,
    ) -> Result<ModelOutput> {
        let c = &self.config;
        let (b, s) = input_ids.dims2()?;
        if s > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "sequence length {s} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        if attention_mask.dims() != [b, s] {
            return Err(ModelError::Input(format!(
                "attention_mask has shape {:?}, expected [{b}, {s}]",
                attention_mask.dims()
            )));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let types = match token_type_ids {
            Some(t) => t.to_dtype(DType::U32)?,
            None => Tensor::zeros((b, s), DType::U32, &self.device)?,
        };
        let mask = attention_mask.to_dtype(DType::F32)?;
        // Additive bias: 0 for tokens, the dtype's most negative finite value for padding, as HF.
        let neg = match self.dtype {
            DType::F16 => f64::from(half::f16::MIN),
            DType::BF16 => f64::from(half::bf16::MIN),
            _ => f64::from(f32::MIN),
        };
        let bias = ((mask.ones_like()? - &mask)? * neg)?.to_dtype(self.dtype)?;
        let p_hidden = if opts.train {
            c.hidden_dropout_prob
        } else {
            0.0
        };
        let p_attn = if opts.train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };

        let e = &self.embeddings;
        let x = match kernels {
            Kernels::Fused => fused::embeddings(&e.word, &e.token_type, &e.position, &ids, &types)?,
            Kernels::Reference => {
                fused::embeddings_slow(&e.word, &e.token_type, &e.position, &ids, &types)?
            }
        };
        let x = e.norm.forward(&x, kernels)?;
        let mut x = dropout(&x, p_hidden, opts.seed, "embeddings")?;

        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        let mut attentions = Vec::with_capacity(self.layers.len());
        hidden_states.push(x.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, att) =
                self.layer_forward(layer, i, &x, &bias, opts, kernels, p_hidden, p_attn)?;
            hidden_states.push(y.clone());
            attentions.push(att);
            x = y;
        }
        let pooled = match &self.pooler {
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        let logits = match (&self.classifier, &pooled) {
            (Some(cls), Some(pooled)) => {
                let pooled = dropout(pooled, p_hidden, opts.seed, "classifier")?;
                Some(cls.forward(&pooled)?)
            }
            _ => None,
        };
        Ok(ModelOutput {
            hidden_states,
            attentions,
            pooled,
            logits,
            token_logits: None,
            causal: false,
            mask,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        l: &EncoderLayer,
        index: usize,
        x: &Tensor,
        bias: &Tensor,
        opts: &ForwardOptions,
        kernels: Kernels,
        p_hidden: f64,
        p_attn: f64,
    ) -> Result<(Tensor, LayerAttention)> {
        let c = &self.config;
        let (b, s, h) = x.dims3()?;
        let (heads, d) = (c.num_attention_heads, c.head_dim());
        let x2 = x.reshape((b * s, h))?;
        let (q2, k2, v2) = (
            l.query.forward(&x2)?,
            l.key.forward(&x2)?,
            l.value.forward(&x2)?,
        );
        let scale = 1.0 / (d as f64).sqrt();
        let site = format!("layer{index}");
        let attn_site = format!("{site}.attn");
        let (ctx, maps) = if matches!(kernels, Kernels::Fused) && !opts.attention_maps {
            // One op per (batch, head) block: no b·h·s² tensor is stored or back-propagated.
            let cfg = fused::AttentionConfig {
                batch: b,
                heads,
                kv_heads: heads,
                causal: false,
                scale,
                dropout: p_attn,
                seed: dropout_seed(opts.seed, &attn_site),
            };
            (fused::attention(&q2, &k2, &v2, bias, &cfg)?, None)
        } else {
            let split = |t: &Tensor| -> Result<Tensor> {
                Ok(match kernels {
                    Kernels::Fused => fused::split_heads(t, b, heads)?,
                    Kernels::Reference => fused::split_heads_slow(t, b, heads)?,
                })
            };
            let (q, k, v) = (split(&q2)?, split(&k2)?, split(&v2)?);
            // The 1/√d scale rides on the scores GEMM (no separate pass, no graph node).
            let scores = bmm(&q, &k.t()?, scale, kernels)?;
            let probs = masked_softmax(&scores, bias, kernels)?;
            let probs_dropped = dropout(&probs, p_attn, opts.seed, &attn_site)?;
            let ctx = bmm(&probs_dropped, &v, 1.0, kernels)?;
            let ctx = match kernels {
                Kernels::Fused => fused::merge_heads(&ctx)?,
                Kernels::Reference => fused::merge_heads_slow(&ctx)?,
            };
            (ctx, Some((scores, probs)))
        };
        let a = dropout(
            &l.attn_out.forward(&ctx)?,
            p_hidden,
            opts.seed,
            &format!("{site}.attn_out"),
        )?;
        let h1 = l.attn_norm.forward(&(a + &x2)?, kernels)?;
        let inter = activation(&l.intermediate.forward(&h1)?, c.hidden_act, kernels)?;
        let o = dropout(
            &l.output.forward(&inter)?,
            p_hidden,
            opts.seed,
            &format!("{site}.out"),
        )?;
        let y = l
            .out_norm
            .forward(&(o + &h1)?, kernels)?
            .reshape((b, s, h))?;
        let (scores, probs) = match maps {
            Some((scores, probs)) if opts.attention_maps => {
                let with_mask = scores.broadcast_add(&bias.reshape((b, 1, 1, s))?)?;
                (Some(with_mask), Some(probs))
            }
            _ => (None, None),
        };
        Ok((
            y,
            LayerAttention {
                query: q2,
                key: k2,
                value: v2,
                batch: b,
                heads,
                kv_heads: heads,
                scores,
                probs,
            },
        ))
    }

    /// Every parameter with its canonical Hugging Face name (no `bert.` prefix), in a fixed order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |n: String, t: &Tensor| out.push((n, t.clone()));
        let e = &self.embeddings;
        push("embeddings.word_embeddings.weight".into(), &e.word);
        push("embeddings.position_embeddings.weight".into(), &e.position);
        push(
            "embeddings.token_type_embeddings.weight".into(),
            &e.token_type,
        );
        e.norm.visit("embeddings.LayerNorm", &mut push);
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            l.query
                .visit(&format!("{p}.attention.self.query"), &mut push);
            l.key.visit(&format!("{p}.attention.self.key"), &mut push);
            l.value
                .visit(&format!("{p}.attention.self.value"), &mut push);
            l.attn_out
                .visit(&format!("{p}.attention.output.dense"), &mut push);
            l.attn_norm
                .visit(&format!("{p}.attention.output.LayerNorm"), &mut push);
            l.intermediate
                .visit(&format!("{p}.intermediate.dense"), &mut push);
            l.output.visit(&format!("{p}.output.dense"), &mut push);
            l.out_norm
                .visit(&format!("{p}.output.LayerNorm"), &mut push);
        }
        if let Some(p) = &self.pooler {
            p.visit("pooler.dense", &mut push);
        }
        if let Some(c) = &self.classifier {
            c.visit("classifier", &mut push);
        }
        out
    }

    /// Parameter counts per part, for `inspect` and reports.
    pub fn parameter_counts(&self) -> Vec<(String, usize)> {
        let mut parts: Vec<(String, usize)> = Vec::new();
        for (name, t) in self.named_tensors() {
            let part = if let Some(rest) = name.strip_prefix("encoder.layer.") {
                let idx = rest.split('.').next().unwrap_or("?");
                format!("encoder.layer.{idx}")
            } else {
                name.split('.').next().unwrap_or("?").to_string()
            };
            match parts.last_mut() {
                Some((p, n)) if *p == part => *n += t.elem_count(),
                _ => parts.push((part, t.elem_count())),
            }
        }
        parts
    }

    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }
}

/// Mean of the hidden states over non-padding tokens: [batch, seq, h] → [batch, h]. Not normalised.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    Ok(summed.broadcast_div(&counts)?)
}
