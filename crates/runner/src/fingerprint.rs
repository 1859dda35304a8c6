//! What ties an output folder to one run: a fingerprint of the config (every key, not where the
//! file lives) and of the data, recorded in `OUT/run.json` on the first start. A later start in
//! the same folder must pass `--resume` and match it, so a resumed run never mixes two configs,
//! and a finished run is never overwritten.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::Config;

/// FNV-1a, 64-bit: small, stable across platforms and Rust versions (unlike `DefaultHasher`).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A string with its length first, so that ("ab", "c") and ("a", "bc") differ.
    pub fn write_str(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The fingerprint of `config` (its parsed values, so comments and key order do not matter, nor
/// where the file lives), the data digest and, for a teacher folder, its `config.json` and the
/// size of its weights.
pub fn of(config: &Config, data_digest: u64) -> Result<String> {
    let mut h = Fnv::new();
    h.write_str(&config.fingerprint_text());
    h.write(&data_digest.to_le_bytes());
    if let crate::config::TeacherSource::Folder(dir) = config.teacher_source()? {
        let cfg = dir.join("config.json");
        h.write(&std::fs::read(&cfg).with_context(|| format!("{}: cannot read", cfg.display()))?);
        let w = distillery_models::hub::weights_path(&dir)?;
        let len = std::fs::metadata(&w).map(|m| m.len()).unwrap_or(0);
        h.write(&len.to_le_bytes());
    }
    Ok(format!("{:016x}", h.finish()))
}

/// Claims `out` for a run with `fingerprint`: a fresh folder is claimed; an existing one needs
/// `resume` and the same fingerprint.
pub fn claim(out: &Path, fingerprint: &str, resume: bool) -> Result<()> {
    let path = out.join("run.json");
    if path.is_file() {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?,
        )
        .with_context(|| format!("{}: not a run record", path.display()))?;
        if !resume {
            let what = if out.join("summary.json").is_file() || out.join("comparison.md").is_file()
            {
                "already holds a finished run"
            } else {
                "holds an unfinished run; pass --resume to continue it or"
            };
            bail!(
                "{}: {what} choose another --out (nothing was overwritten)",
                out.display()
            );
        }
        if v["fingerprint"].as_str() != Some(fingerprint) {
            bail!(
                "{}: was started with another config or other data (fingerprint {} here, {fingerprint} now); resume with the same config and data, or choose another --out",
                out.display(),
                v["fingerprint"].as_str().unwrap_or("?")
            );
        }
        return Ok(());
    }
    let json = serde_json::json!({"fingerprint": fingerprint, "format": 1});
    crate::fsutil::write_atomic(&path, json.to_string().as_bytes())
}
