//! Quick timing of the fused attention-KL, split into forward and backward (min over iterations).
//!
//! `cargo run --release -p distillery-kernels --example timing -- [batch heads seq dim [iters]]`
//! (default `8 12 512 32 10`). For the benchmark of record use the criterion bench
//! (`cargo bench -p distillery-kernels --bench attention_kl`); this is a tool for iterating on the
//! kernel: it reports the forward alone, the backward (fwd+bwd minus fwd) and, on Linux, the
//! process CPU time per iteration, which stays meaningful when other jobs share the machine.

use distillery_kernels::bench_support::{AttnImpl, AttnInputs, AttnShape};
use distillery_kernels::{attention_kl_rows, AttentionKlConfig};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()?;
    let get = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let shape = AttnShape::new(get(0, 8), get(1, 12), get(2, 512), get(3, 32));
    let iters = get(4, 10).max(1);
    let x = AttnInputs::random(shape)?;
    let cfg = AttentionKlConfig::for_head_dims(shape.d_t, shape.d_s);
    let (q_s, k_s) = (x.q_s.as_tensor().detach(), x.k_s.as_tensor().detach());
    x.fwd_bwd(AttnImpl::Fused)?; // warm-up
    let cpu0 = cpu_secs();
    let (mut fwd, mut all) = (f64::MAX, f64::MAX);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(attention_kl_rows(
            &x.q_t, &x.k_t, &q_s, &k_s, &x.mask, &cfg,
        )?);
        fwd = fwd.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        x.fwd_bwd(AttnImpl::Fused)?;
        all = all.min(t.elapsed().as_secs_f64());
    }
    let cpu = cpu_secs().zip(cpu0).map(|(b, a)| (b - a) / iters as f64);
    let flops = shape.fwd_bwd_flops();
    let pairs = (shape.batch * shape.heads) as f64 * (shape.seq as f64).powi(2);
    let fwd_flops = pairs * 2.0 * (shape.d_t + shape.d_s) as f64;
    let gf = |f: f64, s: f64| f / s / 1e9;
    println!(
        "{shape:?}: fwd {:.1} ms ({:.1} GFLOP/s)  bwd {:.1} ms ({:.1} GFLOP/s)  fwd+bwd {:.1} ms ({:.1} GFLOP/s)",
        fwd * 1e3,
        gf(fwd_flops, fwd),
        (all - fwd) * 1e3,
        gf(flops - fwd_flops, all - fwd),
        all * 1e3,
        gf(flops, all)
    );
    if let Some(cpu) = cpu {
        println!(
            "  process CPU time per iteration (one fwd + one fwd+bwd): {:.1} ms, {:.1} GFLOP/s per CPU second",
            cpu * 1e3,
            gf(flops + fwd_flops, cpu)
        );
    }
    Ok(())
}

/// User + system CPU time of this process (Linux, 10 ms resolution).
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
