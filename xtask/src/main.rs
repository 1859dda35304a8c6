//! `cargo xtask`: project automation — benchmarks and fixtures.
//!
//! cargo xtask fixtures                 fetch the real fixtures (scripts/fetch-fixtures.sh)
//! cargo xtask bench forward [--json]   all-MiniLM-L6-v2 forward, batch 32 x seq 128, vs PyTorch
//! cargo xtask bench lm-forward [--json] [--iters N]   SmolLM2-135M forward 8 x 256 and greedy
//!                                      generation of 128 tokens, vs PyTorch eager
//! cargo xtask bench attention-kl [--json] [--iters N]
//!                                      fused vs slow vs PyTorch attention KL, fwd + bwd
//! cargo xtask bench ops                per-op cost of one MiniLM layer (profiling aid)
//! cargo xtask bench step [--json] [--iters N] [--rounds R] [--student-hidden H]
//!                                      one distillation step (MiniLM teacher, 3-layer student,
//!                                      b32 x s128, all three losses, AdamW) vs PyTorch eager;
//!                                      H: a narrower random student, teacher-dominated
//! cargo xtask export-check             a saved student loads in Python transformers, same outputs
//! cargo xtask kernels [--check] [--no-emulate] [--tsan]
//!                                      CUDA kernels: nvcc → committed PTX (sm_80, sm_90),
//!                                      ptxas, host emulation check (see xtask/src/kernels.rs)
//! cargo xtask gpu-check [--dev]        build .gpu/ (CUDA test + bench binaries, run.sh) for a
//!                                      GPU machine without cargo (see xtask/src/gpu_check.rs)

use anyhow::{bail, Context, Result};

mod bench_attention_kl;
mod bench_forward;
mod bench_lm_forward;
mod bench_ops;
mod bench_step;
mod export_check;
mod gpu_check;
mod kernels;
mod tidy;
mod util;

/// Flags followed by a value.
const VALUE_FLAGS: [&str; 3] = ["--iters", "--rounds", "--student-hidden"];

fn main() -> Result<()> {
    distillery_kernels::memory::retain_freed_buffers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    // Positional words: everything but `--flag` and the value after a flag that takes one.
    let mut words: Vec<&str> = Vec::new();
    let mut skip = false;
    for a in &args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a.starts_with("--") {
            skip = VALUE_FLAGS.contains(&a.as_str());
        } else {
            words.push(a);
        }
    }
    match words.as_slice() {
        ["fixtures"] => util::run_script("scripts/fetch-fixtures.sh"),
        ["bench", "forward"] => bench_forward::run(json, &args),
        ["bench", "lm-forward"] => bench_lm_forward::run(json, &args),
        // Internal: the measured process of `bench lm-forward`.
        ["bench-lm-forward-child", model, iters] => {
            bench_lm_forward::child(model, iters.parse().context("iterations")?)
        }
        ["bench", "ops"] => bench_ops::run(),
        ["bench", "step"] => bench_step::run(json, &args),
        // Internal: the measured process of `bench step`.
        ["bench-step-child", model, iters, mode, hidden] => bench_step::child(
            model,
            iters.parse().context("iterations")?,
            mode,
            hidden.parse().context("student width")?,
        ),
        ["export-check"] => export_check::run(),
        ["bench", "attention-kl"] => bench_attention_kl::run(json, &args),
        ["kernels"] => kernels::run(&args),
        ["gpu-check"] => gpu_check::run(&args),
        ["bench-attention-kl-child", b, h, l, d, which, iters] => {
            bench_attention_kl::child(&[b, h, l, d], which, iters)
        }
        // Internal: the measured process of `bench forward`, so its peak RSS is its own.
        ["bench-forward-child", model, iters] => bench_forward::child(model, iters.parse().context("iterations")?),
        _ => bail!(
            "usage: cargo xtask fixtures | cargo xtask bench (forward|lm-forward|attention-kl|ops|step) [--json] [--iters N] | cargo xtask kernels [--check] [--no-emulate] [--tsan] | cargo xtask gpu-check [--dev]\n(got {:?})",
            args
        ),
    }
}
