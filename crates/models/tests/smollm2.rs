//! The real decoder: SmolLM2-135M-Instruct from its Q4_1 GGUF file (dequantised to f32, Q/K
//! un-permuted, tokenizer rebuilt from the file's vocabulary) against Python `transformers`
//! loading the same file (values in tests/data/smollm2/reference.json, made by
//! scripts/reference/smollm2_reference.py). Needs the fixture: `scripts/fetch-fixtures.sh`.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use distillery_models::llama::{next_token_nll, open_decoder, Decoder, DecoderSource, Sampling};
use distillery_models::{testing, LoadOptions, TextInput};
use serde_json::Value;

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| serde_json::from_str(include_str!("data/smollm2/reference.json")).unwrap())
}

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| {
        open_decoder(
            &testing::fixture(testing::SMOLLM2),
            &LoadOptions::default(),
            Some(512),
        )
        .unwrap()
    })
}

fn cases() -> &'static [Value] {
    reference()["cases"].as_array().unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn encode(text: &str) -> Vec<u32> {
    decoder()
        .tokenizer
        .encode_batch(&[TextInput::Single(text.to_string())])
        .unwrap()
        .input_ids
}

#[test]
fn rebuilt_tokenizer_gives_transformers_ids() {
    for case in cases() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(encode(text), u32s(&case["ids"]), "{}", case["name"]);
    }
    let d = decoder();
    assert_eq!(
        d.chat_template.as_deref(),
        reference()["chat_template"].as_str()
    );
    let chat = cases().iter().find(|c| c["name"] == "chat").unwrap();
    let user = "What is the boiling point of water at sea level?";
    assert_eq!(d.chat_prompt(user).unwrap(), chat["text"].as_str().unwrap());
    match &d.source {
        DecoderSource::Gguf { kinds, .. } => {
            assert_eq!(kinds.get("Q4_1"), Some(&210));
            assert_eq!(kinds.get("Q8_0"), Some(&1));
            assert_eq!(kinds.get("F32"), Some(&61));
        }
        other => panic!("expected a GGUF source, got {other:?}"),
    }
    let c = &d.model.config;
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.num_attention_heads),
        (30, 576, 9)
    );
    assert_eq!((c.num_key_value_heads, c.head_dim), (3, 64));
    assert!(c.tie_word_embeddings);
    assert_eq!(d.model.eos_ids(), vec![2]);
}

/// Per position: the log-sum-exp of the whole row, the top-5 and 48 spread-out logits within
/// 1e-3 absolute; per prompt the mean next-token nll within 1e-4 relative.
#[test]
fn logits_and_nll_match_transformers() {
    let d = decoder();
    let probes = u32s(&reference()["probes"]);
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let ids = u32s(&case["ids"]);
        let n = ids.len();
        let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, n), candle_core::DType::U32, &Device::Cpu).unwrap();
        let logits = d
            .model
            .forward(&input, &mask)
            .unwrap()
            .token_logits
            .unwrap();
        let rows = logits.get(0).unwrap().to_vec2::<f32>().unwrap();
        let mut worst = 0.0f64;
        for (i, row) in rows.iter().enumerate() {
            let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            worst = worst.max((lse - case["lse"][i].as_f64().unwrap()).abs());
            let top = u32s(&case["top_ids"][i]);
            for (k, want) in top.iter().zip(f64s(&case["top_logits"][i])) {
                worst = worst.max((row[*k as usize] as f64 - want).abs());
            }
            for (k, want) in probes.iter().zip(f64s(&case["probe_logits"][i])) {
                worst = worst.max((row[*k as usize] as f64 - want).abs());
            }
        }
        assert!(worst < 1e-3, "{name}: logits differ by {worst:e}");
        let nll = next_token_nll(&logits, &input, &mask).unwrap()[0]
            .nll
            .unwrap();
        let want = case["nll"].as_f64().unwrap();
        eprintln!(
            "{name}: {n} tokens, logits within {worst:.1e}, nll relative error {:.1e}",
            ((nll - want) / want).abs()
        );
        assert!(
            ((nll - want) / want).abs() < 1e-4,
            "{name}: nll {nll} vs transformers {want}"
        );
    }
}

/// Greedy 32-token continuations on the KV cache, token for token as transformers' full
/// forwards give them (the reference records each step's top-2 gap; the smallest is 1e-3).
#[test]
fn greedy_continuations_match_transformers() {
    let d = decoder();
    let sampling = Sampling {
        max_new_tokens: 32,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop: Vec::new(),
    };
    for case in cases() {
        let got = d.model.generate(&u32s(&case["ids"]), &sampling).unwrap();
        assert_eq!(got, u32s(&case["greedy"]), "{}", case["name"]);
    }
}
