//! The teacher's `tokenizer.json` through the `tokenizers` crate: its fixed padding turned off,
//! truncation to a maximum length, and dynamic padding to the longest sequence of each batch.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{ModelError, Result};

/// One example's text: a single sequence or a pair (`[CLS] a [SEP] b [SEP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextInput {
    Single(String),
    Pair(String, String),
}

/// A tokenised, padded batch as plain row-major data: `[batch, seq]` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

/// The batch as tensors on a device.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
}

impl EncodedBatch {
    pub fn to_tensors(&self, device: &Device) -> Result<BatchTensors> {
        let shape = (self.batch, self.seq);
        Ok(BatchTensors {
            input_ids: Tensor::from_vec(self.input_ids.clone(), shape, device)?,
            token_type_ids: Tensor::from_vec(self.token_type_ids.clone(), shape, device)?,
            attention_mask: Tensor::from_vec(self.attention_mask.clone(), shape, device)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_len: usize,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, truncating to `max_len` tokens (special tokens included).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err(
                "file not found (expected a Hugging Face tokenizer.json)".into(),
            ));
        }
        let inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        // The file may pad to a fixed length (all-MiniLM pads to 128); we pad per batch instead.
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"));
        Self::from_tokenizer(inner, path, max_len, pad_id)
    }

    /// Wraps a tokenizer built elsewhere (from a GGUF file's vocabulary); `source` names it in
    /// errors. Padding uses `pad_id` (0 when `None`) and is added per batch.
    pub fn from_tokenizer(
        mut inner: Tokenizer,
        source: &Path,
        max_len: usize,
        pad_id: Option<u32>,
    ) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: source.to_path_buf(),
            message,
        };
        if max_len < 2 {
            return Err(err(format!("max length must be at least 2, got {max_len}")));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            pad_id: pad_id.unwrap_or(0),
            max_len,
            path: source.to_path_buf(),
        })
    }

    /// Writes the tokenizer as a `tokenizer.json` (without our truncation, which is a property
    /// of a run, not of the tokenizer).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t = self.inner.clone();
        t.with_truncation(None).map_err(|e| ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let json = t.to_string(true).map_err(|e| ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        distillery_util::fs::write_atomic(path, json.as_bytes())?;
        Ok(())
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The token string of `id` (special tokens included), if the vocabulary has it.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Tokenises and pads a batch to its longest member.
    pub fn encode_batch(&self, inputs: &[TextInput]) -> Result<EncodedBatch> {
        let enc_inputs: Vec<EncodeInput<'_>> = inputs
            .iter()
            .map(|t| match t {
                TextInput::Single(a) => EncodeInput::from(a.as_str()),
                TextInput::Pair(a, b) => EncodeInput::from((a.as_str(), b.as_str())),
            })
            .collect();
        let encodings =
            self.inner
                .encode_batch(enc_inputs, true)
                .map_err(|e| ModelError::Tokenizer {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        let batch = encodings.len();
        let seq = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut out = EncodedBatch {
            batch,
            seq,
            input_ids: vec![self.pad_id; batch * seq],
            token_type_ids: vec![0; batch * seq],
            attention_mask: vec![0; batch * seq],
        };
        for (i, e) in encodings.iter().enumerate() {
            let row = i * seq;
            for (j, ((&id, &ty), &m)) in e
                .get_ids()
                .iter()
                .zip(e.get_type_ids())
                .zip(e.get_attention_mask())
                .enumerate()
            {
                out.input_ids[row + j] = id;
                out.token_type_ids[row + j] = ty;
                out.attention_mask[row + j] = m;
            }
        }
        Ok(out)
    }
}
