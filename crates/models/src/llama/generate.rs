//! Text continuation: greedy or sampled (temperature, nucleus), one token at a time on a KV
//! cache, stopping at an end-of-sequence token.

use candle_core::{DType, Tensor};

use super::{KvCache, LlamaModel};
use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0: greedy (the most likely token, the first of ties).
    pub temperature: f64,
    /// Sample from the smallest set of most likely tokens whose probability reaches this.
    pub top_p: f64,
    pub seed: u64,
    /// Tokens that end the continuation (kept as its last token).
    pub stop: Vec<u32>,
}

impl LlamaModel {
    /// The end-of-sequence ids of the config (`eos_token_id`: a number or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        let v = &self.config.eos_token_id;
        let one = |x: &serde_json::Value| x.as_u64().map(|n| n as u32);
        match v.as_array() {
            Some(list) => list.iter().filter_map(one).collect(),
            None => one(v).into_iter().collect(),
        }
    }

    /// The tokens that follow `prompt` (at least one token), at most `s.max_new_tokens`.
    pub fn generate(&self, prompt: &[u32], s: &Sampling) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt has no token".into()));
        }
        let valid =
            s.temperature >= 0.0 && s.temperature.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0;
        if !valid {
            return Err(ModelError::Input(format!(
                "temperature must be ≥ 0 and top-p in (0, 1], got {} and {}",
                s.temperature, s.top_p
            )));
        }
        let mut rng = SplitMix64::derive(s.seed, "generate");
        let mut cache = KvCache::new();
        let mut next = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < s.max_new_tokens {
            let ids = Tensor::new(next.as_slice(), self.device())?.unsqueeze(0)?;
            let logits = self.forward_cached(&ids, &mut cache)?;
            let n = logits.dim(1)?;
            let last = logits
                .get(0)?
                .get(n - 1)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let token = if s.temperature == 0.0 {
                argmax(&last)
            } else {
                sample(&last, s.temperature, s.top_p, rng.next_f64())
            };
            out.push(token);
            if s.stop.contains(&token) {
                break;
            }
            next = vec![token];
        }
        Ok(out)
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from softmax(logits / t) restricted to the nucleus of mass `top_p`, using the uniform
/// number `u` in [0, 1).
fn sample(logits: &[f32], t: f64, top_p: f64, u: f64) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &z)| (i, ((z as f64 - max) / t).exp()))
        .collect();
    let total: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, w) in &p {
        kept += 1;
        mass += w / total;
        if mass >= top_p {
            break;
        }
    }
    let nucleus = &p[..kept];
    let sum: f64 = nucleus.iter().map(|x| x.1).sum();
    let mut acc = 0.0;
    for (i, w) in nucleus {
        acc += w / sum;
        if u < acc {
            return *i as u32;
        }
    }
    nucleus[kept - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_sampling_keeps_the_smallest_set_reaching_top_p() {
        // Probabilities 0.5, 0.3, 0.2 (logits ln of them, t = 1).
        let logits: Vec<f32> = [0.5f64, 0.3, 0.2].iter().map(|p| p.ln() as f32).collect();
        // top-p 0.6: tokens 0 and 1, renormalised to 0.625 / 0.375.
        assert_eq!(sample(&logits, 1.0, 0.6, 0.0), 0);
        assert_eq!(sample(&logits, 1.0, 0.6, 0.62), 0);
        assert_eq!(sample(&logits, 1.0, 0.6, 0.63), 1);
        assert_eq!(sample(&logits, 1.0, 0.6, 0.999), 1);
        // top-p 1: all three, cumulative 0.5 / 0.8 / 1.
        assert_eq!(sample(&logits, 1.0, 1.0, 0.79), 1);
        assert_eq!(sample(&logits, 1.0, 1.0, 0.81), 2);
        // A low temperature sharpens towards the argmax.
        assert_eq!(sample(&logits, 0.01, 1.0, 0.99), 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
