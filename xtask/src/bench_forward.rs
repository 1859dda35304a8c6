//! `cargo xtask bench forward`: median forward time and peak memory of all-MiniLM-L6-v2 at
//! batch 32 x seq 128 in distillery-models (release) and in PyTorch eager, each in its own process.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use distillery_models::{load_model, ForwardOptions, LoadOptions};

use crate::util;

const BATCH: usize = 32;
const SEQ: usize = 128;

pub fn run(json: bool, args: &[String]) -> Result<()> {
    let iters: usize = util::flag(args, "--iters")
        .unwrap_or("10")
        .parse()
        .context("--iters")?;
    let model = util::root().join("fixtures/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").is_file() {
        bail!(
            "{}: missing; run `cargo xtask fixtures` first",
            model.display()
        );
    }
    let model_s = model.to_str().context("non-UTF-8 path")?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let iters_s = iters.to_string();
    let args = ["bench-forward-child", model_s, &iters_s];
    rows.push(util::json_from(
        exe.as_os_str(),
        &args,
        "the candle forward bench",
    )?);
    let (b, s) = (BATCH.to_string(), SEQ.to_string());
    rows.extend(util::torch_baseline(
        "forward_torch.py",
        &[model_s, &b, &s, &iters_s],
    )?);
    for r in &rows {
        if json {
            println!("{r}");
        } else {
            println!(
                "{:<16} median {:>8.1} ms   peak RSS {:>7.0} MiB",
                r["impl"].as_str().unwrap_or("?"),
                r["median_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
                r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if !json && rows.len() == 2 {
        let ratio = rows[0]["median_s"].as_f64().unwrap_or(f64::NAN)
            / rows[1]["median_s"].as_f64().unwrap_or(f64::NAN);
        println!("candle / pytorch time ratio: {ratio:.2} (goal <= 1.0)");
    }
    Ok(())
}

/// Same synthetic input as scripts/bench/forward_torch.py.
pub fn child(model_dir: &str, iters: usize) -> Result<()> {
    let model = load_model(std::path::Path::new(model_dir), &LoadOptions::default())?;
    let ids: Vec<u32> = (0..BATCH)
        .flat_map(|b| (0..SEQ).map(move |s| ((b * 131 + s * 7) % 30000 + 1000) as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ), &Device::Cpu)?;
    let mask = ids.ones_like()?;
    let types = ids.zeros_like()?;
    let opts = ForwardOptions::default();
    model.forward(&ids, Some(&types), &mask, &opts)?; // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let out = model.forward(&ids, Some(&types), &mask, &opts)?;
        drop(out);
        times.push(t.elapsed().as_secs_f64());
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "impl": "distillery-candle",
            "threads": rayon_threads(),
            "gemm": distillery_kernels::gemm_backend(),
            "batch": BATCH, "seq": SEQ,
            "median_s": util::median(&mut times),
            "min_s": min,
            "peak_rss_mib": util::peak_rss_mib(),
        })
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
