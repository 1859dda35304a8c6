//! The learned linear map W_h from student width to teacher width (TinyBERT), trainable and
//! deterministically initialised.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use distillery_models::rng::SplitMix64;

use crate::error::{LossError, Result};

/// `y = x·Wᵀ + b`, W: [teacher width, student width].
#[derive(Debug, Clone)]
pub struct Projection {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Projection {
    /// A new projection registered in `varmap` as `{name}.weight` / `{name}.bias`, with
    /// N(0, 0.02) weights drawn from `seed` (same seed, same weights) and zero bias.
    pub fn new(
        varmap: &VarMap,
        name: &str,
        student_width: usize,
        teacher_width: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = SplitMix64::derive(seed, name);
        let w: Vec<f32> = (0..student_width * teacher_width)
            .map(|_| (rng.normal() * 0.02) as f32)
            .collect();
        let weight = Var::from_tensor(&Tensor::from_vec(
            w,
            (teacher_width, student_width),
            device,
        )?)?;
        let bias = Var::from_tensor(&Tensor::zeros(teacher_width, DType::F32, device)?)?;
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| LossError::Config("parameter map lock poisoned".into()))?;
        let out = Self {
            weight: weight.as_tensor().clone(),
            bias: bias.as_tensor().clone(),
        };
        data.insert(format!("{name}.weight"), weight);
        data.insert(format!("{name}.bias"), bias);
        Ok(out)
    }

    /// From existing tensors (e.g. restored from a checkpoint).
    pub fn from_tensors(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = self.weight.dim(1)?;
        if dims.last() != Some(&input) {
            return Err(LossError::Shape(format!(
                "projection expects width {input}, got a tensor of shape {dims:?}"
            )));
        }
        let rows = x.elem_count() / input;
        let y = x
            .reshape((rows, input))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }
}
