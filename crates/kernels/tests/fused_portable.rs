//! The fused row-wise ops (and the masked softmax) on the portable (non-AVX2) path. A separate binary because the path is
//! chosen through an environment variable.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_close, randn, to_vec, Rng};
use distillery_kernels::fused::*;

#[test]
fn portable_path_matches_the_references() {
    std::env::set_var("DISTILLERY_KERNELS_PORTABLE", "1");
    let mut rng = Rng::new(9);
    let x = randn(&mut rng, &[5, 37], 3.0);
    let w = randn(&mut rng, &[37], 1.0);
    let b = randn(&mut rng, &[37], 1.0);
    assert_close(
        "gelu",
        &to_vec(&gelu_erf(&x).unwrap()),
        &to_vec(&gelu_erf_slow(&x).unwrap()),
        2e-6,
    );
    assert_close(
        "softmax",
        &to_vec(&softmax_last_dim(&x).unwrap()),
        &to_vec(&softmax_last_dim_slow(&x).unwrap()),
        1e-6,
    );
    assert_close(
        "layer_norm",
        &to_vec(&layer_norm(&x, &w, &b, 1e-12).unwrap()),
        &to_vec(&layer_norm_slow(&x, &w, &b, 1e-12).unwrap()),
        2e-5,
    );
    assert_close(
        "rms_norm",
        &to_vec(&rms_norm(&x, &w, 1e-5).unwrap()),
        &to_vec(&rms_norm_slow(&x, &w, 1e-5).unwrap()),
        2e-5,
    );
    assert_close(
        "swiglu",
        &to_vec(&swiglu(&x, &x.sin().unwrap()).unwrap()),
        &to_vec(&swiglu_slow(&x, &x.sin().unwrap()).unwrap()),
        2e-5,
    );
    // Scores [5, 1, 37] with a key mask [5, 37] (one group per row).
    let scores = x.unsqueeze(1).unwrap();
    let mask = common::random_mask(&mut rng, 5, 37);
    let bias = ((mask.ones_like().unwrap() - &mask).unwrap() * f64::from(f32::MIN)).unwrap();
    assert_close(
        "masked softmax",
        &to_vec(&softmax_last_dim_masked(&scores, &bias).unwrap()),
        &to_vec(&softmax_last_dim_masked_slow(&scores, &bias).unwrap()),
        1e-6,
    );
}
