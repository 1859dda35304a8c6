//! Building a student: from an architecture spec with BERT's seeded initialisation, or from
//! chosen teacher layers (embeddings and the listed layers copied).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::params::{ParamBuilder, Stored};

/// The shape of a student encoder; everything else (vocabulary, positions, activation, labels)
/// is taken from the teacher's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StudentSpec {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
}

impl StudentSpec {
    pub fn config(&self, teacher: &BertConfig) -> Result<BertConfig> {
        let cfg = BertConfig {
            num_hidden_layers: self.layers,
            hidden_size: self.hidden,
            num_attention_heads: self.heads,
            intermediate_size: self.intermediate,
            ..teacher.clone()
        };
        cfg.validate()
            .map_err(|e| ModelError::Student(e.to_string()))?;
        Ok(cfg)
    }
}

/// A trainable student with N(0, initializer_range) weights drawn from `seed`; same seed, same
/// weights. It gets a pooler when `with_pooler` or the config has labels.
pub fn random_student(
    config: BertConfig,
    seed: u64,
    with_pooler: bool,
    dtype: DType,
    device: &Device,
) -> Result<BertModel> {
    let pb = ParamBuilder::new(Stored::None, Some(seed), true, dtype, device);
    BertModel::build(config, pb, with_pooler)
}

/// A trainable student whose embeddings and layers are copies of the teacher's: student layer j
/// is teacher layer `layers[j]` (0-based). The pooler and head are copied when the teacher has
/// them; parts the teacher lacks are initialised from `seed`.
pub fn student_from_teacher(teacher: &BertModel, layers: &[usize], seed: u64) -> Result<BertModel> {
    let tc = &teacher.config;
    if layers.is_empty() {
        return Err(ModelError::Student(
            "the teacher layer list is empty".into(),
        ));
    }
    if let Some((pos, &bad)) = layers
        .iter()
        .enumerate()
        .find(|(_, &l)| l >= tc.num_hidden_layers)
    {
        return Err(ModelError::Student(format!(
            "layer index {bad} (position {pos}) is out of range: the teacher has layers 0..{}",
            tc.num_hidden_layers
        )));
    }
    let config = BertConfig {
        num_hidden_layers: layers.len(),
        ..tc.clone()
    };
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in teacher.named_tensors() {
        let t = t.copy()?;
        match name.strip_prefix("encoder.layer.") {
            None => {
                map.insert(name, t);
            }
            Some(rest) => {
                let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let Ok(idx) = idx.parse::<usize>() else {
                    continue;
                };
                for (j, _) in layers.iter().enumerate().filter(|(_, &l)| l == idx) {
                    map.insert(format!("encoder.layer.{j}.{tail}"), t.clone());
                }
            }
        }
    }
    let pb = ParamBuilder::new(
        Stored::Map(map),
        Some(seed),
        true,
        teacher.dtype(),
        teacher.device(),
    );
    BertModel::build(config, pb, teacher.pooler.is_some())
}

/// As `student_from_teacher`, checking first that `spec` matches the teacher's width: copying
/// layers needs the same hidden and intermediate sizes.
pub fn student_from_teacher_spec(
    teacher: &BertModel,
    spec: &StudentSpec,
    layers: &[usize],
    seed: u64,
) -> Result<BertModel> {
    let tc = &teacher.config;
    if spec.hidden != tc.hidden_size || spec.intermediate != tc.intermediate_size {
        return Err(ModelError::Student(format!(
            "width mismatch: student hidden {} / intermediate {} but teacher hidden {} / intermediate {}; \
             layers can only be copied between equal widths (use a random student and a hidden-state projection)",
            spec.hidden, spec.intermediate, tc.hidden_size, tc.intermediate_size
        )));
    }
    if spec.layers != layers.len() {
        return Err(ModelError::Student(format!(
            "the spec has {} layers but {} teacher layers were chosen",
            spec.layers,
            layers.len()
        )));
    }
    if spec.heads != tc.num_attention_heads {
        return Err(ModelError::Student(format!(
            "head mismatch: student {} heads, teacher {}; copied attention weights keep the teacher's head split",
            spec.heads, tc.num_attention_heads
        )));
    }
    student_from_teacher(teacher, layers, seed)
}

/// The same weights with a new classification head for `labels` (and a pooler if the model had
/// none), both drawn from `seed`; trainable. Turns a sentence encoder into a classifier.
pub fn with_new_head(model: &BertModel, labels: &[String], seed: u64) -> Result<BertModel> {
    if labels.is_empty() {
        return Err(ModelError::Student(
            "a classification head needs at least one label".into(),
        ));
    }
    let config = BertConfig {
        labels: labels.to_vec(),
        ..model.config.clone()
    };
    let map: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("classifier."))
        .collect();
    let pb = ParamBuilder::new(
        Stored::Map(map),
        Some(seed),
        true,
        model.dtype(),
        model.device(),
    );
    BertModel::build(config, pb, true)
}
