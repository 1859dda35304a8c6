//! `cargo xtask bench ops`: the cost of each op kind in one all-MiniLM-L6-v2 layer at batch 32 ×
//! seq 128 (matmuls, GELU, layer norm, softmax, copies), to see where a forward's time goes.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

fn time(name: &str, iters: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let out = f()?;
        drop(out);
        v.push(t.elapsed().as_secs_f64());
    }
    let m = crate::util::median(&mut v);
    println!("{name:<40} {:>8.2} ms", m * 1e3);
    Ok(m)
}

pub fn run() -> Result<()> {
    let dev = Device::Cpu;
    let (b, s, h, heads, inter) = (32usize, 128usize, 384usize, 12usize, 1536usize);
    let d = h / heads;
    let x = Tensor::randn(0f32, 1.0, (b * s, h), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (h, h), &dev)?;
    let wi = Tensor::randn(0f32, 0.02, (inter, h), &dev)?;
    let wo = Tensor::randn(0f32, 0.02, (h, inter), &dev)?;
    let bias = Tensor::zeros(h, DType::F32, &dev)?;
    let ln_w = Tensor::ones(h, DType::F32, &dev)?;
    let xi = Tensor::randn(0f32, 1.0, (b * s, inter), &dev)?;
    let q = Tensor::randn(0f32, 1.0, (b, heads, s, d), &dev)?;
    let scores = Tensor::randn(0f32, 1.0, (b, heads, s, s), &dev)?;
    let n = 5;
    let mut total = 0.0;
    total += 4.0
        * time("linear 384→384 (x4 per layer)", n, || {
            Ok(x.matmul(&w.t()?)?.broadcast_add(&bias)?)
        })?;
    total += time("linear 384→1536", n, || Ok(x.matmul(&wi.t()?)?))?;
    let wi_t = wi.t()?.contiguous()?;
    time("  same, weight pre-transposed [in,out]", n, || {
        Ok(x.matmul(&wi_t)?)
    })?;
    let x3 = x.reshape((b, s, h))?;
    time("  same, 3-d broadcast_matmul", n, || {
        Ok(x3.broadcast_matmul(&wi_t)?)
    })?;
    let wqkv = Tensor::randn(0f32, 0.02, (3 * h, h), &dev)?;
    time("  fused qkv 384→1152", n, || Ok(x.matmul(&wqkv.t()?)?))?;
    total += time("linear 1536→384", n, || Ok(xi.matmul(&wo.t()?)?))?;
    total += time("gelu_erf [4096,1536]", n, || Ok(xi.gelu_erf()?))?;
    total += 2.0
        * time("layer_norm fused (x2)", n, || {
            Ok(candle_nn::ops::layer_norm(&x, &ln_w, &bias, 1e-12)?)
        })?;
    total += time("split heads reshape+transpose+contig (x3)", n, || {
        Ok(x.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()?)
    })? * 3.0;
    total += time("q·kᵀ [32,12,128,32]", n, || Ok(q.matmul(&q.t()?)?))?;
    total += time("scores + mask bias", n, || {
        Ok(scores.broadcast_add(&scores.narrow(2, 0, 1)?)?)
    })?;
    total += time("softmax_last_dim fused", n, || {
        Ok(candle_nn::ops::softmax_last_dim(&scores)?)
    })?;
    total += time("probs·v", n, || Ok(scores.matmul(&q)?))?;
    total += time("merge heads transpose+reshape", n, || {
        Ok(q.transpose(1, 2)?.reshape((b * s, h))?)
    })?;
    total += 2.0 * time("residual add (x2)", n, || Ok((&x + &x)?))?;
    println!(
        "{:<40} {:>8.2} ms  (x6 layers = {:.0} ms)",
        "sum per layer",
        total * 1e3,
        total * 6e3
    );
    let _ = time("softmax composite (differentiable)", n, || {
        Ok(candle_nn::ops::softmax(&scores, D::Minus1)?)
    })?;
    Ok(())
}
