//! `hidden`: hidden-state MSE after a learned projection (TinyBERT) or cosine (DistilBERT)
//! over mapped layers, optionally with the embedding output.

use candle_core::Tensor;
use distillery_losses::{HiddenKind, HiddenLoss, LayerMap};
use distillery_models::ModelShape;
use serde::Deserialize;
use toml::de::ValueDeserializer;

use super::{
    default_weight, map, Entry, Layers, LossTerm, ProjectionSpec, TermContext, TermError,
    TermResult, Weighted,
};
use crate::cache::TeacherNeeds;
use crate::error::Result;
use crate::gradients::MeanOver;

pub(super) const NAME: &str = "hidden";

pub(super) const ENTRY: Entry = Entry {
    name: NAME,
    about: "hidden-state MSE (learned projection when widths differ) or cosine over mapped layers",
    build,
    table_optional: false,
};

/// Whether a learned projection maps the student's width onto the teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Projecting {
    /// A learned linear map when the widths differ, none when they are equal.
    Auto,
    /// Never: the widths must be equal.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HiddenTerm {
    pub loss: HiddenLoss,
    pub map: LayerMap,
    pub projection: Projecting,
}

/// A hidden-state term with a learned projection where the widths differ.
pub fn hidden(loss: HiddenLoss, map: LayerMap, weight: f64) -> Weighted {
    Weighted::new(
        HiddenTerm {
            loss,
            map,
            projection: Projecting::Auto,
        },
        weight,
    )
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum KindName {
    Mse,
    Cosine,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "mse")]
    kind: KindName,
    #[serde(default = "uniform", deserialize_with = "map::deserialize")]
    map: LayerMap,
    #[serde(default = "yes")]
    include_embeddings: bool,
    #[serde(default = "auto")]
    projection: Projecting,
    #[serde(default = "default_weight")]
    weight: f64,
}

fn mse() -> KindName {
    KindName::Mse
}
fn uniform() -> LayerMap {
    LayerMap::Uniform
}
fn yes() -> bool {
    true
}
fn auto() -> Projecting {
    Projecting::Auto
}

fn build(d: ValueDeserializer<'_>) -> TermResult<Weighted> {
    let s = Spec::deserialize(d)?;
    map::check(&s.map)?;
    let kind = match s.kind {
        KindName::Mse => HiddenKind::Mse,
        KindName::Cosine => HiddenKind::Cosine,
    };
    Ok(Weighted::new(
        HiddenTerm {
            loss: HiddenLoss {
                kind,
                include_embeddings: s.include_embeddings,
            },
            map: s.map,
            projection: s.projection,
        },
        s.weight,
    ))
}

impl LossTerm for HiddenTerm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mean_over(&self) -> MeanOver {
        MeanOver::Tokens
    }

    fn reads(&self, layers: Layers) -> Result<TeacherNeeds> {
        let mut n = TeacherNeeds::default();
        if self.loss.include_embeddings {
            n.hidden.insert(0);
        }
        for p in self.map.resolve(layers.student, layers.teacher)? {
            n.hidden.insert(p.teacher);
        }
        Ok(n)
    }

    fn check(&self, s: &ModelShape, t: &ModelShape) -> TermResult<()> {
        map::resolve_for(&self.map, s.layers, t.layers)?;
        if self.projection == Projecting::None && s.hidden != t.hidden {
            return Err(TermError::key(
                "projection",
                format!(
                    "is \"none\", but the student is {} wide and the teacher {}; use \
                     projection = \"auto\" to learn a linear map",
                    s.hidden, t.hidden
                ),
            ));
        }
        Ok(())
    }

    fn projections(&self, s: &ModelShape, t: &ModelShape) -> Vec<ProjectionSpec> {
        if self.projection == Projecting::Auto && s.hidden != t.hidden {
            vec![ProjectionSpec {
                name: "projection.hidden".into(),
                from: s.hidden,
                to: t.hidden,
            }]
        } else {
            Vec::new()
        }
    }

    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor> {
        let pairs = self.map.resolve(cx.layers.student, cx.layers.teacher)?;
        Ok(self
            .loss
            .compute(cx.student, cx.teacher(NAME)?, &pairs, cx.projections)?)
    }
}
