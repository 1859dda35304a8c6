//! The building blocks: linear, layer norm, dropout, activation. Softmax, layer norm and GELU
//! come in two forms with gradients: distillery-kernels' fused ops (default) and references
//! built from elementary candle ops. candle's own fused softmax/layer norm are never used: they
//! silently drop gradients (see FIXTURES.md).

use candle_core::{Device, Tensor, D};
use distillery_kernels::fused;

use crate::config::Activation;
use crate::error::Result;
use crate::params::{Init, ParamBuilder};
use crate::rng::SplitMix64;

/// Which implementation of softmax, layer norm and GELU a forward uses. Both have gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// distillery-kernels' fused row-wise ops (f32 on the CPU; others fall back to `Reference`).
    #[default]
    Fused,
    /// Built from elementary candle ops: the reference the fused ops are tested against.
    Reference,
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(
        pb: &ParamBuilder,
        name: &str,
        input: usize,
        output: usize,
        std: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: pb.get(
                &format!("{name}.weight"),
                &[output, input],
                Init::Normal(std),
            )?,
            bias: pb.get(&format!("{name}.bias"), &[output], Init::Zeros)?,
        })
    }

    /// `x` is [rows, input] or [.., input]; leading dims are flattened so one GEMM runs.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        let y = x
            .reshape((rows, input))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }

    pub fn visit(&self, name: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{name}.weight"), &self.weight);
        f(format!("{name}.bias"), &self.bias);
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(pb: &ParamBuilder, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.get(&format!("{name}.weight"), &[size], Init::Ones)?,
            bias: pb.get(&format!("{name}.bias"), &[size], Init::Zeros)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        Ok(match kernels {
            Kernels::Fused => fused::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?,
            Kernels::Reference => {
                fused::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)?
            }
        })
    }

    pub fn visit(&self, name: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{name}.weight"), &self.weight);
        f(format!("{name}.bias"), &self.bias);
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    Ok(match kernels {
        Kernels::Fused => fused::softmax_last_dim(x)?,
        Kernels::Reference => candle_nn::ops::softmax(x, D::Minus1)?,
    })
}

pub fn activation(x: &Tensor, act: Activation, kernels: Kernels) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu if kernels == Kernels::Fused => fused::gelu_erf(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew | Activation::GeluPytorchTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// Inverted dropout with a mask drawn from a seeded stream, so that a training step is
/// reproducible from (seed, site). Identity when `p == 0`.
pub fn dropout(x: &Tensor, p: f64, seed: u64, site: &str) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = SplitMix64::derive(seed, site);
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())?;
    Ok((x * mask)?)
}
