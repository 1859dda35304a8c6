//! `cargo xtask kernels [--check] [--no-emulate] [--tsan]`: the CUDA kernels' build steps.
//!
//! 1. nvcc 13.0 (pinned, `scripts/install-nvcc.sh`) compiles every `crates/kernels/cuda/*.cu` to
//!    PTX for sm_80 and sm_90 and writes it to `crates/kernels/src/ptx/<stem>.sm_<arch>.ptx`,
//!    which the crate embeds with `include_str!` under its `cuda` feature (the PTX is committed:
//!    see "CUDA kernels" in ARCHITECTURE.md).
//! 2. ptxas assembles each PTX for its architecture — proof that it assembles, plus a table of
//!    registers, spills and stack per kernel.
//! 3. Host emulation: `crates/kernels/cuda/emu/check.cpp` compiles the kernels as C++ (one OS
//!    thread per CUDA thread) with AddressSanitizer and UBSan (`--tsan`: ThreadSanitizer, which
//!    finds missing `__syncthreads`) and compares them with a double-precision reference.
//!    Skipped with `--no-emulate`, or when there is no `g++`.
//!
//! `--check` writes nothing and fails when the committed PTX differs from what nvcc generates
//! now (for CI). `DISTILLERY_CUDA_HOME` overrides the toolkit location.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::root;

/// Architectures the PTX is generated for: `(name, ptxas -arch)`.
const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

/// nvcc flags (besides `-arch`): the same for every kernel file.
const NVCC_FLAGS: [&str; 3] = ["--ptx", "-std=c++17", "-O3"];

pub fn run(args: &[String]) -> Result<()> {
    let has = |f: &str| args.iter().any(|a| a == f);
    let (check, emulate, tsan) = (has("--check"), !has("--no-emulate"), has("--tsan"));
    let cuda_home = cuda_home()?;
    let nvcc = cuda_home.join("bin/nvcc");
    let ptxas = cuda_home.join("bin/ptxas");
    let root = root();
    let src_dir = root.join("crates/kernels/cuda");
    let ptx_dir = root.join("crates/kernels/src/ptx");
    let work = root.join("target/kernels");
    std::fs::create_dir_all(&work).context("creating target/kernels")?;
    std::fs::create_dir_all(&ptx_dir).context("creating crates/kernels/src/ptx")?;

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .with_context(|| format!("reading {}", src_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        bail!("no .cu files in {}", src_dir.display());
    }

    let mut stale = Vec::new();
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .context("kernel file name")?;
        // Both architectures in parallel (nvcc is single-threaded).
        let results: Vec<Result<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = ARCHES
                .iter()
                .map(|arch| {
                    let (nvcc, ptxas, work) = (&nvcc, &ptxas, &work);
                    s.spawn(move || compile(nvcc, ptxas, src, stem, arch, work))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("compile thread panicked")),
                })
                .collect()
        });
        for (arch, ptx) in ARCHES.iter().zip(results) {
            let ptx = ptx?;
            let dest = ptx_dir.join(format!("{stem}.{arch}.ptx"));
            let new = std::fs::read(&ptx).with_context(|| format!("reading {}", ptx.display()))?;
            let old = std::fs::read(&dest).ok();
            if check {
                if old.as_deref() != Some(&new[..]) {
                    stale.push(dest.display().to_string());
                }
            } else if old.as_deref() != Some(&new[..]) {
                std::fs::write(&dest, &new)
                    .with_context(|| format!("writing {}", dest.display()))?;
                eprintln!("wrote {} ({} bytes)", dest.display(), new.len());
            } else {
                eprintln!("{} is up to date", dest.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "committed PTX is stale (run `cargo xtask kernels` and commit): {}",
            stale.join(", ")
        );
    }
    if emulate {
        emulation_check(&src_dir, &work, tsan)?;
    }
    Ok(())
}

/// The CUDA toolkit directory: `$DISTILLERY_CUDA_HOME`, else what `scripts/install-nvcc.sh`
/// installs (idempotent) and prints.
pub fn cuda_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DISTILLERY_CUDA_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let script = root().join("scripts/install-nvcc.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = String::from_utf8(out.stdout).context("install-nvcc.sh output")?;
    let dir = PathBuf::from(dir.trim());
    if !dir.join("bin/nvcc").is_file() {
        bail!("no bin/nvcc under {}", dir.display());
    }
    Ok(dir)
}

/// nvcc → `<work>/<stem>.<arch>.ptx`, then ptxas on it; prints ptxas' per-kernel resources.
fn compile(
    nvcc: &Path,
    ptxas: &Path,
    src: &Path,
    stem: &str,
    arch: &str,
    work: &Path,
) -> Result<PathBuf> {
    let ptx = work.join(format!("{stem}.{arch}.ptx"));
    let out = Command::new(nvcc)
        .args(NVCC_FLAGS)
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&ptx)
        .arg(src)
        .output()
        .with_context(|| format!("running {}", nvcc.display()))?;
    if !out.status.success() {
        bail!(
            "nvcc failed on {} for {arch}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cubin = work.join(format!("{stem}.{arch}.cubin"));
    let out = Command::new(ptxas)
        .args(["-v", "-arch", arch, "-o"])
        .arg(&cubin)
        .arg(&ptx)
        .output()
        .with_context(|| format!("running {}", ptxas.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("ptxas failed on {} for {arch}:\n{log}", ptx.display());
    }
    eprintln!("ptxas {arch} {stem}: {}", summarize(&log));
    Ok(ptx)
}

/// One line per kernel from `ptxas -v`: registers, spill stores/loads.
fn summarize(log: &str) -> String {
    let mut out = Vec::new();
    let mut name = String::new();
    let mut spill = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            name = rest.split('\'').next().unwrap_or_default().to_string();
        } else if line.contains("spill stores") {
            let nums: Vec<&str> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next())
                .collect();
            spill = match nums.as_slice() {
                [_, st, ld] => format!("spill {st}/{ld} B"),
                _ => String::new(),
            };
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs = rest.split_whitespace().next().unwrap_or("?");
            out.push(format!("\n    {name}: {regs} regs, {spill}"));
        }
    }
    format!("{} kernels{}", out.len(), out.concat())
}

/// Builds and runs `cuda/emu/check.cpp` (host emulation of the kernels) if `g++` exists.
fn emulation_check(src_dir: &Path, work: &Path, tsan: bool) -> Result<()> {
    if Command::new("g++").arg("--version").output().is_err() {
        eprintln!("no g++: skipping the host emulation check");
        return Ok(());
    }
    let exe = work.join(if tsan { "emu-check-tsan" } else { "emu-check" });
    let sanitize = if tsan {
        "-fsanitize=thread"
    } else {
        "-fsanitize=address,undefined"
    };
    eprintln!("building the host emulation check ({sanitize})");
    let status = Command::new("g++")
        .args([
            "-std=c++20",
            "-O1",
            "-g",
            "-fno-strict-aliasing",
            "-DAKL_EMULATE",
            "-pthread",
            sanitize,
        ])
        .arg(src_dir.join("emu/check.cpp"))
        .arg("-o")
        .arg(&exe)
        .status()
        .context("running g++")?;
    if !status.success() {
        bail!("g++ failed on the emulation check");
    }
    let mut cmd = Command::new(&exe);
    if tsan {
        // ThreadSanitizer is slow with 256 threads per block: the smaller set of cases.
        cmd.arg("--quick").env("TSAN_OPTIONS", "halt_on_error=1");
    }
    let status = cmd.status().context("running the emulation check")?;
    if !status.success() {
        bail!("the host emulation check of the CUDA kernels failed");
    }
    Ok(())
}
