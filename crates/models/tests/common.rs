//! Shared helpers for the models crate's integration tests: tiny configs, batches, a tokenizer.
#![allow(dead_code, clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use distillery_models::{random_student, BertConfig, BertModel};

pub fn tiny_config(labels: &[&str]) -> BertConfig {
    distillery_models::testing::tiny_config(labels)
}

pub fn write_tiny_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    distillery_models::testing::write_tiny_tokenizer(dir).unwrap()
}

pub fn tiny_model(labels: &[&str], seed: u64, dtype: DType) -> BertModel {
    random_student(tiny_config(labels), seed, true, dtype, &Device::Cpu).unwrap()
}

/// Two sequences, the second padded after 3 tokens; token types differ in the first.
pub fn tiny_batch() -> (Tensor, Tensor, Tensor) {
    let ids = Tensor::new(&[[2u32, 7, 9, 11, 3, 5], [2, 13, 3, 0, 0, 0]], &Device::Cpu).unwrap();
    let types = Tensor::new(&[[0u32, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
    (ids, types, mask)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
