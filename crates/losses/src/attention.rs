//! L_att: attention losses between mapped layers.

use candle_core::Tensor;
use distillery_kernels::{attention_kl, relation_kl, AttentionKlConfig};
use distillery_models::{LayerAttention, ModelOutput};

use crate::error::{LossError, Result};
use crate::mapping::LayerPair;
use crate::valid_mask;

/// Which projection a MiniLMv2 relation compares (with itself: Q-Q, K-K, V-V).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Query,
    Key,
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionKind {
    /// MiniLM: `KL(softmax(q_t k_tᵀ/√d_t) ‖ softmax(q_s k_sᵀ/√d_s))` per head and valid query row,
    /// masked keys excluded, averaged; streaming (never materialises the maps). Needs equal
    /// head counts.
    Kl,
    /// TinyBERT: `Σ (s_s − s_t)² / (n_valid_pairs · heads)` over pre-softmax scores `q kᵀ/√d`,
    /// only (query, key) pairs where both are tokens. Materialises [b, h, l, l].
    ScoreMse,
    /// MiniLMv2: for each relation, `KL` between `softmax(X Xᵀ/√(H/R))` of teacher and student
    /// with X re-split into `relation_heads` heads; averaged over relations. Head counts and
    /// widths may differ (both must be divisible by `relation_heads`).
    Relation {
        relation_heads: usize,
        relations: Vec<Relation>,
    },
}

/// Attention loss averaged over the mapped layer pairs (each term a mean over valid rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionLoss {
    pub kind: AttentionKind,
}

impl AttentionLoss {
    pub fn compute(
        &self,
        student: &ModelOutput,
        teacher: &ModelOutput,
        pairs: &[LayerPair],
    ) -> Result<Tensor> {
        if pairs.is_empty() {
            return Err(LossError::Config("attention loss has no layer pair".into()));
        }
        let mut total: Option<Tensor> = None;
        for p in pairs {
            let a_s = attention_of(student, p.student, "student")?;
            let a_t = attention_of(teacher, p.teacher, "teacher")?;
            let term = match &self.kind {
                AttentionKind::Kl => {
                    check_heads(a_s, a_t, p)?;
                    attention_kl_term(a_s, a_t, &student.mask)?
                }
                AttentionKind::ScoreMse => {
                    check_heads(a_s, a_t, p)?;
                    score_mse(a_s, a_t, &student.mask)?
                }
                AttentionKind::Relation {
                    relation_heads,
                    relations,
                } => relation_term(a_s, a_t, &student.mask, *relation_heads, relations)?,
            };
            total = Some(match total {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let total = total.ok_or_else(|| LossError::Config("no attention terms".into()))?;
        Ok((total / pairs.len() as f64)?)
    }
}

fn attention_of<'a>(out: &'a ModelOutput, l: usize, who: &str) -> Result<&'a LayerAttention> {
    if l == 0 {
        return Err(LossError::Mapping(format!(
            "{who} layer 0 is the embedding output and has no attention"
        )));
    }
    out.attentions.get(l - 1).ok_or_else(|| {
        LossError::Mapping(format!(
            "{who} layer {l} does not exist (the {who} has layers 1..={})",
            out.attentions.len()
        ))
    })
}

fn check_heads(s: &LayerAttention, t: &LayerAttention, p: &LayerPair) -> Result<()> {
    let (hs, ht) = (s.heads, t.heads);
    if hs != ht {
        return Err(LossError::HeadMismatch {
            student_layer: p.student,
            teacher_layer: p.teacher,
            student_heads: hs,
            teacher_heads: ht,
        });
    }
    Ok(())
}

fn attention_kl_term(s: &LayerAttention, t: &LayerAttention, mask: &Tensor) -> Result<Tensor> {
    let cfg = AttentionKlConfig::for_head_dims(t.head_dim(), s.head_dim());
    Ok(attention_kl(
        &t.q()?,
        &t.k()?,
        &s.q()?,
        &s.k()?,
        mask,
        &cfg,
    )?)
}

/// Scores `q·kᵀ/√d` (no mask bias), [b, h, l, l].
fn scores(a: &LayerAttention) -> Result<Tensor> {
    let d = a.head_dim() as f64;
    Ok((a.q()? / d.sqrt())?.matmul(&a.k()?.t()?)?)
}

/// TinyBERT's attention MSE on pre-softmax scores over valid (query, key) pairs.
pub fn score_mse(s: &LayerAttention, t: &LayerAttention, mask: &Tensor) -> Result<Tensor> {
    let s_s = scores(s)?;
    let s_t = scores(t)?.detach();
    let heads = s_s.dim(1)? as f64;
    let (m, _) = valid_mask(mask, s_s.dtype())?;
    // pair_mask[b, i, j] = m[b, i]·m[b, j], broadcast over heads.
    let pair = m
        .unsqueeze(2)?
        .broadcast_mul(&m.unsqueeze(1)?)?
        .unsqueeze(1)?;
    let n_pairs = pair.sum_all()?.clamp(1.0, f64::INFINITY)?;
    let sq = (s_s - s_t)?.sqr()?.broadcast_mul(&pair)?.sum_all()?;
    Ok((sq / heads)?.div(&n_pairs)?)
}

/// One relation's projection as [b, l, H] (heads concatenated, as the projection produced them).
fn tokens(a: &LayerAttention, r: Relation) -> Result<Tensor> {
    let t = match r {
        Relation::Query => &a.query,
        Relation::Key => &a.key,
        Relation::Value => &a.value,
    };
    Ok(t.reshape((a.batch, a.seq(), t.dim(1)?))?)
}

fn relation_term(
    s: &LayerAttention,
    t: &LayerAttention,
    mask: &Tensor,
    heads: usize,
    relations: &[Relation],
) -> Result<Tensor> {
    if relations.is_empty() {
        return Err(LossError::Config(
            "relation KL needs at least one of query, key, value".into(),
        ));
    }
    let mut total: Option<Tensor> = None;
    for r in relations {
        let term = relation_kl(&tokens(t, *r)?, &tokens(s, *r)?, mask, heads)?;
        total = Some(match total {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    let total = total.ok_or_else(|| LossError::Config("no relation terms".into()))?;
    Ok((total / relations.len() as f64)?)
}
