//! The building blocks: linear, layer norm, dropout, activation. Each exists in a differentiable
//! form (plain candle ops, so gradients flow) and, for frozen models, candle's fused forms,
//! which are faster but silently drop gradients (see FIXTURES.md): `Kernels` picks one.

use candle_core::{DType, Device, Tensor, D};

use crate::config::Activation;
use crate::error::Result;
use crate::params::{Init, ParamBuilder};
use crate::rng::SplitMix64;

/// Which implementation of softmax and layer norm a forward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Built from elementary candle ops: every parameter receives gradients.
    Differentiable,
    /// candle's fused ops (`softmax_last_dim`, fused layer norm): no backward, inference only.
    FusedNoGrad,
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
            Kernels::FusedNoGrad => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?
            }
            Kernels::Differentiable => {
                layer_norm_differentiable(x, &self.weight, &self.bias, self.eps)?
            }
        })
    }

    pub fn visit(&self, name: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{name}.weight"), &self.weight);
        f(format!("{name}.bias"), &self.bias);
    }
}

/// Layer norm over the last dimension from elementary ops, so that it has a backward.
/// Half-precision inputs are normalised in f32.
pub fn layer_norm_differentiable(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    Ok(match kernels {
        Kernels::FusedNoGrad => candle_nn::ops::softmax_last_dim(x)?,
        Kernels::Differentiable => candle_nn::ops::softmax(x, D::Minus1)?,
    })
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
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
