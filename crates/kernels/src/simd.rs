//! A minimal 8-lane `f32` SIMD layer for the CPU kernels.
//!
//! Kernels are written once, generic over [`Simd`], with `#[inline(always)]` helpers. They are
//! instantiated twice: with [`Portable`] (plain Rust on `[f32; 8]`, runs on any CPU) and, on
//! x86-64, with `Avx2` inside a `#[target_feature(enable = "avx2,fma")]` entry point, so that the
//! intrinsics inline into one function compiled for AVX2+FMA. Which one runs is decided at run time
//! by [`Isa::detect`]; nothing requires the binary to be built with `-C target-cpu`.

/// Lanes per vector.
pub(crate) const LANES: usize = 8;

/// An 8-lane `f32` vector instruction set. The receiver is a zero-sized token whose existence
/// proves that the instruction set is available on this CPU.
pub(crate) trait Simd: Copy + Send + Sync {
    type V: Copy;

    fn zero(self) -> Self::V;
    fn splat(self, x: f32) -> Self::V;
    /// Unaligned load of 8 floats.
    ///
    /// # Safety
    /// `p` must be valid for reading 8 `f32`.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Unaligned store of 8 floats.
    ///
    /// # Safety
    /// `p` must be valid for writing 8 `f32`.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused where the hardware has FMA).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `e^x`, relative error ~2e-7 for `x` in [-87.3, 88]; exactly 0 below -87.33 (including
    /// `-inf`). Only used with `x <= ~0` by the kernels.
    fn exp(self, x: Self::V) -> Self::V;

    /// Loads 8 floats from the start of `x` (which must hold at least 8).
    #[inline(always)]
    fn load_slice(self, x: &[f32]) -> Self::V {
        assert!(x.len() >= LANES);
        // SAFETY: length checked above.
        unsafe { self.load(x.as_ptr()) }
    }

    /// Stores 8 floats to the start of `x` (which must hold at least 8).
    #[inline(always)]
    fn store_slice(self, x: &mut [f32], v: Self::V) {
        assert!(x.len() >= LANES);
        // SAFETY: length checked above.
        unsafe { self.store(x.as_mut_ptr(), v) }
    }
}

// Constants of the Cephes `expf` algorithm (range reduction by ln 2 split in two parts, then a
// degree-6 polynomial for e^r on [-ln2/2, ln2/2]).
const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.336_55; // ln(2^-126): below this the result is flushed to 0
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// Scalar `e^x` with the same algorithm (and flush-to-zero convention) as [`Simd::exp`].
#[inline(always)]
pub(crate) fn exp_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let xc = x.min(EXP_HI);
    let n = (xc * LOG2E).round();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    let y = p * (r * r) + r + 1.0;
    // n is in [-126, 127] here, so the biased exponent is a normal one.
    let pow2n = f32::from_bits((((n as i32) + 127) as u32) << 23);
    y * pow2n
}

/// Portable implementation on `[f32; 8]`; LLVM vectorises most of it for the baseline ISA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    type V = [f32; LANES];

    #[inline(always)]
    fn zero(self) -> Self::V {
        [0.0; LANES]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 8 readable floats.
        unsafe { std::ptr::read_unaligned(p.cast::<[f32; LANES]>()) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees 8 writable floats.
        unsafe { std::ptr::write_unaligned(p.cast::<[f32; LANES]>(), v) }
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // Not `mul_add`: without hardware FMA that is a slow libm call.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn max(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    fn div(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    fn exp(self, x: Self::V) -> Self::V {
        std::array::from_fn(|i| exp_scalar(x[i]))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX2 + FMA. Only constructible through [`Avx2::detect`].
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2 {
        _private: (),
    }

    impl Avx2 {
        pub(crate) fn detect() -> Option<Self> {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                Some(Self { _private: () })
            } else {
                None
            }
        }
    }

    // SAFETY (all methods): an `Avx2` value exists only if AVX2 and FMA were detected at run time.
    impl Simd for Avx2 {
        type V = __m256;

        #[inline(always)]
        fn zero(self) -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn exp(self, x: __m256) -> __m256 {
            unsafe {
                let lo = _mm256_set1_ps(EXP_LO);
                let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(EXP_HI));
                let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
                );
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
                let mut p = _mm256_set1_ps(P0);
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
                let y = _mm256_fmadd_ps(
                    p,
                    _mm256_mul_ps(r, r),
                    _mm256_add_ps(r, _mm256_set1_ps(1.0)),
                );
                let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
                let res = _mm256_mul_ps(y, pow2n);
                // Flush to zero below the normal range (covers -inf; NaN compares false and its
                // lane gives garbage-but-finite, as does every NaN input in this layer).
                let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
                _mm256_andnot_ps(under, res)
            }
        }
    }
}

/// The instruction set chosen at run time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    Portable(Portable),
}

impl Isa {
    /// The best instruction set of this CPU, unless `DISTILLERY_KERNELS_PORTABLE` is set (to any
    /// value), which forces the portable path (used by the tests to cover both).
    pub(crate) fn detect() -> Self {
        if std::env::var_os("DISTILLERY_KERNELS_PORTABLE").is_some() {
            return Isa::Portable(Portable);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = Avx2::detect() {
            return Isa::Avx2(s);
        }
        Isa::Portable(Portable)
    }
}

/// `C[m×n] (+)= A[m×k] · B[k×n]` on raw pointers, with `A(i,p) = a[i·rsa + p·csa]`,
/// `B(p,j) = b[p·ldb + j]` and `C(i,j) = c[i·ldc + j]`. `accumulate` adds into `C` instead of
/// overwriting it. Register blocks of 6 rows × 16 columns (12 accumulators), then 8-column and
/// scalar column tails, and 1–5-row tails.
///
/// # Safety
/// All indexed elements must be in bounds of their allocations, and `C` must not alias `A`/`B`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn gemm<S: Simd>(
    s: S,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut i = 0;
    // SAFETY (all calls): forwarded from the caller; row offsets stay below m.
    unsafe {
        while i + 6 <= m {
            gemm_rows::<S, 6>(
                s,
                n,
                k,
                a.add(i * rsa),
                rsa,
                csa,
                b,
                ldb,
                c.add(i * ldc),
                ldc,
                accumulate,
            );
            i += 6;
        }
        let (a, c) = (a.add(i * rsa), c.add(i * ldc));
        match m - i {
            1 => gemm_rows::<S, 1>(s, n, k, a, rsa, csa, b, ldb, c, ldc, accumulate),
            2 => gemm_rows::<S, 2>(s, n, k, a, rsa, csa, b, ldb, c, ldc, accumulate),
            3 => gemm_rows::<S, 3>(s, n, k, a, rsa, csa, b, ldb, c, ldc, accumulate),
            4 => gemm_rows::<S, 4>(s, n, k, a, rsa, csa, b, ldb, c, ldc, accumulate),
            5 => gemm_rows::<S, 5>(s, n, k, a, rsa, csa, b, ldb, c, ldc, accumulate),
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_rows<S: Simd, const MR: usize>(
    s: S,
    n: usize,
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut j = 0;
    // SAFETY (all blocks): forwarded from `gemm`; column offsets stay below n.
    unsafe {
        while j + 2 * LANES <= n {
            micro::<S, MR, 2>(s, k, a, rsa, csa, b.add(j), ldb, c.add(j), ldc, accumulate);
            j += 2 * LANES;
        }
        if j + LANES <= n {
            micro::<S, MR, 1>(s, k, a, rsa, csa, b.add(j), ldb, c.add(j), ldc, accumulate);
            j += LANES;
        }
        for i in 0..MR {
            for jj in j..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc += *a.add(i * rsa + p * csa) * *b.add(p * ldb + jj);
                }
                let cp = c.add(i * ldc + jj);
                *cp = if accumulate { *cp + acc } else { acc };
            }
        }
    }
}

/// The register-blocked micro-kernel: `MR` rows × `NV` vectors of columns, accumulated over `k`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[s.zero(); NV]; MR];
    // SAFETY: forwarded from `gemm`.
    unsafe {
        for p in 0..k {
            let bp = b.add(p * ldb);
            let mut bv = [s.zero(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = s.load(bp.add(v * LANES));
            }
            let ap = a.add(p * csa);
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = s.splat(*ap.add(i * rsa));
                for v in 0..NV {
                    acc[v] = s.fma(ai, bv[v], acc[v]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let cp = c.add(i * ldc + v * LANES);
                let r = if accumulate {
                    s.add(s.load(cp), acc)
                } else {
                    acc
                };
                s.store(cp, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check_exp<S: Simd>(s: S) {
        let xs: Vec<f32> = (0..800)
            .map(|i| -90.0 + i as f32 * 0.1125)
            .chain([-1e4, f32::NEG_INFINITY, 0.0, -1e-8])
            .collect();
        for chunk in xs.chunks(LANES) {
            let mut buf = [0.0f32; LANES];
            buf[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0.0f32; LANES];
            s.store_slice(&mut out, s.exp(s.load_slice(&buf)));
            for (x, y) in buf.iter().zip(out) {
                let want = (*x as f64).exp();
                if *x < EXP_LO {
                    assert_eq!(y, 0.0, "exp({x})");
                } else {
                    let rel = ((y as f64 - want) / want).abs();
                    assert!(rel < 4e-7, "exp({x}) = {y}, want {want}, rel {rel}");
                }
                let sc = exp_scalar(*x);
                assert!(
                    (sc - y).abs() <= 2e-7 * y.abs() + f32::MIN_POSITIVE,
                    "scalar exp({x})"
                );
            }
        }
    }

    #[test]
    fn exp_portable() {
        check_exp(Portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_avx2() {
        if let Some(s) = Avx2::detect() {
            check_exp(s);
        }
    }

    fn check_gemm<S: Simd>(s: S) {
        for (m, n, k) in [
            (1, 1, 1),
            (6, 16, 3),
            (7, 24, 5),
            (13, 37, 32),
            (5, 8, 0),
            (12, 48, 17),
        ] {
            for accumulate in [false, true] {
                // A stored transposed (rsa = 1, csa = m) to exercise strides.
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5)
                    .collect();
                let mut c: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
                let c0 = c.clone();
                unsafe {
                    gemm(
                        s,
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        1,
                        m,
                        b.as_ptr(),
                        n,
                        c.as_mut_ptr(),
                        n,
                        accumulate,
                    );
                }
                for i in 0..m {
                    for j in 0..n {
                        let mut want: f32 = (0..k).map(|p| a[i + p * m] * b[p * n + j]).sum();
                        if accumulate {
                            want += c0[i * n + j];
                        }
                        assert!(
                            (c[i * n + j] - want).abs() < 1e-4,
                            "({m},{n},{k}) [{i},{j}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_portable() {
        check_gemm(Portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gemm_avx2() {
        if let Some(s) = Avx2::detect() {
            check_gemm(s);
        }
    }
}
