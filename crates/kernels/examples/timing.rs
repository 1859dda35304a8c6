#![allow(clippy::unwrap_used)]
use distillery_kernels::bench_support::{AttnImpl, AttnInputs, AttnShape};
use distillery_kernels::{attention_kl_rows, AttentionKlConfig};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let shape = AttnShape::new(args[0], args[1], args[2], args[3]);
    let iters = *args.get(4).unwrap_or(&10);
    let x = AttnInputs::random(shape).unwrap();
    let cfg = AttentionKlConfig::for_head_dims(shape.d_t, shape.d_s);
    let q_s = x.q_s.as_tensor().detach();
    let k_s = x.k_s.as_tensor().detach();
    let cpu0 = cpu_secs();
    let mut fwd = f64::MAX;
    let mut all = f64::MAX;
    for _ in 0..iters {
        let t = Instant::now();
        let r = attention_kl_rows(&x.q_t, &x.k_t, &q_s, &k_s, &x.mask, &cfg).unwrap();
        std::hint::black_box(r);
        fwd = fwd.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        x.fwd_bwd(AttnImpl::Fused).unwrap();
        all = all.min(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_secs() - cpu0) / iters as f64;
    let f = shape.fwd_bwd_flops();
    let pairs = (shape.batch * shape.heads) as f64 * (shape.seq as f64).powi(2);
    let ffwd = pairs * 2.0 * (shape.d_t + shape.d_s) as f64;
    println!(
        "{shape:?}: fwd {:.1} ms ({:.1} GF/s)  bwd {:.1} ms ({:.1} GF/s)  total {:.1} ms ({:.1} GF/s)",
        fwd * 1e3,
        ffwd / fwd / 1e9,
        (all - fwd) * 1e3,
        (f - ffwd) / (all - fwd) / 1e9,
        all * 1e3,
        f / all / 1e9
    );
    let ff = f + ffwd;
    println!(
        "  cpu per (fwd + fwd_bwd) iteration {:.1} ms -> {:.1} GF/s per core",
        cpu * 1e3,
        ff / cpu / 1e9
    );
}

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
