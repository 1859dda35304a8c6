//! A schedule is a list of stages; a stage says which losses train which parameters for how long.

use crate::cache::TeacherNeeds;
use crate::error::{Result, StageError};
use crate::lr::LrSchedule;
use crate::terms::{Layers, Weighted};

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
    pub losses: Vec<Weighted>,
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

impl Stage {
    /// What this stage's terms read of the teacher (see [`Schedule::teacher_needs`]).
    pub fn teacher_needs(
        &self,
        student_layers: usize,
        teacher_layers: usize,
    ) -> Result<TeacherNeeds> {
        let layers = Layers {
            student: student_layers,
            teacher: teacher_layers,
        };
        let mut n = TeacherNeeds::default();
        for t in &self.losses {
            n.add(&t.term.reads(layers)?);
        }
        Ok(n)
    }
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
                .find(|t| !(t.weight > 0.0 && t.weight.is_finite()))
            {
                return Err(at(
                    "weight",
                    format!(
                        "of the {} loss must be positive, got {}",
                        t.name(),
                        t.weight
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

    /// Exactly what the schedule's terms read of a teacher of `teacher_layers` layers when the
    /// student has `student_layers` (each term's layer map resolved as the trainer resolves it,
    /// so a bad map is the same error here): what a teacher cache must hold.
    pub fn teacher_needs(
        &self,
        student_layers: usize,
        teacher_layers: usize,
    ) -> Result<TeacherNeeds> {
        let mut n = TeacherNeeds::default();
        for stage in &self.stages {
            n.add(&stage.teacher_needs(student_layers, teacher_layers)?);
        }
        Ok(n)
    }

    pub fn needs_teacher(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.losses.iter().any(|t| t.term.needs_teacher()))
    }
}
