//! The LLaMA-family decoder: token embedding, blocks of RMSNorm → grouped-query self-attention
//! with rotary positions (causal, padding keys masked) → residual, RMSNorm → SwiGLU MLP →
//! residual; a final RMSNorm and the output projection (tied to the embedding or not). RMSNorm,
//! RoPE, SwiGLU, the projections and the causal grouped-query attention are distillery-kernels'
//! fused CPU ops (each with a backward, falling back to candle composites elsewhere);
//! incremental decoding on the KV cache uses candle ops.

use candle_core::{DType, Device, Tensor, D};
use distillery_kernels::fused;

use super::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::output::{LayerAttention, ModelOutput};
use crate::params::{Init, ParamBuilder};

#[derive(Debug, Clone)]
struct Proj {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Proj {
    fn new(pb: &ParamBuilder, name: &str, input: usize, output: usize, bias: bool) -> Result<Self> {
        let std = 1.0 / (input as f64).sqrt();
        Ok(Self {
            weight: pb.get(
                &format!("{name}.weight"),
                &[output, input],
                Init::Normal(std),
            )?,
            bias: bias
                .then(|| pb.get(&format!("{name}.bias"), &[output], Init::Zeros))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => project(x, &self.weight, b),
            None => project(x, &self.weight, &zeros(&self.weight)?),
        }
    }
}

/// A zero bias for `w`'s rows: the projections without a bias still go through the one GEMM
/// of `fused::linear` (OpenBLAS where loaded), where `broadcast_matmul` runs candle's own
/// batched GEMM. Not a parameter: a student trains no bias it did not have.
fn zeros(w: &Tensor) -> Result<Tensor> {
    Ok(Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?)
}

/// `x·Wᵀ + b` over the last dimension of `x` ([.., in]), as one [rows, in] GEMM.
fn project(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let input = dims[dims.len() - 1];
    let rows = x.elem_count() / input.max(1);
    let y = fused::linear(&x.reshape((rows, input))?, w, b)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    Ok(y.reshape(out)?)
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    post_norm: Tensor,
    gate: Proj,
    up: Proj,
    down: Proj,
}

#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `None` when tied to the embedding.
    lm_head: Option<Tensor>,
    /// Rotary inverse frequencies, f32 [1, 1, head_dim / 2].
    inv_freq: Tensor,
    /// The trainable parameters (a student's), `None` when frozen.
    varmap: Option<Vars>,
}

/// A `VarMap` (which has no `Debug`) held by the model.
#[derive(Clone)]
struct Vars(candle_nn::VarMap);

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VarMap({} variables)", self.0.all_vars().len())
    }
}

/// `x / √(mean(x²) + ε) · w` over the last dimension, in f32.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(fused::rms_norm(&x.to_dtype(DType::F32)?, w, eps as f32)?)
}

impl LlamaModel {
    /// Builds the model from `pb` (Hugging Face `LlamaForCausalLM` names).
    pub fn build(config: LlamaConfig, pb: &ParamBuilder) -> Result<Self> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let embed = pb.get(
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            Init::Normal(0.02),
        )?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            blocks.push(Block {
                input_norm: pb.get(&p("input_layernorm.weight"), &[h], Init::Ones)?,
                q: Proj::new(
                    pb,
                    &p("self_attn.q_proj"),
                    h,
                    c.num_attention_heads * hd,
                    c.qkv_bias,
                )?,
                k: Proj::new(
                    pb,
                    &p("self_attn.k_proj"),
                    h,
                    c.num_key_value_heads * hd,
                    c.qkv_bias,
                )?,
                v: Proj::new(
                    pb,
                    &p("self_attn.v_proj"),
                    h,
                    c.num_key_value_heads * hd,
                    c.qkv_bias,
                )?,
                o: Proj::new(
                    pb,
                    &p("self_attn.o_proj"),
                    c.num_attention_heads * hd,
                    h,
                    false,
                )?,
                post_norm: pb.get(&p("post_attention_layernorm.weight"), &[h], Init::Ones)?,
                gate: Proj::new(pb, &p("mlp.gate_proj"), h, c.intermediate_size, false)?,
                up: Proj::new(pb, &p("mlp.up_proj"), h, c.intermediate_size, false)?,
                down: Proj::new(pb, &p("mlp.down_proj"), c.intermediate_size, h, false)?,
            });
        }
        let norm = pb.get("model.norm.weight", &[h], Init::Ones)?;
        let lm_head = (!c.tie_word_embeddings)
            .then(|| pb.get("lm_head.weight", &[c.vocab_size, h], Init::Normal(0.02)))
            .transpose()?;
        let inv: Vec<f32> = c.inv_freq().iter().map(|&f| f as f32).collect();
        let inv_freq = Tensor::from_vec(inv, (1, 1, hd / 2), embed.device())?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
            varmap: None,
        })
    }

    /// Builds the model from `pb` and keeps `pb`'s variables (a trainable student's).
    pub fn build_owning(config: LlamaConfig, pb: ParamBuilder) -> Result<Self> {
        let mut model = Self::build(config, &pb)?;
        model.varmap = pb.into_varmap().map(Vars);
        Ok(model)
    }

    /// The trainable parameters (`None` for a frozen model such as a teacher).
    pub fn varmap(&self) -> Option<&candle_nn::VarMap> {
        self.varmap.as_ref().map(|v| &v.0)
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Every parameter under its Hugging Face `LlamaForCausalLM` name (`lm_head.weight` only
    /// when untied), in a fixed order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (l, b) in self.blocks.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            out.push((p("input_layernorm.weight"), b.input_norm.clone()));
            out.push((p("post_attention_layernorm.weight"), b.post_norm.clone()));
            for (name, proj) in [
                ("self_attn.q_proj", &b.q),
                ("self_attn.k_proj", &b.k),
                ("self_attn.v_proj", &b.v),
                ("self_attn.o_proj", &b.o),
                ("mlp.gate_proj", &b.gate),
                ("mlp.up_proj", &b.up),
                ("mlp.down_proj", &b.down),
            ] {
                out.push((p(&format!("{name}.weight")), proj.weight.clone()));
                if let Some(bias) = &proj.bias {
                    out.push((p(&format!("{name}.bias")), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// `input_ids` u32 [batch, seq]; `attention_mask` [batch, seq], 1 for tokens, 0 for padding
    /// (left or right). Positions count tokens only (`cumsum(mask) − 1`), so a left-padded row
    /// gives the values it gives unpadded.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<ModelOutput> {
        let c = &self.config;
        let (b, l) = input_ids.dims2()?;
        if attention_mask.dims() != [b, l] {
            return Err(ModelError::Input(format!(
                "attention mask has shape {:?}, expected [{b}, {l}]",
                attention_mask.dims()
            )));
        }
        let mask = attention_mask.to_dtype(DType::F32)?;
        let x = self
            .embed
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, l, c.hidden_size))?;
        let (cos, sin) = self.rotary(&mask)?;
        // The fused attention takes the key bias per sequence and applies causality itself.
        let bias = ((&mask - 1.0)? * f64::from(f32::MAX))?;
        let mut hidden_states = vec![x.clone()];
        let mut attentions = Vec::with_capacity(self.blocks.len());
        let mut x = x;
        for block in &self.blocks {
            let (y, att) = self.block(block, &x, &cos, &sin, Attend::Full(&bias))?;
            x = y;
            hidden_states.push(x.clone());
            attentions.extend(att);
        }
        // transformers' convention: the last hidden state is after the final norm.
        let last_hidden = rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = project(&last_hidden, head, &zeros(head)?)?;
        if let Some(last) = hidden_states.last_mut() {
            *last = last_hidden;
        }
        Ok(ModelOutput {
            hidden_states,
            attentions,
            pooled: None,
            logits: None,
            token_logits: Some(logits),
            causal: true,
            mask,
        })
    }

    /// cos and sin of position × frequency, [batch, seq, head_dim] (halves repeated), the
    /// positions counting tokens only.
    fn rotary(&self, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        self.rotary_at(&(mask.cumsum(1)? - 1.0)?.clamp(0f32, f32::MAX)?)
    }

    /// cos and sin at positions `pos`, f32 [batch, seq].
    fn rotary_at(&self, pos: &Tensor) -> Result<(Tensor, Tensor)> {
        let freqs = pos.unsqueeze(2)?.broadcast_mul(&self.inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok((emb.cos()?, emb.sin()?))
    }

    /// Next-token logits, [1, n, vocab], of `input_ids` [1, n] (one unpadded sequence) read
    /// after the tokens already in `cache`, which then holds these too: incremental decoding
    /// that never recomputes the prefix.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let c = &self.config;
        let (b, n) = input_ids.dims2()?;
        if b != 1 {
            return Err(ModelError::Input(format!(
                "incremental decoding takes one sequence at a time, got a batch of {b}"
            )));
        }
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.blocks.len()];
        }
        let seen = cache.seen;
        let pos: Vec<f32> = (seen..seen + n).map(|p| p as f32).collect();
        let (cos, sin) = self.rotary_at(&Tensor::from_vec(pos, (1, n), self.device())?)?;
        // Query i (absolute position seen + i) reads keys 0..=seen + i.
        let allowed: Vec<f32> = (0..n)
            .flat_map(|i| (0..seen + n).map(move |j| if j <= seen + i { 0.0 } else { f32::MIN }))
            .collect();
        let bias = Tensor::from_vec(allowed, (1, 1, n, seen + n), self.device())?;
        let mut x = self
            .embed
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((1, n, c.hidden_size))?;
        for (blk, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = self
                .block(blk, &x, &cos, &sin, Attend::Cached(&bias, kv))?
                .0;
        }
        cache.seen += n;
        let last = rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        project(&last, head, &zeros(head)?)
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attend: Attend<'_>,
    ) -> Result<(Tensor, Option<LayerAttention>)> {
        let c = &self.config;
        let (b, l, _) = x.dims3()?;
        let (heads, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = rms_norm(x, &blk.input_norm, c.rms_norm_eps)?;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let rope = |t: &Tensor| -> Result<Tensor> { Ok(fused::rope(t, cos, sin)?) };
        let q = rope(&split(blk.q.forward(&h)?, heads)?)?;
        let k = rope(&split(blk.k.forward(&h)?, kv)?)?;
        let (att, recorded) = match attend {
            Attend::Full(key_bias) => {
                // Heads packed in rows, as the fused attention and the losses read them.
                let query = fused::merge_heads(&q)?;
                let key = fused::merge_heads(&k)?;
                let value = blk.v.forward(&h)?.reshape((b * l, kv * hd))?;
                let cfg = fused::AttentionConfig {
                    batch: b,
                    heads,
                    kv_heads: kv,
                    causal: true,
                    scale: 1.0 / (hd as f64).sqrt(),
                    dropout: 0.0,
                    seed: 0,
                };
                let ctx = fused::attention(&query, &key, &value, key_bias, &cfg)?;
                let recorded = LayerAttention {
                    query,
                    key,
                    value,
                    batch: b,
                    heads,
                    kv_heads: kv,
                    scores: None,
                    probs: None,
                };
                (ctx.reshape((b, l, heads * hd))?, Some(recorded))
            }
            Attend::Cached(bias, slot) => {
                let v = split(blk.v.forward(&h)?, kv)?;
                // The keys (after RoPE) and values of earlier tokens come first.
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                let kl = k.dim(2)?;
                // Grouped-query attention: query head i reads key/value head i / (heads / kv).
                let repeat = |t: Tensor| -> Result<Tensor> {
                    if kv == heads {
                        return Ok(t);
                    }
                    Ok(t.unsqueeze(2)?
                        .expand((b, kv, heads / kv, kl, hd))?
                        .reshape((b, heads, kl, hd))?)
                };
                let (k, v) = (repeat(k)?, repeat(v)?);
                let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
                let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
                let att = probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, l, heads * hd))?;
                (att, None)
            }
        };
        let x = (x + blk.o.forward(&att)?)?;
        let h = rms_norm(&x, &blk.post_norm, c.rms_norm_eps)?;
        let mlp = blk.down.forward(&fused::swiglu(
            &blk.gate.forward(&h)?,
            &blk.up.forward(&h)?,
        )?)?;
        Ok(((x + mlp)?, recorded))
    }
}

/// How a block attends: a whole batch at once (fused causal attention over the key bias
/// [batch, seq]), or one sequence incrementally on its KV cache (bias [1, 1, new, seen + new]).
enum Attend<'a> {
    Full(&'a Tensor),
    Cached(&'a Tensor, &'a mut Option<(Tensor, Tensor)>),
}

/// Keys (after RoPE) and values of the tokens decoded so far, per layer, each
/// [1, kv_heads, seen, head_dim].
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    seen: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens held.
    pub fn seen(&self) -> usize {
        self.seen
    }
}
