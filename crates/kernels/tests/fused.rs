//! The fused row-wise ops (GELU, softmax, layer norm, RMS norm, SwiGLU) against their composite references:
//! values and gradients, on shapes whose width is and is not a multiple of the vector width,
//! plus a finite-difference check of each backward. A second binary runs the portable path.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, check_finite_differences, randn, to_vec, Rng};
use distillery_kernels::fused::*;

/// Values and the gradients of `Σ f(x)⊙u` (u random) for fused and slow, compared.
fn compare(
    name: &str,
    x: &Tensor,
    f: &dyn Fn(&Tensor) -> Tensor,
    slow: &dyn Fn(&Tensor) -> Tensor,
    tol: f32,
) {
    let mut rng = Rng::new(7);
    let u = randn(&mut rng, x.dims(), 1.0);
    let run = |g: &dyn Fn(&Tensor) -> Tensor| {
        let v = Var::from_tensor(x).unwrap();
        let y = g(v.as_tensor());
        let grads = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
        (to_vec(&y), to_vec(grads.get(v.as_tensor()).unwrap()))
    };
    let (yf, gf) = run(f);
    let (ys, gs) = run(slow);
    assert_close(&format!("{name} value"), &yf, &ys, tol);
    assert_close(&format!("{name} grad"), &gf, &gs, tol);
}

const SHAPES: [&[usize]; 5] = [&[3, 5, 384], &[2, 7], &[4, 1], &[1, 3, 1000], &[65, 33]];

#[test]
fn gelu_matches_candle_erf_gelu() {
    let mut rng = Rng::new(1);
    for shape in SHAPES {
        let x = randn(&mut rng, shape, 3.0);
        compare(
            "gelu",
            &x,
            &|x| gelu_erf(x).unwrap(),
            &|x| gelu_erf_slow(x).unwrap(),
            2e-6,
        );
    }
    // Extremes: saturation on both sides, no NaN.
    let x = Tensor::new(
        &[-1e4f32, -30.0, -8.0, -1e-30, 0.0, 1e-30, 8.0, 30.0, 1e4],
        &Device::Cpu,
    )
    .unwrap();
    compare(
        "gelu extremes",
        &x,
        &|x| gelu_erf(x).unwrap(),
        &|x| gelu_erf_slow(x).unwrap(),
        2e-6,
    );
}

#[test]
fn softmax_matches_the_composite() {
    let mut rng = Rng::new(2);
    for shape in SHAPES {
        let x = randn(&mut rng, shape, 4.0);
        compare(
            "softmax",
            &x,
            &|x| softmax_last_dim(x).unwrap(),
            &|x| softmax_last_dim_slow(x).unwrap(),
            1e-6,
        );
    }
    // Masked-style rows: a most-negative bias on some entries, huge spreads.
    let x = Tensor::new(
        &[
            [0.0f32, f32::MIN, 3.0, f32::MIN, 1e4, -1e4, 2.0, 0.5, 7.0],
            [f32::MIN; 9],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let y = to_vec(&softmax_last_dim(&x).unwrap());
    assert!(y.iter().all(|v| v.is_finite()));
    assert_close(
        "softmax masked",
        &y,
        &to_vec(&softmax_last_dim_slow(&x).unwrap()),
        1e-6,
    );
}

#[test]
fn layer_norm_matches_the_composite_for_x_w_and_b() {
    let mut rng = Rng::new(3);
    for shape in SHAPES {
        let width = *shape.last().unwrap();
        let x = (randn(&mut rng, shape, 2.0) + 0.7).unwrap();
        let w = Var::from_tensor(&(randn(&mut rng, &[width], 0.5) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, &[width], 0.5)).unwrap();
        let eps = if width == 1 { 1e-5 } else { 1e-12 };
        compare(
            "layer_norm",
            &x,
            &|x| layer_norm(x, w.as_tensor(), b.as_tensor(), eps).unwrap(),
            &|x| layer_norm_slow(x, w.as_tensor(), b.as_tensor(), eps).unwrap(),
            2e-5,
        );
        // Parameter gradients.
        let u = randn(&mut rng, shape, 1.0);
        let grads = |fused: bool| {
            let y = if fused {
                layer_norm(&x, w.as_tensor(), b.as_tensor(), eps)
            } else {
                layer_norm_slow(&x, w.as_tensor(), b.as_tensor(), eps)
            };
            let g = (y.unwrap() * &u)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                to_vec(g.get(w.as_tensor()).unwrap()),
                to_vec(g.get(b.as_tensor()).unwrap()),
            )
        };
        let ((wf, bf), (ws, bs)) = (grads(true), grads(false));
        assert_close("layer_norm dw", &wf, &ws, 2e-5);
        assert_close("layer_norm db", &bf, &bs, 2e-5);
    }
}

#[test]
fn rms_norm_matches_the_composite_for_x_and_w() {
    let mut rng = Rng::new(13);
    for shape in SHAPES {
        let width = *shape.last().unwrap();
        let x = (randn(&mut rng, shape, 2.0) + 0.7).unwrap();
        let w = Var::from_tensor(&(randn(&mut rng, &[width], 0.5) + 1.0).unwrap()).unwrap();
        compare(
            "rms_norm",
            &x,
            &|x| rms_norm(x, w.as_tensor(), 1e-5).unwrap(),
            &|x| rms_norm_slow(x, w.as_tensor(), 1e-5).unwrap(),
            2e-5,
        );
        let u = randn(&mut rng, shape, 1.0);
        let dw = |fused: bool| {
            let y = match fused {
                true => rms_norm(&x, w.as_tensor(), 1e-5),
                false => rms_norm_slow(&x, w.as_tensor(), 1e-5),
            };
            let g = (y.unwrap() * &u)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            to_vec(g.get(w.as_tensor()).unwrap())
        };
        assert_close("rms_norm dw", &dw(true), &dw(false), 2e-5);
    }
}

#[test]
fn swiglu_matches_the_composite_for_gate_and_up() {
    let mut rng = Rng::new(15);
    for shape in SHAPES {
        // Gates reach ±12: where σ saturates and where it does not.
        let g = randn(&mut rng, shape, 4.0);
        let u = Var::from_tensor(&randn(&mut rng, shape, 1.0)).unwrap();
        compare(
            "swiglu",
            &g,
            &|x| swiglu(x, u.as_tensor()).unwrap(),
            &|x| swiglu_slow(x, u.as_tensor()).unwrap(),
            2e-5,
        );
        let w = randn(&mut rng, shape, 1.0);
        let du = |fused: bool| {
            let y = match fused {
                true => swiglu(&g, u.as_tensor()),
                false => swiglu_slow(&g, u.as_tensor()),
            };
            let grads = (y.unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            to_vec(grads.get(u.as_tensor()).unwrap())
        };
        assert_close("swiglu du", &du(true), &du(false), 2e-5);
    }
}

/// The weight gradient of the fused RMS norm against central differences of the f64 reference.
#[test]
fn rms_norm_weight_gradient_matches_finite_differences() {
    let mut rng = Rng::new(14);
    let x = randn(&mut rng, &[4, 19], 1.5);
    let w = (randn(&mut rng, &[19], 0.3) + 1.0).unwrap();
    let u = randn(&mut rng, &[4, 19], 1.0);
    let v = Var::from_tensor(&w).unwrap();
    let g = (rms_norm(&x, v.as_tensor(), 1e-5).unwrap() * &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let analytic = to_vec(g.get(v.as_tensor()).unwrap());
    let x64 = x.to_dtype(DType::F64).unwrap();
    check_finite_differences(
        "rms_norm dw",
        &w,
        &u,
        &analytic,
        &|t| rms_norm_slow(&x64, t, 1e-5).unwrap(),
        &[0, 7, 16, 18],
    );
}

#[test]
fn backward_ops_match_finite_differences_in_f64_reference_terms() {
    // The fused ops compute in f32: compare their gradient with central differences of the
    // f64 reference at a few points.
    let mut rng = Rng::new(4);
    let x = randn(&mut rng, &[3, 11], 1.5);
    let w = (randn(&mut rng, &[11], 0.3) + 1.0).unwrap();
    let b = randn(&mut rng, &[11], 0.3);
    let u = randn(&mut rng, &[3, 11], 1.0);
    let ops: Vec<(
        &str,
        Box<dyn Fn(&Tensor) -> Tensor>,
        Box<dyn Fn(&Tensor) -> Tensor>,
    )> = vec![
        (
            "gelu",
            Box::new(|x| gelu_erf(x).unwrap()),
            Box::new(|x| gelu_erf_slow(x).unwrap()),
        ),
        (
            "softmax",
            Box::new(|x| softmax_last_dim(x).unwrap()),
            Box::new(|x| softmax_last_dim_slow(x).unwrap()),
        ),
        (
            "layer_norm",
            Box::new(|x| layer_norm(x, &w, &b, 1e-5).unwrap()),
            Box::new(|x| {
                layer_norm_slow(
                    x,
                    &w.to_dtype(DType::F64).unwrap(),
                    &b.to_dtype(DType::F64).unwrap(),
                    1e-5,
                )
                .unwrap()
            }),
        ),
        (
            "swiglu",
            Box::new(|x| swiglu(x, &u).unwrap()),
            Box::new(|x| swiglu_slow(x, &u.to_dtype(DType::F64).unwrap()).unwrap()),
        ),
        (
            "rms_norm",
            Box::new(|x| rms_norm(x, &w, 1e-5).unwrap()),
            Box::new(|x| rms_norm_slow(x, &w.to_dtype(DType::F64).unwrap(), 1e-5).unwrap()),
        ),
    ];
    for (name, fused, reference) in ops {
        let v = Var::from_tensor(&x).unwrap();
        let g = (fused(v.as_tensor()) * &u)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = to_vec(g.get(v.as_tensor()).unwrap());
        check_finite_differences(name, &x, &u, &analytic, &*reference, &[0, 5, 16, 32]);
    }
}

#[test]
fn other_dtypes_fall_back_to_the_references() {
    let mut rng = Rng::new(5);
    let x = randn(&mut rng, &[2, 9], 1.0).to_dtype(DType::F64).unwrap();
    let a = gelu_erf(&x).unwrap().to_vec2::<f64>().unwrap();
    let b = x.gelu_erf().unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(a, b);
}
