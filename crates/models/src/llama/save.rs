//! Saving a LLaMA-family model as a Hugging Face folder: `model.safetensors`, `config.json`,
//! `generation_config.json` and the tokenizer files; every file written atomically.

use std::path::Path;

use candle_core::{DType, Device};

use super::LlamaModel;
use crate::error::{io_err, ModelError, Result};
use crate::hub::TOKENIZER_FILES;
use distillery_util::fs::{write_atomic, write_atomic_with};

/// Saves `model` into `dir` (created if needed), copying the tokenizer files found in
/// `tokenizer_from`. transformers loads it as `AutoModelForCausalLM`.
pub fn save_llama(model: &LlamaModel, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut tensors = std::collections::HashMap::new();
    for (name, t) in model.named_tensors() {
        tensors.insert(
            name,
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        );
    }
    write_atomic_with(&dir.join("model.safetensors"), |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    let json = |v: &serde_json::Value| {
        serde_json::to_string_pretty(v).map_err(|e| ModelError::Input(e.to_string()))
    };
    let c = &model.config;
    write_atomic(&dir.join("config.json"), json(&c.to_hf_json())?.as_bytes())?;
    let generation = serde_json::json!({
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
    });
    write_atomic(
        &dir.join("generation_config.json"),
        json(&generation)?.as_bytes(),
    )?;
    if let Some(src) = tokenizer_from {
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.is_file() && from != dir.join(f) {
                let bytes = std::fs::read(&from).map_err(|e| io_err(&from, e))?;
                write_atomic(&dir.join(f), &bytes)?;
            }
        }
    }
    Ok(())
}
