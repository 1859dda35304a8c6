//! `cargo xtask bench lm-forward`: SmolLM2-135M (the GGUF fixture, dequantised to f32) in
//! distillery-models (release) and in PyTorch eager, each in its own process: the median
//! forward time of batch 8 x 256 tokens, greedy generation of 128 tokens at batch 1 on the KV
//! cache (tokens/s), and peak RSS.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use distillery_models::llama::{open_decoder, Sampling};
use distillery_models::LoadOptions;

use crate::util;

const BATCH: usize = 8;
const SEQ: usize = 256;
const NEW_TOKENS: usize = 128;
const PROMPT: usize = 16;

fn gguf() -> std::path::PathBuf {
    util::root().join("fixtures/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn run(json: bool, args: &[String]) -> Result<()> {
    let iters: usize = util::flag(args, "--iters")
        .unwrap_or("3")
        .parse()
        .context("--iters")?;
    let model = gguf();
    if !model.is_file() {
        bail!(
            "{}: missing; run scripts/fetch-fixtures.sh first",
            model.display()
        );
    }
    let model_s = model.to_str().context("non-UTF-8 path")?;
    let exe = std::env::current_exe()?;
    let iters_s = iters.to_string();
    let mut rows = vec![util::json_from(
        exe.as_os_str(),
        &["bench-lm-forward-child", model_s, &iters_s],
        "the candle lm-forward bench",
    )?];
    let (b, s, n) = (BATCH.to_string(), SEQ.to_string(), NEW_TOKENS.to_string());
    rows.extend(util::torch_baseline(
        "lm_forward_torch.py",
        &[model_s, &b, &s, &n, &iters_s],
    )?);
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    for r in &rows {
        if json {
            println!("{r}");
        } else {
            println!(
                "{:<18} forward {BATCH}x{SEQ} median {:>7.0} ms   generate {:>5.1} tokens/s   peak RSS {:>6.0} MiB",
                r["impl"].as_str().unwrap_or("?"),
                f(r, "median_s") * 1e3,
                f(r, "generate_tokens_per_s"),
                f(r, "peak_rss_mib"),
            );
        }
    }
    if !json && rows.len() == 2 {
        let (ours, torch) = (&rows[0], &rows[1]);
        println!(
            "forward time ratio {:.2} (goal <= 1.0); generation speed ratio {:.2} (goal >= 1.0); \
             peak RSS {:.0} MiB vs PyTorch's {:.0} minus its import baseline {:.0} = {:.0} MiB",
            f(ours, "median_s") / f(torch, "median_s"),
            f(ours, "generate_tokens_per_s") / f(torch, "generate_tokens_per_s"),
            f(ours, "peak_rss_mib"),
            f(torch, "peak_rss_mib"),
            f(torch, "import_baseline_rss_mib"),
            f(torch, "peak_rss_mib") - f(torch, "import_baseline_rss_mib"),
        );
    }
    Ok(())
}

/// The measured process: the same synthetic ids as scripts/bench/lm_forward_torch.py.
pub fn child(gguf: &str, iters: usize) -> Result<()> {
    let d = open_decoder(std::path::Path::new(gguf), &LoadOptions::default(), None)?;
    let ids: Vec<u32> = (0..BATCH)
        .flat_map(|b| (0..SEQ).map(move |s| ((b * 131 + s * 7) % 40000 + 100) as u32))
        .collect();
    let prompt = ids[..PROMPT].to_vec();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ), &Device::Cpu)?;
    let mask = ids.ones_like()?;
    drop(d.model.forward(&ids, &mask)?); // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        drop(d.model.forward(&ids, &mask)?);
        times.push(t.elapsed().as_secs_f64());
    }
    let sampling = Sampling {
        max_new_tokens: NEW_TOKENS,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop: Vec::new(),
    };
    let t = Instant::now();
    let out = d.model.generate(&prompt, &sampling)?;
    let gen_s = t.elapsed().as_secs_f64();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "impl": "distillery-candle",
            "gemm": distillery_kernels::gemm_backend(),
            "batch": BATCH, "seq": SEQ,
            "median_s": util::median(&mut times),
            "min_s": min,
            "generate_tokens": out.len(),
            "generate_tokens_per_s": out.len() as f64 / gen_s,
            "peak_rss_mib": util::peak_rss_mib(),
        })
    );
    Ok(())
}
