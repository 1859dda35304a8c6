//! The backward passes on the portable (non-AVX2) path: every op whose kernels dispatch on the
//! instruction set (GELU, softmax, masked softmax, layer norm, the attention block through its
//! softmax, attention KL and relation KL through their tile kernels), plus the fused linear,
//! against the composite references: values and the gradient of every differentiable input,
//! with the tolerances of the AVX2 tests (`fused.rs`, `fused_step_ops.rs`, `attention_kl.rs`).
//!
//! A separate binary, because the path is chosen through `DISTILLERY_KERNELS_PORTABLE`, an
//! environment variable read by every call: each test sets it (once for the process, before any
//! kernel runs) and no test here runs with the AVX2 path.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Once;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, assert_eval_close, randn, random_mask, to_vec, Problem, Rng};
use distillery_kernels::fused::*;
use distillery_kernels::{relation_kl_rows, relation_kl_rows_slow};

/// Forces the portable path for the whole process. Every test calls it first; the variable is
/// set while the other tests wait on the `Once`, so no thread reads the environment meanwhile.
fn force_portable() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("DISTILLERY_KERNELS_PORTABLE", "1"));
    assert!(std::env::var_os("DISTILLERY_KERNELS_PORTABLE").is_some());
}

/// Values and the gradients w.r.t. every input of `Σ f(inputs)⊙u` (u random), fused vs slow;
/// inputs that get no gradient (a mask) must get none from either.
fn compare(
    name: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Tensor,
    slow: &dyn Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let run = |g: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = g(&ts);
        let u = randn(&mut Rng::new(11), y.dims(), 1.0);
        let grads = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
        let gs: Vec<Option<Vec<f32>>> = ts.iter().map(|t| grads.get(t).map(to_vec)).collect();
        (to_vec(&y), gs)
    };
    let (yf, gf) = run(f);
    let (ys, gs) = run(slow);
    assert_close(&format!("{name} value"), &yf, &ys, tol);
    for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => assert_close(&format!("{name} grad {i}"), a, b, tol),
            (None, None) => {}
            _ => panic!("{name}: input {i} has a gradient on one side only"),
        }
    }
}

/// Widths that are and are not multiples of the 8 lanes, 1-wide rows, several parallel chunks.
const SHAPES: [&[usize]; 5] = [&[3, 5, 384], &[2, 7], &[4, 1], &[1, 3, 1000], &[65, 33]];

#[test]
fn gelu_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(1);
    for shape in SHAPES {
        let x = randn(&mut rng, shape, 3.0);
        compare(
            &format!("gelu {shape:?}"),
            &[x],
            &|t| gelu_erf(&t[0]).unwrap(),
            &|t| gelu_erf_slow(&t[0]).unwrap(),
            2e-6,
        );
    }
    let x = Tensor::new(
        &[-1e4f32, -30.0, -8.0, -1e-30, 0.0, 1e-30, 8.0, 30.0, 1e4],
        &Device::Cpu,
    )
    .unwrap();
    compare(
        "gelu extremes",
        &[x],
        &|t| gelu_erf(&t[0]).unwrap(),
        &|t| gelu_erf_slow(&t[0]).unwrap(),
        2e-6,
    );
}

#[test]
fn softmax_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(2);
    for shape in SHAPES {
        let x = randn(&mut rng, shape, 4.0);
        compare(
            &format!("softmax {shape:?}"),
            &[x],
            &|t| softmax_last_dim(&t[0]).unwrap(),
            &|t| softmax_last_dim_slow(&t[0]).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn masked_softmax_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(3);
    for (b, h, q, k) in [(3, 2, 5, 13), (2, 12, 16, 128), (4, 1, 1, 7), (2, 3, 9, 16)] {
        let x = randn(&mut rng, &[b, h, q, k], 3.0);
        let mask = random_mask(&mut rng, b, k);
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * f64::from(f32::MIN)).unwrap();
        compare(
            &format!("masked softmax ({b},{h},{q},{k})"),
            &[x, bias],
            &|t| softmax_last_dim_masked(&t[0], &t[1]).unwrap(),
            &|t| softmax_last_dim_masked_slow(&t[0], &t[1]).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn layer_norm_forward_and_backward_for_x_w_and_b() {
    force_portable();
    let mut rng = Rng::new(4);
    for shape in SHAPES {
        let width = *shape.last().unwrap();
        let x = (randn(&mut rng, shape, 2.0) + 0.7).unwrap();
        let w = (randn(&mut rng, &[width], 0.5) + 1.0).unwrap();
        let b = randn(&mut rng, &[width], 0.5);
        let eps = if width == 1 { 1e-5 } else { 1e-12 };
        compare(
            &format!("layer_norm {shape:?}"),
            &[x, w, b],
            &|t| layer_norm(&t[0], &t[1], &t[2], eps).unwrap(),
            &|t| layer_norm_slow(&t[0], &t[1], &t[2], eps).unwrap(),
            2e-5,
        );
    }
}

#[test]
fn rms_norm_forward_and_backward_for_x_and_w() {
    force_portable();
    let mut rng = Rng::new(6);
    for shape in SHAPES {
        let width = *shape.last().unwrap();
        let x = (randn(&mut rng, shape, 2.0) + 0.7).unwrap();
        let w = (randn(&mut rng, &[width], 0.5) + 1.0).unwrap();
        compare(
            &format!("rms_norm {shape:?}"),
            &[x, w],
            &|t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            &|t| rms_norm_slow(&t[0], &t[1], 1e-5).unwrap(),
            2e-5,
        );
    }
}

#[test]
fn swiglu_forward_and_backward_for_gate_and_up() {
    force_portable();
    let mut rng = Rng::new(7);
    for shape in SHAPES {
        let g = randn(&mut rng, shape, 4.0);
        let u = randn(&mut rng, shape, 1.0);
        compare(
            &format!("swiglu {shape:?}"),
            &[g, u],
            &|t| swiglu(&t[0], &t[1]).unwrap(),
            &|t| swiglu_slow(&t[0], &t[1]).unwrap(),
            2e-5,
        );
    }
}

/// The attention block's softmax and its backward run on the portable path: values and the
/// gradients of q, k and v, with padded keys and dropout on and off.
#[test]
fn attention_block_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(5);
    for (batch, heads, seq, d, p) in [
        (2, 3, 13, 5, 0.1),
        (3, 2, 16, 8, 0.0),
        (1, 12, 128, 32, 0.1),
        (2, 1, 1, 3, 0.5),
        (2, 2, 9, 4, 0.0),
    ] {
        let shape = [batch * seq, heads * d];
        let (q, k, v) = (
            randn(&mut rng, &shape, 1.0),
            randn(&mut rng, &shape, 1.0),
            randn(&mut rng, &shape, 1.0),
        );
        let mask = random_mask(&mut rng, batch, seq);
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * f64::from(f32::MIN)).unwrap();
        let cfg = AttentionConfig {
            batch,
            heads,
            kv_heads: heads,
            causal: false,
            scale: 1.0 / (d as f64).sqrt(),
            dropout: p,
            seed: 77 + seq as u64,
        };
        compare(
            &format!("attention b{batch} h{heads} s{seq} d{d} p{p}"),
            &[q, k, v, bias],
            &|t| attention(&t[0], &t[1], &t[2], &t[3], &cfg).unwrap(),
            &|t| attention_slow(&t[0], &t[1], &t[2], &t[3], &cfg).unwrap(),
            1e-5,
        );
    }
}

/// The fused linear does not dispatch on the instruction set (its products run on the gemm
/// crate or OpenBLAS), but it is part of the portable path's forward and backward all the same.
#[test]
fn linear_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(6);
    for (rows, input, output) in [(7, 13, 5), (1, 384, 384), (130, 33, 67), (64, 8, 1)] {
        let x = randn(&mut rng, &[rows, input], 1.0);
        let w = randn(&mut rng, &[output, input], 0.3);
        let b = randn(&mut rng, &[output], 1.0);
        compare(
            &format!("linear ({rows},{input},{output})"),
            &[x, w, b],
            &|t| linear(&t[0], &t[1], &t[2]).unwrap(),
            &|t| linear_slow(&t[0], &t[1], &t[2]).unwrap(),
            1e-5,
        );
    }
}

/// Attention KL's forward and backward tile kernels: several key tiles and row blocks, head
/// dims hitting every micro-kernel column path, and both ways of splitting the backward (one
/// item per (b, h) with dK written directly, or row ranges with partial dK buffers), which the
/// number of rayon threads decides.
#[test]
fn attention_kl_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(7);
    let mut nonzero = false;
    for threads in [1, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (b, h, l, d_t, d_s) in [
            (1, 1, 250, 24, 40),
            (1, 2, 97, 64, 16),
            (2, 1, 193, 7, 33),
            (2, 3, 150, 16, 24),
            (3, 1, 1, 5, 3),
        ] {
            let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
            let (fused, slow) = pool.install(|| (p.eval(true), p.eval(false)));
            nonzero |= fused.dq.iter().chain(&fused.dk).any(|&g| g != 0.0);
            assert_eval_close(
                &format!("attention KL, {threads} threads ({b},{h},{l},{d_t},{d_s})"),
                &fused,
                &slow,
                1e-5,
                1e-5,
            );
        }
    }
    assert!(nonzero, "every gradient was zero");
    // f64 student inputs: the backward writes through its f64 instance.
    let p = Problem::random(&mut rng, 1, 2, 20, 8, 12);
    assert_eval_close(
        "attention KL f64",
        &p.to_dtype(DType::F64).eval(true),
        &p.eval(false),
        1e-5,
        1e-5,
    );
}

/// Relation KL (the attention-KL kernels with q = k): rows and the gradient w.r.t. x_s, which
/// sums the query and the key side.
#[test]
fn relation_kl_forward_and_backward() {
    force_portable();
    let mut rng = Rng::new(8);
    for (b, l, h_t, h_s, r) in [
        (2, 37, 24, 12, 3),
        (1, 100, 32, 16, 2),
        (3, 5, 6, 9, 3),
        (2, 64, 48, 48, 4),
    ] {
        let x_t = randn(&mut rng, &[b, l, h_t], 1.0);
        let x_s = randn(&mut rng, &[b, l, h_s], 1.0);
        let mask = random_mask(&mut rng, b, l);
        let weights = randn(&mut rng, &[b, r, l], 1.0);
        let eval = |fused: bool| {
            let x = Var::from_tensor(&x_s).unwrap();
            let f = if fused {
                relation_kl_rows
            } else {
                relation_kl_rows_slow
            };
            let rows = f(&x_t, x.as_tensor(), &mask, r).unwrap();
            let g = (&rows * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (to_vec(&rows), to_vec(g.get(x.as_tensor()).unwrap()))
        };
        let ((rows_f, g_f), (rows_s, g_s)) = (eval(true), eval(false));
        let what = format!("relation KL ({b},{l},{h_t},{h_s},{r})");
        assert_close(&format!("{what} rows"), &rows_f, &rows_s, 1e-5);
        assert_close(&format!("{what} dX_s"), &g_f, &g_s, 1e-5);
    }
}
