//! Opens a decoder with its tokenizer from either source a user may point `--model` at: a
//! Hugging Face folder or a GGUF file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::gguf::{is_gguf, GgufFile};
use super::gguf_tokenizer::gguf_tokenizer;
use super::{apply_chat_template, load_llama, save_llama, ChatMessage, LlamaModel};
use crate::error::{io_err, ModelError, Result};
use crate::hub::LoadOptions;
use crate::params::{ParamBuilder, Stored};
use crate::tokenizer::TextTokenizer;

/// Where a decoder came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderSource {
    Folder(PathBuf),
    /// A GGUF file and how many of its tensors use each quantisation type.
    Gguf {
        path: PathBuf,
        kinds: BTreeMap<String, usize>,
    },
}

/// A decoder, its tokenizer and its chat template.
#[derive(Debug)]
pub struct Decoder {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    /// A Jinja chat template (`tokenizer_config.json`, `chat_template.jinja` or GGUF metadata).
    pub chat_template: Option<String>,
    pub source: DecoderSource,
}

impl Decoder {
    /// `user`'s message as the model's chat template lays out a one-turn conversation, the
    /// assistant's turn opened (transformers' `apply_chat_template(add_generation_prompt=True)`).
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Input(format!(
                "{} has no chat template",
                self.source.path().display()
            ))
        })?;
        let special = |v: &serde_json::Value| {
            let id = v
                .as_u64()
                .or_else(|| v.get(0).and_then(serde_json::Value::as_u64));
            id.and_then(|i| self.tokenizer.token(i as u32))
                .unwrap_or_default()
        };
        let c = &self.model.config;
        let messages = [ChatMessage {
            role: "user".into(),
            content: user.into(),
        }];
        apply_chat_template(
            template,
            &messages,
            true,
            &special(&c.bos_token_id),
            &special(&c.eos_token_id),
        )
    }
}

impl Decoder {
    /// Saves `student` (made from this decoder) as a Hugging Face folder with this decoder's
    /// tokenizer: a folder's tokenizer files are copied; a GGUF file's rebuilt tokenizer is
    /// written as `tokenizer.json` with a `tokenizer_config.json` naming its special tokens and
    /// chat template, so transformers' `AutoTokenizer` loads it.
    pub fn save_student(&self, student: &LlamaModel, dir: &Path) -> Result<()> {
        match &self.source {
            DecoderSource::Folder(src) => save_llama(student, dir, Some(src)),
            DecoderSource::Gguf { .. } => {
                save_llama(student, dir, None)?;
                self.tokenizer.save(&dir.join("tokenizer.json"))?;
                let token = |v: &serde_json::Value| {
                    v.as_u64()
                        .and_then(|i| self.tokenizer.token(i as u32))
                        .map_or(serde_json::Value::Null, Into::into)
                };
                let c = &student.config;
                let pad = self.tokenizer.token(self.tokenizer.pad_id());
                let config = serde_json::json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "bos_token": token(&c.bos_token_id),
                    "eos_token": token(&c.eos_token_id),
                    "pad_token": pad,
                    "chat_template": self.chat_template,
                    "model_max_length": c.max_position_embeddings,
                });
                let text = serde_json::to_string_pretty(&config)
                    .map_err(|e| ModelError::Input(e.to_string()))?;
                let path = dir.join("tokenizer_config.json");
                distillery_util::fs::write_atomic(&path, text.as_bytes())?;
                Ok(())
            }
        }
    }
}

impl DecoderSource {
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(p) | Self::Gguf { path: p, .. } => p,
        }
    }
}

/// Opens `path` (a folder, or a `.gguf` file); the tokenizer truncates at `max_len` tokens,
/// capped at the model's context length.
pub fn open_decoder(path: &Path, opts: &LoadOptions, max_len: Option<usize>) -> Result<Decoder> {
    if is_gguf(path) {
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        let (inner, info) = gguf_tokenizer(&file)?;
        let tensors = file.hf_tensors(&config)?;
        let pb = ParamBuilder::new(
            Stored::Map(tensors),
            None,
            opts.trainable,
            opts.dtype,
            &opts.device,
        );
        let model = LlamaModel::build(config, &pb)?;
        let len = cap(max_len, model.config.max_position_embeddings);
        let tokenizer = TextTokenizer::from_tokenizer(inner, path, len, info.pad.or(info.eos))?;
        return Ok(Decoder {
            model,
            tokenizer,
            chat_template: info.chat_template,
            source: DecoderSource::Gguf {
                path: path.to_path_buf(),
                kinds: file.kind_counts(),
            },
        });
    }
    if path.is_file() {
        return Err(ModelError::Folder(format!(
            "{}: expected a Hugging Face model folder or a .gguf file",
            path.display()
        )));
    }
    let model = load_llama(path, opts)?;
    let len = cap(max_len, model.config.max_position_embeddings);
    let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"), len)?;
    Ok(Decoder {
        model,
        tokenizer,
        chat_template: folder_chat_template(path)?,
        source: DecoderSource::Folder(path.to_path_buf()),
    })
}

fn cap(max_len: Option<usize>, context: usize) -> usize {
    max_len.map_or(context, |m| m.min(context))
}

/// transformers 5 writes `chat_template.jinja`; older folders keep the template in
/// `tokenizer_config.json`.
fn folder_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(
            std::fs::read_to_string(&jinja).map_err(|e| io_err(&jinja, e))?,
        ));
    }
    let cfg = dir.join("tokenizer_config.json");
    if !cfg.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg).map_err(|e| io_err(&cfg, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: cfg.clone(),
        message: e.to_string(),
    })?;
    Ok(json["chat_template"].as_str().map(str::to_string))
}
