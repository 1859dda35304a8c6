//! A LLaMA-family `config.json` (`model_type` `llama`, `mistral` or `qwen2`), in the hub's
//! classic form (`rope_theta` + `rope_scaling`) or as transformers 5 writes it
//! (`rope_parameters`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// How rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama 3: frequencies whose wavelength exceeds `original / low_freq_factor` are divided
    /// by `factor`, those below `original / high_freq_factor` kept, the band between
    /// interpolated smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: fewer key/value heads than query heads (equal by default).
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Biases on the q/k/v projections (Qwen2 always; LLaMA with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection is the input embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// Special token ids as the config gives them (a number, a list or null), kept to be
    /// written back on save.
    pub bos_token_id: serde_json::Value,
    pub eos_token_id: serde_json::Value,
}

#[derive(Deserialize)]
struct RawRope {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    bos_token_id: serde_json::Value,
    #[serde(default)]
    eos_token_id: serde_json::Value,
}

fn field_err(field: &'static str, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        field,
        message: message.into(),
    }
}

fn required(field: &'static str, v: Option<usize>) -> Result<usize> {
    match v {
        Some(0) => Err(field_err(field, "must be positive, got 0")),
        Some(n) => Ok(n),
        None => Err(field_err(field, "is missing")),
    }
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::config::read_config_file(path, Self::from_json)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| ModelError::Input(e.to_string()))?;
        let model_type = raw.model_type.unwrap_or_default();
        if !["llama", "mistral", "qwen2"].contains(&model_type.as_str()) {
            return Err(field_err(
                "model_type",
                format!("expected \"llama\", \"mistral\" or \"qwen2\", got {model_type:?}"),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(field_err(
                "hidden_act",
                format!("only \"silu\" (SwiGLU) is supported, got {act:?}"),
            ));
        }
        if raw.mlp_bias == Some(true) {
            return Err(field_err("mlp_bias", "MLP biases are not supported"));
        }
        let hidden_size = required("hidden_size", raw.hidden_size)?;
        let heads = required("num_attention_heads", raw.num_attention_heads)?;
        let kv_heads = required(
            "num_key_value_heads",
            Some(raw.num_key_value_heads.unwrap_or(heads)),
        )?;
        if heads % kv_heads != 0 {
            return Err(field_err(
                "num_key_value_heads",
                format!("{kv_heads} does not divide the {heads} attention heads"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => required("head_dim", Some(d))?,
            None if hidden_size % heads == 0 => hidden_size / heads,
            None => {
                return Err(field_err(
                    "num_attention_heads",
                    format!("{heads} heads do not divide hidden_size {hidden_size}"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(field_err(
                "head_dim",
                format!("rotary embeddings need an even head size, got {head_dim}"),
            ));
        }
        let rope = raw.rope_parameters.or(raw.rope_scaling);
        let rope_theta = raw
            .rope_theta
            .or(rope.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => RopeScaling::None,
            Some(r) => match r.rope_type.as_deref() {
                None | Some("default") => RopeScaling::None,
                Some("llama3") => {
                    let get = |v: Option<f64>, name: &'static str| {
                        v.ok_or_else(|| field_err("rope_scaling", format!("llama3 needs `{name}`")))
                    };
                    RopeScaling::Llama3 {
                        factor: get(r.factor, "factor")?,
                        low_freq_factor: get(r.low_freq_factor, "low_freq_factor")?,
                        high_freq_factor: get(r.high_freq_factor, "high_freq_factor")?,
                        original_max_position_embeddings: get(
                            r.original_max_position_embeddings,
                            "original_max_position_embeddings",
                        )?,
                    }
                }
                Some(other) => {
                    return Err(field_err(
                        "rope_scaling",
                        format!("rope type {other:?} is not supported (default and llama3 are)"),
                    ))
                }
            },
        };
        Ok(Self {
            qkv_bias: model_type == "qwen2" || raw.attention_bias == Some(true),
            model_type,
            vocab_size: required("vocab_size", raw.vocab_size)?,
            hidden_size,
            intermediate_size: required("intermediate_size", raw.intermediate_size)?,
            num_hidden_layers: required("num_hidden_layers", raw.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
        })
    }

    /// The Hugging Face `config.json` (classic rope keys, which every transformers version
    /// reads).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        });
        if self.model_type == "llama" {
            v["attention_bias"] = serde_json::json!(self.qkv_bias);
            v["mlp_bias"] = serde_json::json!(false);
        }
        if let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } = self.rope_scaling
        {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                // An integer, as transformers insists.
                "original_max_position_embeddings": original_max_position_embeddings.round() as u64,
            });
        }
        v
    }

    /// The rotary inverse frequencies `1/θ^(2i/d)`, i < d/2, with the configured scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d);
                match self.rope_scaling {
                    RopeScaling::None => f,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: old,
                    } => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < old / high_freq_factor {
                            f
                        } else if wavelen > old / low_freq_factor {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}
