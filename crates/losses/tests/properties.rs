//! Invariants and gradient checks of the losses: KL ≥ 0, KL(p‖p) = 0, T² scaling by hand,
//! padding excluded, finite differences for every loss, errors that say what to do.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use distillery_losses::*;
use distillery_models::{random_student, testing, ForwardOptions, ModelOutput};
use proptest::prelude::*;

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = distillery_models::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        (0..n).map(|_| rng.normal()).collect::<Vec<f64>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

/// Central finite differences of `f` at a few entries of `x` against backward.
fn fd_check(name: &str, x: &Var, f: &dyn Fn(&Tensor) -> Tensor, eps: f64, tol: f64) {
    let loss = f(x.as_tensor());
    let g = loss.backward().unwrap();
    let analytic = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let shape = x.as_tensor().shape().clone();
    let n = base.len();
    for i in [0, n / 3, n / 2, n - 1] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            scalar(&f(&Tensor::from_vec(v, &shape, &Device::Cpu).unwrap()))
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (fd - analytic[i]).abs() <= tol * fd.abs().max(1.0),
            "{name}[{i}]: fd {fd} vs backward {}",
            analytic[i]
        );
    }
}

fn mask() -> Tensor {
    Tensor::new(&[[1f64, 1., 1., 1.], [1., 1., 0., 0.]], &Device::Cpu).unwrap()
}

#[test]
fn finite_differences_for_every_loss() {
    let m = mask();
    let h_t = randn(&[2, 4, 6], 1);
    let w = Tensor::from_vec(
        randn(&[6, 5], 2)
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap(),
        (6, 5),
        &Device::Cpu,
    )
    .unwrap();
    let proj = Projection::from_tensors(w, randn(&[6], 3));
    let x5 = Var::from_tensor(&randn(&[2, 4, 5], 4)).unwrap();
    fd_check(
        "hidden_mse+proj",
        &x5,
        &|x| hidden_mse(x, &h_t, &m, Some(&proj)).unwrap(),
        1e-6,
        1e-6,
    );
    let x6 = Var::from_tensor(&randn(&[2, 4, 6], 5)).unwrap();
    fd_check(
        "hidden_cosine",
        &x6,
        &|x| hidden_cosine(x, &h_t, &m, None).unwrap(),
        1e-6,
        1e-6,
    );

    let (q_t, k_t) = (randn(&[2, 2, 4, 3], 6), randn(&[2, 2, 4, 3], 7));
    let k_s = randn(&[2, 2, 4, 5], 8);
    let q_s = Var::from_tensor(&randn(&[2, 2, 4, 5], 9)).unwrap();
    let att =
        |q: &Tensor, k: &Tensor| distillery_models::LayerAttention::from_heads(q, k, k).unwrap();
    fd_check(
        "score_mse",
        &q_s,
        &|q| attention::score_mse(&att(q, &k_s), &att(&q_t, &k_t), &m).unwrap(),
        1e-6,
        1e-6,
    );
    // The fused kernel computes in f32: looser step and tolerance.
    let cfg = distillery_kernels::AttentionKlConfig::for_head_dims(3, 5);
    fd_check(
        "attention_kl",
        &q_s,
        &|q| distillery_kernels::attention_kl(&q_t, &k_t, q, &k_s, &m, &cfg).unwrap(),
        1e-3,
        2e-3,
    );
    let x_t = randn(&[2, 4, 6], 10);
    fd_check(
        "relation_kl",
        &x5,
        &|x| distillery_kernels::relation_kl(&x_t, &x.affine(1.0, 0.0).unwrap(), &m, 1).unwrap(),
        1e-3,
        2e-3,
    );

    let z_t = randn(&[3, 4], 11);
    let z_s = Var::from_tensor(&randn(&[3, 4], 12)).unwrap();
    for kind in [
        LogitKind::Kl,
        LogitKind::ReverseKl,
        LogitKind::Jsd { beta: 0.5 },
        LogitKind::Mse,
    ] {
        let loss = LogitLoss {
            kind,
            temperature: 2.0,
        };
        fd_check(
            &format!("{kind:?}"),
            &z_s,
            &|z| loss.compute(z, &z_t).unwrap(),
            1e-6,
            1e-6,
        );
    }
    let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu).unwrap();
    fd_check(
        "hard_ce",
        &z_s,
        &|z| hard_cross_entropy(z, &labels).unwrap(),
        1e-6,
        1e-6,
    );
    fd_check(
        "regression_mse",
        &z_s,
        &|z| regression_mse(z, &z_t).unwrap(),
        1e-6,
        1e-6,
    );
}

#[test]
fn temperature_squared_scaling_matches_a_hand_computed_case() {
    // z_t = [0, ln 3], z_s = [0, 0], T = 2: p_t = [1, √3]/(1+√3), p_s uniform.
    let z_t = Tensor::new(&[[0f64, 3f64.ln()]], &Device::Cpu).unwrap();
    let z_s = Tensor::new(&[[0f64, 0.]], &Device::Cpu).unwrap();
    let r3 = 3f64.sqrt();
    let (p0, p1) = (1.0 / (1.0 + r3), r3 / (1.0 + r3));
    let kl = p0 * (p0 / 0.5).ln() + p1 * (p1 / 0.5).ln();
    let got = scalar(
        &LogitLoss {
            kind: LogitKind::Kl,
            temperature: 2.0,
        }
        .compute(&z_s, &z_t)
        .unwrap(),
    );
    assert!((got - 4.0 * kl).abs() < 1e-12, "{got} vs {}", 4.0 * kl);
    let t1 = scalar(
        &LogitLoss {
            kind: LogitKind::Kl,
            temperature: 1.0,
        }
        .compute(&z_s, &z_t)
        .unwrap(),
    );
    let kl1 = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
    assert!((t1 - kl1).abs() < 1e-12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn logit_divergences_are_nonnegative_and_zero_on_equal_inputs(
        seed in 0u64..10_000, t in 0.5f64..4.0, beta in 0.05f64..0.95, scale in 0.1f64..20.0
    ) {
        let z_t = (randn(&[3, 5], seed) * scale).unwrap();
        let z_s = (randn(&[3, 5], seed + 1) * scale).unwrap();
        for kind in [LogitKind::Kl, LogitKind::ReverseKl, LogitKind::Jsd { beta }] {
            let loss = LogitLoss { kind, temperature: t };
            prop_assert!(scalar(&loss.compute(&z_s, &z_t).unwrap()) >= -1e-12);
            prop_assert!(scalar(&loss.compute(&z_t, &z_t).unwrap()).abs() < 1e-10);
        }
    }

    #[test]
    fn attention_kl_is_nonnegative_and_zero_for_identical_attention(seed in 0u64..10_000) {
        let m = mask();
        let (q, k) = (randn(&[2, 2, 4, 3], seed).to_dtype(DType::F32).unwrap(), randn(&[2, 2, 4, 3], seed + 7).to_dtype(DType::F32).unwrap());
        let (q2, k2) = (randn(&[2, 2, 4, 5], seed + 3).to_dtype(DType::F32).unwrap(), randn(&[2, 2, 4, 5], seed + 5).to_dtype(DType::F32).unwrap());
        let cfg = distillery_kernels::AttentionKlConfig::for_head_dims(3, 5);
        prop_assert!(scalar(&distillery_kernels::attention_kl(&q, &k, &q2, &k2, &m, &cfg).unwrap()) >= -1e-6);
        let same = distillery_kernels::AttentionKlConfig::for_head_dims(3, 3);
        prop_assert!(scalar(&distillery_kernels::attention_kl(&q, &k, &q, &k, &m, &same).unwrap()).abs() < 1e-6);
    }
}

#[test]
fn padded_positions_do_not_count() {
    let m = mask();
    let h_s = randn(&[2, 4, 6], 20);
    let h_t = randn(&[2, 4, 6], 21);
    // Garbage in the padded tokens of the second sequence changes nothing.
    let mut noisy = h_s.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for v in noisy.iter_mut().skip(4 * 6 + 2 * 6) {
        *v = 1e3;
    }
    let noisy = Tensor::from_vec(noisy, (2, 4, 6), &Device::Cpu).unwrap();
    for f in [hidden_mse, hidden_cosine] {
        let a = scalar(&f(&h_s, &h_t, &m, None).unwrap());
        let b = scalar(&f(&noisy, &h_t, &m, None).unwrap());
        assert!((a - b).abs() < 1e-12);
    }
    // The mean is over the 6 valid tokens: a per-token error of 1 in every dim gives exactly 1.
    let ones = (&h_t + 1.0).unwrap();
    assert!((scalar(&hidden_mse(&ones, &h_t, &m, None).unwrap()) - 1.0).abs() < 1e-12);
    // All padding: 0, not NaN.
    let none = m.zeros_like().unwrap();
    assert_eq!(scalar(&hidden_mse(&h_s, &h_t, &none, None).unwrap()), 0.0);
}

fn outputs(heads_s: usize) -> (ModelOutput, ModelOutput) {
    let teacher = random_student(
        testing::tiny_config(&["a", "b"]),
        1,
        true,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut sc = testing::tiny_config(&["a", "b"]);
    sc.num_hidden_layers = 2;
    sc.num_attention_heads = heads_s;
    let student = random_student(sc, 2, true, DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[2u32, 7, 9, 3], [2, 5, 3, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu).unwrap();
    let o = ForwardOptions::default();
    (
        student.forward(&ids, None, &mask, &o).unwrap(),
        teacher.forward(&ids, None, &mask, &o).unwrap(),
    )
}

#[test]
fn model_level_losses_and_head_mismatch_error() {
    let (s, t) = outputs(4);
    let pairs = LayerMap::Uniform.resolve(2, 3).unwrap();
    assert_eq!(pairs.iter().map(|p| p.teacher).collect::<Vec<_>>(), [1, 3]);
    let hidden = HiddenLoss {
        kind: HiddenKind::Mse,
        include_embeddings: true,
    }
    .compute(&s, &t, &pairs, &[])
    .unwrap();
    assert!(scalar(&hidden) > 0.0);
    // Self-distillation on identical outputs is zero for every kind.
    for kind in [
        AttentionKind::Kl,
        AttentionKind::ScoreMse,
        AttentionKind::Relation {
            relation_heads: 2,
            relations: vec![Relation::Query, Relation::Key, Relation::Value],
        },
    ] {
        let l = AttentionLoss { kind: kind.clone() };
        assert!(
            scalar(
                &l.compute(
                    &t,
                    &t,
                    &LayerMap::Explicit(vec![1, 2, 3]).resolve(3, 3).unwrap()
                )
                .unwrap()
            )
            .abs()
                < 1e-6,
            "{kind:?}"
        );
        assert!(
            scalar(&l.compute(&s, &t, &pairs).unwrap()) > 0.0,
            "{kind:?}"
        );
    }
    let (s2, t2) = outputs(2);
    let e = AttentionLoss {
        kind: AttentionKind::Kl,
    }
    .compute(&s2, &t2, &pairs)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("2 heads") && e.contains("4") && e.contains("relation KL"),
        "{e}"
    );
    let rel = AttentionLoss {
        kind: AttentionKind::Relation {
            relation_heads: 4,
            relations: vec![Relation::Value],
        },
    };
    assert!(scalar(&rel.compute(&s2, &t2, &pairs).unwrap()) > 0.0);
    let e = HiddenLoss {
        kind: HiddenKind::Mse,
        include_embeddings: false,
    }
    .compute(
        &s,
        &t,
        &[LayerPair {
            student: 1,
            teacher: 9,
        }],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("teacher layer 9"), "{e}");
}
