//! A schedule is a list of stages; a stage says which losses train which parameters for how long.

use distillery_losses::{AttentionLoss, HiddenLoss, LayerMap, LogitLoss};

use crate::error::{Result, StageError};
use crate::lr::LrSchedule;

/// One weighted term of a stage's objective.
#[derive(Debug, Clone, PartialEq)]
pub enum LossTerm {
    Hidden {
        loss: HiddenLoss,
        map: LayerMap,
        weight: f64,
    },
    Attention {
        loss: AttentionLoss,
        map: LayerMap,
        weight: f64,
    },
    Logit {
        loss: LogitLoss,
        weight: f64,
    },
    /// Hard-label cross-entropy; a stage with only this term and no teacher is fine-tuning.
    HardLabel {
        weight: f64,
    },
}

impl LossTerm {
    pub fn weight(&self) -> f64 {
        match self {
            Self::Hidden { weight, .. }
            | Self::Attention { weight, .. }
            | Self::Logit { weight, .. }
            | Self::HardLabel { weight } => *weight,
        }
    }

    /// Whether computing the term needs the teacher's outputs.
    pub fn needs_teacher(&self) -> bool {
        !matches!(self, Self::HardLabel { .. })
    }

    /// What the term's value is a mean over, so that micro-batches combine exactly.
    pub fn mean_over(&self) -> crate::gradients::MeanOver {
        use crate::gradients::MeanOver;
        use distillery_losses::AttentionKind;
        match self {
            Self::Hidden { .. } => MeanOver::Tokens,
            Self::Attention { loss, .. } => match loss.kind {
                AttentionKind::ScoreMse => MeanOver::TokenPairs,
                AttentionKind::Kl | AttentionKind::Relation { .. } => MeanOver::Tokens,
            },
            Self::Logit { .. } | Self::HardLabel { .. } => MeanOver::Examples,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Hidden { .. } => "hidden",
            Self::Attention { .. } => "attention",
            Self::Logit { .. } => "logit",
            Self::HardLabel { .. } => "hard_label",
        }
    }
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
        }
    }
}

/// Parameter groups by Hugging Face name prefix; `frozen` wins over `trainable`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamGroups {
    /// Name prefixes that do not train in this stage (e.g. `embeddings.`).
    pub frozen: Vec<String>,
}

impl ParamGroups {
    pub fn trains(&self, name: &str) -> bool {
        !self.frozen.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub losses: Vec<LossTerm>,
    pub steps: usize,
    pub optimizer: AdamW,
    pub lr: LrSchedule,
    pub params: ParamGroups,
    /// Keep the AdamW moments from the stage before instead of starting fresh.
    pub carry_optimizer: bool,
    /// Evaluate on dev every this many steps (0: only at the stage end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: only at the stage end).
    pub checkpoint_every: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub stages: Vec<Stage>,
}

impl Schedule {
    /// Checks what would otherwise fail mid-run; errors name the stage and the field.
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            return Err(StageError::Config("the schedule has no stage".into()));
        }
        for (i, s) in self.stages.iter().enumerate() {
            let at = |field: &str, msg: String| {
                StageError::Config(format!("stage {} ({:?}): `{field}` {msg}", i + 1, s.name))
            };
            if s.steps == 0 {
                return Err(at("steps", "must be positive".into()));
            }
            if s.losses.is_empty() {
                return Err(at("losses", "is empty".into()));
            }
            if let Some(t) = s
                .losses
                .iter()
                .find(|t| !(t.weight() > 0.0 && t.weight().is_finite()))
            {
                return Err(at(
                    "weight",
                    format!(
                        "of the {} loss must be positive, got {}",
                        t.kind_name(),
                        t.weight()
                    ),
                ));
            }
            if !(s.lr.peak > 0.0 && s.lr.peak.is_finite()) {
                return Err(at("lr", format!("must be positive, got {}", s.lr.peak)));
            }
            if s.lr.warmup_steps > s.steps {
                return Err(at(
                    "warmup_steps",
                    format!(
                        "{} exceeds the stage's {} steps",
                        s.lr.warmup_steps, s.steps
                    ),
                ));
            }
            if i == 0 && s.carry_optimizer {
                return Err(at(
                    "carry_optimizer",
                    "has no earlier stage to carry from".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn total_steps(&self) -> usize {
        self.stages.iter().map(|s| s.steps).sum()
    }

    pub fn needs_teacher(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.losses.iter().any(LossTerm::needs_teacher))
    }
}
