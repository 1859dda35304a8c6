//! Benchmark of the CUDA attention-KL: forward, and forward + backward, for
//! `(batch, heads, seq, dim)` = (8,12,512,64), (4,12,4096,64), (1,12,8192,64) in bf16 and f32
//! (teacher and student with the same head dim, all positions valid). One JSON line per
//! measurement:
//!
//! `{"impl":"distillery-cuda","path":"tensor-cores","pass":"fwd+bwd","dtype":"bf16","b":8,
//!   "h":12,"l":512,"d":64,"median_s":…,"extra_bytes":…,"mem_method":"mempool_high","tflops":…}`
//!
//! bf16 is measured on both score paths (`path`: "tensor-cores", the default, and
//! "cuda-cores"); f32 always runs on the CUDA cores.
//!
//! - `median_s`: median wall time of `--iters` runs (default 20, after 3 warm-ups), each ending
//!   with a device synchronisation.
//! - `extra_bytes`: device memory beyond the inputs, at its peak during one run (the high-water
//!   mark of the stream-ordered memory pool candle allocates from; `mem_get_info` before/after
//!   if the device has no memory pools). Includes the outputs (per-row KL, statistics, and for
//!   the backward the gradients of `q_s`, `k_s`).
//! - `tflops`: counted FLOPs / median time, with forward `2·b·h·l²·(d_t+d_s)` and backward
//!   `2·b·h·l²·(d_t+d_s)` (recomputed scores) `+ 4·b·h·l²·d_s` (dQ, dK).
//!
//! Inputs are generated on the host (no cuRAND). Run: `cargo run --release --features cuda
//! --example cuda_bench -- [--iters N] [--quick]`; `.gpu/run.sh` runs the prebuilt binary.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{DType, Device, Tensor, Var};
use distillery_kernels::attention_kl::set_cuda_tensor_cores;
use distillery_kernels::{attention_kl_rows, AttentionKlConfig};

const SHAPES: [(usize, usize, usize, usize); 3] =
    [(8, 12, 512, 64), (4, 12, 4096, 64), (1, 12, 8192, 64)];

/// Reads memory-pool statistics of the device (`None` without memory-pool support).
struct Mem {
    ctx: std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>,
    pool: Option<sys::CUmemoryPool>,
}

impl Mem {
    fn new(dev: &Device) -> Self {
        let Device::Cuda(d) = dev else {
            panic!("not a CUDA device")
        };
        let ctx = d.cuda_stream().context().clone();
        let supported = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
            .unwrap_or(0)
            > 0;
        let pool = supported.then(|| {
            let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
            ctx.bind_to_thread().unwrap();
            // SAFETY: `pool` is a valid out-pointer; the device handle comes from the context.
            let r = unsafe { sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device()) };
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuDeviceGetMemPool");
            // SAFETY: initialised by the successful call above.
            unsafe { pool.assume_init() }
        });
        Self { ctx, pool }
    }

    fn attr(&self, pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> u64 {
        let mut v = 0u64;
        // SAFETY: the USED_MEM_* attributes are 64-bit integers.
        let r = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuMemPoolGetAttribute");
        v
    }

    /// Starts a measurement: resets the pool's high-water mark; returns the baseline.
    fn start(&self) -> u64 {
        match self.pool {
            Some(pool) => {
                let mut zero = 0u64;
                // SAFETY: resetting USED_MEM_HIGH takes a 64-bit zero.
                let r = unsafe {
                    sys::cuMemPoolSetAttribute(
                        pool,
                        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                        (&mut zero as *mut u64).cast(),
                    )
                };
                assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuMemPoolSetAttribute");
                self.attr(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                )
            }
            None => self.ctx.mem_get_info().unwrap().0 as u64,
        }
    }

    /// Peak extra bytes since `start` (with `mem_get_info`: at this moment).
    fn extra(&self, base: u64) -> (u64, &'static str) {
        match self.pool {
            Some(pool) => (
                self.attr(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                )
                .saturating_sub(base),
                "mempool_high",
            ),
            None => (
                base.saturating_sub(self.ctx.mem_get_info().unwrap().0 as u64),
                "mem_get_info",
            ),
        }
    }
}

/// A `[..]` tensor of pseudo-random values in about [-1.7, 1.7] (xorshift, host side).
fn host_rand(seed: u64, shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let quick = args.iter().any(|a| a == "--quick");
    let dev = distillery_kernels::cuda_device(0)?;
    let mem = Mem::new(&dev);
    for &(b, h, l, d) in &SHAPES {
        for dtype in [DType::BF16, DType::F32] {
            if quick && l > 512 {
                continue;
            }
            let shape = [b, h, l, d];
            let q_t = host_rand(1, &shape, dtype, &dev);
            let k_t = host_rand(2, &shape, dtype, &dev);
            let q_s = Var::from_tensor(&host_rand(3, &shape, dtype, &dev))?;
            let k_s = Var::from_tensor(&host_rand(4, &shape, dtype, &dev))?;
            let mask = Tensor::ones((b, l), DType::U8, &dev)?;
            let cfg = AttentionKlConfig::for_head_dims(d, d);
            let (bhl2, d2) = ((b * h) as f64 * (l as f64).powi(2), (2 * d) as f64);
            let fwd_flops = 2.0 * bhl2 * d2;
            let bwd_flops = 2.0 * bhl2 * d2 + 4.0 * bhl2 * d as f64;
            let paths: &[(bool, &str)] = if dtype == DType::F32 {
                &[(false, "cuda-cores")]
            } else {
                &[(true, "tensor-cores"), (false, "cuda-cores")]
            };
            for (pass, &(tc, path)) in ["fwd", "fwd+bwd"]
                .into_iter()
                .flat_map(|p| paths.iter().map(move |x| (p, x)))
            {
                set_cuda_tensor_cores(tc);
                let run = || -> anyhow::Result<()> {
                    let rows = attention_kl_rows(&q_t, &k_t, &q_s, &k_s, &mask, &cfg)?;
                    if pass == "fwd" {
                        dev.synchronize()?;
                        drop(rows);
                    } else {
                        let grads = rows.sum_all()?.backward()?;
                        dev.synchronize()?;
                        drop(grads);
                    }
                    Ok(())
                };
                for _ in 0..3 {
                    run()?;
                }
                dev.synchronize()?;
                let base = mem.start();
                run()?;
                let (extra, method) = mem.extra(base);
                let mut times = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let t0 = Instant::now();
                    run()?;
                    times.push(t0.elapsed().as_secs_f64());
                }
                let t = median(times);
                let flops = if pass == "fwd" {
                    fwd_flops
                } else {
                    fwd_flops + bwd_flops
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "impl": "distillery-cuda",
                        "path": path,
                        "pass": pass,
                        "dtype": format!("{dtype:?}").to_lowercase(),
                        "b": b, "h": h, "l": l, "d": d,
                        "median_s": t,
                        "extra_bytes": extra,
                        "mem_method": method,
                        "tflops": flops / t / 1e12,
                        "iters": iters,
                    })
                );
            }
        }
    }
    Ok(())
}
