//! `value_relation`: MiniLM's value-relation KL — per attention head,
//! `KL(softmax(V_t V_tᵀ/√d) ‖ softmax(V_s V_sᵀ/√d))` over valid query rows with masked keys
//! excluded, averaged over heads, rows and mapped layers (Wang et al. 2020, eq. 6). It runs on
//! the same streaming kernel as the attention KL, never holding the [b, h, l, l] relations.
//! MiniLM pairs it with the attention KL (`losses = ["attention", "value_relation"]`); it needs
//! equal head counts (MiniLMv2's relations re-split heads: `[losses.attention] kind =
//! "relation"`).

use candle_core::Tensor;
use distillery_kernels::relation_kl;
use distillery_losses::LayerMap;
use distillery_models::{LayerAttention, ModelOutput, ModelShape};
use serde::Deserialize;
use toml::de::ValueDeserializer;

use super::{
    default_weight, map, Entry, Layers, LossTerm, TermContext, TermError, TermResult, Weighted,
};
use crate::cache::TeacherNeeds;
use crate::error::{Result, StageError};
use crate::gradients::MeanOver;

pub(super) const NAME: &str = "value_relation";

pub(super) const ENTRY: Entry = Entry {
    name: NAME,
    about: "value-relation KL per head (MiniLM), streaming; pairs with the attention KL",
    build,
    table_optional: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct ValueRelationTerm {
    pub map: LayerMap,
}

pub fn value_relation(map: LayerMap, weight: f64) -> Weighted {
    Weighted::new(ValueRelationTerm { map }, weight)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "last_k", deserialize_with = "map::deserialize")]
    map: LayerMap,
    #[serde(default = "default_weight")]
    weight: f64,
}

/// MiniLM transfers the teacher's last layer's relations to the student's last layer.
fn last_k() -> LayerMap {
    LayerMap::LastK
}

fn build(d: ValueDeserializer<'_>) -> TermResult<Weighted> {
    let s = Spec::deserialize(d)?;
    map::check(&s.map)?;
    Ok(value_relation(s.map, s.weight))
}

fn layer<'a>(out: &'a ModelOutput, l: usize, who: &str) -> Result<&'a LayerAttention> {
    l.checked_sub(1)
        .and_then(|i| out.attentions.get(i))
        .ok_or_else(|| {
            StageError::Config(format!(
                "the {who} has no attention layer {l} (layers 1..={})",
                out.attentions.len()
            ))
        })
}

/// V as [b, l, H], heads concatenated as the projection produced them.
fn values(a: &LayerAttention) -> Result<Tensor> {
    Ok(a.value.reshape((a.batch, a.seq(), a.value.dim(1)?))?)
}

impl LossTerm for ValueRelationTerm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mean_over(&self) -> MeanOver {
        MeanOver::Tokens
    }

    fn reads(&self, layers: Layers) -> Result<TeacherNeeds> {
        let mut n = TeacherNeeds::default();
        for p in self.map.resolve(layers.student, layers.teacher)? {
            n.v.insert(p.teacher);
        }
        Ok(n)
    }

    fn check(&self, s: &ModelShape, t: &ModelShape) -> TermResult<()> {
        super::encoder_only(s, t, "map", "value-relation")?;
        map::resolve_for(&self.map, s.layers, t.layers)?;
        if s.heads != t.heads {
            return Err(TermError::key(
                "",
                format!(
                    "needs equal head counts, but the student has {} heads and the teacher {}; \
                     use [losses.attention] kind = \"relation\" with relations = [\"value\"] \
                     (MiniLMv2), which re-splits both",
                    s.heads, t.heads
                ),
            ));
        }
        Ok(())
    }

    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor> {
        let pairs = self.map.resolve(cx.layers.student, cx.layers.teacher)?;
        let teacher = cx.teacher(NAME)?;
        let mut total: Option<Tensor> = None;
        for p in &pairs {
            let a_s = layer(cx.student, p.student, "student")?;
            let a_t = layer(teacher, p.teacher, "teacher")?;
            // Re-split into the models' own heads: √(H/heads) is √d per head.
            let term = relation_kl(&values(a_t)?, &values(a_s)?, &cx.student.mask, a_t.heads)
                .map_err(distillery_losses::LossError::from)?;
            total = Some(match total {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let total =
            total.ok_or_else(|| StageError::Config("value relation: no layer pair".into()))?;
        Ok((total / pairs.len() as f64)?)
    }
}
