//! The LLaMA-family decoder against Python `transformers` (scripts/reference/llama_reference.py):
//! a LLaMA with grouped-query attention, untied embeddings and Llama-3 rope scaling, and a
//! Qwen2 with q/k/v biases and tied embeddings, on a batch with right and left padding.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use distillery_models::llama::{
    llama_from_layers, load_llama, next_token_nll, random_llama, save_llama, KvCache, LlamaConfig,
    LlamaModel, LlamaShape, RopeScaling, Sampling,
};
use distillery_models::LoadOptions;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/llama")
        .join(name)
}

fn ints(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(rows: &[Vec<u32>]) -> Tensor {
    let (b, l) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, l), &Device::Cpu).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits and the final hidden state at every non-padding position within 1e-4 of transformers',
/// and the sum over all hidden states (transformers' convention: the last one after the norm).
fn check(name: &str) -> LlamaModel {
    let model = load_llama(&data(name), &LoadOptions::default()).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(data(name).join("reference.json")).unwrap())
            .unwrap();
    let ids = tensor(&ints(&reference["input_ids"]));
    let mask = tensor(&ints(&reference["attention_mask"]));
    let out = model.forward(&ids, &mask).unwrap();
    let layers = model.config.num_hidden_layers;
    assert_eq!(out.hidden_states.len(), layers + 1);
    let rows = reference["rows"].as_array().unwrap();
    assert!(rows.len() >= 20, "{name}: only {} rows", rows.len());
    let (mut worst_logit, mut worst_hidden) = (0f32, 0f32);
    for r in rows {
        let (b, i) = (
            r["batch"].as_u64().unwrap() as usize,
            r["position"].as_u64().unwrap() as usize,
        );
        let at = |t: &Tensor| t.get(b).unwrap().get(i).unwrap().to_vec1::<f32>().unwrap();
        let want = floats(&r["logits"]);
        assert!(
            want.iter().map(|x| x.abs()).fold(0.0, f32::max) > 1.0,
            "weak reference"
        );
        worst_logit = worst_logit.max(max_diff(&at(out.token_logits.as_ref().unwrap()), &want));
        worst_hidden = worst_hidden.max(max_diff(
            &at(out.last_hidden_state()),
            &floats(&r["last_hidden"]),
        ));
        let sum: f32 = out
            .hidden_states
            .iter()
            .map(|h| at(h).iter().sum::<f32>())
            .sum();
        let want_sum = r["hidden_sum"].as_f64().unwrap() as f32;
        assert!(
            (sum - want_sum).abs() < 1e-4 * want_sum.abs().max(10.0),
            "{name} [{b}, {i}]: hidden sum {sum} vs {want_sum}"
        );
    }
    assert!(worst_logit < 1e-4, "{name}: logits differ by {worst_logit}");
    // Every block's attention probabilities, rebuilt from the rotated Q and K it returns (K
    // with 2 heads for 4 query heads), against transformers' at every token query row.
    assert_eq!(out.attentions.len(), layers);
    let mut worst_att = 0f32;
    for (l, att) in out.attentions.iter().enumerate() {
        assert_eq!(att.kv_heads, model.config.num_key_value_heads);
        assert_eq!(att.k().unwrap().dims()[1], model.config.num_key_value_heads);
        let probs = att.probs_from(&out.mask, out.causal).unwrap();
        let want_l = &reference["attentions"][l];
        for b in 0..3 {
            for h in 0..model.config.num_attention_heads {
                for (i, row) in want_l[b][h].as_array().unwrap().iter().enumerate() {
                    if row.is_null() {
                        continue;
                    }
                    let got = probs.get(b).unwrap().get(h).unwrap().get(i).unwrap();
                    worst_att =
                        worst_att.max(max_diff(&got.to_vec1::<f32>().unwrap(), &floats(row)));
                }
            }
        }
    }
    assert!(
        worst_att < 1e-5,
        "{name}: attention probabilities differ by {worst_att}"
    );
    let nll = next_token_nll(out.token_logits.as_ref().unwrap(), &ids, &mask).unwrap();
    for (row, want) in nll.iter().zip(reference["nll"].as_array().unwrap()) {
        let want = want.as_f64().unwrap();
        let got = row.nll.unwrap();
        assert!(
            (got - want).abs() < 1e-4 * want,
            "{name}: nll {got} vs {want}"
        );
    }
    // Rows of 7, 6 and 9 tokens predict 6, 5 and 8 (left padding: the first token has no
    // predecessor).
    let predicted: Vec<usize> = nll.iter().map(|r| r.predicted).collect();
    assert_eq!(predicted, [6, 5, 8]);
    assert!(
        worst_hidden < 1e-4,
        "{name}: last hidden state differs by {worst_hidden}"
    );
    model
}

#[test]
fn llama_with_gqa_untied_and_llama3_rope_matches_transformers() {
    let m = check("llama");
    let c = &m.config;
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (4, 2));
    assert!(!c.tie_word_embeddings && !c.qkv_bias);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
}

#[test]
fn qwen2_with_qkv_biases_and_tied_embeddings_matches_transformers() {
    let m = check("qwen2");
    assert!(m.config.qkv_bias && m.config.tie_word_embeddings);
    assert_eq!(m.config.rope_theta, 1e6);
}

#[test]
fn left_padding_changes_nothing_for_the_tokens() {
    let model = load_llama(&data("llama"), &LoadOptions::default()).unwrap();
    let tokens = [12u32, 13, 90, 4, 61, 8];
    let plain = model
        .forward(&tensor(&[tokens.to_vec()]), &tensor(&[vec![1; 6]]))
        .unwrap();
    let padded_ids = [vec![0, 0, 0], tokens.to_vec()].concat();
    let padded_mask = [vec![0, 0, 0], vec![1; 6]].concat();
    let right_ids = [tokens.to_vec(), vec![0, 0, 0]].concat();
    let right_mask = [vec![1; 6], vec![0, 0, 0]].concat();
    let out = model
        .forward(
            &tensor(&[padded_ids, right_ids]),
            &tensor(&[padded_mask, right_mask]),
        )
        .unwrap();
    for i in 0..6 {
        let want = plain
            .token_logits
            .as_ref()
            .unwrap()
            .get(0)
            .unwrap()
            .get(i)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let left = out
            .token_logits
            .as_ref()
            .unwrap()
            .get(0)
            .unwrap()
            .get(i + 3)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let right = out
            .token_logits
            .as_ref()
            .unwrap()
            .get(1)
            .unwrap()
            .get(i)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            max_diff(&left, &want) < 1e-5,
            "left padding moved position {i}"
        );
        assert!(
            max_diff(&right, &want) < 1e-5,
            "right padding moved position {i}"
        );
    }
    // A fully padded query row is finite (uniform attention), not NaN.
    let all = out
        .token_logits
        .as_ref()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(all.iter().all(|x| x.is_finite()));
}

#[test]
fn configs_that_cannot_load_name_the_field() {
    let base = r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2"#;
    let ok = LlamaConfig::from_json(&format!("{base}}}")).unwrap();
    assert_eq!(ok.head_dim, 4);
    assert_eq!(ok.inv_freq(), [1.0, 0.01]);
    let err = |extra: &str, field: &str| {
        let e = LlamaConfig::from_json(&format!("{base}{extra}}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e}");
    };
    err(r#", "model_type": "gpt2""#, "model_type");
    err(r#", "num_key_value_heads": 3"#, "num_key_value_heads");
    err(r#", "hidden_act": "gelu""#, "hidden_act");
    err(
        r#", "rope_scaling": {"rope_type": "yarn", "factor": 2.0}"#,
        "rope_scaling",
    );
    err(
        r#", "rope_scaling": {"rope_type": "llama3", "factor": 2.0}"#,
        "low_freq_factor",
    );
    err(r#", "vocab_size": 0"#, "vocab_size");
}

fn logits(m: &LlamaModel) -> Vec<f32> {
    let ids = tensor(&[vec![5, 17, 33, 2, 71], vec![0, 0, 12, 13, 90]]);
    let mask = tensor(&[vec![1; 5], vec![0, 0, 1, 1, 1]]);
    m.forward(&ids, &mask)
        .unwrap()
        .token_logits
        .as_ref()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_saved_model_loads_back_bit_for_bit() {
    for name in ["llama", "qwen2"] {
        let m = load_llama(&data(name), &LoadOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_llama(&m, dir.path(), None).unwrap();
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            assert!(dir.path().join(f).is_file(), "{name}: no {f}");
        }
        let back = load_llama(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(back.config, m.config, "{name}");
        assert_eq!(logits(&back), logits(&m), "{name}");
        // Tied embeddings stay tied: no lm_head.weight is written.
        let names: Vec<String> = back.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !m.config.tie_word_embeddings
        );
    }
}

#[test]
fn students_from_teacher_layers_and_from_a_seeded_shape() {
    let teacher = load_llama(&data("llama"), &LoadOptions::default()).unwrap();
    // Every layer: the teacher itself.
    let (all, vars) = llama_from_layers(&teacher, &[0, 1], true).unwrap();
    assert_eq!(logits(&all), logits(&teacher));
    assert_eq!(
        vars.unwrap().all_vars().len(),
        teacher.named_tensors().len()
    );
    // One layer: the teacher's second block under the student's first name.
    let (one, _) = llama_from_layers(&teacher, &[1], false).unwrap();
    assert_eq!(one.config.num_hidden_layers, 1);
    let get = |m: &LlamaModel, n: &str| {
        m.named_tensors()
            .into_iter()
            .find(|(x, _)| x == n)
            .unwrap()
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(
        get(&one, "model.layers.0.self_attn.k_proj.weight"),
        get(&teacher, "model.layers.1.self_attn.k_proj.weight")
    );
    for bad in [&[][..], &[1, 0], &[2]] {
        assert!(llama_from_layers(&teacher, bad, false).is_err(), "{bad:?}");
    }
    let shape = LlamaShape {
        layers: 1,
        hidden: 16,
        heads: 4,
        kv_heads: 2,
        intermediate: 24,
    };
    let dev = Device::Cpu;
    let (a, _) = random_llama(&teacher.config, &shape, 7, false, &dev).unwrap();
    let (b, _) = random_llama(&teacher.config, &shape, 7, false, &dev).unwrap();
    let (c, _) = random_llama(&teacher.config, &shape, 8, false, &dev).unwrap();
    assert_eq!(logits(&a), logits(&b));
    assert_ne!(logits(&a), logits(&c));
    assert_eq!((a.config.head_dim, a.config.num_key_value_heads), (4, 2));
    assert!(logits(&a).iter().all(|x| x.is_finite()));
    let odd = LlamaShape {
        hidden: 12,
        ..shape
    };
    assert!(random_llama(&teacher.config, &odd, 7, false, &dev).is_err());
}

#[test]
fn sharded_weights_load_through_the_index() {
    let src = data("qwen2");
    let m = load_llama(&src, &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    // Two shards: the first layer's tensors in one, everything else in the other.
    let (mut first, mut rest) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    let mut map = serde_json::Map::new();
    for (name, t) in m.named_tensors() {
        let (shard, file) = if name.starts_with("model.layers.0.") {
            (&mut first, "model-00001-of-00002.safetensors")
        } else {
            (&mut rest, "model-00002-of-00002.safetensors")
        };
        shard.insert(name.clone(), t);
        map.insert(name, serde_json::json!(file));
    }
    candle_core::safetensors::save(&first, dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&rest, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = load_llama(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&sharded), logits(&m));
    // A shard the index names but that is missing: one error naming it.
    std::fs::remove_file(dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    let e = load_llama(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model-00001-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name).join("reference.json")).unwrap())
        .unwrap()
}

#[test]
fn greedy_generation_on_the_kv_cache_matches_transformers() {
    for name in ["llama", "qwen2"] {
        let m = load_llama(&data(name), &LoadOptions::default()).unwrap();
        let r = reference(name);
        let prompt: Vec<u32> = ints(&serde_json::json!([r["prompt"]]))[0].clone();
        let want: Vec<u32> = ints(&serde_json::json!([r["greedy"]]))[0].clone();
        let greedy = Sampling {
            max_new_tokens: 8,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        };
        assert_eq!(m.generate(&prompt, &greedy).unwrap(), want, "{name}");
        // Stopping: the first generated token as the stop token ends after it.
        let stop = Sampling {
            stop: vec![want[0]],
            ..greedy.clone()
        };
        assert_eq!(m.generate(&prompt, &stop).unwrap(), [want[0]], "{name}");
    }
}

#[test]
fn the_kv_cache_gives_the_logits_of_a_full_forward() {
    let m = load_llama(&data("llama"), &LoadOptions::default()).unwrap();
    let tokens = [5u32, 17, 33, 2, 71, 9, 44, 60];
    let mut cache = KvCache::new();
    // The first four at once, then one at a time.
    let row = |ids: &[u32]| {
        Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let first = m.forward_cached(&row(&tokens[..4]), &mut cache).unwrap();
    let mut got = vec![first
        .get(0)
        .unwrap()
        .get(3)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()];
    for &t in &tokens[4..] {
        let z = m.forward_cached(&row(&[t]), &mut cache).unwrap();
        got.push(z.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap());
    }
    assert_eq!(cache.seen(), tokens.len());
    let full = m
        .forward(
            &row(&tokens),
            &Tensor::ones((1, tokens.len()), candle_core::DType::U32, &Device::Cpu).unwrap(),
        )
        .unwrap()
        .token_logits
        .unwrap();
    for (k, g) in got.iter().enumerate() {
        let want = full
            .get(0)
            .unwrap()
            .get(3 + k)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            max_diff(g, &want) < 1e-5,
            "position {}: {}",
            3 + k,
            max_diff(g, &want)
        );
    }
}

#[test]
fn sampling_is_seeded_and_checks_its_settings() {
    let m = load_llama(&data("llama"), &LoadOptions::default()).unwrap();
    let s = |seed: u64| Sampling {
        max_new_tokens: 12,
        temperature: 1.5,
        top_p: 0.95,
        seed,
        stop: Vec::new(),
    };
    let a = m.generate(&[5, 17], &s(1)).unwrap();
    assert_eq!(a.len(), 12);
    assert_eq!(a, m.generate(&[5, 17], &s(1)).unwrap());
    let others: Vec<Vec<u32>> = (2..6)
        .map(|seed| m.generate(&[5, 17], &s(seed)).unwrap())
        .collect();
    assert!(others.iter().any(|o| *o != a), "every seed gave {a:?}");
    assert!(a.iter().all(|&t| t < 96));
    assert!(m.generate(&[], &s(1)).is_err());
    assert!(m.generate(&[5], &Sampling { top_p: 0.0, ..s(1) }).is_err());
    assert!(m
        .generate(
            &[5],
            &Sampling {
                temperature: -1.0,
                ..s(1)
            }
        )
        .is_err());
    assert_eq!(m.eos_ids(), [2]);
}
