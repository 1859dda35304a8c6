//! L_hidden: hidden-state losses between mapped student and teacher layers.

use candle_core::{Tensor, D};
use distillery_models::ModelOutput;

use crate::error::{LossError, Result};
use crate::mapping::LayerPair;
use crate::projection::Projection;
use crate::valid_mask;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenKind {
    /// TinyBERT: `Σ_valid ‖h_s·W_hᵀ − h_t‖² / (n_valid · width_t)`.
    Mse,
    /// DistilBERT: `Σ_valid (1 − cos(h_s·W_hᵀ, h_t)) / n_valid`.
    Cosine,
}

/// Hidden-state loss over a layer map, optionally with the embedding layer (0 ↔ 0).
///
/// The value is the mean over the terms (the embedding term counts as one), each itself a mean
/// over valid (non-padding) tokens, so weights compose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiddenLoss {
    pub kind: HiddenKind,
    pub include_embeddings: bool,
}

impl HiddenLoss {
    /// `projections`: empty when the widths are equal (identity), one shared projection, or one
    /// per term (embedding term first when included).
    pub fn compute(
        &self,
        student: &ModelOutput,
        teacher: &ModelOutput,
        pairs: &[LayerPair],
        projections: &[Projection],
    ) -> Result<Tensor> {
        let mut terms: Vec<(usize, usize)> = Vec::new();
        if self.include_embeddings {
            terms.push((0, 0));
        }
        terms.extend(pairs.iter().map(|p| (p.student, p.teacher)));
        if terms.is_empty() {
            return Err(LossError::Config(
                "hidden-state loss has no layer to compare".into(),
            ));
        }
        if !(projections.len() <= 1 || projections.len() == terms.len()) {
            return Err(LossError::Config(format!(
                "{} projections for {} hidden-state terms: give none, one shared, or one per term",
                projections.len(),
                terms.len()
            )));
        }
        let mut total: Option<Tensor> = None;
        for (i, &(s, t)) in terms.iter().enumerate() {
            let h_s = layer(student, s, "student")?;
            let h_t = layer(teacher, t, "teacher")?;
            let proj = match projections.len() {
                0 => None,
                1 => projections.first(),
                _ => projections.get(i),
            };
            let term = match self.kind {
                HiddenKind::Mse => hidden_mse(h_s, h_t, &student.mask, proj)?,
                HiddenKind::Cosine => hidden_cosine(h_s, h_t, &student.mask, proj)?,
            };
            total = Some(match total {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let total = total.ok_or_else(|| LossError::Config("no hidden-state terms".into()))?;
        Ok((total / terms.len() as f64)?)
    }
}

fn layer<'a>(out: &'a ModelOutput, l: usize, who: &str) -> Result<&'a Tensor> {
    out.hidden_states.get(l).ok_or_else(|| {
        LossError::Mapping(format!(
            "{who} layer {l} does not exist (the {who} has layers 0..={})",
            out.hidden_states.len() - 1
        ))
    })
}

fn project(h_s: &Tensor, h_t: &Tensor, proj: Option<&Projection>) -> Result<Tensor> {
    let (ws, wt) = (h_s.dim(D::Minus1)?, h_t.dim(D::Minus1)?);
    match proj {
        Some(p) => p.forward(h_s),
        None if ws == wt => Ok(h_s.clone()),
        None => Err(LossError::Shape(format!(
            "width mismatch: student hidden {ws} vs teacher hidden {wt} needs a projection"
        ))),
    }
}

/// `Σ_valid ‖f(h_s) − h_t‖² / (n_valid · width)`; `mask`: [b, l], 1 = token. Teacher detached.
pub fn hidden_mse(
    h_s: &Tensor,
    h_t: &Tensor,
    mask: &Tensor,
    proj: Option<&Projection>,
) -> Result<Tensor> {
    let p = project(h_s, h_t, proj)?;
    let h_t = h_t.detach();
    let (m, n_valid) = valid_mask(mask, p.dtype())?;
    let width = h_t.dim(D::Minus1)? as f64;
    let sq = (p - h_t)?.sqr()?.sum(D::Minus1)?;
    Ok(((sq * m)?.sum_all()? / width)?.div(&n_valid)?)
}

/// `Σ_valid (1 − cos(f(h_s), h_t)) / n_valid`. Teacher detached.
pub fn hidden_cosine(
    h_s: &Tensor,
    h_t: &Tensor,
    mask: &Tensor,
    proj: Option<&Projection>,
) -> Result<Tensor> {
    let p = project(h_s, h_t, proj)?;
    let h_t = h_t.detach();
    let (m, n_valid) = valid_mask(mask, p.dtype())?;
    let dot = (&p * &h_t)?.sum(D::Minus1)?;
    let norms = (p.sqr()?.sum(D::Minus1)?.sqrt()? * h_t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    let cos = (dot / norms.clamp(1e-8, f64::INFINITY)?)?;
    let one_minus = cos.affine(-1.0, 1.0)?;
    Ok((one_minus * m)?.sum_all()?.div(&n_valid)?)
}
