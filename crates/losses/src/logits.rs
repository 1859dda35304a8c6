//! L_logit and hard-label losses on the prediction layer. Every function returns the mean over
//! the batch; teacher logits are detached.

use candle_core::{DType, Tensor, D};
use candle_nn::ops::log_softmax;

use crate::error::{LossError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogitKind {
    /// Hinton KD: `KL(softmax(z_t/T) ‖ softmax(z_s/T)) · T²`.
    Kl,
    /// `KL(softmax(z_s/T) ‖ softmax(z_t/T)) · T²` (mode-seeking).
    ReverseKl,
    /// Generalised Jensen–Shannon with weight β on the teacher:
    /// `(β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)) · T²`, `m = β·p_t + (1−β)·p_s`, β in (0, 1).
    Jsd { beta: f64 },
    /// `mean((z_s − z_t)²)` over batch and outputs (regression heads; T unused).
    Mse,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitLoss {
    pub kind: LogitKind,
    pub temperature: f64,
}

impl LogitLoss {
    pub fn compute(&self, z_s: &Tensor, z_t: &Tensor) -> Result<Tensor> {
        if z_s.dims() != z_t.dims() || z_s.rank() != 2 {
            return Err(LossError::Shape(format!(
                "logit loss needs [batch, classes] logits of equal shape, got student {:?} and teacher {:?}",
                z_s.dims(),
                z_t.dims()
            )));
        }
        let t = self.temperature;
        if !(t > 0.0 && t.is_finite()) {
            return Err(LossError::Config(format!(
                "temperature must be positive, got {t}"
            )));
        }
        let z_t = z_t.detach();
        match self.kind {
            LogitKind::Kl => Ok((kl_from_logits(&(&z_t / t)?, &(z_s / t)?)? * (t * t))?),
            LogitKind::ReverseKl => Ok((kl_from_logits(&(z_s / t)?, &(&z_t / t)?)? * (t * t))?),
            LogitKind::Jsd { beta } => {
                if !(beta > 0.0 && beta < 1.0) {
                    return Err(LossError::Config(format!(
                        "JSD beta must be in (0, 1), got {beta}"
                    )));
                }
                Ok((jsd(&(z_s / t)?, &(&z_t / t)?, beta)? * (t * t))?)
            }
            LogitKind::Mse => Ok((z_s - z_t)?.sqr()?.mean_all()?),
        }
    }
}

/// `mean_b KL(softmax(p_logits) ‖ softmax(q_logits))` from logits, via log-softmax (stable).
pub fn kl_from_logits(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    let lp = log_softmax(p_logits, D::Minus1)?;
    let lq = log_softmax(q_logits, D::Minus1)?;
    let p = lp.exp()?;
    Ok((p * (lp - lq)?)?.sum(D::Minus1)?.mean_all()?)
}

fn jsd(zs: &Tensor, zt: &Tensor, beta: f64) -> Result<Tensor> {
    let ls = log_softmax(zs, D::Minus1)?;
    let lt = log_softmax(zt, D::Minus1)?;
    let (ps, pt) = (ls.exp()?, lt.exp()?);
    let m = ((&pt * beta)? + (&ps * (1.0 - beta))?)?;
    let lm = m.clamp(1e-30, 1.0)?.log()?;
    let kl_t = (&pt * (lt - &lm)?)?.sum(D::Minus1)?;
    let kl_s = (&ps * (ls - &lm)?)?.sum(D::Minus1)?;
    Ok(((kl_t * beta)? + (kl_s * (1.0 - beta))?)?.mean_all()?)
}

/// Hard-label cross-entropy: `mean_b −log softmax(z_s)[y_b]`; `labels`: [batch] integers.
pub fn hard_cross_entropy(z_s: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, c) = z_s.dims2()?;
    if labels.dims() != [b] {
        return Err(LossError::Shape(format!(
            "labels have shape {:?}, expected [{b}]",
            labels.dims()
        )));
    }
    let labels = labels.to_dtype(DType::U32)?;
    let max = labels.max(0)?.to_scalar::<u32>()? as usize;
    if max >= c {
        return Err(LossError::Shape(format!(
            "label {max} is out of range for {c} classes"
        )));
    }
    let ls = log_softmax(z_s, D::Minus1)?;
    let picked = ls.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Regression targets: `mean((z_s − y)²)`; `targets` has z_s's shape.
pub fn regression_mse(z_s: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if z_s.dims() != targets.dims() {
        return Err(LossError::Shape(format!(
            "targets have shape {:?}, expected {:?}",
            targets.dims(),
            z_s.dims()
        )));
    }
    Ok((z_s - targets.to_dtype(z_s.dtype())?)?.sqr()?.mean_all()?)
}
