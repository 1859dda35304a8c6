//! Loss terms: one [`LossTerm`] trait that every distillation term implements, and the
//! [`REGISTRY`] — the only list of loss names. Config tables (`[losses.<name>]`), a stage's
//! `losses = [...]`, metrics (`<name>` per step), reports and the cache's teacher reads all go
//! through it, so a new term is one file here plus one registry line.
//!
//! A term says which teacher outputs it reads ([`LossTerm::reads`]: the cache stores and the
//! live teacher keeps exactly the union over a schedule's terms), what its value is a mean
//! over (so micro-batches combine exactly), which learned projections it needs, and computes
//! its value from one [`TermContext`].

mod attention;
mod hard_label;
mod hidden;
mod logit;
mod map;
mod value_relation;

use std::fmt;
use std::sync::{Arc, LazyLock};

use candle_core::Tensor;
use distillery_data::Batch;
use distillery_losses::Projection;
use distillery_models::{Family, ModelOutput, ModelShape};
use toml::de::ValueDeserializer;

use crate::cache::TeacherNeeds;
use crate::error::{Result, StageError};
use crate::gradients::MeanOver;

pub use attention::{attention, AttentionTerm};
pub use hard_label::{hard_label, HardLabelTerm};
pub use hidden::{hidden, HiddenTerm, Projecting};
pub use logit::{logit, LogitTerm};
pub use value_relation::{value_relation, ValueRelationTerm};

/// The names the presets are built from (they are the preset's recipe, not a second list).
pub const HIDDEN: &str = hidden::NAME;
pub const ATTENTION: &str = attention::NAME;
pub const LOGIT: &str = logit::NAME;

/// Layer counts of the two models (the teacher's 0 when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub student: usize,
    pub teacher: usize,
}

/// A learned projection a term needs, trained with the student and saved in its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionSpec {
    /// The variable prefix (`{name}.weight`, `{name}.bias`); terms asking for the same name
    /// share one projection.
    pub name: String,
    pub from: usize,
    pub to: usize,
}

/// Everything a term's value may depend on, for one batch.
#[derive(Debug)]
pub struct TermContext<'a> {
    /// The stage's name, for errors.
    pub stage: &'a str,
    pub student: &'a ModelOutput,
    /// `None` when no term of the stage reads the teacher.
    pub teacher: Option<&'a ModelOutput>,
    pub batch: &'a Batch,
    pub layers: Layers,
    /// The learned projections ([`LossTerm::projections`] of the schedule's terms, built by the
    /// caller in that order).
    pub projections: &'a [Projection],
}

impl TermContext<'_> {
    pub fn teacher(&self, term: &str) -> Result<&ModelOutput> {
        self.teacher.ok_or_else(|| {
            StageError::Config(format!(
                "stage {:?}: the {term} loss needs a teacher",
                self.stage
            ))
        })
    }
}

/// One distillation term.
pub trait LossTerm: fmt::Debug + Send + Sync {
    /// Its registry name: the `[losses.<name>]` table, the stage list entry, the metric.
    fn name(&self) -> &'static str;
    /// What the value is a mean over, so that micro-batches weight it exactly.
    fn mean_over(&self) -> MeanOver;
    /// Whether it reads the teacher at all (hard-label CE does not).
    fn needs_teacher(&self) -> bool {
        true
    }
    /// Exactly the teacher outputs it reads for these models; resolves its layer map, so a bad
    /// map is an error here, before anything runs.
    fn reads(&self, layers: Layers) -> Result<TeacherNeeds>;
    /// Checks against the two models' shapes (head counts, widths, layer maps); the error's
    /// key is relative to the term's table.
    fn check(&self, _student: &ModelShape, _teacher: &ModelShape) -> TermResult<()> {
        Ok(())
    }
    /// The learned projections it needs for these models.
    fn projections(&self, _student: &ModelShape, _teacher: &ModelShape) -> Vec<ProjectionSpec> {
        Vec::new()
    }
    /// Terms it brings into every stage that lists it (the logit term's hard-label mix).
    fn companions(&self) -> Vec<Weighted> {
        Vec::new()
    }
    /// Whether it needs every teacher logit (a cache that keeps only the top k cannot serve it).
    fn needs_all_logits(&self) -> bool {
        false
    }
    /// The unweighted value on one batch (a scalar tensor).
    fn compute(&self, cx: &TermContext<'_>) -> Result<Tensor>;
}

/// A term with its weight in a stage's objective.
#[derive(Clone)]
pub struct Weighted {
    pub term: Arc<dyn LossTerm>,
    pub weight: f64,
}

impl Weighted {
    pub fn new(term: impl LossTerm + 'static, weight: f64) -> Self {
        Self {
            term: Arc::new(term),
            weight,
        }
    }

    pub fn name(&self) -> &'static str {
        self.term.name()
    }
}

impl fmt::Debug for Weighted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{} {:?}", self.name(), self.weight, self.term)
    }
}

/// Equal when the weights are and the terms print the same: every term is plain data, and
/// its `Debug` shows all of it.
impl PartialEq for Weighted {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight && format!("{:?}", self.term) == format!("{:?}", other.term)
    }
}

pub type TermResult<T> = std::result::Result<T, TermError>;

/// A config table that does not make a term.
#[derive(Debug)]
pub enum TermError {
    /// Unknown key, wrong type or variant; its span points into the config text.
    Toml(toml::de::Error),
    /// A value out of range; `key` is relative to the table (empty: the table itself).
    Key { key: String, message: String },
}

impl TermError {
    pub fn key(key: &str, message: impl fmt::Display) -> Self {
        Self::Key {
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

/// Refuses decoders for a term whose computation assumes bidirectional attention or
/// per-example classification logits; `key` is the term's table key the error points at.
pub(crate) fn encoder_only(
    s: &ModelShape,
    t: &ModelShape,
    key: &str,
    term: &str,
) -> TermResult<()> {
    if s.family == Family::Decoder || t.family == Family::Decoder {
        return Err(TermError::key(
            key,
            format!(
                "the {term} loss is for encoders (BERT) so far; decoders need its causal, \
                 per-token form"
            ),
        ));
    }
    Ok(())
}

impl From<toml::de::Error> for TermError {
    fn from(e: toml::de::Error) -> Self {
        Self::Toml(e)
    }
}

/// Builds a weighted term from its `[losses.<name>]` table.
pub type Build = for<'i> fn(ValueDeserializer<'i>) -> TermResult<Weighted>;

/// A registered term.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    /// One line for `--help`-style listings and the README.
    pub about: &'static str,
    pub build: Build,
    /// A stage may list it without a `[losses.<name>]` table (its defaults then apply).
    pub table_optional: bool,
}

/// Every loss term, in the order reports list them.
pub static REGISTRY: &[Entry] = &[
    hidden::ENTRY,
    attention::ENTRY,
    value_relation::ENTRY,
    logit::ENTRY,
    hard_label::ENTRY,
];

static NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| REGISTRY.iter().map(|e| e.name).collect());

/// The registered names, in registry order.
pub fn names() -> &'static [&'static str] {
    &NAMES
}

pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Builds `name`'s term from its table (`None`: no table, allowed for
/// [`Entry::table_optional`] terms). The weight must be positive and finite.
pub fn build(name: &str, table: Option<ValueDeserializer<'_>>) -> TermResult<Weighted> {
    let e = entry(name).ok_or_else(|| {
        TermError::key(
            "",
            format!("is not a loss; the losses are {}", names().join(", ")),
        )
    })?;
    let w = match table {
        Some(t) => (e.build)(t)?,
        None if e.table_optional => (e.build)(ValueDeserializer::parse("{}")?)?,
        None => return Err(TermError::key("", "is missing")),
    };
    if !(w.weight > 0.0 && w.weight.is_finite()) {
        return Err(TermError::key(
            "weight",
            format!("must be positive, got {}", w.weight),
        ));
    }
    Ok(w)
}

/// `Err` naming `key` unless `x` is positive and finite.
pub(crate) fn positive(key: &str, x: f64) -> TermResult<()> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(TermError::key(key, format!("must be positive, got {x}")))
    }
}

fn default_weight() -> f64 {
    1.0
}

/// The classification logits of a forward, or an error saying which model lacks a head.
pub(crate) fn logits_of<'o>(out: &'o ModelOutput, who: &str) -> Result<&'o Tensor> {
    out.logits.as_ref().ok_or_else(|| {
        StageError::Config(format!(
            "the {who} has no classification head (the logit and hard-label losses need one)"
        ))
    })
}
