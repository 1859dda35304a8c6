//! AdamW with decoupled weight decay, global-norm clipping and a non-finite guard, whose state
//! (moments and step count) is plain named tensors so that a checkpoint restores it exactly.
//!
//! candle_nn's `AdamW` hides its moments, so a resumed run could not continue bit-identically;
//! this one keeps them by parameter name.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{Result, StageError};
use crate::schedule::{AdamW, ParamGroups};

/// One trainable parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Option<Tensor>,
    v: Option<Tensor>,
    /// Updates this parameter has had since its moments were reset (bias correction).
    t: u64,
}

pub type NamedTensors = Vec<(String, Tensor)>;

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Global L2 norm of the trained parameters' gradients, before clipping.
    pub grad_norm: f64,
    /// Parameters updated (frozen ones and ones without a gradient are not).
    pub updated: usize,
}

#[derive(Debug)]
pub struct Optimizer {
    slots: Vec<Slot>,
}

/// Hugging Face's convention: no weight decay on biases and layer-norm weights.
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl Optimizer {
    /// Over `params` (name, variable); their order is fixed by sorting on the name so that the
    /// floating-point order of the gradient norm never depends on a hash map.
    pub fn new(mut params: Vec<(String, Var)>) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = params
            .into_iter()
            .map(|(name, var)| Slot {
                name,
                var,
                m: None,
                v: None,
                t: 0,
            })
            .collect();
        Self { slots }
    }

    /// Forgets the moments (a stage that does not carry the optimiser over).
    pub fn reset(&mut self) {
        for s in &mut self.slots {
            s.m = None;
            s.v = None;
            s.t = 0;
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// The global gradient norm of the parameters `groups` trains; an error names the first
    /// parameter whose gradient is NaN or infinite.
    fn grad_norm(&self, grads: &GradStore, groups: &ParamGroups) -> Result<f64> {
        let mut sq = 0f64;
        for s in self.slots.iter().filter(|s| groups.trains(&s.name)) {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                let v = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
                let v = v.to_scalar::<f64>()?;
                if !v.is_finite() {
                    return Err(StageError::NonFinite(format!(
                        "gradient of `{}` is {v}",
                        s.name
                    )));
                }
                sq += v;
            }
        }
        Ok(sq.sqrt())
    }

    /// One AdamW update at rate `lr` of the parameters `groups` trains.
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        hp: &AdamW,
        groups: &ParamGroups,
    ) -> Result<UpdateStats> {
        let grad_norm = self.grad_norm(grads, groups)?;
        let clip = if hp.max_grad_norm > 0.0 && grad_norm > hp.max_grad_norm {
            hp.max_grad_norm / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let mut updated = 0;
        for s in self.slots.iter_mut().filter(|s| groups.trains(&s.name)) {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = if clip < 1.0 { (g * clip)? } else { g.clone() };
            let m = match &s.m {
                Some(m) => ((m * hp.beta1)? + (&g * (1.0 - hp.beta1))?)?,
                None => (&g * (1.0 - hp.beta1))?,
            };
            let g2 = g.sqr()?;
            let v = match &s.v {
                Some(v) => ((v * hp.beta2)? + (g2 * (1.0 - hp.beta2))?)?,
                None => (g2 * (1.0 - hp.beta2))?,
            };
            s.t += 1;
            let bc1 = 1.0 - hp.beta1.powi(s.t as i32);
            let bc2 = 1.0 - hp.beta2.powi(s.t as i32);
            let step = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + hp.eps)?)?;
            let p = s.var.as_tensor().detach();
            let decayed = if hp.weight_decay > 0.0 && decays(&s.name) {
                (&p * (1.0 - lr * hp.weight_decay))?
            } else {
                p
            };
            s.var.set(&(decayed - (step * lr)?)?)?;
            s.m = Some(m);
            s.v = Some(v);
            updated += 1;
        }
        Ok(UpdateStats { grad_norm, updated })
    }

    /// The state as named tensors (`m.{name}`, `v.{name}`) and per-parameter step counts.
    pub fn state(&self) -> (NamedTensors, Vec<(String, u64)>) {
        let mut tensors = Vec::new();
        let mut steps = Vec::new();
        for s in &self.slots {
            if let (Some(m), Some(v)) = (&s.m, &s.v) {
                tensors.push((format!("m.{}", s.name), m.clone()));
                tensors.push((format!("v.{}", s.name), v.clone()));
                steps.push((s.name.clone(), s.t));
            }
        }
        (tensors, steps)
    }

    /// Restores [`Optimizer::state`]; a moment for an unknown parameter or of the wrong shape
    /// is an error (the checkpoint belongs to another model).
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: &[(String, u64)],
    ) -> Result<()> {
        self.reset();
        for (name, t) in steps {
            let slot = self
                .slots
                .iter_mut()
                .find(|s| &s.name == name)
                .ok_or_else(|| {
                    StageError::Checkpoint(format!(
                        "optimizer state for unknown parameter `{name}`"
                    ))
                })?;
            let get = |k: String| {
                tensors
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| StageError::Checkpoint(format!("optimizer state lacks `{k}`")))
            };
            let (m, v) = (get(format!("m.{name}"))?, get(format!("v.{name}"))?);
            let want = slot.var.as_tensor().dims();
            if m.dims() != want || v.dims() != want {
                return Err(StageError::Checkpoint(format!(
                    "optimizer moments of `{name}` have shape {:?}, the parameter {want:?}",
                    m.dims()
                )));
            }
            let device = slot.var.as_tensor().device().clone();
            slot.m = Some(m.to_device(&device)?);
            slot.v = Some(v.to_device(&device)?);
            slot.t = *t;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One variable `name` = `x` with gradient `g` (loss = Σ g·x).
    fn setup(name: &str, x: &[f32], g: &[f32]) -> (Optimizer, Var, GradStore) {
        let var = Var::new(x, &Device::Cpu).unwrap();
        let c = Tensor::new(g, &Device::Cpu).unwrap();
        let grads = (var.as_tensor() * c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (Optimizer::new(vec![(name.into(), var.clone())]), var, grads)
    }

    fn hp(wd: f64, clip: f64) -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            max_grad_norm: clip,
        }
    }

    #[test]
    fn adamw_known_values_over_two_steps() {
        let (mut opt, var, grads) = setup("w", &[1.0, -2.0], &[0.5, 0.1]);
        let groups = ParamGroups::default();
        let stats = opt.step(&grads, 0.1, &hp(0.01, 0.0), &groups).unwrap();
        assert!((stats.grad_norm - (0.26f64).sqrt()).abs() < 1e-6);
        // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) after decay x·(1 − lr·wd).
        let want1 = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) - 0.1];
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for (a, b) in got.iter().zip(want1) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{got:?}");
        }
        // Step 2 with the same gradient: m̂ = g and v̂ = g² again (bias-corrected), same step.
        opt.step(&grads, 0.1, &hp(0.01, 0.0), &groups).unwrap();
        let want2: Vec<f64> = want1.iter().map(|x| x * (1.0 - 0.001) - 0.1).collect();
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for (a, b) in got.iter().zip(&want2) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{got:?}");
        }
        let (tensors, steps) = opt.state();
        assert_eq!(steps, [("w".to_string(), 2)]);
        assert_eq!(tensors.len(), 2);
    }

    #[test]
    fn biases_and_layer_norms_do_not_decay_and_frozen_groups_do_not_move() {
        for name in [
            "encoder.layer.0.output.dense.bias",
            "embeddings.LayerNorm.weight",
        ] {
            let (mut opt, var, grads) = setup(name, &[1.0], &[0.5]);
            opt.step(&grads, 0.1, &hp(0.5, 0.0), &ParamGroups::default())
                .unwrap();
            let v: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            assert!((v[0] - 0.9).abs() < 1e-6, "{name}: {v:?}");
        }
        let (mut opt, var, grads) = setup("embeddings.word_embeddings.weight", &[1.0], &[0.5]);
        let frozen = ParamGroups {
            frozen: vec!["embeddings.".into()],
        };
        let stats = opt.step(&grads, 0.1, &hp(0.5, 0.0), &frozen).unwrap();
        assert_eq!(stats.updated, 0);
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [1.0]);
    }

    #[test]
    fn clipping_scales_the_gradient_into_the_moments() {
        let (mut opt, _var, grads) = setup("w", &[0.0, 0.0], &[3.0, 4.0]);
        let stats = opt
            .step(&grads, 0.1, &hp(0.0, 1.0), &ParamGroups::default())
            .unwrap();
        assert!((stats.grad_norm - 5.0).abs() < 1e-6);
        let (tensors, _) = opt.state();
        let m: Vec<f32> = tensors[0].1.to_vec1().unwrap();
        // m = (1 − β1)·g·(1/5): the clipped gradient has norm 1.
        assert!(
            (m[0] - 0.1 * 0.6).abs() < 1e-6 && (m[1] - 0.1 * 0.8).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn a_non_finite_gradient_is_an_error_naming_the_parameter() {
        let (mut opt, var, grads) = setup("w", &[1.0], &[f32::NAN]);
        let err = opt
            .step(&grads, 0.1, &hp(0.0, 0.0), &ParamGroups::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`w`") && err.contains("NaN"), "{err}");
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [1.0]);
    }
}
