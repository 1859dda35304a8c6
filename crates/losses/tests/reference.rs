//! Cross-check against PyTorch: loss values, gradient norms and every gradient element for
//! formula-generated inputs (tests/data/losses_reference.json, made by
//! scripts/reference/losses_reference.py).
//!
//! Norms alone are blind to a flipped sign or a permutation, so each gradient is also compared
//! element by element (row-major), and a gradient of the wrong length fails.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use candle_core::{DType, Device, Tensor, Var};
use distillery_losses::*;
use distillery_models::LayerAttention;
use serde_json::Value;

/// Tensor number `k`: value at flat index i is `scale·sin(0.37·i + 1.3·k)`.
fn formula(shape: &[usize], k: usize, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| scale * (0.37 * i as f64 + 1.3 * k as f64).sin())
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(shape: &[usize], k: usize, scale: f64) -> Var {
    Var::from_tensor(&formula(shape, k, scale)).unwrap()
}

fn norm(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn close(name: &str, got: f64, want: &Value, tol: f64) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{name} missing"));
    assert!(
        (got - want).abs() <= tol * want.abs().max(1e-3),
        "{name}: {got} vs torch {want}"
    );
}

/// Element-wise `|got − want| ≤ atol + rtol·|want|` of a whole gradient against torch's flat
/// row-major list; a missing list, a different length or any element out of tolerance fails.
/// Every nonzero reference element must also exceed the tolerance it is checked with, so that
/// a flipped sign can never hide inside it.
fn close_all(name: &str, got: &Tensor, want: &Value, rtol: f64, atol: f64) {
    let want: Vec<f64> = want
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no reference gradient"))
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{name}: {v} is not a number"))
        })
        .collect();
    let got: Vec<f64> = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len(), "{name}: gradient length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!(
            *w == 0.0 || w.abs() > tol,
            "{name}[{i}]: reference {w} is within the tolerance {tol}: its sign is untested"
        );
        assert!(
            (g - w).abs() <= tol,
            "{name}[{i}]: {g} vs torch {w} (|diff| {:e} > {tol:e})",
            (g - w).abs()
        );
    }
}

fn attention(q: &Tensor, k: &Tensor) -> LayerAttention {
    LayerAttention::from_heads(q, k, k).unwrap()
}

/// Element-wise tolerances (`|got − want| ≤ atol + rtol·|want|`) for the f64 paths (everything
/// but the fused attention kernels): both sides compute in f64 and differ only in rounding order.
/// Observed: ≤ 1.3e-16 absolute, ≤ 8.6e-15 relative; the margin (≥ 70×) is for other SIMD
/// widths / summation orders of candle's f64 matmul, not for any real discrepancy.
const F64_RTOL: f64 = 1e-12;
const F64_ATOL: f64 = 1e-14;
/// The fused attention-KL / relation-KL kernels accumulate in f32 whatever the input dtype (the
/// loss values and norms above use 1e-5 relative for that reason), so their gradients carry f32
/// rounding. Observed: ≤ 1.8e-8 absolute on elements of 2e-4 to 0.1 (≤ 9.4e-6 relative, on a
/// small element). Every nonzero reference element of these gradients is ≥ 2e-4, far above
/// ATOL, so a sign flip or permutation cannot hide in the tolerance.
const F32_RTOL: f64 = 1e-5;
const F32_ATOL: f64 = 1e-7;

#[test]
fn losses_match_pytorch() {
    let doc: Value = serde_json::from_str(include_str!("data/losses_reference.json")).unwrap();
    let r = &doc["results"];
    let mask = Tensor::new(
        &[[1f64, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]],
        &Device::Cpu,
    )
    .unwrap();
    let (b, l, hs, ht, heads, ds, dt, c) = (2, 5, 6, 8, 2, 3, 4, 4);

    // L_hidden, MSE after a projection (f64 end to end: tight tolerance).
    let h_s = var(&[b, l, hs], 0, 1.0);
    let h_t = formula(&[b, l, ht], 1, 1.0);
    let w = var(&[ht, hs], 2, 0.3);
    let bias = var(&[ht], 3, 0.1);
    let proj = Projection::from_tensors(w.as_tensor().clone(), bias.as_tensor().clone());
    let loss = hidden_mse(h_s.as_tensor(), &h_t, &mask, Some(&proj)).unwrap();
    let g = loss.backward().unwrap();
    close(
        "hidden_mse",
        scalar(&loss),
        &r["hidden_mse"]["value"],
        1e-10,
    );
    close(
        "hidden_mse grad",
        norm(g.get(h_s.as_tensor()).unwrap()),
        &r["hidden_mse"]["grad_norm_student"],
        1e-10,
    );
    close(
        "hidden_mse grad W",
        norm(g.get(w.as_tensor()).unwrap()),
        &r["hidden_mse"]["grad_norm_projection"],
        1e-10,
    );
    close_all(
        "hidden_mse grad",
        g.get(h_s.as_tensor()).unwrap(),
        &r["hidden_mse"]["grad_student"],
        F64_RTOL,
        F64_ATOL,
    );
    close_all(
        "hidden_mse grad W",
        g.get(w.as_tensor()).unwrap(),
        &r["hidden_mse"]["grad_projection"],
        F64_RTOL,
        F64_ATOL,
    );
    close_all(
        "hidden_mse grad bias",
        g.get(bias.as_tensor()).unwrap(),
        &r["hidden_mse"]["grad_projection_bias"],
        F64_RTOL,
        F64_ATOL,
    );

    let h_s2 = var(&[b, l, ht], 4, 1.0);
    let loss = hidden_cosine(h_s2.as_tensor(), &h_t, &mask, None).unwrap();
    let g = loss.backward().unwrap();
    close(
        "hidden_cosine",
        scalar(&loss),
        &r["hidden_cosine"]["value"],
        1e-10,
    );
    close(
        "hidden_cosine grad",
        norm(g.get(h_s2.as_tensor()).unwrap()),
        &r["hidden_cosine"]["grad_norm_student"],
        1e-10,
    );
    close_all(
        "hidden_cosine grad",
        g.get(h_s2.as_tensor()).unwrap(),
        &r["hidden_cosine"]["grad_student"],
        F64_RTOL,
        F64_ATOL,
    );

    // L_att through the fused streaming kernel: it accumulates in f32, hence 1e-5.
    let q_s = var(&[b, heads, l, ds], 5, 1.0);
    let k_s = var(&[b, heads, l, ds], 6, 1.0);
    let q_t = formula(&[b, heads, l, dt], 7, 1.5);
    let k_t = formula(&[b, heads, l, dt], 8, 1.5);
    let cfg = distillery_kernels::AttentionKlConfig::for_head_dims(dt, ds);
    let loss =
        distillery_kernels::attention_kl(&q_t, &k_t, q_s.as_tensor(), k_s.as_tensor(), &mask, &cfg)
            .unwrap();
    let g = loss.backward().unwrap();
    close(
        "attention_kl",
        scalar(&loss),
        &r["attention_kl"]["value"],
        1e-5,
    );
    close(
        "attention_kl dq",
        norm(g.get(q_s.as_tensor()).unwrap()),
        &r["attention_kl"]["grad_norm_q"],
        1e-5,
    );
    close(
        "attention_kl dk",
        norm(g.get(k_s.as_tensor()).unwrap()),
        &r["attention_kl"]["grad_norm_k"],
        1e-5,
    );
    close_all(
        "attention_kl dq",
        g.get(q_s.as_tensor()).unwrap(),
        &r["attention_kl"]["grad_q"],
        F32_RTOL,
        F32_ATOL,
    );
    close_all(
        "attention_kl dk",
        g.get(k_s.as_tensor()).unwrap(),
        &r["attention_kl"]["grad_k"],
        F32_RTOL,
        F32_ATOL,
    );

    let loss = attention::score_mse(
        &attention(q_s.as_tensor(), k_s.as_tensor()),
        &attention(&q_t, &k_t),
        &mask,
    )
    .unwrap();
    let g = loss.backward().unwrap();
    close("score_mse", scalar(&loss), &r["score_mse"]["value"], 1e-10);
    close(
        "score_mse dq",
        norm(g.get(q_s.as_tensor()).unwrap()),
        &r["score_mse"]["grad_norm_q"],
        1e-10,
    );
    close(
        "score_mse dk",
        norm(g.get(k_s.as_tensor()).unwrap()),
        &r["score_mse"]["grad_norm_k"],
        1e-10,
    );
    close_all(
        "score_mse dq",
        g.get(q_s.as_tensor()).unwrap(),
        &r["score_mse"]["grad_q"],
        F64_RTOL,
        F64_ATOL,
    );
    close_all(
        "score_mse dk",
        g.get(k_s.as_tensor()).unwrap(),
        &r["score_mse"]["grad_k"],
        F64_RTOL,
        F64_ATOL,
    );

    let x_s = var(&[b, l, hs], 9, 1.0);
    let x_t = formula(&[b, l, ht], 10, 1.5);
    let loss = distillery_kernels::relation_kl(&x_t, x_s.as_tensor(), &mask, 2).unwrap();
    let g = loss.backward().unwrap();
    close(
        "relation_kl",
        scalar(&loss),
        &r["relation_kl"]["value"],
        1e-5,
    );
    close(
        "relation_kl grad",
        norm(g.get(x_s.as_tensor()).unwrap()),
        &r["relation_kl"]["grad_norm_student"],
        1e-5,
    );
    close_all(
        "relation_kl grad",
        g.get(x_s.as_tensor()).unwrap(),
        &r["relation_kl"]["grad_student"],
        F32_RTOL,
        F32_ATOL,
    );

    let t = doc["temperature"].as_f64().unwrap();
    let labels = Tensor::new(&[1u32, 3, 0], &Device::Cpu).unwrap();
    let cases: Vec<(&str, Box<dyn Fn(&Tensor, &Tensor) -> Tensor>)> = vec![
        (
            "logit_kl_t2",
            Box::new(|s, z| {
                LogitLoss {
                    kind: LogitKind::Kl,
                    temperature: t,
                }
                .compute(s, z)
                .unwrap()
            }),
        ),
        (
            "logit_reverse_kl_t2",
            Box::new(|s, z| {
                LogitLoss {
                    kind: LogitKind::ReverseKl,
                    temperature: t,
                }
                .compute(s, z)
                .unwrap()
            }),
        ),
        (
            "logit_jsd_beta0.3_t2",
            Box::new(|s, z| {
                LogitLoss {
                    kind: LogitKind::Jsd { beta: 0.3 },
                    temperature: t,
                }
                .compute(s, z)
                .unwrap()
            }),
        ),
        (
            "logit_mse",
            Box::new(|s, z| {
                LogitLoss {
                    kind: LogitKind::Mse,
                    temperature: t,
                }
                .compute(s, z)
                .unwrap()
            }),
        ),
        (
            "hard_ce",
            Box::new(|s, _| hard_cross_entropy(s, &labels).unwrap()),
        ),
    ];
    for (name, f) in cases {
        let z_s = var(&[3, c], 11, 2.0);
        let z_t = formula(&[3, c], 12, 2.5);
        let loss = f(z_s.as_tensor(), &z_t);
        let g = loss.backward().unwrap();
        close(name, scalar(&loss), &r[name]["value"], 1e-10);
        close(
            name,
            norm(g.get(z_s.as_tensor()).unwrap()),
            &r[name]["grad_norm_student"],
            1e-10,
        );
        close_all(
            name,
            g.get(z_s.as_tensor()).unwrap(),
            &r[name]["grad_student"],
            F64_RTOL,
            F64_ATOL,
        );
    }
}
