//! Which teacher tensors to store or keep: a plain description (the union of a schedule's
//! terms' reads is [`crate::Schedule::teacher_needs`]); the cache knows no schedule type.

use std::collections::BTreeSet;

use candle_core::Tensor;
use distillery_models::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The teacher outputs a schedule reads, layers numbered as `ModelOutput::hidden_states` (0 is
/// the embedding output, 1..=N the encoder layers). Q/K/V layers are 1-based: layer `l` is
/// `ModelOutput::attentions[l - 1]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherNeeds {
    /// The classification logits (logit losses).
    pub logits: bool,
    /// Hidden states; 0 when a hidden-state term includes the embeddings.
    pub hidden: BTreeSet<usize>,
    /// Q/K/V projections per layer (the attention KL and score MSE read Q and K, a relation
    /// the projections it relates).
    pub q: BTreeSet<usize>,
    pub k: BTreeSet<usize>,
    pub v: BTreeSet<usize>,
}

impl TeacherNeeds {
    /// Adds what `other` reads.
    pub fn add(&mut self, other: &TeacherNeeds) {
        self.logits |= other.logits;
        self.hidden.extend(&other.hidden);
        self.q.extend(&other.q);
        self.k.extend(&other.k);
        self.v.extend(&other.v);
    }

    /// Drops the tensors of a teacher forward that no loss reads, so that they are freed now
    /// rather than held for the whole step (at MiniLM's shape, 12 of 18 Q/K/V and 3 of 7
    /// hidden states, 6 MB each). What is dropped becomes the zero-size placeholder that
    /// [`super::TeacherCache::outputs`] returns, which fails any shape check if read.
    pub fn prune(&self, out: &mut ModelOutput) -> Result<()> {
        let device = out.mask.device().clone();
        for (l, h) in out.hidden_states.iter_mut().enumerate() {
            if !self.hidden.contains(&l) {
                let (b, s, _) = h.dims3()?;
                *h = Tensor::zeros((b, s, 0), h.dtype(), &device)?;
            }
        }
        for (i, a) in out.attentions.iter_mut().enumerate() {
            let l = i + 1;
            for (set, t) in [
                (&self.q, &mut a.query),
                (&self.k, &mut a.key),
                (&self.v, &mut a.value),
            ] {
                if !set.contains(&l) {
                    *t = Tensor::zeros((t.dim(0)?, 0), t.dtype(), &device)?;
                }
            }
        }
        if !self.logits {
            out.logits = None;
        }
        Ok(())
    }

    /// Nothing of the teacher is read (hard-label fine-tuning only).
    pub fn is_empty(&self) -> bool {
        !self.logits
            && self.hidden.is_empty()
            && self.q.is_empty()
            && self.k.is_empty()
            && self.v.is_empty()
    }

    /// Whether everything `other` needs is here.
    pub fn covers(&self, other: &TeacherNeeds) -> bool {
        (self.logits || !other.logits)
            && other.hidden.is_subset(&self.hidden)
            && other.q.is_subset(&self.q)
            && other.k.is_subset(&self.k)
            && other.v.is_subset(&self.v)
    }

    /// What `other` needs that is not here, in words (empty when [`Self::covers`]).
    pub fn missing(&self, other: &TeacherNeeds) -> Vec<String> {
        let mut out = Vec::new();
        if other.logits && !self.logits {
            out.push("logits".to_string());
        }
        for (name, mine, theirs) in [
            ("hidden", &self.hidden, &other.hidden), // tidy: not a loss name (the cache's tensor prefix)
            ("q", &self.q, &other.q),
            ("k", &self.k, &other.k),
            ("v", &self.v, &other.v),
        ] {
            out.extend(theirs.difference(mine).map(|l| format!("{name}.{l}")));
        }
        out
    }

    /// Stored tensors per token: the hidden states and Q/K/V rows, each `hidden` wide.
    pub(crate) fn token_tensors(&self) -> Vec<String> {
        let mut out: Vec<String> = self.hidden.iter().map(|l| format!("hidden.{l}")).collect();
        for (name, set) in [("q", &self.q), ("k", &self.k), ("v", &self.v)] {
            out.extend(set.iter().map(|l| format!("{name}.{l}")));
        }
        out
    }
}
