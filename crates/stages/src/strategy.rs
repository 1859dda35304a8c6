//! Strategies a run chooses instead of hard-wired rules: which dev metric makes a checkpoint
//! "best", and which checkpoints are kept.

use serde::{Deserialize, Serialize};

use crate::eval::Metrics;

/// The dev metric that ranks evaluations (and so the best checkpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Dev accuracy, higher is better (the default).
    #[default]
    Accuracy,
    /// Dev macro-F1, higher is better.
    MacroF1,
    /// Dev cross-entropy of the gold labels, lower is better.
    Loss,
}

impl BestMetric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "dev accuracy",
            Self::MacroF1 => "dev macro-F1",
            Self::Loss => "dev loss",
        }
    }

    pub fn of(self, m: &Metrics) -> f64 {
        match self {
            Self::Accuracy => m.accuracy,
            Self::MacroF1 => m.macro_f1,
            Self::Loss => m.loss,
        }
    }

    /// Whether `value` beats `best` (strictly: the earlier of two equal evaluations stays best).
    pub fn better(self, value: f64, best: f64) -> bool {
        match self {
            Self::Accuracy | Self::MacroF1 => value > best,
            Self::Loss => value < best,
        }
    }
}

/// Which checkpoints a run keeps: the newest `keep_last` (at least one, so a run can always
/// resume), and with `keep_best` also the best by the run's [`BestMetric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub keep_last: usize,
    pub keep_best: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            keep_last: 2,
            keep_best: true,
        }
    }
}
