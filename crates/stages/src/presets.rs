//! The three preset schedules (TinyBERT's two-stage recipe, and the one- and three-stage
//! alternatives it is compared with), expanded from one set of loss settings and one step budget
//! so that they compare at equal cost:
//!
//! | preset      | stage I                    | stage II                   | stage III |
//! |-------------|----------------------------|----------------------------|-----------|
//! | one-stage   | hidden + attention + logit | –                          | –         |
//! | two-stage   | hidden + attention         | logit                      | –         |
//! | three-stage | hidden + attention         | hidden + attention + logit | logit     |

use crate::error::{Result, StageError};
use crate::schedule::{ParamGroups, Schedule, Stage};
use crate::terms::{self, Weighted};
use crate::{lr::LrSchedule, schedule::AdamW};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    OneStage,
    TwoStage,
    ThreeStage,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::OneStage, Preset::TwoStage, Preset::ThreeStage];

    pub fn name(self) -> &'static str {
        match self {
            Self::OneStage => "one-stage",
            Self::TwoStage => "two-stage",
            Self::ThreeStage => "three-stage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The terms a preset is built from, each with the first stage that uses it.
    pub fn uses(self) -> [(&'static str, &'static str); 3] {
        let logit_from = if self == Self::OneStage { "I" } else { "II" };
        [
            (terms::HIDDEN, "I"),
            (terms::ATTENTION, "I"),
            (terms::LOGIT, logit_from),
        ]
    }

    pub fn stages(self) -> usize {
        match self {
            Self::OneStage => 1,
            Self::TwoStage => 2,
            Self::ThreeStage => 3,
        }
    }
}

/// What the presets share: the three loss terms (with their maps and weights), one total step
/// budget, how it splits over stages, and the optimiser settings of every stage.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetSettings {
    pub hidden: Weighted,
    pub attention: Weighted,
    pub logit: Weighted,
    /// Hard-label cross-entropy mixed into every stage that has the logit term (soft KD
    /// optionally mixed with hard-label cross-entropy).
    pub hard_label: Option<Weighted>,
    pub total_steps: usize,
    /// Fractions of `total_steps` per stage, by preset length; `None` splits evenly.
    pub split: Option<Vec<f64>>,
    pub optimizer: AdamW,
    pub lr: LrSchedule,
    /// Warm-up as a fraction of each stage's steps (rounded up); overrides `lr.warmup_steps`.
    pub warmup_ratio: Option<f64>,
    pub params: ParamGroups,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}

/// `total` split by `fractions` with largest-remainder rounding: the parts sum to `total`.
pub fn split_steps(total: usize, fractions: &[f64]) -> Result<Vec<usize>> {
    let sum: f64 = fractions.iter().sum();
    if fractions.is_empty()
        || fractions.iter().any(|f| f.is_nan() || *f <= 0.0)
        || (sum - 1.0).abs() > 1e-6
    {
        return Err(StageError::Config(format!(
            "`split` must be positive fractions summing to 1, got {fractions:?}"
        )));
    }
    let exact: Vec<f64> = fractions.iter().map(|f| f * total as f64).collect();
    let mut parts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    let missing = total - parts.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        parts[i] += 1;
    }
    if let Some(i) = parts.iter().position(|&p| p == 0) {
        return Err(StageError::Config(format!(
            "stage {} would get 0 of the {total} steps; raise `total_steps`",
            i + 1
        )));
    }
    Ok(parts)
}

/// Expands a preset into its stages (names `I`, `II`, `III`), each with a fresh warm-up and decay.
pub fn expand(preset: Preset, s: &PresetSettings) -> Result<Schedule> {
    let n = preset.stages();
    let fractions = match &s.split {
        Some(f) if f.len() == n => f.clone(),
        Some(f) => {
            return Err(StageError::Config(format!(
                "`split` has {} fractions but {} has {n} stages",
                f.len(),
                preset.name()
            )))
        }
        None => vec![1.0 / n as f64; n],
    };
    let steps = split_steps(s.total_steps, &fractions)?;
    let (h, a) = (s.hidden.clone(), s.attention.clone());
    let mut l = vec![s.logit.clone()];
    l.extend(s.hard_label.clone());
    let with = |mut v: Vec<Weighted>, more: &[Weighted]| {
        v.extend_from_slice(more);
        v
    };
    let losses: Vec<Vec<Weighted>> = match preset {
        Preset::OneStage => vec![with(vec![h, a], &l)],
        Preset::TwoStage => vec![vec![h, a], l],
        Preset::ThreeStage => vec![vec![h.clone(), a.clone()], with(vec![h, a], &l), l],
    };
    let names = ["I", "II", "III"];
    let stages = losses
        .into_iter()
        .zip(steps)
        .enumerate()
        .map(|(i, (losses, steps))| Stage {
            name: names[i].to_string(),
            losses,
            steps,
            optimizer: s.optimizer,
            lr: LrSchedule {
                warmup_steps: match s.warmup_ratio {
                    Some(r) => ((r * steps as f64).ceil() as usize).min(steps),
                    None => s.lr.warmup_steps.min(steps),
                },
                ..s.lr
            },
            params: s.params.clone(),
            carry_optimizer: false,
            eval_every: s.eval_every,
            checkpoint_every: s.checkpoint_every,
        })
        .collect();
    let schedule = Schedule { stages };
    schedule.validate()?;
    Ok(schedule)
}
