//! `BertConfig`: the subset of a Hugging Face `config.json` that a BERT encoder needs, validated.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_err, ModelError, Result};

/// Feed-forward activation. `gelu` in Hugging Face configs is the exact erf form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    GeluNew,
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluPytorchTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Self::Gelu),
            "gelu_new" => Some(Self::GeluNew),
            "gelu_pytorch_tanh" => Some(Self::GeluPytorchTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluNew => "gelu_new",
            Self::GeluPytorchTanh => "gelu_pytorch_tanh",
            Self::Relu => "relu",
        }
    }
}

/// Architecture hyper-parameters plus the label names of an optional classification head.
///
/// Unknown keys of `config.json` are ignored on read (HF configs carry many); on write we emit
/// the keys that `transformers.BertConfig` and candle-transformers read.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
    /// Label names of the classification head, in index order; empty when there is no head.
    pub labels: Vec<String>,
}

/// The raw JSON shape: every field optional so that a missing one gets a named error.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    intermediate_size: Option<i64>,
    hidden_act: Option<String>,
    hidden_dropout_prob: Option<f64>,
    attention_probs_dropout_prob: Option<f64>,
    max_position_embeddings: Option<i64>,
    type_vocab_size: Option<i64>,
    initializer_range: Option<f64>,
    layer_norm_eps: Option<f64>,
    pad_token_id: Option<i64>,
    position_embedding_type: Option<String>,
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<i64>,
    architectures: Option<Vec<String>>,
}

fn required(v: Option<i64>, field: &'static str) -> Result<usize> {
    let v = v.ok_or_else(|| ModelError::Config {
        field,
        message: "missing".into(),
    })?;
    if v <= 0 {
        return Err(ModelError::Config {
            field,
            message: format!("must be positive, got {v}"),
        });
    }
    Ok(v as usize)
}

impl BertConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config_file(path, Self::from_json)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| ModelError::Input(e.to_string()))?;
        if let Some(mt) = &raw.model_type {
            if mt != "bert" {
                return Err(ModelError::Config {
                    field: "model_type",
                    message: format!("expected \"bert\", got {mt:?}"),
                });
            }
        }
        if let Some(p) = &raw.position_embedding_type {
            if p != "absolute" {
                return Err(ModelError::Config {
                    field: "position_embedding_type",
                    message: format!("only \"absolute\" is supported, got {p:?}"),
                });
            }
        }
        let act = raw.hidden_act.as_deref().unwrap_or("gelu");
        let hidden_act = Activation::parse(act).ok_or_else(|| ModelError::Config {
            field: "hidden_act",
            message: format!(
                "unknown activation {act:?}; expected gelu, gelu_new, gelu_pytorch_tanh or relu"
            ),
        })?;
        let labels = labels_from(&raw)?;
        let cfg = Self {
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size: required(raw.hidden_size, "hidden_size")?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: required(raw.num_attention_heads, "num_attention_heads")?,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            hidden_act,
            hidden_dropout_prob: raw.hidden_dropout_prob.unwrap_or(0.1),
            attention_probs_dropout_prob: raw.attention_probs_dropout_prob.unwrap_or(0.1),
            max_position_embeddings: required(
                raw.max_position_embeddings.or(Some(512)),
                "max_position_embeddings",
            )?,
            type_vocab_size: required(raw.type_vocab_size.or(Some(2)), "type_vocab_size")?,
            initializer_range: raw.initializer_range.unwrap_or(0.02),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-12),
            pad_token_id: raw.pad_token_id.unwrap_or(0).max(0) as usize,
            labels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the encoder relies on; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ModelError::Config {
                    field,
                    message: "must be positive, got 0".into(),
                });
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::Config {
                field: "num_attention_heads",
                message: format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            });
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(ModelError::Config {
                    field,
                    message: format!("must be in [0, 1), got {p}"),
                });
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(ModelError::Config {
                field: "layer_norm_eps",
                message: format!("must be positive, got {}", self.layer_norm_eps),
            });
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(ModelError::Config {
                field: "pad_token_id",
                message: format!(
                    "{} is outside the vocabulary of {}",
                    self.pad_token_id, self.vocab_size
                ),
            });
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// The `config.json` that `transformers` and candle-transformers read back.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let has_head = !self.labels.is_empty();
        let id2label: BTreeMap<String, String> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect();
        let label2id: BTreeMap<String, usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect();
        let mut v = serde_json::json!({
            "architectures": [if has_head { "BertForSequenceClassification" } else { "BertModel" }],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act.as_str(),
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "classifier_dropout": null,
            "use_cache": true,
        });
        if has_head {
            v["num_labels"] = self.labels.len().into();
            v["id2label"] = serde_json::to_value(id2label).unwrap_or_default();
            v["label2id"] = serde_json::to_value(label2id).unwrap_or_default();
        }
        v
    }
}

/// A head exists when the architecture is a sequence classifier; its labels come from
/// `id2label` (indices must be 0..n) or, failing that, `num_labels` generic names.
fn labels_from(raw: &RawConfig) -> Result<Vec<String>> {
    let is_classifier = raw
        .architectures
        .as_ref()
        .is_some_and(|a| a.iter().any(|s| s.ends_with("ForSequenceClassification")));
    if !is_classifier {
        return Ok(Vec::new());
    }
    if let Some(map) = &raw.id2label {
        let mut labels = vec![None; map.len()];
        for (k, v) in map {
            let i: usize = k.parse().map_err(|_| ModelError::Config {
                field: "id2label",
                message: format!("key {k:?} is not an index"),
            })?;
            let slot = labels.get_mut(i).ok_or_else(|| ModelError::Config {
                field: "id2label",
                message: format!("index {i} out of range 0..{}", map.len()),
            })?;
            *slot = Some(v.clone());
        }
        return Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect());
    }
    let n = required(raw.num_labels.or(Some(2)), "num_labels")?;
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// Reads a `config.json` with `parse`; a bad field or bad JSON names the file.
pub(crate) fn read_config_file<T>(path: &Path, parse: impl Fn(&str) -> Result<T>) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    parse(&text).map_err(|e| match e {
        ModelError::Config { field, message } => ModelError::Io {
            path: path.to_path_buf(),
            message: format!("field `{field}`: {message}"),
        },
        ModelError::Input(message) => ModelError::Json {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"{"model_type":"bert","vocab_size":100,"hidden_size":32,"num_hidden_layers":2,
        "num_attention_heads":4,"intermediate_size":64,"hidden_act":"gelu","max_position_embeddings":64,
        "type_vocab_size":2,"layer_norm_eps":1e-12,"pad_token_id":0,"something_unknown":[1,2]}"#;

    #[test]
    fn reads_a_valid_config_and_ignores_unknown_keys() {
        let c = BertConfig::from_json(MINI).expect("valid");
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.head_dim()),
            (32, 4, 8)
        );
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert!(c.labels.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                MINI.replace("\"num_attention_heads\":4", "\"num_attention_heads\":5"),
                "num_attention_heads",
            ),
            (MINI.replace("\"gelu\"", "\"swish\""), "hidden_act"),
            (MINI.replace("\"hidden_size\":32,", ""), "hidden_size"),
            (
                MINI.replace("\"vocab_size\":100", "\"vocab_size\":-3"),
                "vocab_size",
            ),
            (
                MINI.replace("\"intermediate_size\":64", "\"intermediate_size\":0"),
                "intermediate_size",
            ),
        ];
        for (json, field) in cases {
            let err = BertConfig::from_json(&json).expect_err(field).to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn classifier_labels_round_trip_through_hf_json() {
        let json = MINI.replace(
            "\"model_type\"",
            "\"architectures\":[\"BertForSequenceClassification\"],\"id2label\":{\"1\":\"pos\",\"0\":\"neg\"},\"model_type\"",
        );
        let c = BertConfig::from_json(&json).expect("valid");
        assert_eq!(c.labels, vec!["neg", "pos"]);
        let back = BertConfig::from_json(&c.to_hf_json().to_string()).expect("valid");
        assert_eq!(back, c);
    }
}
