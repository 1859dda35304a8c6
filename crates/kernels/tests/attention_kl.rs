//! Fused attention-KL vs the slow reference, conventions, dtypes, gradients and errors.
//!
//! Tolerances are elementwise `|x − y| ≤ tol·max(1, |y|)` (absolute below 1, relative above); see
//! `common::assert_close`.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, assert_eval_close, randn, to_vec, Problem, Rng};
use distillery_kernels::{
    attention_kl, attention_kl_rows, attention_kl_rows_slow, attention_kl_slow, relation_kl,
    relation_kl_rows, relation_kl_rows_slow, relation_kl_slow, AttentionKlConfig, KernelError,
};
use proptest::prelude::*;

/// Fused (f32) vs slow (f32): values and gradients.
const TOL: f32 = 1e-5;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fused_matches_slow(
        b in 1usize..=3, h in 1usize..=3, l in 1usize..=70,
        d_t in 1usize..=40, d_s in 1usize..=40, seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
        let fused = p.eval(true);
        let slow = p.eval(false);
        assert_eval_close("fused vs slow", &fused, &slow, TOL, TOL);
        // KL ≥ 0 (up to rounding).
        prop_assert!(fused.rows.iter().all(|&x| x >= -1e-6), "negative KL: {:?}", fused.rows);
    }
}

/// Several key tiles and row blocks, partial last tiles, head dims hitting every micro-kernel
/// column path (16-wide, 8-wide, scalar tail), and the split backward (few `(b, h)` pairs).
#[test]
fn fused_matches_slow_multi_tile() {
    let mut rng = Rng::new(7);
    for (b, h, l, d_t, d_s) in [
        (1, 1, 250, 24, 40),
        (1, 2, 97, 64, 16),
        (2, 1, 193, 7, 33),
        (1, 1, 96, 32, 32),
        (2, 2, 145, 12, 5),
    ] {
        let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
        assert_eval_close(
            &format!("({b},{h},{l},{d_t},{d_s})"),
            &p.eval(true),
            &p.eval(false),
            TOL,
            TOL,
        );
    }
}

#[test]
fn padded_rows_and_keys_get_zero() {
    let mut rng = Rng::new(11);
    let (b, h, l, d) = (3, 2, 9, 4);
    let mut p = Problem::random(&mut rng, b, h, l, d, d);
    // item 0: positions 2 and 5 padded; item 1: everything padded; item 2: all valid.
    let mut m = vec![1f32; b * l];
    m[2] = 0.0;
    m[5] = 0.0;
    m[l..2 * l].iter_mut().for_each(|x| *x = 0.0);
    p.mask = Tensor::from_vec(m.clone(), (b, l), &Device::Cpu).unwrap();
    let e = p.eval(true);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..l {
                let row = (bi * h + hi) * l + i;
                if m[bi * l + i] == 0.0 {
                    assert_eq!(e.rows[row], 0.0, "row {row}");
                    assert!(
                        e.dq[row * d..(row + 1) * d].iter().all(|&x| x == 0.0),
                        "dQ row {row}"
                    );
                    assert!(
                        e.dk[row * d..(row + 1) * d].iter().all(|&x| x == 0.0),
                        "dK row {row}"
                    );
                } else {
                    assert!(e.rows[row] > 0.0, "row {row}");
                }
            }
        }
    }
    assert_eval_close("padded", &e, &p.eval(false), TOL, TOL);
}

#[test]
fn extreme_scores_stay_finite() {
    let mut rng = Rng::new(3);
    let (b, h, l) = (2, 2, 37);
    let sign = |rng: &mut Rng, d: usize| -> Tensor {
        let v: Vec<f32> = (0..b * h * l * d)
            .map(|_| if rng.below(2) == 0 { 100.0 } else { -100.0 })
            .collect();
        Tensor::from_vec(v, (b, h, l, d), &Device::Cpu).unwrap()
    };
    // d = 1 and scale 1: every score is exactly ±1e4; d = 4 with scale 1/4: in {0, ±5e3, ±1e4}.
    for (d, scale) in [(1usize, 1.0f32), (4, 0.25)] {
        let mut p = Problem::random(&mut rng, b, h, l, d, d);
        p.q_t = sign(&mut rng, d);
        p.k_t = sign(&mut rng, d);
        p.q_s = sign(&mut rng, d);
        p.k_s = sign(&mut rng, d);
        p.cfg = AttentionKlConfig::new(scale, scale);
        let fused = p.eval(true);
        for v in [&fused.rows, &fused.dq, &fused.dk] {
            assert!(v.iter().all(|x| x.is_finite()));
        }
        assert!(fused.rows.iter().all(|&x| x >= -1e-2));
        assert_eval_close("extreme", &fused, &p.eval(false), TOL, TOL);
    }
}

#[test]
fn kl_of_a_distribution_with_itself_is_zero() {
    let mut rng = Rng::new(5);
    for (b, h, l, d) in [(2, 3, 50, 16), (1, 1, 130, 9)] {
        let mut p = Problem::random(&mut rng, b, h, l, d, d);
        p.q_t = p.q_s.clone();
        p.k_t = p.k_s.clone();
        let e = p.eval(true);
        assert_close("KL(p||p)", &e.rows, &vec![0.0; e.rows.len()], 1e-6);
        assert_close("dQ of KL(p||p)", &e.dq, &vec![0.0; e.dq.len()], 1e-6);
        assert_close("dK of KL(p||p)", &e.dk, &vec![0.0; e.dk.len()], 1e-6);
    }
}

#[test]
fn half_precision_inputs_match_f32() {
    let mut rng = Rng::new(13);
    let p = Problem::random(&mut rng, 2, 3, 61, 24, 16);
    // (dtype, gradient tolerance against f32 on the same rounded inputs, tolerance against the
    // original f32 inputs): gradients are rounded to the dtype (bf16: 8 bits, f16: 11 bits).
    for (dt, tol_same, tol_orig) in [(DType::BF16, 8e-3, 6e-2), (DType::F16, 1e-3, 1e-2)] {
        let half = p.to_dtype(dt);
        let got = half.eval(true);
        // The same rounded values in f32: only the gradient's output rounding differs.
        let rounded = half.to_dtype(DType::F32);
        assert_eval_close(
            &format!("{dt:?} vs f32 of rounded"),
            &got,
            &rounded.eval(false),
            TOL,
            tol_same,
        );
        assert_eval_close(
            &format!("{dt:?} vs f32"),
            &got,
            &p.eval(true),
            tol_orig,
            tol_orig,
        );
        // The slow reference accepts the same dtypes.
        assert_eval_close(
            &format!("{dt:?} fused vs slow"),
            &got,
            &half.eval(false),
            TOL,
            tol_same,
        );
    }
}

#[test]
fn f64_inputs_are_accepted() {
    let mut rng = Rng::new(17);
    let p = Problem::random(&mut rng, 1, 2, 20, 8, 12);
    let got = p.to_dtype(DType::F64).eval(true);
    assert_eval_close("f64 fused vs f32 slow", &got, &p.eval(false), TOL, TOL);
}

/// Loss of the slow reference in f64 as a function of `q_s`, `k_s`.
fn slow_loss_f64(p: &Problem, q_s: &Tensor, k_s: &Tensor) -> f64 {
    let rows = attention_kl_rows_slow(&p.q_t, &p.k_t, q_s, k_s, &p.mask, &p.cfg).unwrap();
    assert_eq!(rows.dtype(), DType::F64);
    (rows * &p.weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn perturb(t: &Tensor, i: usize, eps: f64) -> Tensor {
    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[i] += eps;
    Tensor::from_vec(v, t.shape(), t.device()).unwrap()
}

/// The reference itself against central finite differences in f64, then the fused gradients
/// against the f64 reference.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(19);
    let mut p = Problem::random(&mut rng, 2, 2, 6, 3, 5);
    p.mask = Tensor::from_vec(
        vec![1f32, 1., 0., 1., 1., 0., 1., 1., 1., 1., 1., 1.],
        (2, 6),
        &Device::Cpu,
    )
    .unwrap();
    let p64 = p.to_dtype(DType::F64);
    let p64 = Problem {
        weights: p64.weights.to_dtype(DType::F64).unwrap(),
        ..p64
    };
    let analytic = p64.eval(false);
    let eps = 1e-5;
    for (which, grad) in [("q_s", &analytic.dq), ("k_s", &analytic.dk)] {
        let base = if which == "q_s" { &p64.q_s } else { &p64.k_s };
        let fd: Vec<f32> = (0..base.elem_count())
            .map(|i| {
                let (plus, minus) = (perturb(base, i, eps), perturb(base, i, -eps));
                let (lp, lm) = if which == "q_s" {
                    (
                        slow_loss_f64(&p64, &plus, &p64.k_s),
                        slow_loss_f64(&p64, &minus, &p64.k_s),
                    )
                } else {
                    (
                        slow_loss_f64(&p64, &p64.q_s, &plus),
                        slow_loss_f64(&p64, &p64.q_s, &minus),
                    )
                };
                ((lp - lm) / (2.0 * eps)) as f32
            })
            .collect();
        assert_close(
            &format!("slow f64 d{which} vs finite differences"),
            grad,
            &fd,
            1e-6,
        );
    }
    let fused = p.eval(true);
    assert_eval_close("fused f32 vs slow f64", &fused, &analytic, TOL, TOL);
}

/// A direct finite-difference check of the fused op in f32 (step 1e-2, tolerance 1e-2).
#[test]
fn fused_gradients_match_f32_finite_differences() {
    let mut rng = Rng::new(23);
    let p = Problem::random(&mut rng, 1, 2, 7, 4, 3);
    let e = p.eval(true);
    let loss = |q_s: &Tensor, k_s: &Tensor| -> f64 {
        let rows = attention_kl_rows(&p.q_t, &p.k_t, q_s, k_s, &p.mask, &p.cfg).unwrap();
        (rows * &p.weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let eps = 1e-2f32;
    let bump = |t: &Tensor, i: usize, d: f32| {
        let mut v = to_vec(t);
        v[i] += d;
        Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
    };
    let fd_q: Vec<f32> = (0..p.q_s.elem_count())
        .map(|i| {
            ((loss(&bump(&p.q_s, i, eps), &p.k_s) - loss(&bump(&p.q_s, i, -eps), &p.k_s))
                / (2.0 * eps as f64)) as f32
        })
        .collect();
    let fd_k: Vec<f32> = (0..p.k_s.elem_count())
        .map(|i| {
            ((loss(&p.q_s, &bump(&p.k_s, i, eps)) - loss(&p.q_s, &bump(&p.k_s, i, -eps)))
                / (2.0 * eps as f64)) as f32
        })
        .collect();
    assert_close("fused dQ_s vs FD", &e.dq, &fd_q, 1e-2);
    assert_close("fused dK_s vs FD", &e.dk, &fd_k, 1e-2);
}

#[test]
fn mean_is_over_valid_rows() {
    let mut rng = Rng::new(29);
    let (b, h, l) = (3, 2, 10);
    let mut p = Problem::random(&mut rng, b, h, l, 6, 6);
    let mut m = vec![1f32; b * l];
    m[3] = 0.0;
    m[l..2 * l].iter_mut().for_each(|x| *x = 0.0);
    p.mask = Tensor::from_vec(m.clone(), (b, l), &Device::Cpu).unwrap();
    let args = (&p.q_t, &p.k_t, &p.q_s, &p.k_s, &p.mask, &p.cfg);
    let rows = to_vec(&attention_kl_rows(args.0, args.1, args.2, args.3, args.4, args.5).unwrap());
    let valid: f32 = m.iter().sum::<f32>() * h as f32;
    let want = rows.iter().sum::<f32>() / valid;
    let fused = attention_kl(args.0, args.1, args.2, args.3, args.4, args.5).unwrap();
    let slow = attention_kl_slow(args.0, args.1, args.2, args.3, args.4, args.5).unwrap();
    assert_eq!(fused.dims(), &[] as &[usize]);
    assert_close("mean", &[fused.to_scalar::<f32>().unwrap()], &[want], 1e-6);
    assert_close(
        "slow mean",
        &[slow.to_scalar::<f32>().unwrap()],
        &[want],
        TOL,
    );
}

#[test]
fn no_valid_row_gives_zero_loss_and_gradients() {
    let mut rng = Rng::new(31);
    let mut p = Problem::random(&mut rng, 2, 2, 5, 4, 4);
    p.mask = Tensor::zeros((2, 5), DType::U8, &Device::Cpu).unwrap();
    for fused in [true, false] {
        let q_s = Var::from_tensor(&p.q_s).unwrap();
        let f = if fused {
            attention_kl
        } else {
            attention_kl_slow
        };
        let loss = f(&p.q_t, &p.k_t, q_s.as_tensor(), &p.k_s, &p.mask, &p.cfg).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
        let g = loss.backward().unwrap();
        let dq = to_vec(g.get(q_s.as_tensor()).unwrap());
        assert!(dq.iter().all(|&x| x == 0.0), "fused = {fused}");
    }
}

#[test]
fn non_contiguous_inputs_and_mask_dtypes() {
    let mut rng = Rng::new(37);
    let (b, h, l, d_t, d_s) = (2, 3, 21, 8, 5);
    let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
    let want = to_vec(&attention_kl_rows(&p.q_t, &p.k_t, &p.q_s, &p.k_s, &p.mask, &p.cfg).unwrap());
    // Transposed views ([b, h, d, l] stored, viewed as [b, h, l, d]).
    let view = |t: &Tensor| {
        t.transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap()
    };
    let (qt, kt, qs, ks) = (view(&p.q_t), view(&p.k_t), view(&p.q_s), view(&p.k_s));
    assert!(!qs.is_contiguous());
    let got = to_vec(&attention_kl_rows(&qt, &kt, &qs, &ks, &p.mask, &p.cfg).unwrap());
    assert_close("non-contiguous", &got, &want, 1e-6);
    for dt in [DType::U8, DType::U32, DType::I64, DType::BF16, DType::F64] {
        let mask = p.mask.to_dtype(dt).unwrap();
        let got =
            to_vec(&attention_kl_rows(&p.q_t, &p.k_t, &p.q_s, &p.k_s, &mask, &p.cfg).unwrap());
        assert_close(&format!("mask {dt:?}"), &got, &want, 0.0);
    }
    // A mask with values other than 0/1: nonzero means valid.
    let mask2 = p.mask.affine(3.0, 0.0).unwrap();
    let got = to_vec(&attention_kl_rows(&p.q_t, &p.k_t, &p.q_s, &p.k_s, &mask2, &p.cfg).unwrap());
    assert_close("mask x3", &got, &want, 0.0);
}

#[test]
fn empty_sequence_is_fine() {
    let dev = Device::Cpu;
    let z = |d: usize| Var::zeros((2, 3, 0, d), DType::F32, &dev).unwrap();
    let (qt, kt, qs, ks) = (z(4), z(4), z(5), z(5));
    let mask = Tensor::zeros((2, 0), DType::F32, &dev).unwrap();
    let cfg = AttentionKlConfig::for_head_dims(4, 5);
    let loss = attention_kl(&qt, &kt, &qs, &ks, &mask, &cfg).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    let g = loss.backward().unwrap();
    assert_eq!(g.get(&qs).unwrap().dims(), &[2, 3, 0, 5]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut rng = Rng::new(41);
    let p = Problem::random(&mut rng, 2, 3, 7, 4, 6);
    let cfg = p.cfg;
    let shape_of = |r: Result<Tensor, KernelError>| match r {
        Err(KernelError::Shape {
            tensor, expected, ..
        }) => (tensor, expected),
        other => panic!("expected a shape error, got {other:?}"),
    };
    let r = attention_kl_rows(
        &p.q_t,
        &p.k_t,
        &p.q_s.flatten_to(1).unwrap(),
        &p.k_s,
        &p.mask,
        &cfg,
    );
    assert_eq!(shape_of(r).0, "q_s");
    let r = attention_kl_rows(
        &p.q_t.narrow(2, 0, 6).unwrap(),
        &p.k_t,
        &p.q_s,
        &p.k_s,
        &p.mask,
        &cfg,
    );
    let (t, e) = shape_of(r);
    assert_eq!((t, e.as_str()), ("q_t", "[b, h, l, d_t] = [2, 3, 7, _]"));
    let r = attention_kl_rows(
        &p.q_t,
        &p.k_t.narrow(3, 0, 3).unwrap(),
        &p.q_s,
        &p.k_s,
        &p.mask,
        &cfg,
    );
    assert_eq!(shape_of(r).0, "k_t");
    let r = attention_kl(&p.q_t, &p.k_t, &p.q_s, &p.q_t, &p.mask, &cfg);
    assert_eq!(shape_of(r).0, "k_s");
    let r = attention_kl(
        &p.q_t,
        &p.k_t,
        &p.q_s,
        &p.k_s,
        &p.mask.narrow(1, 0, 6).unwrap(),
        &cfg,
    );
    let (t, e) = shape_of(r);
    assert_eq!((t, e.as_str()), ("mask", "[b, l] = [2, 7]"));
    let r = attention_kl(
        &p.q_t,
        &p.k_t,
        &p.q_s,
        &p.k_s.to_dtype(DType::BF16).unwrap(),
        &p.mask,
        &cfg,
    );
    assert!(
        matches!(r, Err(KernelError::DType { tensor: "k_s", .. })),
        "{r:?}"
    );
    let r = attention_kl(
        &p.q_t.to_dtype(DType::U32).unwrap(),
        &p.k_t,
        &p.q_s,
        &p.k_s,
        &p.mask,
        &cfg,
    );
    assert!(
        matches!(r, Err(KernelError::DType { tensor: "q_t", .. })),
        "{r:?}"
    );
    let r = attention_kl(
        &p.q_t,
        &p.k_t,
        &p.q_s,
        &p.k_s,
        &p.mask,
        &AttentionKlConfig::new(f32::NAN, 1.0),
    );
    assert!(matches!(r, Err(KernelError::Config(_))), "{r:?}");
    let r = attention_kl_slow(
        &p.q_t,
        &p.k_t,
        &p.q_s.flatten_to(1).unwrap(),
        &p.k_s,
        &p.mask,
        &cfg,
    );
    assert_eq!(shape_of(r).0, "q_s");
    let msg = attention_kl(
        &p.q_t,
        &p.k_t,
        &p.q_s,
        &p.k_s,
        &p.mask.narrow(1, 0, 6).unwrap(),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(msg, "`mask` has shape [2, 6], expected [b, l] = [2, 7]");
    // Relation KL.
    let x_t = randn(&mut rng, &[2, 7, 12], 1.0);
    let x_s = randn(&mut rng, &[2, 7, 10], 1.0);
    assert!(matches!(
        relation_kl(&x_t, &x_s, &p.mask, 0),
        Err(KernelError::Config(_))
    ));
    assert_eq!(shape_of(relation_kl(&x_t, &x_s, &p.mask, 4)).0, "x_s");
    assert_eq!(
        shape_of(relation_kl(&x_t.narrow(1, 0, 6).unwrap(), &x_s, &p.mask, 2)).0,
        "x_t"
    );
    assert_eq!(
        shape_of(relation_kl(&x_t, &x_s.flatten_all().unwrap(), &p.mask, 2)).0,
        "x_s"
    );
}

/// Values and gradients (w.r.t. `x_s`) of the fused relation KL vs the slow one.
fn relation_eval(
    x_t: &Tensor,
    x_s: &Tensor,
    mask: &Tensor,
    r: usize,
    weights: &Tensor,
    fused: bool,
) -> (Vec<f32>, Vec<f32>) {
    let x = Var::from_tensor(x_s).unwrap();
    let f = if fused {
        relation_kl_rows
    } else {
        relation_kl_rows_slow
    };
    let rows = f(x_t, x.as_tensor(), mask, r).unwrap();
    let loss = (&rows * weights).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    (to_vec(&rows), to_vec(g.get(x.as_tensor()).unwrap()))
}

#[test]
fn relation_kl_fused_matches_slow() {
    let mut rng = Rng::new(43);
    for (b, l, h_t, h_s, r) in [
        (2, 37, 24, 12, 3),
        (1, 100, 32, 16, 2),
        (3, 5, 6, 9, 3),
        (2, 64, 48, 48, 4),
        (1, 9, 4, 4, 1),
    ] {
        let x_t = randn(&mut rng, &[b, l, h_t], 1.0);
        let x_s = randn(&mut rng, &[b, l, h_s], 1.0);
        let mask = common::random_mask(&mut rng, b, l);
        let weights = randn(&mut rng, &[b, r, l], 1.0);
        let (rows_f, g_f) = relation_eval(&x_t, &x_s, &mask, r, &weights, true);
        let (rows_s, g_s) = relation_eval(&x_t, &x_s, &mask, r, &weights, false);
        let what = format!("relation ({b},{l},{h_t},{h_s},{r})");
        assert_close(&format!("{what} rows"), &rows_f, &rows_s, TOL);
        assert_close(&format!("{what} dX_s"), &g_f, &g_s, TOL);
        let mean_f = relation_kl(&x_t, &x_s, &mask, r)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mean_s = relation_kl_slow(&x_t, &x_s, &mask, r)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_close(&format!("{what} mean"), &[mean_f], &[mean_s], TOL);
    }
}

/// With `q_s = k_s = X`, both gradient halves must reach `X`: compare against passing two
/// separate copies and adding their gradients.
#[test]
fn relation_gradient_sums_both_sides() {
    let mut rng = Rng::new(47);
    let (b, r, l, d) = (2, 3, 15, 4);
    let x_t = randn(&mut rng, &[b, l, r * 5], 1.0);
    let x_s = randn(&mut rng, &[b, l, r * d], 1.0);
    let mask = common::random_mask(&mut rng, b, l);
    let weights = randn(&mut rng, &[b, r, l], 1.0);
    let (_, g_rel) = relation_eval(&x_t, &x_s, &mask, r, &weights, true);
    // Same thing by hand with two distinct variables.
    let split = |x: &Tensor, dh: usize| {
        x.reshape((b, l, r, dh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let xt = split(&x_t, 5);
    let q = Var::from_tensor(&split(&x_s, d)).unwrap();
    let k = Var::from_tensor(&split(&x_s, d)).unwrap();
    let cfg = AttentionKlConfig::for_head_dims(5, d);
    let rows = attention_kl_rows(&xt, &xt, q.as_tensor(), k.as_tensor(), &mask, &cfg).unwrap();
    let g = (&rows * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let sum = (g.get(q.as_tensor()).unwrap() + g.get(k.as_tensor()).unwrap()).unwrap();
    let sum = sum.transpose(1, 2).unwrap().reshape((b, l, r * d)).unwrap();
    assert_close("dX = dQ + dK", &g_rel, &to_vec(&sum), 1e-6);
}

/// Both ways of splitting the work: one item per `(b, h)` (dK written straight to the output) and
/// several row ranges per `(b, h)` (partial dK buffers summed afterwards). Which one runs depends
/// on the number of rayon threads, so pin it with explicit pools.
#[test]
fn work_splitting_paths_agree() {
    let mut rng = Rng::new(59);
    for threads in [1, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (b, h, l, d_t, d_s) in [(2, 3, 150, 16, 24), (1, 1, 150, 16, 24), (3, 2, 77, 8, 8)] {
            let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
            let (fused, slow) = pool.install(|| (p.eval(true), p.eval(false)));
            assert_eval_close(
                &format!("{threads} threads ({b},{h},{l})"),
                &fused,
                &slow,
                TOL,
                TOL,
            );
        }
    }
}
