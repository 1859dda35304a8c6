//! `cargo xtask bench attention-kl [--json] [--iters N]`: forward + backward of the attention KL
//! for the fused streaming op, the slow materialising composition and PyTorch eager (when a
//! Python with torch is available), each (shape, implementation) in its own process so that its
//! peak memory is its own.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use distillery_kernels::bench_support::{AttnImpl, AttnInputs, AttnShape};

use crate::util;

const SHAPES: [(usize, usize, usize, usize); 3] =
    [(8, 12, 128, 32), (8, 12, 512, 32), (4, 12, 2048, 32)];

pub fn run(json: bool, args: &[String]) -> Result<()> {
    let iters = util::flag(args, "--iters").unwrap_or("5").to_string();
    let exe = std::env::current_exe()?;
    let torch = util::python_with_torch();
    if torch.is_none() {
        eprintln!("(no Python with torch: PyTorch baseline skipped)");
    }
    if !json {
        println!(
            "{:<18} {:<14} {:>11} {:>10} {:>11} {:>11}",
            "shape b,h,l,d", "impl", "median ms", "GFLOP/s", "peak MiB", "extra MiB"
        );
    }
    for (b, h, l, d) in SHAPES {
        let dims = [b, h, l, d].map(|x| x.to_string());
        let mut runs: Vec<(String, Command)> = Vec::new();
        let mut fused = Command::new(&exe);
        fused
            .arg("bench-attention-kl-child")
            .args(&dims)
            .args(["fused", &iters]);
        runs.push(("fused".into(), fused));
        // The slow reference materialises several [b, h, l, l] maps: GBs at seq 2048.
        if l <= 512 {
            let mut slow = Command::new(&exe);
            slow.arg("bench-attention-kl-child")
                .args(&dims)
                .args(["slow", &iters]);
            runs.push(("slow".into(), slow));
        }
        if let Some(py) = &torch {
            let mut c = Command::new(py);
            c.arg(util::root().join("scripts/bench/attention_kl_torch_cpu.py"))
                .args(&dims)
                .arg(&iters);
            runs.push(("pytorch".into(), c));
        }
        for (name, mut cmd) in runs {
            let out = cmd
                .output()
                .with_context(|| format!("running the {name} benchmark"))?;
            if !out.status.success() {
                bail!(
                    "{name} benchmark failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let mut row: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("{name}: {line}"))?;
            let shape = AttnShape::new(b, h, l, d);
            let median = row["median_s"].as_f64().unwrap_or(f64::NAN);
            row["gflops"] = (shape.fwd_bwd_flops() / median / 1e9).into();
            if json {
                println!("{row}");
            } else {
                println!(
                    "{:<18} {:<14} {:>11.1} {:>10.1} {:>11.0} {:>11.1}",
                    format!("{b},{h},{l},{d}"),
                    row["impl"].as_str().unwrap_or("?"),
                    median * 1e3,
                    row["gflops"].as_f64().unwrap_or(f64::NAN),
                    row["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                    row["extra_mib"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}

/// One (shape, implementation): inputs first, then the peak-RSS baseline, then warm-up + timing.
pub fn child(dims: &[&str], which: &str, iters: &str) -> Result<()> {
    let d: Vec<usize> = dims
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("shape")?;
    let iters: usize = iters.parse().context("iterations")?;
    let shape = AttnShape::new(d[0], d[1], d[2], d[3]);
    let imp = match which {
        "fused" => AttnImpl::Fused,
        "slow" => AttnImpl::Slow,
        other => bail!("unknown implementation {other}"),
    };
    let inputs = AttnInputs::random(shape)?;
    let base = util::rss_mib("VmRSS");
    let reset = util::reset_peak_rss();
    inputs.fwd_bwd(imp)?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(inputs.fwd_bwd(imp)?);
        times.push(t.elapsed().as_secs_f64());
    }
    let peak = util::rss_mib("VmHWM");
    println!(
        "{}",
        serde_json::json!({
            "batch": d[0], "heads": d[1], "seq": d[2], "dim": d[3],
            "impl": format!("distillery-{which}"),
            "median_s": util::median(&mut times),
            "peak_rss_mib": peak,
            "extra_mib": match (reset, peak, base) { (true, Some(p), Some(b)) => Some(p - b), _ => None },
        })
    );
    Ok(())
}
