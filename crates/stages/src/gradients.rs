//! The seam between a step's backward pass and its optimiser update.
//!
//! A training step is (a) forward + losses + backward over one or more micro-batches, producing
//! [`Gradients`] (accumulated over the micro-batches), (b) a [`GradientHook`] the caller may
//! supply — where data-parallel all-reduce goes, or inspection — and (c) the AdamW update
//! (clipping, then the step). Without a hook (b) does nothing.
//!
//! Micro-batches combine exactly: each term's value on a micro-batch is a mean over that
//! micro-batch's tokens, token pairs or examples ([`MeanOver`]), so it is weighted by the
//! micro-batch's share of the whole batch's count. N micro-batches of b examples then give the
//! gradient of one batch of N·b (up to f32 rounding and padding), not an average of means.

use candle_core::{backprop::GradStore, Tensor, Var};
use distillery_data::Batch;

use crate::error::{Result, StageError};
use crate::terms::Weighted;

/// What a loss term's value is a mean over (its normaliser), per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeanOver {
    /// Valid (non-padding) tokens: hidden-state terms, attention KL and relation KL (valid
    /// query rows).
    Tokens,
    /// Valid (query, key) pairs: the score MSE.
    TokenPairs,
    /// Examples: logit terms and hard-label cross-entropy.
    Examples,
}

/// The gradients of one optimiser step, one entry per trained variable in the trainer's order
/// (sorted by name): what a [`GradientHook`] sees and may change. `None`: the variable got no
/// gradient this step (e.g. a frozen group, or a projection no term of the stage reads).
#[derive(Debug, Clone)]
pub struct Gradients {
    names: Vec<String>,
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    pub(crate) fn from_store(vars: &[(String, Var)], store: &GradStore) -> Self {
        Self {
            names: vars.iter().map(|(n, _)| n.clone()).collect(),
            grads: vars
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect(),
        }
    }

    pub(crate) fn to_store(&self, vars: &[(String, Var)]) -> GradStore {
        let mut store = GradStore::default();
        for ((_, v), g) in vars.iter().zip(&self.grads) {
            if let Some(g) = g {
                store.insert(v.as_tensor(), g.clone());
            }
        }
        store
    }

    /// Adds `other` (the same variables) into these gradients.
    pub(crate) fn accumulate(&mut self, other: Gradients) -> Result<()> {
        if other.names != self.names {
            return Err(StageError::Config(
                "gradients of different variables cannot be added".into(),
            ));
        }
        for (acc, g) in self.grads.iter_mut().zip(other.grads) {
            *acc = match (acc.take(), g) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    /// (name, gradient) per trained variable.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Tensor>)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.grads.iter().map(Option::as_ref))
    }

    /// (name, gradient) per trained variable, the gradient replaceable (an all-reduced
    /// tensor) or removable (`None`: the variable is not updated this step).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Option<Tensor>)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.grads.iter_mut())
    }
}

/// Where a step stands, for a [`GradientHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    pub stage_index: usize,
    /// 1-based within the stage.
    pub step: usize,
    /// 1-based over the run.
    pub global_step: usize,
    /// Micro-batches accumulated into these gradients.
    pub micro_batches: usize,
}

/// Called once per optimiser step with the accumulated gradients, before the gradient norm is
/// measured, clipped and applied. The default trainer has none (the identity).
pub trait GradientHook {
    fn on_gradients(&mut self, step: &StepInfo, grads: &mut Gradients) -> Result<()>;
}

/// For each micro-batch, each term's share of the whole batch's count of what the term
/// averages over (`[micro][term]`, summing to 1 over micro-batches).
pub(crate) fn shares(terms: &[Weighted], batches: &[Batch]) -> Vec<Vec<f64>> {
    let counts: Vec<[f64; 3]> = batches.iter().map(counts).collect();
    let slot = |t: &Weighted| match t.term.mean_over() {
        MeanOver::Tokens => 0,
        MeanOver::TokenPairs => 1,
        MeanOver::Examples => 2,
    };
    let n = batches.len() as f64;
    counts
        .iter()
        .map(|c| {
            terms
                .iter()
                .map(|t| {
                    let k = slot(t);
                    let total: f64 = counts.iter().map(|c| c[k]).sum();
                    if total > 0.0 {
                        c[k] / total
                    } else {
                        1.0 / n
                    }
                })
                .collect()
        })
        .collect()
}

/// (valid tokens, valid token pairs, examples) of a batch.
fn counts(b: &Batch) -> [f64; 3] {
    let e = &b.encoded;
    let (mut tokens, mut pairs) = (0f64, 0f64);
    for row in e.attention_mask.chunks(e.seq.max(1)) {
        let len = row.iter().filter(|&&m| m != 0).count() as f64;
        tokens += len;
        pairs += len * len;
    }
    [tokens, pairs, b.len() as f64]
}
