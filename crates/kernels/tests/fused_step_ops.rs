//! The ops a training step adds around the row-wise ones — linear with bias, batched matmul,
//! softmax with a key mask, counter-based dropout — against candle's composites: values and the
//! gradient of every differentiable input, on odd shapes and strided views.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{Device, Tensor, Var};
use common::{assert_close, randn, random_mask, to_vec, Rng};
use distillery_kernels::fused::*;

/// Values and the gradients w.r.t. every input of `Σ f(inputs)⊙u` (u random), fused vs slow.
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
        let gs: Vec<Vec<f32>> = ts
            .iter()
            .map(|t| grads.get(t).map(to_vec).unwrap_or_default())
            .collect();
        (to_vec(&y), gs)
    };
    let (yf, gf) = run(f);
    let (ys, gs) = run(slow);
    assert_close(&format!("{name} value"), &yf, &ys, tol);
    for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
        assert_close(&format!("{name} grad {i}"), a, b, tol);
    }
}

#[test]
fn linear_matches_matmul_plus_bias() {
    let mut rng = Rng::new(1);
    for (rows, input, output) in [(7, 13, 5), (1, 384, 384), (130, 33, 67), (64, 8, 1)] {
        let x = randn(&mut rng, &[rows, input], 1.0);
        let w = randn(&mut rng, &[output, input], 0.3);
        let b = randn(&mut rng, &[output], 1.0);
        compare(
            "linear",
            &[x, w, b],
            &|t| linear(&t[0], &t[1], &t[2]).unwrap(),
            &|t| linear_slow(&t[0], &t[1], &t[2]).unwrap(),
            1e-5,
        );
    }
    // A transposed weight view and a strided x are read through their strides.
    let x = randn(&mut rng, &[9, 6], 1.0);
    let wt = randn(&mut rng, &[6, 4], 1.0);
    let b = randn(&mut rng, &[4], 1.0);
    compare(
        "linear strided",
        &[x, wt, b],
        &|t| linear(&t[0].t().unwrap().t().unwrap(), &t[1].t().unwrap(), &t[2]).unwrap(),
        &|t| linear_slow(&t[0], &t[1].t().unwrap(), &t[2]).unwrap(),
        1e-5,
    );
}

/// Products of at least 4M multiply-adds run on OpenBLAS when it is loaded (the gemm crate
/// otherwise, see `gemm_backend_is_the_expected_one`): forward and both backward GEMMs, with
/// rows split across threads and transposed operands.
#[test]
fn large_products_match_candle_whichever_gemm_runs_them() {
    let mut rng = Rng::new(5);
    let x = randn(&mut rng, &[261, 190], 1.0);
    let w = randn(&mut rng, &[171, 190], 0.3);
    let b = randn(&mut rng, &[171], 1.0);
    compare(
        "large linear",
        &[x, w, b],
        &|t| linear(&t[0], &t[1], &t[2]).unwrap(),
        &|t| linear_slow(&t[0], &t[1], &t[2]).unwrap(),
        2e-5,
    );
    // Plain matrices through `bmm`, one a transposed view.
    let a = randn(&mut rng, &[203, 301], 1.0);
    let c = randn(&mut rng, &[203, 160], 1.0);
    compare(
        "large bmm rank 2",
        &[a, c],
        &|t| bmm_scaled(&t[0].t().unwrap(), &t[1], 0.5).unwrap(),
        &|t| bmm_scaled_slow(&t[0].t().unwrap(), &t[1], 0.5).unwrap(),
        2e-5,
    );
    // Fewer products than threads: each is split by rows instead.
    let p = randn(&mut rng, &[1, 257, 130], 1.0);
    let q = randn(&mut rng, &[1, 130, 129], 1.0);
    compare(
        "large bmm batch 1",
        &[p, q],
        &|t| bmm(&t[0], &t[1]).unwrap(),
        &|t| t[0].matmul(&t[1]).unwrap(),
        2e-5,
    );
}

/// CI installs OpenBLAS and sets `DISTILLERY_EXPECT_GEMM=openblas`, so that a failure to load
/// it (which would silently fall back to the slower gemm crate) fails the build.
#[test]
fn gemm_backend_is_the_expected_one() {
    let backend = distillery_kernels::gemm_backend();
    match std::env::var("DISTILLERY_EXPECT_GEMM") {
        Ok(want) => assert!(
            backend.starts_with(&want),
            "GEMM backend is {backend:?}, DISTILLERY_EXPECT_GEMM wants {want:?}"
        ),
        Err(_) => assert!(
            backend.starts_with("openblas (") || backend.starts_with("gemm crate ("),
            "{backend:?}"
        ),
    }
}

#[test]
fn bmm_matches_matmul_on_attention_shapes_and_views() {
    let mut rng = Rng::new(2);
    for (lead, m, k, n) in [
        (vec![2, 3], 17, 8, 17),
        (vec![5], 1, 3, 9),
        (vec![1, 1], 33, 65, 2),
    ] {
        let mut sa = lead.clone();
        sa.extend([m, k]);
        let mut sb = lead.clone();
        sb.extend([n, k]); // used transposed, as kᵀ in q·kᵀ
        let a = randn(&mut rng, &sa, 1.0);
        let b = randn(&mut rng, &sb, 1.0);
        let r = sb.len();
        compare(
            "bmm q·kᵀ",
            &[a, b],
            &|t| bmm(&t[0], &t[1].transpose(r - 2, r - 1).unwrap()).unwrap(),
            &|t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
            1e-5,
        );
    }
    let q = randn(&mut rng, &[2, 3, 9, 8], 1.0);
    let k = randn(&mut rng, &[2, 3, 11, 8], 1.0);
    compare(
        "bmm scaled",
        &[q, k],
        &|t| bmm_scaled(&t[0], &t[1].t().unwrap(), 0.125).unwrap(),
        &|t| bmm_scaled_slow(&t[0], &t[1].t().unwrap(), 0.125).unwrap(),
        1e-5,
    );
    let p = randn(&mut rng, &[2, 4, 16, 16], 1.0);
    let v = randn(&mut rng, &[2, 4, 16, 8], 1.0);
    compare(
        "bmm p·v",
        &[p, v],
        &|t| bmm(&t[0], &t[1]).unwrap(),
        &|t| t[0].matmul(&t[1]).unwrap(),
        1e-5,
    );
    // Leading dims that are not contiguous among themselves (a transposed head axis).
    let x = randn(&mut rng, &[3, 2, 5, 4], 1.0);
    let y = randn(&mut rng, &[2, 3, 4, 6], 1.0);
    compare(
        "bmm permuted",
        &[x, y],
        &|t| bmm(&t[0].transpose(0, 1).unwrap(), &t[1]).unwrap(),
        &|t| {
            t[0].transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .matmul(&t[1])
                .unwrap()
        },
        1e-5,
    );
}

/// The fused attention block against split heads → scores → masked softmax → dropout → GEMM
/// → merge heads as composite ops: values and the gradients of q, k and v, with padded keys,
/// dropout on and off, odd sizes, and q/k/v read as column blocks of one wider tensor (a fused
/// QKV projection's output) or transposed.
#[test]
fn attention_block_matches_the_separate_ops() {
    let mut rng = Rng::new(4);
    for (batch, heads, seq, d, p) in [
        (2, 3, 13, 5, 0.1),
        (3, 2, 16, 8, 0.0),
        (1, 12, 128, 32, 0.1),
        (2, 1, 1, 3, 0.5),
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
    // One column (heads = head_dim = 1) read through a transposed view, and a negative dropout
    // probability meaning none, as `dropout` takes it.
    let cols = randn(&mut rng, &[3, 6], 1.0);
    let bias = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let one = |p: f64| AttentionConfig {
        batch: 2,
        heads: 1,
        kv_heads: 1,
        causal: false,
        scale: 1.0,
        dropout: p,
        seed: 1,
    };
    compare(
        "attention, one column",
        &[cols, bias],
        &|t| {
            let c = |i: usize| t[0].narrow(0, i, 1).unwrap().t().unwrap();
            attention(&c(0), &c(1), &c(2), &t[1], &one(-0.5)).unwrap()
        },
        &|t| {
            let c = |i: usize| t[0].narrow(0, i, 1).unwrap().t().unwrap();
            attention_slow(&c(0), &c(1), &c(2), &t[1], &one(0.0)).unwrap()
        },
        1e-6,
    );
    let (batch, heads, seq, d) = (2, 2, 7, 4);
    let qkv = randn(&mut rng, &[batch * seq, 3 * heads * d], 1.0);
    let vt = randn(&mut rng, &[heads * d, batch * seq], 1.0);
    let bias = Tensor::zeros((batch, seq), candle_core::DType::F32, &Device::Cpu).unwrap();
    let cfg = AttentionConfig {
        batch,
        heads,
        kv_heads: heads,
        causal: false,
        scale: 0.5,
        dropout: 0.2,
        seed: 3,
    };
    let parts = |t: &[Tensor]| -> [Tensor; 3] {
        let w = heads * d;
        [
            t[0].narrow(1, 0, w).unwrap(),
            t[0].narrow(1, w, w).unwrap(),
            t[1].t().unwrap(),
        ]
    };
    compare(
        "attention on strided views",
        &[qkv, vt, bias],
        &|t| {
            let [q, k, v] = parts(t);
            attention(&q, &k, &v, &t[2], &cfg).unwrap()
        },
        &|t| {
            let [q, k, v] = parts(t);
            attention_slow(&q, &k, &v, &t[2], &cfg).unwrap()
        },
        1e-5,
    );
}

/// A decoder's attention: causal, with grouped key/value heads (several query heads per
/// key/value head, whose dk and dv accumulate), against the composite with the key/value
/// heads widened; padding on the right (random) and on the left, dropout on and off.
#[test]
fn causal_grouped_attention_matches_the_separate_ops() {
    let mut rng = Rng::new(8);
    for (batch, heads, kv_heads, seq, d, p, left) in [
        (2, 4, 2, 9, 8, 0.0, false),
        (2, 6, 2, 13, 5, 0.1, true),
        (1, 3, 1, 16, 4, 0.0, true),
        (3, 2, 2, 7, 3, 0.0, false),
        (2, 9, 3, 33, 64, 0.0, true),
    ] {
        let (q, k, v) = (
            randn(&mut rng, &[batch * seq, heads * d], 1.0),
            randn(&mut rng, &[batch * seq, kv_heads * d], 1.0),
            randn(&mut rng, &[batch * seq, kv_heads * d], 1.0),
        );
        let mask = if left {
            // Row b starts with b + 1 padding positions (some query rows see only padding).
            let m: Vec<f32> = (0..batch)
                .flat_map(|b| (0..seq).map(move |i| f32::from(u8::from(i > b))))
                .collect();
            Tensor::from_vec(m, (batch, seq), &Device::Cpu).unwrap()
        } else {
            random_mask(&mut rng, batch, seq)
        };
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * f64::from(f32::MIN)).unwrap();
        let cfg = AttentionConfig {
            batch,
            heads,
            kv_heads,
            causal: true,
            scale: 1.0 / (d as f64).sqrt(),
            dropout: p,
            seed: 5 + seq as u64,
        };
        compare(
            &format!("causal attention b{batch} h{heads}/{kv_heads} s{seq} d{d} p{p} left {left}"),
            &[q, k, v, bias],
            &|t| attention(&t[0], &t[1], &t[2], &t[3], &cfg).unwrap(),
            &|t| attention_slow(&t[0], &t[1], &t[2], &t[3], &cfg).unwrap(),
            1e-5,
        );
    }
    // Causality itself: changing the last token's key and value moves no earlier output.
    let (batch, heads, seq, d) = (1, 2, 6, 4);
    let q = randn(&mut rng, &[seq, heads * d], 1.0);
    let k = randn(&mut rng, &[seq, d], 1.0);
    let v = randn(&mut rng, &[seq, d], 1.0);
    let bias = Tensor::zeros((batch, seq), candle_core::DType::F32, &Device::Cpu).unwrap();
    let cfg = AttentionConfig {
        batch,
        heads,
        kv_heads: 1,
        causal: true,
        scale: 0.5,
        dropout: 0.0,
        seed: 0,
    };
    let bump = |t: &Tensor| {
        let last = (t.narrow(0, seq - 1, 1).unwrap() + 5.0).unwrap();
        Tensor::cat(&[&t.narrow(0, 0, seq - 1).unwrap(), &last], 0).unwrap()
    };
    let a = attention(&q, &k, &v, &bias, &cfg).unwrap();
    let b = attention(&q, &bump(&k), &bump(&v), &bias, &cfg).unwrap();
    let head = |t: &Tensor| to_vec(&t.narrow(0, 0, seq - 1).unwrap());
    assert_eq!(head(&a), head(&b));
    assert_ne!(
        to_vec(&a.narrow(0, seq - 1, 1).unwrap()),
        to_vec(&b.narrow(0, seq - 1, 1).unwrap())
    );
}

#[test]
fn masked_softmax_matches_add_then_softmax_and_leaves_the_mask_alone() {
    let mut rng = Rng::new(3);
    for (b, h, q, k) in [(3, 2, 5, 13), (2, 12, 16, 128), (4, 1, 1, 7)] {
        let x = randn(&mut rng, &[b, h, q, k], 3.0);
        let mask = random_mask(&mut rng, b, k);
        let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * f64::from(f32::MIN)).unwrap();
        compare(
            "masked softmax",
            &[x, bias],
            &|t| softmax_last_dim_masked(&t[0], &t[1]).unwrap(),
            &|t| softmax_last_dim_masked_slow(&t[0], &t[1]).unwrap(),
            1e-6,
        );
    }
    // The mask is a constant: it gets no gradient, and padded keys get no probability.
    let x = Var::from_tensor(&randn(&mut rng, &[1, 2, 3, 4], 1.0)).unwrap();
    let bias = Var::new(&[[0f32, 0.0, f32::MIN, 0.0]], &Device::Cpu).unwrap();
    let y = softmax_last_dim_masked(x.as_tensor(), bias.as_tensor()).unwrap();
    let v = to_vec(&y);
    assert!(v
        .chunks(4)
        .all(|r| r[2] == 0.0 && (r.iter().sum::<f32>() - 1.0).abs() < 1e-6));
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(bias.as_tensor()).is_none() && g.get(x.as_tensor()).is_some());
}

#[test]
fn dropout_is_its_reference_bit_for_bit_and_keeps_the_right_share() {
    let mut rng = Rng::new(4);
    let x = randn(&mut rng, &[3, 50_001], 1.0); // spans several parallel chunks, odd tail
    for (p, seed) in [(0.1, 7u64), (0.5, 8)] {
        let fused = Var::from_tensor(&x).unwrap();
        let slow = Var::from_tensor(&x).unwrap();
        let yf = dropout(fused.as_tensor(), p, seed).unwrap();
        let ys = dropout_slow(slow.as_tensor(), p, seed).unwrap();
        assert_eq!(to_vec(&yf), to_vec(&ys), "p={p}: values");
        let u = randn(&mut rng, x.dims(), 1.0);
        let gf = (&yf * &u).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (&ys * &u).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gs) = (
            to_vec(gf.get(fused.as_tensor()).unwrap()),
            to_vec(gs.get(slow.as_tensor()).unwrap()),
        );
        assert_eq!(gf, gs, "p={p}: gradients");
        // The gradient is the mask·g: zero exactly where the value was dropped.
        let (y, xs, uv) = (to_vec(&yf), to_vec(&x), to_vec(&u));
        for i in (0..y.len()).step_by(997) {
            let kept = y[i] != 0.0;
            assert_eq!(
                gf[i] != 0.0 || uv[i] == 0.0,
                kept || xs[i] == 0.0,
                "element {i}"
            );
            if kept {
                let scale = 1.0 / (1.0 - p as f32);
                assert!((y[i] - xs[i] * scale).abs() <= 1e-6 * y[i].abs().max(1.0));
            }
        }
        let dropped = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
        assert!((dropped - p).abs() < 0.01, "p={p}: dropped {dropped}");
    }
    // Same seed, same mask; another seed, another mask; p = 0 is the identity.
    let a = to_vec(&dropout(&x, 0.3, 1).unwrap());
    assert_eq!(a, to_vec(&dropout(&x, 0.3, 1).unwrap()));
    assert_ne!(a, to_vec(&dropout(&x, 0.3, 2).unwrap()));
    assert_eq!(to_vec(&dropout(&x, 0.0, 1).unwrap()), to_vec(&x));
    assert!(dropout(&x, 1.0, 1).is_err());
}

#[test]
fn split_and_merge_heads_match_reshape_transpose_and_invert_each_other() {
    let mut rng = Rng::new(5);
    for (b, s, heads, d) in [(2, 5, 3, 4), (1, 1, 1, 7), (3, 16, 12, 8)] {
        let x = randn(&mut rng, &[b * s, heads * d], 1.0);
        compare(
            "split heads",
            std::slice::from_ref(&x),
            &|t| split_heads(&t[0], b, heads).unwrap(),
            &|t| split_heads_slow(&t[0], b, heads).unwrap(),
            0.0,
        );
        let y = randn(&mut rng, &[b, heads, s, d], 1.0);
        compare(
            "merge heads",
            &[y],
            &|t| merge_heads(&t[0]).unwrap(),
            &|t| merge_heads_slow(&t[0]).unwrap(),
            0.0,
        );
        let round = merge_heads(&split_heads(&x, b, heads).unwrap()).unwrap();
        assert_eq!(to_vec(&round), to_vec(&x));
    }
}

#[test]
fn embeddings_match_index_select_and_adds_for_all_three_tables() {
    let mut rng = Rng::new(6);
    let (vocab, types, positions, h) = (50, 2, 16, 12);
    let (b, s) = (3, 7);
    let ids: Vec<u32> = (0..b * s).map(|i| (i * 7 % vocab) as u32).collect(); // repeats
    let tys: Vec<u32> = (0..b * s).map(|i| (i % 3 == 0) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
    let tys = Tensor::from_vec(tys, (b, s), &Device::Cpu).unwrap();
    let tables = [
        randn(&mut rng, &[vocab, h], 1.0),
        randn(&mut rng, &[types, h], 1.0),
        randn(&mut rng, &[positions, h], 1.0),
    ];
    compare(
        "embeddings",
        &tables,
        &|t| embeddings(&t[0], &t[1], &t[2], &ids, &tys).unwrap(),
        &|t| embeddings_slow(&t[0], &t[1], &t[2], &ids, &tys).unwrap(),
        1e-6,
    );
    // Out-of-range ids and over-long sequences are errors, not panics.
    let bad = Tensor::new(&[[0u32, vocab as u32]], &Device::Cpu).unwrap();
    let zeros = bad.zeros_like().unwrap();
    let err = embeddings(&tables[0], &tables[1], &tables[2], &bad, &zeros).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let long = Tensor::zeros((1, positions + 1), candle_core::DType::U32, &Device::Cpu).unwrap();
    assert!(embeddings(&tables[0], &tables[1], &tables[2], &long, &long).is_err());
}
