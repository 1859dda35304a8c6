//! A LLaMA-family Hugging Face folder: `config.json` and `model.safetensors`, or shards listed
//! in `model.safetensors.index.json`.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;

use super::{LlamaConfig, LlamaModel};
use crate::error::{io_err, ModelError, Result};
use crate::hub::LoadOptions;
use crate::params::{ParamBuilder, Stored};

/// The weight files of `dir`: the single file, or every shard the index names (each once).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::Folder(format!(
            "{}: missing file (expected model.safetensors or model.safetensors.index.json)",
            single.display()
        )));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Json {
            path: index.clone(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Json {
            path: index.clone(),
            message: format!("`weight_map.{name}` is not a file name"),
        })?;
        let p = dir.join(file);
        if !files.contains(&p) {
            if !p.is_file() {
                return Err(ModelError::Folder(format!(
                    "{}: missing shard (named by {})",
                    p.display(),
                    index.display()
                )));
            }
            files.push(p);
        }
    }
    Ok(files)
}

/// Loads a `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` folder.
pub fn load_llama(dir: &Path, opts: &LoadOptions) -> Result<LlamaModel> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(ModelError::Folder(format!(
            "{}: missing file (expected a Hugging Face config.json)",
            cfg_path.display()
        )));
    }
    let config = LlamaConfig::from_file(&cfg_path)?;
    let files = weight_files(dir)?;
    // SAFETY: read-only maps of files this process does not modify (as `hub::load_model`).
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| io_err(&files[0], e))?;
    let stored = Stored::File {
        path: files[0].clone(),
        st,
        prefix: String::new(),
    };
    let pb = ParamBuilder::new(stored, None, opts.trainable, opts.dtype, &opts.device);
    LlamaModel::build(config, &pb)
}
