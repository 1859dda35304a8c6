//! The tokenizer of a GGUF file rebuilt from its metadata (`tokenizer.ggml.*`): byte-level BPE
//! from the vocabulary and merges, as Python transformers rebuilds it, so token ids match its.
//!
//! Decision: only the GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) with the
//! GPT-2 pre-tokenizer (`pre` = `gpt2`, `smollm` or `default`) is rebuilt. Other `pre` values
//! split text with their own regular expressions (Llama 3, Qwen2, ...) and SentencePiece
//! (`llama`) is a different model; each is refused by name rather than tokenised slightly
//! wrong. candle's `TokenizerFromGguf` is not used because it always adds a prefix space
//! (its `ByteLevel::default()`), which changes the first token of every text.

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufFile;
use crate::error::Result;

/// llama.cpp's token types that are not text: control (3) and user-defined (4) tokens.
const SPECIAL_TYPES: [i64; 2] = [3, 4];

/// What a GGUF file says about its tokenizer besides the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GgufTokenizerInfo {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// `tokenizer.chat_template`, a Jinja template, where the file has one.
    pub chat_template: Option<String>,
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    match file.meta(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(file.err(format!("metadata `{key}`: expected an array of strings"))),
            })
            .collect(),
        Some(_) => Err(file.err(format!("metadata `{key}`: expected an array of strings"))),
        None => Err(file.err(format!("metadata `{key}` is missing"))),
    }
}

fn id(file: &GgufFile, key: &str, vocab: usize) -> Result<Option<u32>> {
    match file.meta_usize(key)? {
        Some(i) if i >= vocab => Err(file.err(format!(
            "metadata `{key}`: token id {i} is outside the vocabulary of {vocab}"
        ))),
        Some(i) => Ok(Some(i as u32)),
        None => Ok(None),
    }
}

fn flag(file: &GgufFile, key: &str) -> Result<bool> {
    match file.meta(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(file.err(format!("metadata `{key}`: expected true or false"))),
    }
}

/// Rebuilds the tokenizer and reads its special ids and chat template.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<(Tokenizer, GgufTokenizerInfo)> {
    let model = file.meta_str("tokenizer.ggml.model")?.unwrap_or("");
    if model != "gpt2" {
        return Err(file.err(format!(
            "metadata `tokenizer.ggml.model`: {model:?} is not supported (only \"gpt2\" byte-level BPE)"
        )));
    }
    let pre = file.meta_str("tokenizer.ggml.pre")?.unwrap_or("default");
    if !["gpt2", "smollm", "default"].contains(&pre) {
        return Err(file.err(format!(
            "metadata `tokenizer.ggml.pre`: {pre:?} is not supported (gpt2, smollm, default)"
        )));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    file.err(format!(
                        "metadata `tokenizer.ggml.merges[{i}]`: expected two tokens separated by a space, got {m:?}"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| file.err(format!("tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let prefix = flag(file, "tokenizer.ggml.add_space_prefix")?;
    tok.with_pre_tokenizer(Some(ByteLevel::new(prefix, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    let n = tokens.len();
    let info = GgufTokenizerInfo {
        bos: id(file, "tokenizer.ggml.bos_token_id", n)?,
        eos: id(file, "tokenizer.ggml.eos_token_id", n)?,
        pad: id(file, "tokenizer.ggml.padding_token_id", n)?,
        chat_template: file
            .meta_str("tokenizer.chat_template")?
            .map(str::to_string),
    };
    let mut special: Vec<u32> = match file.meta("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types
            .iter()
            .enumerate()
            .filter(|(_, t)| match t {
                Value::I32(x) => SPECIAL_TYPES.contains(&i64::from(*x)),
                Value::U32(x) => SPECIAL_TYPES.contains(&i64::from(*x)),
                _ => false,
            })
            .map(|(i, _)| i as u32)
            .collect(),
        _ => Vec::new(),
    };
    let unk = id(file, "tokenizer.ggml.unknown_token_id", n)?;
    special.extend([info.bos, info.eos, info.pad, unk].into_iter().flatten());
    special.sort_unstable();
    special.dedup();
    let added: Vec<AddedToken> = special
        .iter()
        .filter_map(|&i| tokens.get(i as usize))
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_special_tokens(added)
        .map_err(|e| file.err(format!("tokenizer: {e}")))?;

    let add_bos = flag(file, "tokenizer.ggml.add_bos_token")?;
    if add_bos {
        let bos = info.bos.ok_or_else(|| {
            file.err("metadata: add_bos_token is set but bos_token_id is missing")
        })?;
        let name = tokens[bos as usize];
        let post = TemplateProcessing::builder()
            .try_single(format!("{name} $A"))
            .and_then(|b| b.try_pair(format!("{name} $A {name}:1 $B:1")))
            .map_err(|e| file.err(format!("tokenizer: {e}")))?
            .special_tokens(vec![(name.to_string(), bos)])
            .build()
            .map_err(|e| file.err(format!("tokenizer: {e}")))?;
        tok.with_post_processor(Some(post));
    }
    Ok((tok, info))
}
