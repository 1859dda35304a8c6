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
