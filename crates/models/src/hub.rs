//! Hugging Face folder layout: `config.json` + `model.safetensors` (+ tokenizer files).
//! Loading memory-maps the weights; saving writes each file to a temporary name and renames it,
//! so a failure never leaves a half-written model behind.

use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};

use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::{io_err, ModelError, Result};
use crate::params::{ParamBuilder, Stored};
use distillery_util::fs::{write_atomic, write_atomic_with};

/// Files copied next to a saved model when the source folder has them.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Register the weights as `Var`s (for fine-tuning or as a student) instead of frozen tensors.
    pub trainable: bool,
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            trainable: false,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// Checks that `dir` is a loadable Hugging Face BERT folder; returns the weights' path.
pub fn weights_path(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(ModelError::Folder(format!(
            "{}: not a directory (expected a Hugging Face model folder)",
            dir.display()
        )));
    }
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(ModelError::Folder(format!(
            "{}: only pytorch_model.bin found; distillery reads model.safetensors (convert with `transformers`: model.save_pretrained(dir, safe_serialization=True))",
            dir.display()
        )));
    }
    Err(ModelError::Folder(format!(
        "{}: missing file (expected model.safetensors)",
        st.display()
    )))
}

/// Loads a BERT encoder (with its classification head when `config.json` declares one).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<BertModel> {
    let cfg_path = dir.join("config.json");
    let weights = weights_path(dir)?;
    if !cfg_path.is_file() {
        return Err(ModelError::Folder(format!(
            "{}: missing file (expected a Hugging Face config.json)",
            cfg_path.display()
        )));
    }
    let config = BertConfig::from_file(&cfg_path)?;
    // SAFETY: the file is opened read-only and not modified by this process while mapped; a
    // concurrent writer elsewhere is outside what any mmap-based loader can defend against.
    let st = unsafe { MmapedSafetensors::new(&weights) }.map_err(|e| io_err(&weights, e))?;
    let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() {
        "bert."
    } else {
        ""
    };
    let stored = Stored::File {
        path: weights,
        st,
        prefix: prefix.to_string(),
    };
    let pb = ParamBuilder::new(stored, None, opts.trainable, opts.dtype, &opts.device);
    BertModel::build(config, pb, false)
}

/// Saves `model` in Hugging Face layout into `dir` (created if needed), copying the tokenizer
/// files found in `tokenizer_from`. A model with a head is saved as `BertForSequenceClassification`
/// (encoder names under `bert.`), one without as `BertModel`.
pub fn save_model(model: &BertModel, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let prefix = if model.classifier.is_some() {
        "bert."
    } else {
        ""
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in model.named_tensors() {
        let name = if name.starts_with("classifier.") {
            name
        } else {
            format!("{prefix}{name}")
        };
        tensors.push((
            name,
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        ));
    }
    let st_path = dir.join("model.safetensors");
    write_atomic_with(&st_path, |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(
            &tensors.iter().cloned().collect(),
            tmp,
        )?)
    })?;
    let cfg = serde_json::to_string_pretty(&model.config.to_hf_json())
        .map_err(|e| ModelError::Input(e.to_string()))?;
    let cfg_path = dir.join("config.json");
    write_atomic(&cfg_path, cfg.as_bytes())?;
    if let Some(src) = tokenizer_from {
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.is_file() && from != dir.join(f) {
                let to = dir.join(f);
                write_atomic_with(&to, |tmp| -> Result<()> {
                    std::fs::copy(&from, tmp)
                        .map(|_| ())
                        .map_err(|e| io_err(&from, e))
                })?;
            }
        }
    }
    Ok(())
}
