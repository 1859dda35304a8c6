//! `attention`: the streaming attention KL (MiniLM, default), TinyBERT's score MSE, or
//! MiniLMv2's relation KL over Q-Q / K-K / V-V relations, between mapped layers.

use std::collections::HashSet;

use candle_core::Tensor;
use distillery_losses::{AttentionKind, AttentionLoss, LayerMap, Relation};
use distillery_models::ModelShape;
use serde::Deserialize;
use toml::de::ValueDeserializer;

use super::{
    default_weight, map, Entry, Layers, LossTerm, TermContext, TermError, TermResult, Weighted,
};
use crate::cache::TeacherNeeds;
use crate::error::Result;
use crate::gradients::MeanOver;

pub(super) const NAME: &str = "attention";

pub(super) const ENTRY: Entry = Entry {
    name: NAME,
    about: "attention KL (MiniLM), score MSE (TinyBERT) or Q/K/V relation KL (MiniLMv2) over mapped layers",
    build,
    table_optional: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionTerm {
    pub loss: AttentionLoss,
    pub map: LayerMap,
}

pub fn attention(loss: AttentionLoss, map: LayerMap, weight: f64) -> Weighted {
    Weighted::new(AttentionTerm { loss, map }, weight)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum KindName {
    Kl,
    ScoreMse,
    Relation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RelationName {
    Query,
    Key,
    Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "kl")]
    kind: KindName,
    #[serde(default = "uniform", deserialize_with = "map::deserialize")]
    map: LayerMap,
    /// Relation kind only, and required there.
    relation_heads: Option<usize>,
    /// Relation kind only (default: all three).
    relations: Option<Vec<RelationName>>,
    #[serde(default = "default_weight")]
    weight: f64,
}

fn kl() -> KindName {
    KindName::Kl
}
fn uniform() -> LayerMap {
    LayerMap::Uniform
}

fn build(d: ValueDeserializer<'_>) -> TermResult<Weighted> {
    let s = Spec::deserialize(d)?;
    map::check(&s.map)?;
    let kind = match s.kind {
        KindName::Kl | KindName::ScoreMse => {
            for (key, given) in [
                ("relation_heads", s.relation_heads.is_some()),
                ("relations", s.relations.is_some()),
            ] {
                if given {
                    return Err(TermError::key(key, "only applies to kind = \"relation\""));
                }
            }
            if s.kind == KindName::Kl {
                AttentionKind::Kl
            } else {
                AttentionKind::ScoreMse
            }
        }
        KindName::Relation => {
            let heads = s.relation_heads.ok_or_else(|| {
                TermError::key("relation_heads", "is required with kind = \"relation\"")
            })?;
            if heads == 0 {
                return Err(TermError::key("relation_heads", "must be positive, got 0"));
            }
            let names = s.relations.unwrap_or_else(|| {
                vec![RelationName::Query, RelationName::Key, RelationName::Value]
            });
            if names.is_empty() {
                return Err(TermError::key(
                    "relations",
                    "is empty (name query, key and/or value)",
                ));
            }
            let mut seen = HashSet::new();
            if let Some(dup) = names.iter().find(|x| !seen.insert(**x)) {
                return Err(TermError::key(
                    "relations",
                    format!("{dup:?} is listed twice"),
                ));
            }
            AttentionKind::Relation {
                relation_heads: heads,
                relations: names
                    .into_iter()
                    .map(|r| match r {
                        RelationName::Query => Relation::Query,
                        RelationName::Key => Relation::Key,
                        RelationName::Value => Relation::Value,
                    })
                    .collect(),
            }
        }
    };
    Ok(attention(AttentionLoss { kind }, s.map, s.weight))
}

impl LossTerm for AttentionTerm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mean_over(&self) -> MeanOver {
        match self.loss.kind {
            AttentionKind::ScoreMse => MeanOver::TokenPairs,
            AttentionKind::Kl | AttentionKind::Relation { .. } => MeanOver::Tokens,
        }
    }

    fn reads(&self, layers: Layers) -> Result<TeacherNeeds> {
        let mut n = TeacherNeeds::default();
        let teacher_layers: Vec<usize> = self
            .map
            .resolve(layers.student, layers.teacher)?
            .into_iter()
            .map(|p| p.teacher)
            .collect();
        let relations = match &self.loss.kind {
            AttentionKind::Kl | AttentionKind::ScoreMse => &[Relation::Query, Relation::Key][..],
            AttentionKind::Relation { relations, .. } => relations,
        };
        for r in relations {
            let set = match r {
                Relation::Query => &mut n.q,
                Relation::Key => &mut n.k,
                Relation::Value => &mut n.v,
            };
            set.extend(teacher_layers.iter().copied());
        }
        Ok(n)
    }

    fn check(&self, s: &ModelShape, t: &ModelShape) -> TermResult<()> {
        super::encoder_only(s, t, "kind", "attention")?;
        map::resolve_for(&self.map, s.layers, t.layers)?;
        match &self.loss.kind {
            AttentionKind::Kl | AttentionKind::ScoreMse => {
                if s.heads != t.heads {
                    return Err(TermError::key(
                        "kind",
                        format!(
                            "{} needs equal head counts, but the student has {} heads and the \
                             teacher {}; use kind = \"relation\" (MiniLMv2), which re-splits both \
                             into `relation_heads`",
                            if self.loss.kind == AttentionKind::Kl {
                                "\"kl\""
                            } else {
                                "\"score-mse\""
                            },
                            s.heads,
                            t.heads
                        ),
                    ));
                }
            }
            AttentionKind::Relation { relation_heads, .. } => {
                let r = *relation_heads;
                if r == 0 || !s.hidden.is_multiple_of(r) || !t.hidden.is_multiple_of(r) {
                    return Err(TermError::key(
                        "relation_heads",
                        format!(
                            "{r} must divide both widths (student {}, teacher {})",
                            s.hidden, t.hidden
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor> {
        let pairs = self.map.resolve(cx.layers.student, cx.layers.teacher)?;
        Ok(self.loss.compute(cx.student, cx.teacher(NAME)?, &pairs)?)
    }
}
