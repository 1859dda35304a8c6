//! Invariants of the source tree that a machine can check, as tests (`cargo test -p xtask`,
//! part of `cargo test --workspace`): library crates never print, no source file outgrows
//! reading (800 lines; tests excepted), every module says what it is in a `//!` comment.
//! (One list of loss names is the next rule, once the loss registry exists.)

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Crates that are libraries: they return errors and emit events; only the runner and
    /// xtask talk to the terminal.
    const LIBRARIES: [&str; 6] = ["kernels", "models", "losses", "stages", "data", "util"];
    const MAX_LINES: usize = 800;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every `.rs` file under some crate's `src/` (the xtask's included).
    fn sources() -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root().join("crates"))
            .into_iter()
            .flatten()
            .flatten()
        {
            rust_files(&entry.path().join("src"), &mut out);
        }
        rust_files(&root().join("xtask/src"), &mut out);
        assert!(out.len() > 50, "found only {} source files", out.len());
        out.sort();
        out
    }

    fn rel(p: &Path) -> String {
        p.strip_prefix(root()).unwrap_or(p).display().to_string()
    }

    #[test]
    fn library_crates_do_not_print() {
        let mut bad = Vec::new();
        for c in LIBRARIES {
            let mut files = Vec::new();
            rust_files(&root().join("crates").join(c).join("src"), &mut files);
            assert!(!files.is_empty(), "crates/{c}/src is empty");
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                for (i, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    if ["println!", "eprintln!", "print!(", "eprint!(", "dbg!("]
                        .iter()
                        .any(|m| code.contains(m))
                    {
                        bad.push(format!("{}:{}: {}", rel(&f), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            bad.is_empty(),
            "library crates report through errors and events, not the terminal:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn no_source_file_is_over_800_lines() {
        let long: Vec<String> = sources()
            .iter()
            .filter_map(|f| {
                let n = std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .count();
                (n > MAX_LINES).then(|| format!("{}: {n} lines", rel(f)))
            })
            .collect();
        assert!(
            long.is_empty(),
            "split these by concern (at most {MAX_LINES} lines; tests excepted):\n{}",
            long.join("\n")
        );
    }

    #[test]
    fn every_module_has_a_doc_comment() {
        let missing: Vec<String> = sources()
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                !text.trim_start().starts_with("//!")
            })
            .map(|f| rel(f))
            .collect();
        assert!(
            missing.is_empty(),
            "start these with a `//!` comment saying what the module is:\n{}",
            missing.join("\n")
        );
    }
}
