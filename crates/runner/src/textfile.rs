//! Reading user text files line by line with errors that name the file and line.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One text per line; a trailing newline is fine. Invalid UTF-8 or an empty line is an error
/// naming the file and the 1-based line; an empty file is an error too.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut texts = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    if body.is_empty() {
        bail!("{}: no texts (expected one text per line)", path.display());
    }
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: invalid UTF-8 ({e})", path.display(), i + 1))?;
        if text.trim().is_empty() {
            bail!(
                "{}:{}: empty line (expected one text per line)",
                path.display(),
                i + 1
            );
        }
        texts.push(text.to_string());
    }
    Ok(texts)
}
