//! Tiny fixtures for tests and examples (here so that every crate's tests share them):
//! a small BERT config and a BERT-shaped WordPiece `tokenizer.json`.

use std::path::{Path, PathBuf};

use crate::config::{Activation, BertConfig};

/// A 3-layer, 16-wide, 4-head encoder over a 40-token vocabulary.
pub fn tiny_config(labels: &[&str]) -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 24,
        hidden_act: Activation::Gelu,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 32,
        type_vocab_size: 2,
        initializer_range: 0.2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        labels: labels.iter().map(|s| s.to_string()).collect(),
    }
}

/// A small WordPiece `tokenizer.json` in the same shape as BERT's (normaliser, pre-tokenizer,
/// [CLS]/[SEP] template with pair type ids, fixed padding to 16 that must be turned off).
pub fn write_tiny_tokenizer(dir: &Path) -> std::io::Result<PathBuf> {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
        "ran", "##s", "fast", ".", ",", "!", "good", "bad", "movie",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                     "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [
            {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string())?;
    Ok(path)
}

/// A LLaMA config to build tiny decoders from with `llama::random_llama` (which fills in the
/// sizes): `vocab` tokens, plain RoPE, untied head, 64 positions, no special token ids.
pub fn llama_base(vocab: usize) -> crate::llama::LlamaConfig {
    crate::llama::LlamaConfig {
        model_type: "llama".into(),
        vocab_size: vocab,
        hidden_size: 0,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 0,
        num_key_value_heads: 0,
        head_dim: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: crate::llama::RopeScaling::None,
        qkv_bias: false,
        tie_word_embeddings: false,
        max_position_embeddings: 64,
        bos_token_id: serde_json::Value::Null,
        eos_token_id: serde_json::Value::Null,
    }
}

/// A fetched fixture (`scripts/fetch-fixtures.sh`): `rel` under `$DISTILLERY_FIXTURES`, or
/// under the workspace's `fixtures/`. Panics, naming the path and the script, when missing:
/// a test that needs a real model must not pass without it.
pub fn fixture(rel: &str) -> PathBuf {
    let path = std::env::var_os("DISTILLERY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join(rel);
    assert!(
        path.exists(),
        "fixture missing: {} — run scripts/fetch-fixtures.sh",
        path.display()
    );
    path
}

/// The decoder fixture: SmolLM2-135M-Instruct as a Q4_1 GGUF file.
pub const SMOLLM2: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
