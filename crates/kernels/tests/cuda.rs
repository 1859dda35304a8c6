//! CUDA attention-KL vs the CPU implementation: per-row values and gradients on random shapes
//! (masks of every kind, `d_t ≠ d_s`, all-padding batch items, several tiles), every dtype,
//! mixed teacher/student dtypes, relation KL, and the error paths.
//!
//! bf16/f16 run both score paths (tensor cores, the default, and CUDA cores) where it matters.
//!
//! Needs a GPU: built only with the `cuda` feature. Without a usable device the tests print why
//! and pass, unless `DISTILLERY_REQUIRE_CUDA=1` (set by `.gpu/run.sh`), where they fail.
//!
//! Tolerances (`common::assert_close`: `|x − y| ≤ tol·max(1, |y|)`): the CPU and the GPU read
//! the same inputs and both compute in f32, so they differ only by summation order and the
//! GPU's approximate `exp`; bf16/f16 gradients additionally by one rounding of the output.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, assert_eval_close, randn, random_mask, to_vec, Eval, Problem, Rng};
use distillery_kernels::attention_kl::set_cuda_tensor_cores;
use distillery_kernels::{
    attention_kl, attention_kl_rows, relation_kl_rows, AttentionKlConfig, KernelError,
};
use std::sync::Mutex;

/// Serialises the tests that switch the (process-wide) score path. Others may run on either
/// path meanwhile; both must give the CPU's values.
static PATHS: Mutex<()> = Mutex::new(());

/// Runs `f(path)` for the tensor-core and the CUDA-core path of bf16/f16, restoring the default.
fn both_paths(mut f: impl FnMut(&str)) {
    let _guard = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    for (tc, name) in [(true, "tensor cores"), (false, "CUDA cores")] {
        set_cuda_tensor_cores(tc);
        f(name);
    }
    set_cuda_tensor_cores(true);
}

/// The CUDA device, or `None` (after saying why) when there is none and it is not required.
fn gpu() -> Option<Device> {
    match distillery_kernels::cuda_device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("DISTILLERY_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("DISTILLERY_REQUIRE_CUDA=1 but: {e}");
            }
            eprintln!("skipping the CUDA tests: {e}");
            None
        }
    }
}

fn on(p: &Problem, dev: &Device) -> Problem {
    Problem {
        q_t: p.q_t.to_device(dev).unwrap(),
        k_t: p.k_t.to_device(dev).unwrap(),
        q_s: p.q_s.to_device(dev).unwrap(),
        k_s: p.k_s.to_device(dev).unwrap(),
        mask: p.mask.to_device(dev).unwrap(),
        weights: p.weights.to_device(dev).unwrap(),
        cfg: p.cfg,
    }
}

/// (rows, grads) tolerances per student dtype.
fn tols(dt: DType) -> (f32, f32) {
    match dt {
        DType::BF16 => (2e-4, 1e-2),
        DType::F16 => (2e-4, 2e-3),
        _ => (2e-4, 2e-4),
    }
}

fn compare(dev: &Device, p: &Problem, what: &str) {
    let want = p.eval(true);
    let got = on(p, dev).eval(true);
    let (tr, tg) = tols(p.q_s.dtype());
    assert_eval_close(what, &got, &want, tr, tg);
}

#[test]
fn forward_and_gradients_match_cpu_on_random_shapes() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(2024);
    for (b, h, l, d_t, d_s) in [
        (1, 1, 1, 1, 1),
        (2, 3, 17, 8, 4),
        (3, 2, 64, 64, 64),
        (2, 2, 130, 20, 36),
        (2, 1, 67, 33, 17),
        (1, 2, 100, 128, 128),
        (2, 1, 150, 64, 96),
        (4, 3, 200, 64, 32),
        (1, 1, 129, 16, 32),
    ] {
        let base = Problem::random(&mut rng, b, h, l, d_t, d_s);
        compare(&dev, &base, &format!("F32 ({b},{h},{l},{d_t},{d_s})"));
        for dt in [DType::BF16, DType::F16] {
            let p = base.to_dtype(dt);
            both_paths(|path| {
                compare(
                    &dev,
                    &p,
                    &format!("{dt:?} {path} ({b},{h},{l},{d_t},{d_s})"),
                )
            });
        }
    }
}

#[test]
fn long_sequences_with_prefix_masks() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(5);
    for (b, h, l, d) in [(2, 2, 1000, 64), (1, 2, 2048, 32)] {
        let mut p = Problem::random(&mut rng, b, h, l, d, d);
        // Batch item 0 keeps 700 positions (partial last tile, skipped tiles after it).
        let m: Vec<f32> = (0..b * l)
            .map(|i| if i / l == 0 && i % l >= 700 { 0.0 } else { 1.0 })
            .collect();
        p.mask = Tensor::from_vec(m, (b, l), &Device::Cpu).unwrap();
        compare(&dev, &p, &format!("F32 long ({b},{h},{l},{d})"));
        let p = p.to_dtype(DType::BF16);
        both_paths(|path| compare(&dev, &p, &format!("BF16 {path} long ({b},{h},{l},{d})")));
    }
}

#[test]
fn padded_rows_keys_and_empty_batch_items_are_zero() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(11);
    let (b, h, l, d_t, d_s) = (3, 2, 90, 24, 40);
    let mut p = Problem::random(&mut rng, b, h, l, d_t, d_s);
    // Item 0 all padded, item 1 random, item 2 a prefix of 5.
    let mut m = vec![0f32; b * l];
    for j in 0..l {
        m[l + j] = f32::from(rng.below(2) == 0);
        m[2 * l + j] = f32::from(j < 5);
    }
    p.mask = Tensor::from_vec(m.clone(), (b, l), &Device::Cpu).unwrap();
    let _guard = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    for (dt, tc) in [
        (DType::F32, true),
        (DType::BF16, true),
        (DType::F16, true),
        (DType::BF16, false),
        (DType::F16, false),
    ] {
        set_cuda_tensor_cores(tc);
        let g: Eval = on(&p.to_dtype(dt), &dev).eval(true);
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..l {
                    if m[bi * l + i] != 0.0 {
                        continue;
                    }
                    let r = (bi * h + hi) * l + i;
                    assert_eq!(g.rows[r], 0.0, "{dt:?}: KL of padded row {r}");
                    let grads = &g.dq[r * d_s..(r + 1) * d_s];
                    assert!(
                        grads.iter().all(|&x| x == 0.0),
                        "{dt:?}: dQ of padded row {r}"
                    );
                    let grads = &g.dk[r * d_s..(r + 1) * d_s];
                    assert!(
                        grads.iter().all(|&x| x == 0.0),
                        "{dt:?}: dK of masked key {r}"
                    );
                }
            }
        }
        assert!(g
            .rows
            .iter()
            .chain(&g.dq)
            .chain(&g.dk)
            .all(|x| x.is_finite()));
        compare(
            &dev,
            &p.to_dtype(dt),
            &format!("{dt:?} padded (tensor cores: {tc})"),
        );
    }
    set_cuda_tensor_cores(true);
}

#[test]
fn mixed_and_f64_dtypes_match_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(3);
    let base = Problem::random(&mut rng, 2, 2, 75, 48, 24);
    for (tdt, sdt) in [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F16, DType::BF16),
        (DType::F64, DType::F64),
        (DType::F32, DType::F64),
    ] {
        let p = Problem {
            q_t: base.q_t.to_dtype(tdt).unwrap(),
            k_t: base.k_t.to_dtype(tdt).unwrap(),
            q_s: base.q_s.to_dtype(sdt).unwrap(),
            k_s: base.k_s.to_dtype(sdt).unwrap(),
            mask: base.mask.clone(),
            weights: base.weights.clone(),
            cfg: base.cfg,
        };
        compare(&dev, &p, &format!("teacher {tdt:?}, student {sdt:?}"));
    }
}

#[test]
fn mean_loss_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(8);
    let p = Problem::random(&mut rng, 3, 4, 57, 32, 16);
    let loss = |p: &Problem| -> (f32, Vec<f32>) {
        let q_s = Var::from_tensor(&p.q_s).unwrap();
        let k_s = Var::from_tensor(&p.k_s).unwrap();
        let l = attention_kl(&p.q_t, &p.k_t, &q_s, &k_s, &p.mask, &p.cfg).unwrap();
        let g = l.backward().unwrap();
        let v = l
            .to_device(&Device::Cpu)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (v, to_vec(g.get(&q_s).unwrap()))
    };
    let (want, want_g) = loss(&p);
    let (got, got_g) = loss(&on(&p, &dev));
    assert_close("mean", &[got], &[want], 1e-5);
    assert_close("mean dQ_s", &got_g, &want_g, 1e-4);
}

#[test]
fn relation_kl_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(13);
    let (b, l) = (3, 77);
    // Teacher hidden 384 (12 relation heads of 32), student hidden 192 (12 of 16).
    let x_t = randn(&mut rng, &[b, l, 384], 1.0);
    let x_s = randn(&mut rng, &[b, l, 192], 1.0);
    let mask = random_mask(&mut rng, b, l);
    let w = randn(&mut rng, &[b, 12, l], 1.0);
    for dt in [DType::F32, DType::BF16] {
        let eval = |dev: &Device| -> (Vec<f32>, Vec<f32>) {
            let xs = Var::from_tensor(&x_s.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap();
            let xt = x_t.to_dtype(dt).unwrap().to_device(dev).unwrap();
            let m = mask.to_device(dev).unwrap();
            let rows = relation_kl_rows(&xt, &xs, &m, 12).unwrap();
            let loss = (&rows * &w.to_device(dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            (to_vec(&rows), to_vec(g.get(&xs).unwrap()))
        };
        let (want_r, want_g) = eval(&Device::Cpu);
        let (got_r, got_g) = eval(&dev);
        let (tr, tg) = tols(dt);
        assert_close(&format!("{dt:?} relation rows"), &got_r, &want_r, tr);
        assert_close(&format!("{dt:?} relation dX_s"), &got_g, &want_g, tg);
    }
}

#[test]
fn extreme_scores_stay_finite() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(17);
    let mut p = Problem::random(&mut rng, 2, 2, 70, 16, 16);
    p.q_t = (p.q_t * 30.0).unwrap();
    p.q_s = (p.q_s * 30.0).unwrap();
    let want = p.eval(true);
    let got = on(&p, &dev).eval(true);
    assert!(got
        .rows
        .iter()
        .chain(&got.dq)
        .chain(&got.dk)
        .all(|x| x.is_finite()));
    // Peaked softmaxes amplify the score rounding: a looser tolerance.
    assert_eval_close("extreme", &got, &want, 1e-2, 1e-2);
}

#[test]
fn unsupported_student_head_dim_is_an_error() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(1);
    let p = on(&Problem::random(&mut rng, 1, 1, 8, 16, 200), &dev);
    let q_s = Var::from_tensor(&p.q_s).unwrap();
    // The forward runs (any d_s that fits in shared memory); the backward has register tiles up
    // to 128 and must refuse, not crash.
    let rows = attention_kl_rows(&p.q_t, &p.k_t, &q_s, &p.k_s, &p.mask, &p.cfg);
    match rows {
        Err(KernelError::Candle(e)) => assert!(e.to_string().contains("d_s"), "{e}"),
        Ok(rows) => {
            let r = rows.sum_all().unwrap().backward();
            assert!(r.is_err(), "backward with d_s = 200 should fail");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    let _ = AttentionKlConfig::for_head_dims(16, 200);
}
