//! Classification metrics of a model on a labelled set: accuracy, macro-F1 and mean
//! cross-entropy, from batches encoded once up front (evaluation runs many times per run).

use candle_core::{DType, Device, Tensor, D};
use distillery_data::{BatchConfig, Batcher, Dataset, LabelVocab};
use distillery_models::{BatchTensors, ForwardOptions, Model, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StageError};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Mean cross-entropy of the gold labels.
    pub loss: f64,
    pub examples: usize,
}

impl Metrics {
    pub fn as_pairs(&self) -> Vec<(String, f64)> {
        vec![
            ("accuracy".into(), self.accuracy),
            ("macro_f1".into(), self.macro_f1),
            ("loss".into(), self.loss),
        ]
    }
}

/// A labelled set, tokenised and batched in file order.
#[derive(Debug)]
pub struct EvalSet {
    batches: Vec<(BatchTensors, Vec<u32>)>,
    classes: usize,
}

impl EvalSet {
    pub fn new(
        dataset: &Dataset,
        tokenizer: &TextTokenizer,
        vocab: &LabelVocab,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut batcher = Batcher::new(
            dataset,
            tokenizer,
            Some(vocab),
            BatchConfig::in_order(batch_size),
        )?;
        let mut batches = Vec::new();
        for batch in batcher.epoch() {
            let batch = batch?;
            let labels = batch.labels.clone().unwrap_or_default();
            batches.push((batch.encoded.to_tensors(device)?, labels));
        }
        Ok(Self {
            batches,
            classes: vocab.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.batches.iter().map(|(_, l)| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The model's metrics; the model needs a head with one logit per class.
    pub fn evaluate(&self, model: &dyn Model) -> Result<Metrics> {
        let mut gold = Vec::new();
        let mut pred = Vec::new();
        let mut nll = 0f64;
        for (t, labels) in &self.batches {
            let probs = probabilities(model, t)?;
            let rows: Vec<Vec<f32>> = probs.to_vec2()?;
            for (row, &y) in rows.iter().zip(labels) {
                if row.len() != self.classes {
                    return Err(StageError::Config(format!(
                        "the model predicts {} classes, the data has {}",
                        row.len(),
                        self.classes
                    )));
                }
                nll -= f64::from(row[y as usize].max(1e-12)).ln();
                pred.push(argmax(row));
                gold.push(y as usize);
            }
        }
        let n = gold.len().max(1);
        let correct = gold.iter().zip(&pred).filter(|(g, p)| g == p).count();
        Ok(Metrics {
            accuracy: correct as f64 / n as f64,
            macro_f1: macro_f1(&gold, &pred, self.classes),
            loss: nll / n as f64,
            examples: gold.len(),
        })
    }
}

/// Softmax of the head's logits, [batch, classes] f32.
pub fn probabilities(model: &dyn Model, t: &BatchTensors) -> Result<Tensor> {
    let out = model.forward_batch(t, &ForwardOptions::default())?;
    let logits = out
        .logits
        .ok_or_else(|| StageError::Config("the model has no classification head".into()))?;
    Ok(candle_nn::ops::softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}

/// First index of the largest value (ties go to the lower class, deterministically).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Unweighted mean of per-class F1 over the classes that occur as gold or prediction
/// (scikit-learn's `f1_score(average="macro")`).
pub fn macro_f1(gold: &[usize], pred: &[usize], classes: usize) -> f64 {
    let (mut sum, mut present) = (0.0, 0);
    for c in 0..classes {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p == c)
            .count();
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g != c && **p == c)
            .count();
        let fneg = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p != c)
            .count();
        let denom = 2 * tp + fp + fneg;
        if denom > 0 {
            sum += 2.0 * tp as f64 / denom as f64;
            present += 1;
        }
    }
    if present == 0 {
        return 0.0;
    }
    sum / present as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_known_values() {
        // class 0: tp 2, fp 1, fn 0 → 0.8; class 1: tp 1, fp 0, fn 1 → 2/3.
        let f = macro_f1(&[0, 0, 1, 1], &[0, 0, 0, 1], 2);
        assert!((f - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(macro_f1(&[0, 1], &[0, 1], 2), 1.0);
        // A class neither gold nor predicted is left out of the mean, as in scikit-learn.
        assert_eq!(macro_f1(&[0, 0], &[0, 0], 2), 1.0);
        assert_eq!(macro_f1(&[0, 0], &[1, 1], 2), 0.0);
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), 1);
    }
}
