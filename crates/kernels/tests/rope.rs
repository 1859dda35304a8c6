//! Fused rotary embedding (RoPE) against the composite from candle ops: values and the input
//! gradient on query- and key-shaped tensors (grouped heads, odd lengths), a finite-difference
//! check against the f64 reference, and an exactness property: rotating by `θ` then by `−θ`
//! (the backward applied to the forward, with `sin` the same) returns the input.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Tensor, Var};
use common::{assert_close, check_finite_differences, randn, to_vec, Rng};
use distillery_kernels::fused::{rope, rope_slow};

/// cos and sin of seeded angles, [batch, seq, d] (halves not repeated: the op is general).
fn angles(rng: &mut Rng, b: usize, l: usize, d: usize) -> (Tensor, Tensor) {
    let a = (randn(rng, &[b, l, d], 1.0) * 3.0).unwrap();
    (a.cos().unwrap(), a.sin().unwrap())
}

#[test]
fn rope_matches_the_composite_in_value_and_gradient() {
    let mut rng = Rng::new(21);
    for (b, h, l, d) in [(2, 4, 5, 8), (1, 2, 7, 64), (3, 1, 1, 2), (2, 9, 13, 64)] {
        let x = randn(&mut rng, &[b, h, l, d], 1.0);
        let (cos, sin) = angles(&mut rng, b, l, d);
        let u = randn(&mut rng, &[b, h, l, d], 1.0);
        let run = |fused: bool| {
            let v = Var::from_tensor(&x).unwrap();
            let y = match fused {
                true => rope(v.as_tensor(), &cos, &sin).unwrap(),
                false => rope_slow(v.as_tensor(), &cos, &sin).unwrap(),
            };
            let g = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
            (to_vec(&y), to_vec(g.get(v.as_tensor()).unwrap()))
        };
        let ((yf, gf), (ys, gs)) = (run(true), run(false));
        assert_close("rope value", &yf, &ys, 1e-6);
        assert_close("rope dx", &gf, &gs, 1e-6);
    }
}

#[test]
fn rope_gradient_matches_finite_differences() {
    let mut rng = Rng::new(22);
    let (b, h, l, d) = (1, 2, 3, 6);
    let x = randn(&mut rng, &[b, h, l, d], 1.0);
    let (cos, sin) = angles(&mut rng, b, l, d);
    let u = randn(&mut rng, &[b, h, l, d], 1.0);
    let v = Var::from_tensor(&x).unwrap();
    let g = (rope(v.as_tensor(), &cos, &sin).unwrap() * &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let analytic = to_vec(g.get(v.as_tensor()).unwrap());
    let f64_ = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let (c64, s64) = (f64_(&cos), f64_(&sin));
    check_finite_differences(
        "rope dx",
        &x,
        &u,
        &analytic,
        &|t| rope_slow(t, &c64, &s64).unwrap(),
        &[0, 4, 17, 35],
    );
}

/// With Hugging Face's repeated halves (cos, sin of the same angle in both halves) the rotation
/// is orthogonal: the backward of the forward (rotation by −θ) gives the input back.
#[test]
fn rope_backward_inverts_the_forward_for_true_rotations() {
    let mut rng = Rng::new(23);
    let (b, h, l, d) = (2, 3, 4, 16);
    let half = randn(&mut rng, &[b, l, d / 2], 2.0);
    let a = Tensor::cat(&[&half, &half], 2).unwrap();
    let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
    let x = randn(&mut rng, &[b, h, l, d], 1.0);
    let v = Var::from_tensor(&x).unwrap();
    let y = rope(v.as_tensor(), &cos, &sin).unwrap();
    // d/dx Σ y⊙y' with y' = y (detached) is Rᵀ y = x for orthogonal R.
    let g = (&y * y.detach())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let back = to_vec(g.get(v.as_tensor()).unwrap());
    assert_close("Rᵀ R x", &back, &to_vec(&x), 1e-5);
}
