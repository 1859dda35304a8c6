//! Helpers shared by the xtask commands.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run_script(rel: &str) -> Result<()> {
    let status = Command::new("bash")
        .arg(root().join(rel))
        .status()
        .with_context(|| format!("running {rel}"))?;
    if !status.success() {
        bail!("{rel} failed with {status}");
    }
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    rss_mib("VmHWM")
}

/// A memory field of /proc/self/status (`VmRSS`, `VmHWM`) in MiB.
pub fn rss_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5), so that a later peak measures
/// only what follows. False where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `value` of a `--flag value` pair.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// A Python that can import torch, if any.
pub fn python_with_torch() -> Option<String> {
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-c", "import torch, transformers"])
            .output()
            .map(|o| o.status.success());
        if matches!(ok, Ok(true)) {
            return Some(py.to_string());
        }
    }
    None
}

/// Runs `program args`, whose stdout's last line is one JSON object (a measured child process or
/// a PyTorch baseline script); `what` names it in the error.
pub fn json_from(
    program: &std::ffi::OsStr,
    args: &[&str],
    what: &str,
) -> Result<serde_json::Value> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("{what}: not a JSON line: {last:?}"))
}

/// `scripts/bench/<script>` under a Python with torch, or `None` (with a note) when there is none.
pub fn torch_baseline(script: &str, args: &[&str]) -> Result<Option<serde_json::Value>> {
    let Some(py) = python_with_torch() else {
        eprintln!("(no Python with torch + transformers: PyTorch baseline skipped)");
        return Ok(None);
    };
    let path = root().join("scripts/bench").join(script);
    let mut all: Vec<&str> = vec![path.to_str().context("non-UTF-8 path")?];
    all.extend_from_slice(args);
    json_from(py.as_ref(), &all, "the PyTorch baseline").map(Some)
}
