//! Forward behaviour, save/load round trips, students and loading errors on tiny models.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use distillery_models::{
    load_model, save_model, student_from_teacher, student_from_teacher_spec, BertConfig,
    ForwardOptions, Kernels, LoadOptions, StudentSpec,
};

fn forward(
    model: &distillery_models::BertModel,
    opts: &ForwardOptions,
) -> distillery_models::ModelOutput {
    let (ids, types, mask) = common::tiny_batch();
    model.forward(&ids, Some(&types), &mask, opts).unwrap()
}

#[test]
fn output_has_every_intermediate_with_the_documented_shapes() {
    let model = common::tiny_model(&["x", "y"], 1, DType::F32);
    let out = forward(
        &model,
        &ForwardOptions {
            attention_maps: true,
            ..Default::default()
        },
    );
    assert_eq!(out.hidden_states.len(), 4);
    for h in &out.hidden_states {
        assert_eq!(h.dims(), [2, 6, 16]);
    }
    assert_eq!(out.attentions.len(), 3);
    for a in &out.attentions {
        for t in [&a.query, &a.key, &a.value] {
            assert_eq!(t.dims(), [12, 16]);
        }
        for t in [a.q(), a.k(), a.v()] {
            assert_eq!(t.unwrap().dims(), [2, 4, 6, 4]);
        }
        let probs = a.probs.as_ref().unwrap();
        assert_eq!(probs.dims(), [2, 4, 6, 6]);
        // Rows sum to one and padded keys of the second sequence get no mass.
        let sums = probs
            .sum(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let padded = probs.narrow(0, 1, 1).unwrap().narrow(3, 3, 3).unwrap();
        assert_eq!(
            padded
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // Scores are q·kᵀ/√d plus the mask bias.
        let s = a.q().unwrap().matmul(&a.k().unwrap().t().unwrap()).unwrap() / 2.0;
        let diff = common::max_abs_diff(
            &s.unwrap().narrow(0, 0, 1).unwrap(),
            &a.scores.as_ref().unwrap().narrow(0, 0, 1).unwrap(),
        );
        assert!(diff < 1e-5, "{diff}");
    }
    assert_eq!(out.pooled.as_ref().unwrap().dims(), [2, 16]);
    assert_eq!(out.logits.as_ref().unwrap().dims(), [2, 2]);
    let lean = forward(&model, &ForwardOptions::default());
    assert!(lean.attentions[0].scores.is_none() && lean.attentions[0].probs.is_none());
}

#[test]
fn padding_does_not_change_the_tokens_it_follows() {
    let model = common::tiny_model(&[], 2, DType::F32);
    let dev = Device::Cpu;
    let short = Tensor::new(&[[2u32, 13, 3]], &dev).unwrap();
    let out1 = model
        .forward(
            &short,
            None,
            &short.ones_like().unwrap(),
            &Default::default(),
        )
        .unwrap();
    let (ids, _, mask) = common::tiny_batch();
    let out2 = model
        .forward(&ids, None, &mask, &Default::default())
        .unwrap();
    let padded_row = out2
        .last_hidden_state()
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 0, 3)
        .unwrap();
    assert!(common::max_abs_diff(out1.last_hidden_state(), &padded_row) < 1e-5);
}

#[test]
fn fused_and_reference_kernels_agree() {
    let model = common::tiny_model(&["x", "y"], 5, DType::F32);
    let (ids, types, mask) = common::tiny_batch();
    let o = ForwardOptions::default();
    let a = model
        .forward_with(&ids, Some(&types), &mask, &o, Kernels::Fused)
        .unwrap();
    let b = model
        .forward_with(&ids, Some(&types), &mask, &o, Kernels::Reference)
        .unwrap();
    for (x, y) in a.hidden_states.iter().zip(&b.hidden_states) {
        assert!(common::max_abs_diff(x, y) < 1e-5);
    }
    assert!(common::max_abs_diff(a.logits.as_ref().unwrap(), b.logits.as_ref().unwrap()) < 1e-5);
}

#[test]
fn dropout_follows_the_train_flag_and_the_seed() {
    let model = common::tiny_model(&["x", "y"], 6, DType::F32);
    let eval = forward(&model, &ForwardOptions::default());
    let t1 = forward(
        &model,
        &ForwardOptions {
            train: true,
            seed: 9,
            ..Default::default()
        },
    );
    let t1b = forward(
        &model,
        &ForwardOptions {
            train: true,
            seed: 9,
            ..Default::default()
        },
    );
    let t2 = forward(
        &model,
        &ForwardOptions {
            train: true,
            seed: 10,
            ..Default::default()
        },
    );
    assert_eq!(
        common::max_abs_diff(t1.last_hidden_state(), t1b.last_hidden_state()),
        0.0
    );
    assert!(common::max_abs_diff(t1.last_hidden_state(), t2.last_hidden_state()) > 1e-3);
    assert!(common::max_abs_diff(t1.last_hidden_state(), eval.last_hidden_state()) > 1e-3);
}

#[test]
fn random_students_are_seeded_and_scaled_like_bert() {
    let a = common::tiny_model(&[], 42, DType::F32);
    let b = common::tiny_model(&[], 42, DType::F32);
    let c = common::tiny_model(&[], 43, DType::F32);
    for ((n, x), (_, y)) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
        assert_eq!(common::max_abs_diff(x, y), 0.0, "{n}");
    }
    assert!(common::max_abs_diff(&a.layers[0].query.weight, &c.layers[0].query.weight) > 0.0);
    // initializer_range is 0.2 in the tiny config; word embeddings' padding row is zero.
    let w = a
        .embeddings
        .word
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(w[..16].iter().all(|&x| x == 0.0));
    let rest = &w[16..];
    let std = (rest.iter().map(|x| x * x).sum::<f32>() / rest.len() as f32).sqrt();
    assert!((std - 0.2).abs() < 0.02, "{std}");
    assert!(a.layers[1]
        .attn_norm
        .weight
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 1.0));
    assert!(a.layers[1]
        .query
        .bias
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
}

#[test]
fn save_then_load_reproduces_outputs_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for labels in [&[][..], &["neg", "pos"][..]] {
        let model = common::tiny_model(labels, 7, DType::F32);
        let tok_src = tempfile::tempdir().unwrap();
        common::write_tiny_tokenizer(tok_src.path());
        let out_dir = dir.path().join(format!("m{}", labels.len()));
        save_model(&model, &out_dir, Some(tok_src.path())).unwrap();
        assert!(out_dir.join("tokenizer.json").is_file());
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap())
                .unwrap();
        let arch = if labels.is_empty() {
            "BertModel"
        } else {
            "BertForSequenceClassification"
        };
        assert_eq!(cfg["architectures"][0], arch);
        let loaded = load_model(&out_dir, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.config, model.config);
        let a = forward(&model, &ForwardOptions::default());
        let b = forward(&loaded, &ForwardOptions::default());
        for (x, y) in a.hidden_states.iter().zip(&b.hidden_states) {
            assert_eq!(common::max_abs_diff(x, y), 0.0);
        }
        let loaded_trainable = load_model(
            &out_dir,
            &LoadOptions {
                trainable: true,
                ..Default::default()
            },
        )
        .unwrap();
        let c = forward(&loaded_trainable, &ForwardOptions::default());
        assert_eq!(
            common::max_abs_diff(a.last_hidden_state(), c.last_hidden_state()),
            0.0
        );
        if !labels.is_empty() {
            assert_eq!(
                common::max_abs_diff(a.logits.as_ref().unwrap(), c.logits.as_ref().unwrap()),
                0.0
            );
            // HF names: encoder under `bert.`, head at top level.
            let st =
                candle_core::safetensors::load(out_dir.join("model.safetensors"), &Device::Cpu)
                    .unwrap();
            assert!(st.contains_key("bert.encoder.layer.0.attention.self.query.weight"));
            assert!(st.contains_key("classifier.weight"));
        }
    }
}

#[test]
fn a_student_from_teacher_layers_reproduces_those_layers() {
    let teacher = common::tiny_model(&["x", "y"], 8, DType::F32);
    let student = student_from_teacher(&teacher, &[0, 1], 1).unwrap();
    assert!(student.is_trainable());
    assert_eq!(student.config.num_hidden_layers, 2);
    let t = forward(&teacher, &ForwardOptions::default());
    let s = forward(&student, &ForwardOptions::default());
    for l in 0..=2 {
        assert_eq!(
            common::max_abs_diff(&t.hidden_states[l], &s.hidden_states[l]),
            0.0,
            "layer {l}"
        );
    }
    let skip = student_from_teacher(&teacher, &[0, 2], 1).unwrap();
    assert_eq!(
        common::max_abs_diff(
            &skip.layers[1].query.weight,
            &teacher.layers[2].query.weight
        ),
        0.0
    );
    assert_eq!(
        common::max_abs_diff(
            &skip.classifier.as_ref().unwrap().weight,
            &teacher.classifier.as_ref().unwrap().weight
        ),
        0.0
    );

    let err = student_from_teacher(&teacher, &[0, 3], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer index 3") && err.contains("0..3"),
        "{err}"
    );
    let narrow = StudentSpec {
        layers: 2,
        hidden: 8,
        heads: 4,
        intermediate: 24,
    };
    let err = student_from_teacher_spec(&teacher, &narrow, &[0, 1], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("width mismatch"), "{err}");
}

#[test]
fn loading_errors_name_the_file_or_tensor() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nope");
    let e = load_model(&missing, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("not a directory"), "{e}");

    let only_bin = root.path().join("bin");
    std::fs::create_dir_all(&only_bin).unwrap();
    std::fs::write(only_bin.join("pytorch_model.bin"), b"x").unwrap();
    std::fs::write(only_bin.join("config.json"), b"{}").unwrap();
    let e = load_model(&only_bin, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pytorch_model.bin") && e.contains("model.safetensors"),
        "{e}"
    );

    let model = common::tiny_model(&[], 7, DType::F32);
    let good = root.path().join("good");
    save_model(&model, &good, None).unwrap();

    let no_cfg = root.path().join("nocfg");
    std::fs::create_dir_all(&no_cfg).unwrap();
    std::fs::copy(
        good.join("model.safetensors"),
        no_cfg.join("model.safetensors"),
    )
    .unwrap();
    let e = load_model(&no_cfg, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");

    // A tensor missing from the file, and one with the wrong shape.
    let mut tensors =
        candle_core::safetensors::load(good.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("encoder.layer.1.attention.self.key.bias");
    let broken = root.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(good.join("config.json"), broken.join("config.json")).unwrap();
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    let e = load_model(&broken, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("encoder.layer.1.attention.self.key.bias")
            && e.contains("[16]"),
        "{e}"
    );

    tensors.insert(
        "encoder.layer.1.attention.self.key.bias".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    let e = load_model(&broken, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("has shape [5], expected [16]"), "{e}");

    std::fs::write(broken.join("config.json"), br#"{"hidden_size": 16}"#).unwrap();
    let e = load_model(&broken, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json") && e.contains("vocab_size"), "{e}");
    std::fs::write(broken.join("config.json"), b"{not json").unwrap();
    let e = load_model(&broken, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn config_from_file_rejects_bad_heads_with_the_field_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut json = common::tiny_config(&[]).to_hf_json();
    json["num_attention_heads"] = 5.into();
    let p = dir.path().join("config.json");
    std::fs::write(&p, json.to_string()).unwrap();
    let e = BertConfig::from_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("num_attention_heads"),
        "{e}"
    );
}

#[test]
fn a_new_head_keeps_the_encoder_and_adds_seeded_logits() {
    let encoder = common::tiny_model(&[], 30, DType::F32);
    let labels = vec!["neg".to_string(), "pos".to_string(), "mixed".to_string()];
    let a = distillery_models::with_new_head(&encoder, &labels, 5).unwrap();
    let b = distillery_models::with_new_head(&encoder, &labels, 5).unwrap();
    assert_eq!(a.config.labels, labels);
    let (oa, oe) = (
        forward(&a, &ForwardOptions::default()),
        forward(&encoder, &ForwardOptions::default()),
    );
    assert_eq!(
        common::max_abs_diff(oa.last_hidden_state(), oe.last_hidden_state()),
        0.0
    );
    assert_eq!(oa.logits.as_ref().unwrap().dims(), [2, 3]);
    let ob = forward(&b, &ForwardOptions::default());
    assert_eq!(
        common::max_abs_diff(oa.logits.as_ref().unwrap(), ob.logits.as_ref().unwrap()),
        0.0
    );
    assert!(distillery_models::with_new_head(&encoder, &[], 5).is_err());
}
