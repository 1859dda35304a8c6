//! Every trainable path carries gradients: a finite-difference check in f64 through a tiny
//! random encoder with pooler and head, covering each parameter kind.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use distillery_models::{ForwardOptions, Kernels};

/// A scalar that depends on every output the losses read: logits, every hidden state, Q and K.
fn objective(model: &distillery_models::BertModel, weights: &[Tensor]) -> Tensor {
    let (ids, types, mask) = common::tiny_batch();
    let out = model
        .forward(&ids, Some(&types), &mask, &ForwardOptions::default())
        .unwrap();
    let mut total = (out.logits.as_ref().unwrap() * &weights[0])
        .unwrap()
        .sum_all()
        .unwrap();
    for (h, w) in out.hidden_states.iter().zip(&weights[1..]) {
        total = (total + (h * w).unwrap().sum_all().unwrap()).unwrap();
    }
    let att = &out.attentions[1];
    total = (total + att.q().unwrap().sqr().unwrap().sum_all().unwrap()).unwrap();
    (total + att.k().unwrap().sum_all().unwrap()).unwrap()
}

#[test]
fn finite_differences_match_backward_for_every_parameter_kind() {
    // f64: the fused ops fall back to their references here; their own gradients are compared
    // with the references in f32 by `fused_and_reference_kernels_agree_on_gradients`.
    let model = common::tiny_model(&["a", "b", "c"], 11, DType::F64);
    let dev = Device::Cpu;
    let mut weights = vec![Tensor::randn(0f64, 1.0, (2, 3), &dev).unwrap()];
    for _ in 0..=model.config.num_hidden_layers {
        weights.push(Tensor::randn(0f64, 1.0, (2, 6, 16), &dev).unwrap());
    }
    let loss = objective(&model, &weights);
    let grads = loss.backward().unwrap();
    let vars: Vec<(String, Var)> = {
        let data = model.varmap().unwrap().data().lock().unwrap();
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    // Every parameter receives a gradient (the position rows past seq 6 legitimately get zeros).
    assert_eq!(vars.len(), model.named_tensors().len());
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(norm > 0.0, "{name} gradient is zero");
    }
    let kinds = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.1.attention.self.query.weight",
        "encoder.layer.1.attention.self.query.bias",
        "encoder.layer.1.attention.self.key.weight",
        "encoder.layer.0.attention.self.value.weight",
        "encoder.layer.0.attention.output.dense.weight",
        "encoder.layer.2.attention.output.LayerNorm.weight",
        "encoder.layer.2.attention.output.LayerNorm.bias",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.2.output.dense.weight",
        "encoder.layer.2.output.dense.bias",
        "encoder.layer.1.output.LayerNorm.weight",
        "encoder.layer.1.output.LayerNorm.bias",
        "pooler.dense.weight",
        "classifier.weight",
        "classifier.bias",
    ];
    let eps = 1e-6;
    for kind in kinds {
        let (_, var) = vars.iter().find(|(n, _)| n == kind).unwrap();
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let shape = var.as_tensor().shape().clone();
        // Probe the entries with the largest analytic gradient plus a fixed few.
        let mut idx: Vec<usize> = (0..analytic.len()).collect();
        idx.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
        idx.truncate(3);
        idx.push(analytic.len() / 2);
        for i in idx {
            let mut plus = original.clone();
            plus[i] += eps;
            var.set(&Tensor::from_vec(plus, &shape, &dev).unwrap())
                .unwrap();
            let lp = objective(&model, &weights).to_scalar::<f64>().unwrap();
            let mut minus = original.clone();
            minus[i] -= eps;
            var.set(&Tensor::from_vec(minus, &shape, &dev).unwrap())
                .unwrap();
            let lm = objective(&model, &weights).to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(original.clone(), &shape, &dev).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let err = (fd - analytic[i]).abs();
            assert!(
                err <= 1e-5 * fd.abs().max(1.0),
                "{kind}[{i}]: finite difference {fd} vs backward {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn candle_fused_ops_still_drop_gradients_which_is_why_the_model_avoids_them() {
    // Documents the candle trap (FIXTURES.md); when it changes, revisit `Kernels`.
    let x = Var::new(&[[0.5f32, -1.0, 2.0]], &Device::Cpu).unwrap();
    let w = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let y = candle_nn::ops::layer_norm(x.as_tensor(), w.as_tensor(), &b, 1e-5).unwrap();
    let s = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    let grads = (y.sum_all().unwrap() + s.sqr().unwrap().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(w.as_tensor()).is_none() && grads.get(x.as_tensor()).is_none());
}

/// In eval and in training mode (dropout on hidden states and attention probabilities, which
/// the fused path applies inside its attention block at the same mask indices).
#[test]
fn fused_and_reference_kernels_agree_on_gradients() {
    for opts in [
        ForwardOptions::default(),
        ForwardOptions {
            train: true,
            seed: 41,
            ..Default::default()
        },
    ] {
        fused_and_reference_agree(&opts);
    }
}

fn fused_and_reference_agree(opts: &ForwardOptions) {
    let model = common::tiny_model(&["a", "b", "c"], 12, DType::F32);
    assert!(model.config.attention_probs_dropout_prob > 0.0);
    let (ids, types, mask) = common::tiny_batch();
    let grads = |k: Kernels| {
        let out = model
            .forward_with(&ids, Some(&types), &mask, opts, k)
            .unwrap();
        let loss = (out
            .logits
            .as_ref()
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            + out.last_hidden_state().sin().unwrap().sum_all().unwrap())
        .unwrap();
        loss.backward().unwrap()
    };
    let (gf, gr) = (grads(Kernels::Fused), grads(Kernels::Reference));
    let data = model.varmap().unwrap().data().lock().unwrap();
    for (name, var) in data.iter() {
        let a = gf
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("fused: {name} has no gradient"));
        let b = gr.get(var.as_tensor()).unwrap();
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-3) as f64;
        assert!(
            common::max_abs_diff(a, b) <= 1e-4 * scale,
            "{name} ({opts:?}): {} (scale {scale})",
            common::max_abs_diff(a, b)
        );
    }
}
