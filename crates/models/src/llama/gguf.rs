//! A LLaMA-architecture GGUF file (llama.cpp's format) read through candle's GGUF reader: the
//! configuration from its metadata, every tensor dequantised to f32 under its Hugging Face
//! name, and the Q/K projections un-permuted.
//!
//! llama.cpp's converter stores `attn_q`/`attn_k` with the rows of each head reordered for its
//! interleaved RoPE (pairs `(i, i + d/2)` become neighbours). transformers undoes that when it
//! loads a GGUF file, and our decoder applies RoPE the Hugging Face way, so the rows are put
//! back here; the reference test against transformers would fail on any other order.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use super::config::{LlamaConfig, RopeScaling};
use crate::error::{io_err, ModelError, Result};

/// An opened GGUF file: its header (metadata and tensor directory), tensor data read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({})", self.path.display())
    }
}

/// One tensor as the file stores it (for `inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    /// The quantisation type as llama.cpp names it (`Q4_1`, `Q8_0`, `F32`, ...).
    pub kind: String,
    pub shape: Vec<usize>,
}

/// Whether `path` names a GGUF file rather than a Hugging Face folder.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| {
            let message = match super::gguf_scan::unknown_type_tensor(path) {
                Some((name, kind)) => format!(
                    "tensor `{name}`: unknown quantisation type {kind} (known: F32, F16, BF16, \
                     Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K to Q8_K)"
                ),
                None => format!("not a readable GGUF file: {}", first_line(&e)),
            };
            ModelError::Gguf {
                path: path.to_path_buf(),
                message,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub(crate) fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        let bad = || self.err(format!("metadata `{key}`: expected a non-negative integer"));
        Ok(match self.meta(key) {
            None => None,
            Some(v) => Some(match *v {
                Value::U8(x) => x as usize,
                Value::U16(x) => x as usize,
                Value::U32(x) => x as usize,
                Value::U64(x) => usize::try_from(x).map_err(|_| bad())?,
                Value::I8(x) => usize::try_from(x).map_err(|_| bad())?,
                Value::I16(x) => usize::try_from(x).map_err(|_| bad())?,
                Value::I32(x) => usize::try_from(x).map_err(|_| bad())?,
                Value::I64(x) => usize::try_from(x).map_err(|_| bad())?,
                _ => return Err(bad()),
            }),
        })
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        Ok(match self.meta(key) {
            None => None,
            Some(Value::F32(x)) => Some(f64::from(*x)),
            Some(Value::F64(x)) => Some(*x),
            Some(_) => return Err(self.err(format!("metadata `{key}`: expected a number"))),
        })
    }

    pub(crate) fn meta_str(&self, key: &str) -> Result<Option<&str>> {
        match self.meta(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(format!("metadata `{key}`: expected a string"))),
        }
    }

    fn required(&self, key: &str) -> Result<usize> {
        match self.meta_usize(key)? {
            Some(0) => Err(self.err(format!("metadata `{key}`: must be positive, got 0"))),
            Some(n) => Ok(n),
            None => Err(self.err(format!("metadata `{key}` is missing"))),
        }
    }

    /// Every tensor's name, quantisation type and shape (row-major, as candle reads it), by name.
    pub fn tensors(&self) -> Vec<GgufTensor> {
        let mut out: Vec<GgufTensor> = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| GgufTensor {
                name: name.clone(),
                kind: format!("{:?}", info.ggml_dtype).to_uppercase(),
                shape: info.shape.dims().to_vec(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The decoder's configuration from `general.architecture` and the `{arch}.*` keys.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.meta_str("general.architecture")?.unwrap_or("");
        if arch != "llama" {
            return Err(self.err(format!(
                "metadata `general.architecture`: expected \"llama\", got {arch:?}"
            )));
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(self.err(
                "tensor `rope_freqs.weight`: per-frequency RoPE factors (Llama 3.1 style) are not supported",
            ));
        }
        if let Some(kind) = self.meta_str("llama.rope.scaling.type")? {
            if kind != "none" {
                return Err(self.err(format!(
                    "metadata `llama.rope.scaling.type`: {kind:?} scaling is not supported"
                )));
            }
        }
        let hidden = self.required("llama.embedding_length")?;
        let heads = self.required("llama.attention.head_count")?;
        let kv_heads = self
            .meta_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(self.err(format!(
                "metadata `llama.attention.head_count_kv`: {kv_heads} does not divide the {heads} heads"
            )));
        }
        let head_dim = match self.meta_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(self.err(format!(
                    "metadata: {heads} heads do not divide embedding_length {hidden}"
                )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(self.err(format!(
                "head dimension {head_dim} is odd; RoPE needs pairs"
            )));
        }
        let vocab_size = match self.meta_usize("llama.vocab_size")? {
            Some(n) => n,
            None => match self.meta("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => return Err(self.err("metadata `llama.vocab_size` is missing")),
            },
        };
        let id = |key: &str| -> Result<serde_json::Value> {
            Ok(self
                .meta_usize(key)?
                .map_or(serde_json::Value::Null, Into::into))
        };
        Ok(LlamaConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: self.required("llama.feed_forward_length")?,
            num_hidden_layers: self.required("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f64("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope_theta: self.meta_f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling: RopeScaling::None,
            qkv_bias: false,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: self.meta_usize("llama.context_length")?.unwrap_or(2048),
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// Reads, checks and dequantises one tensor to f32 with the expected row-major shape.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            self.err(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            ))
        })?;
        if info.shape.dims() != shape {
            return Err(self.err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                info.shape.dims()
            )));
        }
        let file = File::open(&self.path).map_err(|e| io_err(&self.path, e))?;
        let q = info
            .read(
                &mut BufReader::new(file),
                self.content.tensor_data_offset,
                &Device::Cpu,
            )
            .map_err(|e| self.err(format!("tensor `{name}`: {}", first_line(&e))))?;
        q.dequantize(&Device::Cpu).map_err(|e| {
            self.err(format!(
                "tensor `{name}`: cannot dequantise: {}",
                first_line(&e)
            ))
        })
    }

    /// Every parameter of `config` under its Hugging Face name, as f32 on the CPU.
    pub fn hf_tensors(&self, config: &LlamaConfig) -> Result<HashMap<String, Tensor>> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let q_rows = config.num_attention_heads * config.head_dim;
        let kv_rows = config.num_key_value_heads * config.head_dim;
        let mut out = HashMap::new();
        out.insert(
            "model.embed_tokens.weight".into(),
            self.load("token_embd.weight", &[config.vocab_size, h])?,
        );
        out.insert(
            "model.norm.weight".into(),
            self.load("output_norm.weight", &[h])?,
        );
        if !config.tie_word_embeddings {
            out.insert(
                "lm_head.weight".into(),
                self.load("output.weight", &[config.vocab_size, h])?,
            );
        }
        for l in 0..config.num_hidden_layers {
            let g = |s: &str| format!("blk.{l}.{s}.weight");
            let hf = |s: &str| format!("model.layers.{l}.{s}.weight");
            let q = self.load(&g("attn_q"), &[q_rows, h])?;
            let k = self.load(&g("attn_k"), &[kv_rows, h])?;
            out.insert(
                hf("self_attn.q_proj"),
                unpermute(&q, config.num_attention_heads)?,
            );
            out.insert(
                hf("self_attn.k_proj"),
                unpermute(&k, config.num_key_value_heads)?,
            );
            for (gguf, name, shape) in [
                ("attn_v", "self_attn.v_proj", [kv_rows, h]),
                ("attn_output", "self_attn.o_proj", [h, q_rows]),
                ("ffn_gate", "mlp.gate_proj", [i, h]),
                ("ffn_up", "mlp.up_proj", [i, h]),
                ("ffn_down", "mlp.down_proj", [h, i]),
            ] {
                out.insert(hf(name), self.load(&g(gguf), &shape)?);
            }
            out.insert(hf("input_layernorm"), self.load(&g("attn_norm"), &[h])?);
            out.insert(
                hf("post_attention_layernorm"),
                self.load(&g("ffn_norm"), &[h])?,
            );
        }
        Ok(out)
    }

    /// The quantisation types and how many tensors use each (for `inspect`).
    pub fn kind_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.tensors() {
            *out.entry(t.kind).or_default() += 1;
        }
        out
    }
}

/// candle appends a backtrace to its errors when `RUST_BACKTRACE` is set; a user gets one line.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Undoes llama.cpp's Q/K row permutation: per head, its stored rows are
/// `[r0, r_{d/2}, r1, r_{d/2+1}, ...]`; Hugging Face's order is `[r0, r1, ..., r_{d-1}]`.
pub(crate) fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / heads;
    Ok(w.reshape((heads, d / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
