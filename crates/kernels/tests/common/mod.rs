//! Shared helpers of the kernel tests.
#![allow(dead_code, clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use distillery_kernels::{attention_kl_rows, attention_kl_rows_slow, AttentionKlConfig};

/// splitmix64: a tiny deterministic generator, so that every proptest case is reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A `[..]` f32 tensor of standard normal values times `std`.
pub fn randn(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// How a batch item is masked.
#[derive(Debug, Clone, Copy)]
pub enum MaskKind {
    AllValid,
    Random,
    Prefix,
    AllPadded,
}

/// A `[b, l]` f32 mask, one kind per batch item chosen from `rng` (all four kinds occur).
pub fn random_mask(rng: &mut Rng, b: usize, l: usize) -> Tensor {
    let mut v = vec![0f32; b * l];
    for bi in 0..b {
        let kind = match rng.below(8) {
            0..=2 => MaskKind::AllValid,
            3 | 4 => MaskKind::Random,
            5 | 6 => MaskKind::Prefix,
            _ => MaskKind::AllPadded,
        };
        let prefix = 1 + rng.below(l);
        for j in 0..l {
            let valid = match kind {
                MaskKind::AllValid => true,
                MaskKind::Random => rng.below(3) != 0,
                MaskKind::Prefix => j < prefix,
                MaskKind::AllPadded => false,
            };
            v[bi * l + j] = if valid { 1.0 } else { 0.0 };
        }
    }
    Tensor::from_vec(v, (b, l), &Device::Cpu).unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// The tolerance used throughout: `|x − y| ≤ tol · max(1, |y|)` elementwise, i.e. absolute for
/// values below 1 and relative above.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (&x, &y)) in got.iter().zip(want).enumerate() {
        assert!(x.is_finite(), "{what}[{i}] = {x} is not finite");
        let err = (x - y).abs() / y.abs().max(1.0);
        if err > worst.0 || err.is_nan() {
            worst = (err, i);
        }
    }
    let (err, i) = worst;
    assert!(
        err <= tol,
        "{what}[{i}]: got {} want {} (scaled error {err:e} > {tol:e})",
        got[i],
        want[i]
    );
}

/// The per-row values and the gradients w.r.t. `q_s` and `k_s` of `Σ rows·weights`.
pub struct Eval {
    pub rows: Vec<f32>,
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
}

/// Inputs of one attention-KL problem.
pub struct Problem {
    pub q_t: Tensor,
    pub k_t: Tensor,
    pub q_s: Tensor,
    pub k_s: Tensor,
    pub mask: Tensor,
    pub weights: Tensor,
    pub cfg: AttentionKlConfig,
}

impl Problem {
    pub fn random(rng: &mut Rng, b: usize, h: usize, l: usize, d_t: usize, d_s: usize) -> Self {
        Self {
            q_t: randn(rng, &[b, h, l, d_t], 1.0),
            k_t: randn(rng, &[b, h, l, d_t], 1.0),
            q_s: randn(rng, &[b, h, l, d_s], 1.0),
            k_s: randn(rng, &[b, h, l, d_s], 1.0),
            mask: random_mask(rng, b, l),
            weights: randn(rng, &[b, h, l], 1.0),
            cfg: AttentionKlConfig::for_head_dims(d_t, d_s),
        }
    }

    /// Casts every input to `dt` (the mask and weights stay f32).
    pub fn to_dtype(&self, dt: DType) -> Self {
        Self {
            q_t: self.q_t.to_dtype(dt).unwrap(),
            k_t: self.k_t.to_dtype(dt).unwrap(),
            q_s: self.q_s.to_dtype(dt).unwrap(),
            k_s: self.k_s.to_dtype(dt).unwrap(),
            mask: self.mask.clone(),
            weights: self.weights.clone(),
            cfg: self.cfg,
        }
    }

    pub fn eval(&self, fused: bool) -> Eval {
        let q_s = Var::from_tensor(&self.q_s).unwrap();
        let k_s = Var::from_tensor(&self.k_s).unwrap();
        let f = if fused {
            attention_kl_rows
        } else {
            attention_kl_rows_slow
        };
        let rows = f(
            &self.q_t,
            &self.k_t,
            q_s.as_tensor(),
            k_s.as_tensor(),
            &self.mask,
            &self.cfg,
        )
        .unwrap();
        if fused {
            assert_eq!(rows.dtype(), DType::F32);
        }
        let loss = (&rows * &self.weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let dq = grads.get(q_s.as_tensor()).unwrap();
        let dk = grads.get(k_s.as_tensor()).unwrap();
        assert_eq!(dq.dtype(), self.q_s.dtype());
        assert_eq!(dq.dims(), self.q_s.dims());
        Eval {
            rows: to_vec(&rows),
            dq: to_vec(dq),
            dk: to_vec(dk),
        }
    }
}

pub fn assert_eval_close(what: &str, got: &Eval, want: &Eval, tol_rows: f32, tol_grads: f32) {
    assert_close(&format!("{what} rows"), &got.rows, &want.rows, tol_rows);
    assert_close(&format!("{what} dQ_s"), &got.dq, &want.dq, tol_grads);
    assert_close(&format!("{what} dK_s"), &got.dk, &want.dk, tol_grads);
}

/// Central differences of `Σ reference(x)⊙u` (in f64) at `points` of `x`, against `analytic`
/// (the fused op's gradient of `Σ f(x)⊙u` at `x`), within 1e-5 relative (absolute below 1).
pub fn check_finite_differences(
    name: &str,
    x: &Tensor,
    u: &Tensor,
    analytic: &[f32],
    reference: &dyn Fn(&Tensor) -> Tensor,
    points: &[usize],
) {
    let u64_ = u.to_dtype(DType::F64).unwrap();
    let base: Vec<f64> = to_vec(x).iter().map(|&v| f64::from(v)).collect();
    for &i in points {
        let at = |d: f64| {
            let mut p = base.clone();
            p[i] += d;
            let t = Tensor::from_vec(p, x.dims(), &Device::Cpu).unwrap();
            (reference(&t) * &u64_)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        let got = f64::from(analytic[i]);
        assert!(
            (got - fd).abs() <= 1e-5 * fd.abs().max(1.0),
            "{name}[{i}]: fused {got} vs finite difference {fd}"
        );
    }
}
