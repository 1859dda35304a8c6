//! The portable (non-AVX2) code path against the slow reference. A separate test binary, because
//! the path is chosen through an environment variable read by every call.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_eval_close, Problem, Rng};

#[test]
fn portable_path_matches_slow() {
    std::env::set_var("DISTILLERY_KERNELS_PORTABLE", "1");
    let mut rng = Rng::new(53);
    for (b, h, l, d_t, d_s) in [(2, 2, 70, 24, 40), (1, 1, 200, 7, 33), (3, 1, 1, 5, 3)] {
        let p = Problem::random(&mut rng, b, h, l, d_t, d_s);
        assert_eval_close(
            &format!("portable ({b},{h},{l},{d_t},{d_s})"),
            &p.eval(true),
            &p.eval(false),
            1e-5,
            1e-5,
        );
    }
}
