//! `cargo xtask gpu-check [--dev]`: prepares, on a machine without a GPU, everything a GPU
//! machine (nvcc 13.0, PyTorch, driver 580, no cargo) needs to check and benchmark the CUDA
//! kernels, in the git-ignored folder `.gpu/`:
//!
//! - `bin/cuda_tests.xz`: the integration test `crates/kernels/tests/cuda.rs` (CUDA vs CPU
//!   values and gradients), built with `--features cuda --release` (`--dev`: the dev profile,
//!   which reuses the build-script outputs of `cargo check --features cuda` — candle's nvcc runs
//!   are the slowest part of a cold CUDA build), stripped and xz-compressed (each binary is
//!   ~58 MB, mostly candle's own kernels: 32 MB of cubins and 10 MB of PTX, plus our 9 MB of
//!   PTX; compressed ~6 MB);
//! - `bin/cuda_bench.xz`: the example `crates/kernels/examples/cuda_bench.rs`, likewise;
//! - `attention_kl_torch.py`: the PyTorch eager baseline (`scripts/bench/`);
//! - `stubs/libcurand.so.10`: a stand-in cuRAND, used only when the machine has no real one
//!   (candle links cuRAND but these binaries never draw random numbers on the device);
//! - `run.sh`: finds the CUDA libraries (PyTorch's wheels, a toolkit, the system), runs the
//!   tests, both benchmarks and, if present, compute-sanitizer, writing everything to `$OUT`.
//!
//! Linking here needs the CUDA libraries candle links (driver, cuBLAS, cuBLASLt, cuRAND,
//! NVRTC): they are replaced by generated stubs with the right sonames (every function of
//! cudarc's bindings, returning 0), so the binaries load the real ones on the GPU machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernels::cuda_home;
use crate::util::root;

/// The libraries cudarc links (candle's features), their sonames (CUDA 13) and the cudarc
/// binding module whose function names the stub defines.
const STUBS: [(&str, &str, &str); 5] = [
    ("cuda", "libcuda.so.1", "driver"),
    ("nvrtc", "libnvrtc.so.13", "nvrtc"),
    ("curand", "libcurand.so.10", "curand"),
    ("cublas", "libcublas.so.13", "cublas"),
    ("cublasLt", "libcublasLt.so.13", "cublaslt"),
];

/// The whole `.gpu/` must stay below this (what the device runner carries).
const MAX_BYTES: u64 = 64 << 20;

pub fn run(args: &[String]) -> Result<()> {
    let dev_profile = args.iter().any(|a| a == "--dev");
    let root = root();
    let cuda_home = cuda_home()?;
    let target = root.join("target/cuda");
    let stub_root = target.join("link-stubs");
    make_stubs(&stub_root)?;

    let gpu = root.join(".gpu");
    if gpu.exists() {
        std::fs::remove_dir_all(&gpu).context("clearing .gpu/")?;
    }
    std::fs::create_dir_all(gpu.join("bin"))?;
    std::fs::create_dir_all(gpu.join("stubs"))?;

    let profile: &[&str] = if dev_profile { &[] } else { &["--release"] };
    let tests = cargo_build(
        &root,
        &cuda_home,
        &stub_root,
        &target,
        &[&["test", "--no-run", "--test", "cuda"], profile].concat(),
        "cuda",
    )?;
    let bench = cargo_build(
        &root,
        &cuda_home,
        &stub_root,
        &target,
        &[&["build", "--example", "cuda_bench"], profile].concat(),
        "cuda_bench",
    )?;
    for (src, name) in [(&tests, "cuda_tests"), (&bench, "cuda_bench")] {
        let dst = gpu.join("bin").join(name);
        std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        let status = Command::new("strip").arg("--strip-all").arg(&dst).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not strip {}", dst.display());
        }
        let status = Command::new("xz")
            .args(["-6", "-T2", "-f"])
            .arg(&dst)
            .status()
            .context("running xz")?;
        if !status.success() {
            bail!("xz failed on {}", dst.display());
        }
    }
    std::fs::copy(
        stub_root.join("lib/libcurand.so"),
        gpu.join("stubs/libcurand.so.10"),
    )?;
    std::fs::copy(
        root.join("scripts/bench/attention_kl_torch.py"),
        gpu.join("attention_kl_torch.py"),
    )?;
    let run_sh = gpu.join("run.sh");
    std::fs::write(&run_sh, RUN_SH)?;
    make_executable(&run_sh)?;

    let ldd = Command::new("ldd").arg(&tests).output();
    if let Ok(o) = ldd {
        eprintln!(
            "cuda_tests needs:\n{}",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| format!("  {}", l.trim()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let size = dir_size(&gpu)?;
    eprintln!(".gpu/ is {:.1} MiB", size as f64 / (1 << 20) as f64);
    if size >= MAX_BYTES {
        bail!(".gpu/ is {size} bytes, above the 64 MiB the device runner carries");
    }
    eprintln!("ready: run `bash .gpu/run.sh` on the GPU machine (carry `.gpu`)");
    Ok(())
}

/// Runs a cargo build of distillery-kernels with the `cuda` feature and returns the executable
/// of the artifact named `name`.
fn cargo_build(
    root: &Path,
    cuda_home: &Path,
    stub_root: &Path,
    target: &Path,
    args: &[&str],
    name: &str,
) -> Result<PathBuf> {
    let path = format!(
        "{}:{}",
        cuda_home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(args)
        .args([
            "-p",
            "distillery-kernels",
            "--features",
            "cuda",
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_TARGET_DIR", target)
        .env("PATH", path)
        .env("CUDA_HOME", cuda_home)
        // cudarc's build script adds <each of CUDA_HOME, CUDA_PATH, ...>/lib to the link search:
        // the real cudart from the toolkit, the stubs for the rest.
        .env("CUDA_PATH", stub_root)
        .env("CUDA_COMPUTE_CAP", "90")
        .env("CUDARC_CUDA_VERSION", "13000")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut exe = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(e) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(e));
            }
        }
    }
    exe.with_context(|| format!("cargo did not report an executable for {name}"))
}

/// Writes `<stub_root>/lib/lib<name>.so` for every entry of [`STUBS`].
fn make_stubs(stub_root: &Path) -> Result<()> {
    let cudarc = cudarc_src()?;
    let lib = stub_root.join("lib");
    std::fs::create_dir_all(&lib)?;
    for (name, soname, module) in STUBS {
        let sys = cudarc.join("src").join(module).join("sys/mod.rs");
        let text =
            std::fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
        let mut names: Vec<&str> = text
            .split("pub unsafe fn ")
            .skip(1)
            .filter_map(|rest| rest.split('(').next())
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .filter(|n| !matches!(*n, "is_culib_present" | "culib"))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            bail!("no functions found in {}", sys.display());
        }
        let mut c = String::from(
            "/* Generated by `cargo xtask gpu-check`: link-time stand-in. Every function returns 0\n   (success); the real library is loaded at run time. */\n",
        );
        for n in &names {
            match *n {
                // cuRAND: a usable fake generator handle, and no fake random numbers.
                "curandCreateGenerator" => c.push_str(
                    "int curandCreateGenerator(void **g, int t) { (void)t; *g = (void *)16; return 0; }\n",
                ),
                n if n.starts_with("curandGenerate") => {
                    c.push_str(&format!("int {n}(void) {{ return 203; /* INITIALIZATION_FAILED */ }}\n"))
                }
                n => c.push_str(&format!("int {n}(void) {{ return 0; }}\n")),
            }
        }
        let src = lib.join(format!("{name}_stub.c"));
        std::fs::write(&src, c)?;
        let out = lib.join(format!("lib{name}.so"));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-w"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .context("running cc")?;
        if !status.success() {
            bail!("cc failed on {}", src.display());
        }
    }
    Ok(())
}

/// The source of the cudarc version in Cargo.lock, from cargo's registry cache.
fn cudarc_src() -> Result<PathBuf> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"cudarc\""))
        .and_then(|p| p.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .context("cudarc is not in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("no CARGO_HOME or HOME")?;
    let registry = cargo_home.join("registry/src");
    for entry in std::fs::read_dir(&registry)
        .with_context(|| format!("reading {}", registry.display()))?
        .flatten()
    {
        let dir = entry.path().join(format!("cudarc-{version}"));
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!(
        "cudarc {version} is not in {} (run `cargo fetch` first)",
        registry.display()
    )
}

fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)?.flatten() {
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// `.gpu/run.sh`, run on the GPU machine from the repository root (or anywhere).
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Generated by `cargo xtask gpu-check`. Runs the CUDA attention-KL tests and benchmarks on a GPU
# machine (no cargo needed) and writes everything to $OUT (default: .gpu/out).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
echo "== $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed"
head -15 "$OUT/nvidia-smi.txt"
PY="$(command -v python3 || command -v python)"

# The binaries travel xz-compressed: unpack them (xz, else Python's lzma).
BIN="$HERE/bin"
if ! touch "$BIN/.w" 2>/dev/null; then BIN="$(mktemp -d)"; fi
rm -f "$BIN/.w"
for b in cuda_tests cuda_bench; do
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$HERE/bin/$b.xz" > "$BIN/$b"
  else
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$HERE/bin/$b.xz" "$BIN/$b"
  fi
  chmod +x "$BIN/$b"
done

# CUDA libraries: PyTorch's wheels (site-packages/nvidia/*/lib, torch/lib), a toolkit, the system.
LIBS="$("$PY" - <<'EOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib64")))
try:
    import torch
    dirs.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)"
for d in "${CUDA_HOME:-}/lib64" "${CUDA_HOME:-}/lib" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LIBS="$LIBS:$d"
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cuRAND: the stand-in only if no real one is found (candle links it; nothing here uses it).
if ldd "$BIN/cuda_tests" | grep -q "libcurand.so.10 => not found"; then
  echo "no libcurand.so.10 on this machine: using the stand-in from .gpu/stubs"
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$HERE/stubs"
fi
ldd "$BIN/cuda_tests" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
  echo "missing libraries:"; grep "not found" "$OUT/ldd.txt"
fi
export DISTILLERY_REQUIRE_CUDA=1
status=0

# Each test in its own process: a kernel fault poisons its CUDA context, not the other tests.
# The driver caches the JIT-compiled PTX, so only the first process pays for it.
# Worst case of the whole script stays under ~9 minutes: tests 200 s, benchmarks 120 + 150 s,
# compute-sanitizer 80 s.
echo "== tests (CUDA vs CPU)"
: > "$OUT/tests.txt"
deadline=$(( $(date +%s) + 200 ))
for t in $("$BIN/cuda_tests" --list 2>/dev/null | sed -n 's/: test$//p'); do
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 5 ]; then echo "test $t: not run (time budget)"; status=1; continue; fi
  start=$(date +%s)
  timeout "$(( left < 90 ? left : 90 ))" "$BIN/cuda_tests" --exact "$t" --test-threads 1 >> "$OUT/tests.txt" 2>&1
  rc=$?; echo "test $t: exit $rc ($(( $(date +%s) - start )) s)"; [ "$rc" = 0 ] || status=1
done
grep -E "^test |panicked|FAILED|got .* want" "$OUT/tests.txt" | head -40

echo "== benchmark: distillery CUDA"
timeout 120 "$BIN/cuda_bench" --iters "${ITERS:-20}" 2>"$OUT/bench_distillery.err" | tee "$OUT/bench_distillery.jsonl"
rc=${PIPESTATUS[0]}; echo "bench exit $rc"; tail -5 "$OUT/bench_distillery.err"; [ "$rc" = 0 ] || status=1

echo "== benchmark: PyTorch eager"
timeout 150 "$PY" "$HERE/attention_kl_torch.py" --iters "${ITERS:-20}" 2>"$OUT/bench_torch.err" | tee "$OUT/bench_torch.jsonl"
rc=${PIPESTATUS[0]}; echo "torch bench exit $rc"; tail -5 "$OUT/bench_torch.err"; [ "$rc" = 0 ] || status=1

if command -v compute-sanitizer >/dev/null 2>&1 && [ "${SANITIZE:-1}" = 1 ]; then
  for tool in memcheck; do
    echo "== compute-sanitizer $tool (one small test)"
    timeout 80 compute-sanitizer --tool "$tool" --error-exitcode 9 "$BIN/cuda_tests" \
      --exact padded_rows_keys_and_empty_batch_items_are_zero --test-threads 1 \
      > "$OUT/sanitizer_$tool.txt" 2>&1
    rc=$?; echo "compute-sanitizer $tool exit $rc"; tail -3 "$OUT/sanitizer_$tool.txt"
  done
fi
echo "== done, status $status"
exit $status
"#;
