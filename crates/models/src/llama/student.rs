//! LLaMA-family students: blocks copied from a teacher (choose which), or a seeded random model
//! of a given shape with the teacher's vocabulary and rotary settings.

use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::{LlamaConfig, LlamaModel};
use crate::error::{ModelError, Result};
use crate::params::{ParamBuilder, Stored};

/// A student's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
}

/// A student made of `teacher`'s blocks `layers` (0-based, strictly increasing), with its
/// embedding, final norm and head; its variables in the returned `VarMap` when `trainable`.
pub fn llama_from_layers(
    teacher: &LlamaModel,
    layers: &[usize],
    trainable: bool,
) -> Result<(LlamaModel, Option<VarMap>)> {
    let n = teacher.config.num_hidden_layers;
    if layers.is_empty()
        || layers.windows(2).any(|w| w[0] >= w[1])
        || layers.iter().any(|&l| l >= n)
    {
        return Err(ModelError::Student(format!(
            "teacher layers {layers:?}: give strictly increasing 0-based layers below {n}"
        )));
    }
    let mut map = HashMap::new();
    for (name, t) in teacher.named_tensors() {
        let renamed = match name.strip_prefix("model.layers.") {
            None => Some(name.clone()),
            Some(rest) => {
                let (l, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let l: usize = l.parse().unwrap_or(usize::MAX);
                layers
                    .iter()
                    .position(|&x| x == l)
                    .map(|i| format!("model.layers.{i}.{tail}"))
            }
        };
        if let Some(r) = renamed {
            // A copy, so that training the student never writes into the teacher.
            map.insert(r, t.copy()?);
        }
    }
    let config = LlamaConfig {
        num_hidden_layers: layers.len(),
        ..teacher.config.clone()
    };
    let pb = ParamBuilder::new(
        Stored::Map(map),
        None,
        trainable,
        DType::F32,
        teacher.device(),
    );
    let model = LlamaModel::build_owning(config, pb)?;
    let vars = model.varmap().cloned();
    Ok((model, vars))
}

/// A seeded random model of `shape` with `base`'s vocabulary, rotary settings, norm epsilon,
/// biases and tying (same seed, same weights).
pub fn random_llama(
    base: &LlamaConfig,
    shape: &LlamaShape,
    seed: u64,
    trainable: bool,
    device: &Device,
) -> Result<(LlamaModel, Option<VarMap>)> {
    let s = shape;
    if s.layers == 0 || s.hidden == 0 || s.heads == 0 || s.kv_heads == 0 || s.intermediate == 0 {
        return Err(ModelError::Student(format!(
            "every size must be positive, got {s:?}"
        )));
    }
    if !s.hidden.is_multiple_of(s.heads)
        || !s.heads.is_multiple_of(s.kv_heads)
        || !(s.hidden / s.heads).is_multiple_of(2)
    {
        return Err(ModelError::Student(format!(
            "{s:?}: heads must divide hidden into an even head size, and kv_heads divide heads"
        )));
    }
    let config = LlamaConfig {
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kv_heads,
        head_dim: s.hidden / s.heads,
        ..base.clone()
    };
    let pb = ParamBuilder::new(Stored::None, Some(seed), trainable, DType::F32, device);
    let model = LlamaModel::build_owning(config, pb)?;
    let vars = model.varmap().cloned();
    Ok((model, vars))
}
