//! The real check: distillery-models reproduces all-MiniLM-L6-v2 as computed by Python
//! `transformers` (values in tests/data/minilm_reference.json, made by
//! scripts/reference/minilm_reference.py). Needs the fixture: `scripts/fetch-fixtures.sh`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::{DType, Device};
use distillery_models::{
    load_model, mean_pool, ForwardOptions, Kernels, LoadOptions, TextInput, TextTokenizer,
};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("DISTILLERY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "fixture missing: {} — run scripts/fetch-fixtures.sh",
        dir.display()
    );
    dir
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn reproduces_transformers_hidden_states_and_mean_pooled_embeddings() {
    let dir = fixture_dir();
    let reference: Value =
        serde_json::from_str(include_str!("data/minilm_reference.json")).unwrap();
    let examples = reference["examples"].as_array().unwrap();
    let stride = reference["dim_stride"].as_u64().unwrap() as usize;
    let tok = TextTokenizer::from_file(
        &dir.join("tokenizer.json"),
        reference["max_len"].as_u64().unwrap() as usize,
    )
    .unwrap();
    let inputs: Vec<TextInput> = examples
        .iter()
        .map(|e| match e.get("pair") {
            Some(p) => TextInput::Pair(
                e["text"].as_str().unwrap().into(),
                p.as_str().unwrap().into(),
            ),
            None => TextInput::Single(e["text"].as_str().unwrap().into()),
        })
        .collect();
    let batch = tok.encode_batch(&inputs).unwrap();
    let t = batch.to_tensors(&Device::Cpu).unwrap();

    let model = load_model(&dir, &LoadOptions::default()).unwrap();
    for kernels in [Kernels::Fused, Kernels::Reference] {
        let out = model
            .forward_with(
                &t.input_ids,
                Some(&t.token_type_ids),
                &t.attention_mask,
                &ForwardOptions::default(),
                kernels,
            )
            .unwrap();
        let pooled = mean_pool(out.last_hidden_state(), &out.mask)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let mut worst = 0f64;
        for (i, ex) in examples.iter().enumerate() {
            let ids: Vec<u32> = ex["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let n = ids.len();
            assert_eq!(
                &batch.input_ids[i * batch.seq..i * batch.seq + n],
                &ids[..],
                "token ids of example {i}"
            );
            let types: Vec<u32> = ex["token_type_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                &batch.token_type_ids[i * batch.seq..i * batch.seq + n],
                &types[..]
            );

            let ours = pooled.get(i).unwrap().to_vec1::<f64>().unwrap();
            for (a, b) in ours.iter().zip(floats(&ex["mean_pooled"])) {
                worst = worst.max((a - b).abs());
                assert!(
                    (a - b).abs() <= 1e-4,
                    "mean-pooled embedding of example {i}: {a} vs {b}"
                );
            }
            for (l, layer) in ex["hidden_states"].as_array().unwrap().iter().enumerate() {
                let h = out.hidden_states[l]
                    .get(i)
                    .unwrap()
                    .narrow(0, 0, n)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let rows = h.to_vec2::<f64>().unwrap();
                for (tkn, (row, want)) in rows
                    .iter()
                    .zip(layer["sampled"].as_array().unwrap())
                    .enumerate()
                {
                    for (k, w) in floats(want).into_iter().enumerate() {
                        let got = row[k * stride];
                        worst = worst.max((got - w).abs());
                        assert!(
                            (got - w).abs() <= 1e-4,
                            "example {i} layer {l} token {tkn} dim {}: {got} vs {w}",
                            k * stride
                        );
                    }
                }
                let sums = floats(&layer["sum"]);
                let sumsqs = floats(&layer["sumsq"]);
                for (tkn, row) in rows.iter().enumerate() {
                    let s: f64 = row.iter().sum();
                    let ss: f64 = row.iter().map(|x| x * x).sum();
                    // Sums over 384 dims: 384 × 1e-4 would be loose; errors here are ~1e-5.
                    assert!(
                        (s - sums[tkn]).abs() <= 1e-3,
                        "example {i} layer {l} token {tkn} sum {s} vs {}",
                        sums[tkn]
                    );
                    assert!(
                        (ss - sumsqs[tkn]).abs() <= 1e-5 * sumsqs[tkn].max(1.0),
                        "example {i} layer {l} token {tkn} sumsq"
                    );
                }
            }
        }
        eprintln!("{kernels:?}: worst absolute difference {worst:.2e}");
    }
}
