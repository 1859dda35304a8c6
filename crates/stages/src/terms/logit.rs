//! `logit`: knowledge distillation on the prediction layer — KL with T² (Hinton), reverse KL,
//! JSD(β) or logit MSE — optionally mixed with hard-label cross-entropy.

use candle_core::Tensor;
use distillery_losses::{LogitKind, LogitLoss};
use distillery_models::ModelShape;
use serde::Deserialize;
use toml::de::ValueDeserializer;

use super::{
    default_weight, hard_label, logits_of, positive, Entry, Layers, LossTerm, TermContext,
    TermError, TermResult, Weighted,
};
use crate::cache::TeacherNeeds;
use crate::error::Result;
use crate::gradients::MeanOver;

pub(super) const NAME: &str = "logit";

pub(super) const ENTRY: Entry = Entry {
    name: NAME,
    about: "logit KD: KL with T² (Hinton), reverse KL, JSD(β) or MSE; optional hard-label mix",
    build,
    table_optional: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct LogitTerm {
    pub loss: LogitLoss,
    /// > 0 mixes hard-label CE with this weight into every stage that has this term.
    pub hard_label_weight: f64,
}

pub fn logit(loss: LogitLoss, weight: f64) -> Weighted {
    Weighted::new(
        LogitTerm {
            loss,
            hard_label_weight: 0.0,
        },
        weight,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum KindName {
    Kl,
    ReverseKl,
    Jsd,
    Mse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "kl")]
    kind: KindName,
    #[serde(default = "two")]
    temperature: f64,
    /// JSD only (default 0.5).
    beta: Option<f64>,
    #[serde(default = "default_weight")]
    weight: f64,
    #[serde(default)]
    hard_label_weight: f64,
}

fn kl() -> KindName {
    KindName::Kl
}
fn two() -> f64 {
    2.0
}

fn build(d: ValueDeserializer<'_>) -> TermResult<Weighted> {
    let s = Spec::deserialize(d)?;
    positive("temperature", s.temperature)?;
    if !(s.hard_label_weight >= 0.0 && s.hard_label_weight.is_finite()) {
        return Err(TermError::key(
            "hard_label_weight",
            format!("must be ≥ 0, got {}", s.hard_label_weight),
        ));
    }
    let kind = match (s.kind, s.beta) {
        (KindName::Jsd, Some(b)) if !(b > 0.0 && b < 1.0) => {
            return Err(TermError::key(
                "beta",
                format!("must be in (0, 1), got {b}"),
            ))
        }
        (KindName::Jsd, b) => LogitKind::Jsd {
            beta: b.unwrap_or(0.5),
        },
        (_, Some(_)) => return Err(TermError::key("beta", "only applies to kind = \"jsd\"")),
        (KindName::Kl, None) => LogitKind::Kl,
        (KindName::ReverseKl, None) => LogitKind::ReverseKl,
        (KindName::Mse, None) => LogitKind::Mse,
    };
    Ok(Weighted::new(
        LogitTerm {
            loss: LogitLoss {
                kind,
                temperature: s.temperature,
            },
            hard_label_weight: s.hard_label_weight,
        },
        s.weight,
    ))
}

impl LossTerm for LogitTerm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mean_over(&self) -> MeanOver {
        MeanOver::Examples
    }

    fn check(&self, s: &ModelShape, t: &ModelShape) -> TermResult<()> {
        super::encoder_only(s, t, "temperature", "logit")
    }

    fn reads(&self, _layers: Layers) -> Result<TeacherNeeds> {
        Ok(TeacherNeeds {
            logits: true,
            ..TeacherNeeds::default()
        })
    }

    fn companions(&self) -> Vec<Weighted> {
        if self.hard_label_weight > 0.0 {
            vec![hard_label(self.hard_label_weight)]
        } else {
            Vec::new()
        }
    }

    fn needs_all_logits(&self) -> bool {
        // The logits a top-k cache drops read as a fill value: harmless under a softmax (their
        // probability is 0), but MSE would pull the student's logits towards it.
        self.loss.kind == LogitKind::Mse
    }

    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor> {
        let z_s = logits_of(cx.student, "student")?;
        let z_t = logits_of(cx.teacher(NAME)?, "teacher")?;
        Ok(self.loss.compute(z_s, z_t)?)
    }
}
