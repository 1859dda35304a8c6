//! The lines of `metrics.jsonl`, typed: the metrics observer writes them and the reports read
//! them back as these types (a resumed run's earlier steps exist only in the file), never as
//! untyped JSON looked up by string keys.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Step(StepLine),
    Eval(EvalLine),
    StageEnd(StageEndLine),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    pub stage: String,
    pub stage_index: usize,
    pub step: usize,
    pub global_step: usize,
    pub epoch: u64,
    /// The weighted sum that was minimised.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub examples_per_sec: f64,
    /// Each term's unweighted value, keyed by its registry name (one key per term).
    #[serde(flatten)]
    pub terms: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub stage: String,
    pub stage_index: usize,
    pub global_step: usize,
    pub dev_accuracy: f64,
    pub dev_macro_f1: f64,
    pub dev_loss: f64,
    pub best: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEndLine {
    pub stage: String,
    pub stage_index: usize,
    pub global_step: usize,
}

impl Record {
    pub fn global_step(&self) -> usize {
        match self {
            Self::Step(s) => s.global_step,
            Self::Eval(e) => e.global_step,
            Self::StageEnd(e) => e.global_step,
        }
    }
}

/// The records of a metrics file; a line that does not parse (the last one, cut by a kill) is
/// skipped.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The steps among `records`.
pub fn steps(records: &[Record]) -> impl Iterator<Item = &StepLine> {
    records.iter().filter_map(|r| match r {
        Record::Step(s) => Some(s),
        _ => None,
    })
}

/// Dev accuracy over the global step.
pub fn dev_points(records: &[Record]) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some((e.global_step as f64, e.dev_accuracy)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The line format: the tag, the fields, each term under its own key; and back.
    #[test]
    fn a_step_line_round_trips_with_its_terms_as_keys() {
        let r = Record::Step(StepLine {
            stage: "I".into(),
            stage_index: 0,
            step: 3,
            global_step: 3,
            epoch: 1,
            loss: 1.5,
            lr: 1e-4,
            grad_norm: 0.25,
            examples_per_sec: 100.0,
            terms: [("hidden".to_string(), 1.0), ("logit".to_string(), 0.5)].into(),
        });
        let line = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "step");
        assert_eq!(v["hidden"], 1.0);
        assert_eq!(v["logit"], 0.5);
        assert_eq!(v["global_step"], 3);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        let e: Record = serde_json::from_str(
            r#"{"event":"eval","stage":"I","stage_index":0,"global_step":4,"dev_accuracy":0.75,"dev_macro_f1":0.7,"dev_loss":0.6,"best":true}"#,
        )
        .unwrap();
        assert_eq!(dev_points(&[r, e]), [(4.0, 0.75)]);
    }
}
