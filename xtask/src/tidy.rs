//! Invariants of the source tree that a machine can check, as tests (`cargo test -p xtask`,
//! part of `cargo test --workspace`): library crates never print, no source file outgrows
//! reading (800 lines; tests excepted), every module says what it is in a `//!` comment, and a
//! loss name is spelled only in its term's module (`crates/stages/src/terms/`): everything
//! else reads the registry.

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

    /// The registered loss names, read from each term module's `const NAME`.
    fn registered_names() -> Vec<String> {
        let mut files = Vec::new();
        rust_files(&root().join("crates/stages/src/terms"), &mut files);
        let mut names: Vec<String> = files
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(f).ok()?;
                let line = text.lines().find(|l| l.contains("const NAME: &str = \""))?;
                Some(line.split('"').nth(1)?.to_string())
            })
            .collect();
        names.sort();
        names
    }

    const NOT_A_LOSS: &str = "tidy: not a loss name";

    /// 1-based lines of `text` holding a loss name as a whole string literal, unless the line
    /// says it means something else (`// tidy: not a loss name`) or is in the unit tests.
    fn loss_name_literals(text: &str, names: &[String]) -> Vec<usize> {
        text.lines()
            .enumerate()
            // A file's unit tests (from its `#[cfg(test)]` on) are tests, which are excepted.
            .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
            .filter(|(_, line)| !line.contains(NOT_A_LOSS))
            .filter(|(_, line)| {
                let code = line.split("//").next().unwrap_or("");
                names.iter().any(|n| code.contains(&format!("\"{n}\"")))
            })
            .map(|(i, _)| i + 1)
            .collect()
    }

    #[test]
    fn the_loss_name_rule_finds_literals_and_honours_the_marker() {
        let names = vec!["logit".to_string(), "hidden".to_string()];
        let text = "let a = \"logit\";\nlet b = \"logits\";\n// \"hidden\" in a comment\nlet c = (\"hidden\", 1); // tidy: not a loss name\nf(\"hidden\")\n#[cfg(test)]\nf(\"logit\")\n";
        assert_eq!(loss_name_literals(text, &names), [1, 5]);
    }

    #[test]
    fn loss_names_are_spelled_only_in_the_registry() {
        let names = registered_names();
        assert!(
            names.len() >= 4 && names.iter().any(|n| n == "hard_label"),
            "the registry scan found {names:?}"
        );
        let terms_dir = root().join("crates/stages/src/terms");
        let mut bad = Vec::new();
        for f in sources() {
            let is_test = Path::new(&rel(&f))
                .components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs");
            if f.starts_with(&terms_dir) || is_test || f.ends_with("tidy.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for line in loss_name_literals(&text, &names) {
                bad.push(format!("{}:{line}", rel(&f)));
            }
        }
        assert!(
            bad.is_empty(),
            "read loss names from distillery_stages::terms (names(), the term's name()), or mark \
             a same-spelled word that is not a loss with `// {NOT_A_LOSS}`:\n{}",
            bad.join("\n")
        );
    }

    /// The teacher cache stores a plain description of what to keep ([`TeacherNeeds`]); it
    /// never learns schedules or loss terms (`Schedule::teacher_needs` derives the description).
    #[test]
    fn the_cache_knows_no_schedule_or_term() {
        let mut files = Vec::new();
        rust_files(&root().join("crates/stages/src/cache"), &mut files);
        assert!(files.len() >= 4, "found {} cache files", files.len());
        let bad: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| {
                        ["crate::schedule", "crate::terms", "crate::presets"]
                            .iter()
                            .any(|m| l.contains(m))
                    })
                    .map(|(i, l)| format!("{}:{}: {}", rel(f), i + 1, l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            bad.is_empty(),
            "the cache imports schedule types:\n{}",
            bad.join("\n")
        );
    }
}
