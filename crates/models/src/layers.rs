//! The building blocks: linear, layer norm, dropout, activation. Softmax, layer norm and GELU
//! come in two forms with gradients: distillery-kernels' fused ops (default) and references
//! built from elementary candle ops. candle's own fused softmax/layer norm are never used: they
//! silently drop gradients (see FIXTURES.md).

use candle_core::{Tensor, D};
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

    /// `x` is [rows, input] or [.., input]; leading dims are flattened so one GEMM runs, which
    /// starts from the bias (distillery-kernels' fused linear on f32 CPU tensors).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 2 {
            // No reshape: each is a graph node whose backward costs two full-size passes.
            return Ok(fused::linear(x, &self.weight, &self.bias)?);
        }
        let dims = x.dims().to_vec();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        let y = fused::linear(&x.reshape((rows, input))?, &self.weight, &self.bias)?;
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

/// Softmax over the last dimension of attention scores [b, heads, q, k] plus the key-padding
/// bias [b, k]; the bias gets no gradient.
pub fn masked_softmax(scores: &Tensor, key_bias: &Tensor, kernels: Kernels) -> Result<Tensor> {
    Ok(match kernels {
        Kernels::Fused => fused::softmax_last_dim_masked(scores, key_bias)?,
        Kernels::Reference => {
            let (b, k) = key_bias.dims2()?;
            let bias = key_bias.detach().reshape((b, 1, 1, k))?;
            candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?
        }
    })
}

/// `scale · a·b` batched over the leading dims (attention's per-head products).
pub fn bmm(a: &Tensor, b: &Tensor, scale: f64, kernels: Kernels) -> Result<Tensor> {
    Ok(match kernels {
        Kernels::Fused => fused::bmm_scaled(a, b, scale)?,
        Kernels::Reference => fused::bmm_scaled_slow(a, b, scale)?,
    })
}

/// Inverted dropout with a mask fixed by (seed, site), so that a training step is reproducible
/// from its seed; identity when `p == 0`. The mask is regenerated in the backward rather than
/// stored (distillery-kernels' counter-based dropout).
pub fn dropout(x: &Tensor, p: f64, seed: u64, site: &str) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    Ok(fused::dropout(x, p, dropout_seed(seed, site))?)
}

/// The mask seed [`dropout`] uses at `site`: also handed to fused ops that drop out inside.
pub fn dropout_seed(seed: u64, site: &str) -> u64 {
    SplitMix64::derive(seed, site).next_u64()
}
