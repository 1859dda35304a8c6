//! `hard_label`: cross-entropy against the dataset's labels; reads nothing of the teacher (a
//! stage with only this term is fine-tuning).

use candle_core::Tensor;
use distillery_losses::hard_cross_entropy;
use distillery_models::ModelShape;
use serde::Deserialize;
use toml::de::ValueDeserializer;

use super::{
    default_weight, logits_of, Entry, Layers, LossTerm, TermContext, TermResult, Weighted,
};
use crate::cache::TeacherNeeds;
use crate::error::{Result, StageError};
use crate::gradients::MeanOver;

pub(super) const NAME: &str = "hard_label";

pub(super) const ENTRY: Entry = Entry {
    name: NAME,
    about: "cross-entropy against the labels (no teacher); a stage of only this is fine-tuning",
    build,
    table_optional: true,
};

#[derive(Debug, Clone, PartialEq)]
pub struct HardLabelTerm;

pub fn hard_label(weight: f64) -> Weighted {
    Weighted::new(HardLabelTerm, weight)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "default_weight")]
    weight: f64,
}

fn build(d: ValueDeserializer<'_>) -> TermResult<Weighted> {
    let s = Spec::deserialize(d)?;
    Ok(hard_label(s.weight))
}

impl LossTerm for HardLabelTerm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mean_over(&self) -> MeanOver {
        MeanOver::Examples
    }

    fn needs_teacher(&self) -> bool {
        false
    }

    fn check(&self, s: &ModelShape, t: &ModelShape) -> TermResult<()> {
        super::encoder_only(s, t, "weight", "hard-label")
    }

    fn reads(&self, _layers: Layers) -> Result<TeacherNeeds> {
        Ok(TeacherNeeds::default())
    }

    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor> {
        let labels = cx.batch.labels.as_ref().ok_or_else(|| {
            StageError::Config(format!(
                "stage {:?}: hard-label loss on unlabelled data",
                cx.stage
            ))
        })?;
        let y = Tensor::new(labels.as_slice(), cx.student.mask.device())?;
        Ok(hard_cross_entropy(logits_of(cx.student, "student")?, &y)?)
    }
}
