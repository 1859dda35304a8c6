//! Fused distillation ops for candle.
//!
//! - [`attention_kl`](mod@attention_kl): the streaming attention-KL between teacher and student attention
//!   distributions (fused forward and backward as candle custom ops, CPU with rayon; a CUDA
//!   implementation can slot in behind the `cuda` feature), the MiniLMv2-style relation KL built on
//!   it, and slow references made of plain candle ops.
//! - [`fused`]: fused f32 CPU ops with backward for the models' forward (linear, batched
//!   products, softmax, layer norm, GELU, dropout, embeddings), each beside a composite reference.
//!   Large products use a system OpenBLAS when one can be loaded ([`gemm_backend`] says which).
//! - [`memory`]: allocator tuning for training processes.
//! - [`bench_support`]: helpers for benchmarks (`cargo bench`, `cargo xtask bench`).
//!
//! This crate knows nothing of models or training: it takes tensors and returns tensors.

pub mod attention_kl;
pub mod bench_support;
mod blas;
mod device;
mod error;
pub mod fused;
pub mod memory;
#[cfg(feature = "cuda")]
mod ptx;
mod simd;

pub use attention_kl::{
    attention_kl, attention_kl_rows, attention_kl_rows_slow, attention_kl_slow, relation_kl,
    relation_kl_rows, relation_kl_rows_slow, relation_kl_slow, AttentionKlConfig,
};
pub use blas::gemm_backend;
pub use device::{cuda_compiled, cuda_device};
pub use error::{KernelError, Result};
