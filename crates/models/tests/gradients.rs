//! Every trainable path carries gradients: a finite-difference check in f64 through a tiny
//! random encoder with pooler and head, of every parameter, in eval mode and in training mode
//! (dropout on hidden states, attention probabilities and the head's input; the masks are a
//! function of the seed, so the objective is deterministic and finite differences apply).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor, Var};
use distillery_models::rng::SplitMix64;
use distillery_models::{BertModel, ForwardOptions, Kernels};

/// Training mode with a fixed dropout seed.
const TRAIN: ForwardOptions = ForwardOptions {
    train: true,
    seed: 29,
    attention_maps: false,
};

/// Seed of everything random in the finite-difference test (weights, parameter noise, probes).
const SEED: u64 = 0x5eed_f1d1;

/// A seeded standard-normal f64 tensor times `std` (candle's CPU RNG cannot be seeded).
fn seeded_normal(rng: &mut SplitMix64, shape: &[usize], std: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A scalar that depends on every output the losses read: logits, every hidden state, Q and K.
fn objective(model: &BertModel, weights: &[Tensor], opts: &ForwardOptions) -> Tensor {
    let (ids, types, mask) = common::tiny_batch();
    let out = model.forward(&ids, Some(&types), &mask, opts).unwrap();
    let mut total = (out.logits.as_ref().unwrap() * &weights[0])
        .unwrap()
        .sum_all()
        .unwrap();
    for (h, w) in out.hidden_states.iter().zip(&weights[1..]) {
        total = (total + (h * w).unwrap().sum_all().unwrap()).unwrap();
    }
    let att = &out.attentions[READ_LAYER];
    total = (total + att.q().unwrap().sqr().unwrap().sum_all().unwrap()).unwrap();
    (total + att.k().unwrap().sum_all().unwrap()).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// The layer whose K (and Q) the objective reads.
const READ_LAYER: usize = 1;

/// Whether the parameter's gradient is zero in exact arithmetic: a key bias shifts all of a
/// query's scores by the same amount, which the softmax cancels, so it only matters where the
/// objective reads K itself.
fn zero_by_invariance(name: &str) -> bool {
    name.ends_with(".attention.self.key.bias")
        && name != format!("encoder.layer.{READ_LAYER}.attention.self.key.bias")
}

/// The rows of an embedding table that the batch reads, from the batch itself (not from the
/// gradient, so that a row whose gradient is dropped is still probed); `None` for the other
/// parameters, all of whose rows are live.
fn live_rows(name: &str) -> Option<BTreeSet<usize>> {
    let (ids, types, _) = common::tiny_batch();
    let set = |t: &Tensor| -> BTreeSet<usize> {
        let v = t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        v.into_iter().map(|x| x as usize).collect()
    };
    match name {
        // The padding id 0 is included: the objective reads the padded positions' hidden states.
        "embeddings.word_embeddings.weight" => Some(set(&ids)),
        "embeddings.token_type_embeddings.weight" => Some(set(&types)),
        "embeddings.position_embeddings.weight" => Some((0..ids.dim(1).unwrap()).collect()),
        _ => None,
    }
}

/// The flat indices to probe in a parameter of `shape`: the largest analytic gradient, then for
/// an embedding table one seeded column in every live row, otherwise 5 seeded entries.
fn probes(name: &str, shape: &[usize], analytic: &[f64], rng: &mut SplitMix64) -> Vec<usize> {
    let cols = if shape.len() == 2 { shape[1] } else { 1 };
    let below = |rng: &mut SplitMix64, n: usize| (rng.next_u64() % n as u64) as usize;
    let largest = (0..analytic.len())
        .max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()))
        .unwrap();
    let mut idx = vec![largest];
    match live_rows(name) {
        Some(rows) => {
            for r in rows {
                let i = r * cols + below(rng, cols);
                if i != largest {
                    idx.push(i);
                }
            }
        }
        None => {
            while idx.len() < 6.min(analytic.len()) {
                let i = below(rng, analytic.len());
                if !idx.contains(&i) {
                    idx.push(i);
                }
            }
        }
    }
    idx
}

/// Parameters sorted by name.
fn parameters(model: &BertModel) -> Vec<(String, Var)> {
    let data = model.varmap().unwrap().data().lock().unwrap();
    let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn finite_differences_match_backward_for_every_parameter_in_eval_and_training() {
    // f64: the fused ops fall back to their references here; their own gradients are compared
    // with the references in f32 by `fused_and_reference_kernels_agree_on_gradients`.
    let model = common::tiny_model(&["a", "b", "c"], 11, DType::F64);
    assert!(
        model.config.hidden_dropout_prob > 0.0 && model.config.attention_probs_dropout_prob > 0.0
    );
    let vars = parameters(&model);
    assert_eq!(vars.len(), model.named_tensors().len());
    let mut rng = SplitMix64::new(SEED);
    // Move off the initialisation (zero biases, unit layer-norm weights, a zero padding row),
    // where a backward that forgets a factor of the weight or a term of the bias still passes.
    for (_, var) in &vars {
        let noise = seeded_normal(&mut rng, var.as_tensor().dims(), 0.1);
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    let (_, seq) = common::tiny_batch().0.dims2().unwrap();
    let mut weights = vec![seeded_normal(&mut rng, &[2, 3], 1.0)];
    for _ in 0..=model.config.num_hidden_layers {
        weights.push(seeded_normal(
            &mut rng,
            &[2, seq, model.config.hidden_size],
            1.0,
        ));
    }

    // Training mode is a deterministic function of the parameters: the same seed gives the same
    // value bit for bit (else finite differences would measure mask changes), dropout is really
    // on (the value differs from eval mode), and the masks follow the seed.
    let train = scalar(&objective(&model, &weights, &TRAIN));
    assert_eq!(train, scalar(&objective(&model, &weights, &TRAIN)));
    assert_ne!(
        train,
        scalar(&objective(&model, &weights, &ForwardOptions::default()))
    );
    let other_seed = ForwardOptions {
        seed: TRAIN.seed + 1,
        ..TRAIN
    };
    assert_ne!(train, scalar(&objective(&model, &weights, &other_seed)));

    for opts in [ForwardOptions::default(), TRAIN] {
        check_every_parameter(&model, &vars, &weights, &opts);
    }
}

fn check_every_parameter(
    model: &BertModel,
    vars: &[(String, Var)],
    weights: &[Tensor],
    opts: &ForwardOptions,
) {
    let dev = Device::Cpu;
    let grads = objective(model, weights, opts).backward().unwrap();
    let mode = if opts.train { "train" } else { "eval" };
    let eps = 1e-6;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} ({mode}) has no gradient"));
        let analytic = flat(g);
        let shape = var.as_tensor().dims().to_vec();
        let norm = analytic.iter().map(|x| x * x).sum::<f64>().sqrt();
        if zero_by_invariance(name) {
            assert!(
                norm < 1e-12,
                "{name} ({mode}): gradient {norm} should vanish"
            );
        } else {
            assert!(norm > 1e-6, "{name} ({mode}): gradient is zero ({norm})");
        }
        // An embedding table's gradient is non-zero on every row the batch reads and exactly
        // zero on every other row.
        if let Some(rows) = live_rows(name) {
            for (r, row) in analytic.chunks(shape[1]).enumerate() {
                let zero = row.iter().all(|&x| x == 0.0);
                assert_eq!(
                    zero,
                    !rows.contains(&r),
                    "{name} ({mode}) row {r}: gradient {row:?}, live rows {rows:?}"
                );
            }
        }
        let original = flat(var.as_tensor());
        let mut rng = SplitMix64::derive(SEED ^ u64::from(opts.train), name);
        for i in probes(name, &shape, &analytic, &mut rng) {
            let at = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, shape.as_slice(), &dev).unwrap())
                    .unwrap();
                scalar(&objective(model, weights, opts))
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), shape.as_slice(), &dev).unwrap())
                .unwrap();
            let err = (fd - analytic[i]).abs();
            assert!(
                err <= 1e-5 * fd.abs().max(1.0),
                "{name}[{i}] ({mode}): finite difference {fd} vs backward {}",
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
        let largest = |g: &Tensor| {
            g.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        if name.ends_with(".attention.self.key.bias") {
            // This objective does not read K, and the softmax cancels a key bias: both
            // gradients are rounding noise (~1e-7), which a comparison relative to the 1e-3
            // floor below would hold to 1e-7.
            for (which, g) in [("fused", a), ("reference", b)] {
                assert!(
                    largest(g) <= 1e-5,
                    "{name} ({opts:?}): {which} gradient {} should vanish",
                    largest(g)
                );
            }
            continue;
        }
        let scale = largest(b).max(1e-3) as f64;
        assert!(
            common::max_abs_diff(a, b) <= 1e-4 * scale,
            "{name} ({opts:?}): {} (scale {scale})",
            common::max_abs_diff(a, b)
        );
    }
}
