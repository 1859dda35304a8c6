//! What ties an output folder to one run: a fingerprint of the config (every key, not where the
//! file lives) and of the data, recorded in `OUT/run.json` on the first start. A later start in
//! the same folder must pass `--resume` and match it, so a resumed run never mixes two configs,
//! and a finished run is never overwritten.

use std::path::Path;

use anyhow::{bail, Context, Result};

use distillery_util::hash::Hasher;

use crate::config::Config;

/// The `run.json` format: 2 since fingerprints are XXH64 (format 1 used FNV-1a, so its
/// fingerprints cannot be compared with this build's).
const FORMAT: u64 = 2;

/// The fingerprint of `config` (its parsed values, so comments and key order do not matter, nor
/// where the file lives), the data digest and, for a teacher folder, its `config.json` and the
/// size of its weights.
pub fn of(config: &Config, data_digest: u64) -> Result<String> {
    let mut h = Hasher::new();
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
        if v["format"].as_u64() != Some(FORMAT) {
            bail!(
                "{}: was started by an earlier version of distillery (run record format {}, this build writes {FORMAT}); finish it with that version, or choose another --out",
                out.display(),
                v["format"]
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
    let json = serde_json::json!({"fingerprint": fingerprint, "format": FORMAT});
    distillery_util::fs::write_atomic(&path, json.to_string().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_folder_claimed_once_needs_resume_and_the_same_fingerprint_and_format() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), "abc", false).unwrap();
        let e = claim(dir.path(), "abc", false).unwrap_err().to_string();
        assert!(e.contains("unfinished run"), "{e}");
        claim(dir.path(), "abc", true).unwrap();
        let e = claim(dir.path(), "abd", true).unwrap_err().to_string();
        assert!(e.contains("another config"), "{e}");
        // A folder an earlier version started (FNV fingerprints) is refused by name, not
        // mistaken for a changed config.
        std::fs::write(
            dir.path().join("run.json"),
            r#"{"fingerprint":"abc","format":1}"#,
        )
        .unwrap();
        let e = claim(dir.path(), "abc", true).unwrap_err().to_string();
        assert!(
            e.contains("earlier version") && e.contains("format 1"),
            "{e}"
        );
    }
}
