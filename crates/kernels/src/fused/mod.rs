//! Fused CPU ops with backward: erf-GELU, softmax over the last dim (optionally with an
//! additive key mask), layer norm, linear with bias, and a counter-based dropout.
//!
//! candle's own fused softmax and layer norm have no backward (they silently drop gradients) and
//! its erf-GELU is a scalar loop; the composites that do have a backward make several passes and
//! allocations. These ops make one or two passes per row with the 8-lane [`Simd`] layer, run in
//! parallel over rows, and have backward ops of the same kind. f32 on the CPU only: other dtypes
//! and devices fall back to the composite references (`*_slow`), which are also what the tests
//! compare against.

mod attention;
mod dropout;
mod embeddings;
mod gelu;
mod heads;
mod layer_norm;
mod matmul;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;

pub use attention::{attention, attention_slow, AttentionConfig};
pub use dropout::{dropout, dropout_mask, dropout_slow};
pub use embeddings::{embeddings, embeddings_slow};
pub use gelu::{gelu_erf, gelu_erf_slow};
pub use heads::{merge_heads, merge_heads_slow, split_heads, split_heads_slow};
pub use layer_norm::{layer_norm, layer_norm_slow};
pub use matmul::{bmm, bmm_scaled, bmm_scaled_slow, linear, linear_slow};
pub use rms_norm::{rms_norm, rms_norm_slow};
pub use rope::{rope, rope_slow};
pub use softmax::{
    softmax_last_dim, softmax_last_dim_masked, softmax_last_dim_masked_slow, softmax_last_dim_slow,
};
pub use swiglu::{swiglu, swiglu_slow};

use candle_core::{CpuStorage, DType, Device, Layout, Tensor};
use rayon::prelude::*;

use crate::simd::{Isa, Simd, LANES};

/// Rows per rayon task: enough work to amortise scheduling (~16k floats).
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// Whether the fused CPU path applies.
fn fused_applies(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu)
}

/// A zero-filled output buffer of `n` floats, filled by all threads. `vec![0f32; n]` zeroes on
/// the calling thread (glibc's calloc must clear reused heap memory), which in a training step
/// left the other core idle for about a tenth of the main thread's time.
pub(crate) fn par_zeroed(n: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    if n < CHUNK {
        return vec![0f32; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        });
    // SAFETY: all n elements were initialised above.
    unsafe { v.set_len(n) };
    v
}

/// The contiguous f32 slice behind a storage/layout pair.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => match v.get(a..b) {
            Some(v) => Ok(v),
            None => candle_core::bail!("{op}: layout out of bounds"),
        },
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: input must be contiguous"),
        _ => candle_core::bail!("{op}: expected an f32 tensor"),
    }
}

/// Applies `f(isa, input rows, output rows)` to matching chunks of whole rows in parallel.
fn par_rows(
    inputs: &[&[f32]],
    out: &mut [f32],
    width: usize,
    f: impl Fn(Isa, &[&[f32]], &mut [f32]) + Sync,
) {
    let isa = Isa::detect();
    let chunk = rows_per_task(width) * width;
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
        let start = i * chunk;
        let ins: Vec<&[f32]> = inputs.iter().map(|x| &x[start..start + o.len()]).collect();
        f(isa, &ins, o);
    });
}

/// The width of a row-wise op's rows (the last dim of `l1`), which must equal its weight's.
fn check_width(op: &str, l1: &Layout, w_len: usize) -> candle_core::Result<usize> {
    let width = l1.dims().last().copied().unwrap_or(0);
    if width == 0 || width != w_len {
        candle_core::bail!("{op}: last dim {width} does not match the weight's {w_len}");
    }
    Ok(width)
}

/// Adds per-chunk partial sums into `total` in chunk order (so a parameter gradient is the
/// same bits whatever the thread count).
fn sum_partials(total: &mut [f32], partials: &[Vec<f32>]) {
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
}

/// Horizontal sum and max of a vector.
#[inline(always)]
fn hsum<S: Simd>(s: S, v: S::V) -> f32 {
    let mut a = [0f32; LANES];
    s.store_slice(&mut a, v);
    a.iter().sum()
}

#[inline(always)]
fn hmax<S: Simd>(s: S, v: S::V) -> f32 {
    let mut a = [0f32; LANES];
    s.store_slice(&mut a, v);
    a.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Defines `$name(isa, args..)` running the generic row kernel `$kernel(simd, args..)` with the
/// detected instruction set. On x86-64 the AVX2 instance is compiled inside a
/// `#[target_feature]` function, so the `#[inline(always)]` kernel and its intrinsics inline there.
macro_rules! simd_entry {
    ($name:ident => $kernel:ident ( $($a:ident : $t:ty),* )) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: $crate::simd::Isa, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2(s: $crate::simd::Avx2, $($a: $t),*) {
                $kernel(s, $($a),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Avx2` token exists only when AVX2 and FMA were detected at run time.
                $crate::simd::Isa::Avx2(s) => unsafe { avx2(s, $($a),*) },
                $crate::simd::Isa::Portable(s) => $kernel(s, $($a),*),
            }
        }
    };
}
pub(crate) use simd_entry;
