//! The runner's observers of training events: a progress bar on the terminal and a JSONL
//! metrics file (one line per step and per evaluation).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use distillery_stages::{Event, Observer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::records::{EvalLine, Record, StageEndLine, StepLine};

/// Stage k/N, step, ETA, each loss term, examples/s. Hidden when stderr is not a terminal;
/// stage ends and evaluations are also printed as lines, so logs keep them.
#[derive(Debug)]
pub struct Progress {
    label: String,
    bar: ProgressBar,
    stages: usize,
    quiet: bool,
}

impl Progress {
    /// `label` names the job (e.g. `teacher`, `three-stage`).
    pub fn new(label: &str, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:24} {pos}/{len} eta {eta} | {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            label: label.to_string(),
            bar,
            stages: 0,
            quiet,
        }
    }

    fn line(&self, text: String) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{text}"));
        }
    }
}

impl Observer for Progress {
    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Started {
                stages, resumed_at, ..
            } => {
                self.stages = stages.len();
                if *resumed_at > 0 {
                    self.line(format!("{}: resuming after global step {resumed_at}", self.label));
                }
            }
            Event::StageStarted {
                stage_index,
                stage,
                steps,
                done,
                ..
            } => {
                self.bar.reset();
                self.bar.set_length(*steps as u64);
                self.bar.set_position(*done as u64);
                self.bar.set_prefix(format!(
                    "{} stage {}/{} {stage}",
                    self.label,
                    stage_index + 1,
                    self.stages
                ));
            }
            Event::Step(s) => {
                self.bar.set_position(s.step as u64);
                let terms: Vec<String> = s
                    .terms
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                self.bar.set_message(format!(
                    "loss {:.4} ({}) lr {:.2e} {:.0} ex/s",
                    s.loss,
                    terms.join(", "),
                    s.lr,
                    s.examples_per_sec
                ));
            }
            Event::Evaluated {
                stage,
                global_step,
                accuracy,
                macro_f1,
                best,
                ..
            } => self.line(format!(
                "{}: stage {stage} step {global_step}: dev accuracy {accuracy:.4}, macro-F1 {macro_f1:.4}{}",
                self.label,
                if *best { " (best)" } else { "" }
            )),
            Event::StageFinished { stage, .. } => {
                self.line(format!("{}: stage {stage} done", self.label));
            }
            Event::Finished { .. } => self.bar.finish_and_clear(),
            Event::Checkpointed { .. } => {}
        }
    }
}

/// Appends one JSON object per step / evaluation to `metrics.jsonl`, flushed per line so that a
/// killed run keeps what it logged.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    error: Option<String>,
}

impl MetricsFile {
    /// Opens `path` for appending. With `keep_until = Some(step)` (a resumed run) lines logged
    /// after that global step are dropped first, so the file reads as one uninterrupted run.
    pub fn open(path: &Path, keep_until: Option<usize>) -> Result<Self> {
        match keep_until {
            Some(step) if path.exists() => truncate_after(path, step)?,
            None if path.exists() => std::fs::remove_file(path)
                .with_context(|| format!("{}: cannot replace", path.display()))?,
            _ => {}
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for writing", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(f),
            error: None,
        })
    }

    /// The first write error, if any (observers cannot fail; the runner checks this at the end).
    pub fn finish(mut self) -> Result<()> {
        if let Err(e) = self.out.flush() {
            self.error.get_or_insert(e.to_string());
        }
        match self.error {
            Some(e) => anyhow::bail!("{}: {e}", self.path.display()),
            None => Ok(()),
        }
    }

    fn write(&mut self, record: &Record) {
        let r = serde_json::to_writer(&mut self.out, record)
            .map_err(|e| e.to_string())
            .and_then(|_| self.out.write_all(b"\n").map_err(|e| e.to_string()))
            .and_then(|_| self.out.flush().map_err(|e| e.to_string()));
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

impl Observer for MetricsFile {
    fn on_event(&mut self, event: &Event) {
        let record = match event {
            Event::Step(s) => Record::Step(StepLine {
                stage: s.stage.clone(),
                stage_index: s.stage_index,
                step: s.step,
                global_step: s.global_step,
                epoch: s.epoch,
                loss: s.loss,
                lr: s.lr,
                grad_norm: s.grad_norm,
                examples_per_sec: s.examples_per_sec,
                terms: s.terms.iter().cloned().collect(),
            }),
            Event::Evaluated {
                stage,
                stage_index,
                global_step,
                accuracy,
                macro_f1,
                loss,
                best,
            } => Record::Eval(EvalLine {
                stage: stage.clone(),
                stage_index: *stage_index,
                global_step: *global_step,
                dev_accuracy: *accuracy,
                dev_macro_f1: *macro_f1,
                dev_loss: *loss,
                best: *best,
            }),
            Event::StageFinished {
                stage,
                stage_index,
                global_step,
            } => Record::StageEnd(StageEndLine {
                stage: stage.clone(),
                stage_index: *stage_index,
                global_step: *global_step,
            }),
            _ => return,
        };
        self.write(&record);
    }
}

/// Rewrites `path` without the lines whose `global_step` is past `step` (atomically).
fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut kept = String::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("{}: cannot read", path.display()))?;
        let r: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(_) => continue, // a line cut by a kill
        };
        if r.global_step() <= step {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    distillery_util::fs::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A resumed run keeps the lines logged up to its checkpoint and drops the rest, including a
    /// last line that the kill cut in half; a fresh run starts the file anew.
    #[test]
    fn reopening_drops_lines_past_the_checkpoint_and_a_cut_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let step = |g: usize, loss: f64| {
            format!(
                r#"{{"event":"step","stage":"I","stage_index":0,"step":{g},"global_step":{g},"epoch":0,"loss":{loss},"lr":0.001,"grad_norm":1.0,"examples_per_sec":10.0,"hidden":{loss}}}"#
            )
        };
        let lines = [
            step(1, 0.5),
            step(2, 0.4),
            r#"{"event":"eval","stage":"I","stage_index":0,"global_step":2,"dev_accuracy":0.7,"dev_macro_f1":0.6,"dev_loss":0.5,"best":true}"#.to_string(),
            step(3, 0.3),
        ];
        let text = format!("{}\n{}", lines.join("\n"), r#"{"event":"step","global_st"#);
        std::fs::write(&path, &text).unwrap();
        let m = MetricsFile::open(&path, Some(2)).unwrap();
        m.finish().unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, format!("{}\n", lines[..3].join("\n")));
        // Appending continues after the kept lines.
        let mut m = MetricsFile::open(&path, Some(2)).unwrap();
        m.on_event(&Event::StageFinished {
            stage: "I".into(),
            stage_index: 0,
            global_step: 3,
        });
        m.finish().unwrap();
        let all = crate::records::read(&path).unwrap();
        assert_eq!(all.len(), 4);
        assert!(matches!(&all[0], Record::Step(s) if s.terms["hidden"] == 0.5));
        assert!(matches!(&all[3], Record::StageEnd(e) if e.global_step == 3));
        // A run that is not resuming replaces the file.
        MetricsFile::open(&path, None).unwrap().finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
