//! What a finished run reports: `summary.json`, written last, so that its presence marks a
//! finished run; read back by `--resume` and `compare`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use distillery_stages::{BestMetric, Metrics, Schedule};
use serde::{Deserialize, Serialize};

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub schedule: String,
    /// (name, steps, loss kinds) per stage.
    pub stages: Vec<(String, usize, Vec<String>)>,
    pub steps: usize,
    pub dev: Option<Metrics>,
    pub test: Option<Metrics>,
    /// (global step, value) of the best evaluation by `best_metric`.
    pub best_dev: Option<(usize, f64)>,
    /// What ranks evaluations, e.g. `dev accuracy` (older summaries: accuracy).
    #[serde(default = "default_best_metric")]
    pub best_metric: String,
    /// The global step whose weights are `student/` (the last step, or the best checkpoint's
    /// with `export = "best"`).
    #[serde(default)]
    pub exported_step: usize,
    pub student_parameters: usize,
    pub teacher_parameters: usize,
    pub teacher_dev: Option<Metrics>,
    pub teacher_test: Option<Metrics>,
    /// Training wall time over all invocations (a resumed run adds up).
    pub wall_secs: f64,
    pub student_dir: PathBuf,
}

fn default_best_metric() -> String {
    BestMetric::Accuracy.name().to_string()
}

pub fn read_summary(dir: &Path) -> Result<Option<Summary>> {
    let p = dir.join("summary.json");
    if !p.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
        format!("{}: not a run summary", p.display())
    })?))
}

/// (name, steps, loss names) per stage.
pub fn stage_rows(s: &Schedule) -> Vec<(String, usize, Vec<String>)> {
    s.stages
        .iter()
        .map(|st| {
            (
                st.name.clone(),
                st.steps,
                st.losses.iter().map(|l| l.name().to_string()).collect(),
            )
        })
        .collect()
}
