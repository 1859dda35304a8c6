//! The teacher-output cache: the teacher's outputs that a schedule reads, computed once over the
//! training set and read back memory-mapped in every later step, epoch and stage.
//!
//! ```text
//! needs  = schedule.teacher_needs(student_layers, teacher_layers)?
//! bytes  = TeacherCache::estimate(&example_lengths(&mut in_order)?, &needs, &teacher.config, &cfg)
//! cache  = match TeacherCache::open(dir, key, &needs, &cfg)? {
//!              Some(c) => c,
//!              None => TeacherCache::build(dir, key, &teacher, &mut in_order, &needs, &cfg, &mut progress)?,
//!          };
//! Models { teacher_cache: Some(&cache), .. }   // the trainer reads the batch's rows from it
//! ```
//!
//! # Layout of a cache folder
//!
//! - `shard-00000.safetensors`, `shard-00001.safetensors`, …: consecutive runs of examples in
//!   dataset order; a new shard starts once one reaches [`CacheConfig::shard_bytes`] (examples
//!   are never split). Each holds, in the cache's dtype:
//!   - `hidden.{l}` `[tokens, hidden]` for each needed hidden layer (`0`: embedding output);
//!   - `q.{l}`, `k.{l}`, `v.{l}` `[tokens, heads·head_dim]` for each needed layer (1-based):
//!     the per-token layout, heads concatenated as the projection produced them; read back as
//!     `[batch, heads, seq, head_dim]`;
//!   - `logits` `[examples, classes]`, or with top-k (`k < classes`) `logits.values`
//!     `[examples, k]` (largest first, ties by class index) and `logits.indices` `[examples, k]`
//!     (u32).
//!
//!   Only the VALID rows of each example are stored (no padding), concatenated along the token
//!   axis; `tokens` is the shard's total.
//! - `index.json`, written last and atomically: format version, key, needs, dtype, top-k, the
//!   teacher's shape (layers, heads, hidden, labels), per example `[shard, token offset,
//!   length]`, per shard its file name, byte length, first example, example and token counts and
//!   XXH64 checksum of the file's bytes (`distillery_util::hash`, seed 0, 16 hex digits).
//!
//! Every file is written under a temporary name beside its target, synced and renamed; a build
//! first removes the old `index.json`, so a build that dies half-way leaves no index and the
//! next run rebuilds.
//!
//! # Validity
//!
//! [`TeacherCache::open`] returns `None` (the caller rebuilds) when there is no index, when the
//! key (the caller's hash of teacher weights, tokenizer, data file, preprocessing and layer map),
//! the needs, the dtype or the top-k differ, or when any shard is missing, has another length or
//! another checksum: ALL shards are hashed at open, so a truncated or corrupted shard is never
//! used. [`TeacherCache::probe`] says why.
//!
//! # Exactness
//!
//! With `dtype = F32` the stored rows are the teacher forward's bits. Whether a run with the
//! cache ends with the same bits as one without depends on the teacher forward itself: when an
//! example's outputs do not depend on the batch it was computed in (its size and padding), the
//! runs are bit-identical, padded positions included (the cache's zeros there change no loss
//! or gradient bit). On the CPU that holds for examples whose length is a multiple of 8 and
//! above 16, not in general: gemm's small-product path (`m·n ≤ 256`) and the fused softmax's
//! scalar tail sum in an order that depends on the batch, so the uncached run's teacher bits
//! vary by batch (≤ 3e-7 relative) and a cached run agrees with it only to a tolerance. See
//! `tests/cache.rs` for the measured cases. F16 and BF16 round every stored value once
//! (relative 2⁻¹¹ and 2⁻⁸).

mod format;
mod needs;
mod read;
mod write;

use format::{check_shard, unit_sizes, Index, ShardMeta};

pub use needs::TeacherNeeds;
pub use write::example_lengths;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use distillery_data::Batcher;
use distillery_models::{ForwardOptions, LayerAttention, Model, ModelOutput, ModelShape};
use distillery_util::fs::{write_atomic, write_atomic_with};
use distillery_util::hash::xxh64_file;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, StageError};

/// Version of the folder layout; another version is rebuilt.
pub const FORMAT: u32 = 1;
const INDEX: &str = "index.json";
const SHARD_PREFIX: &str = "shard-";
const SHARD_SUFFIX: &str = ".safetensors";
/// The logit given to the classes that top-k storage dropped: far below any real logit, and
/// finite so that a KL over the expanded logits stays finite.
pub const MISSING_LOGIT: f32 = -1e4;

/// How the cache stores the outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    /// F32 (exact), F16 or BF16.
    pub dtype: DType,
    /// Refuse to build a cache whose estimated size exceeds this.
    pub budget_bytes: Option<u64>,
    /// Keep only the k largest logits of each example (for large label spaces); ignored when
    /// k ≥ the number of classes.
    pub top_k_logits: Option<usize>,
    /// Target size of one shard file.
    pub shard_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            budget_bytes: None,
            top_k_logits: None,
            shard_bytes: 256 << 20,
        }
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<()> {
        dtype_name(self.dtype)?;
        if self.shard_bytes == 0 {
            return Err(StageError::Config(
                "teacher cache: `shard_bytes` must be positive".into(),
            ));
        }
        if self.top_k_logits == Some(0) {
            return Err(StageError::Config(
                "teacher cache: `top_k_logits` must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The top-k actually stored for `classes` classes.
    fn effective_top_k(&self, classes: usize) -> Option<usize> {
        self.top_k_logits.filter(|&k| k < classes)
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(StageError::Config(format!(
            "teacher cache: dtype must be f32, f16 or bf16, got {other:?}"
        ))),
    }
}

/// The teacher's dimensions the cache was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherShape {
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    /// Classes of the head (0 without one).
    pub num_labels: usize,
}

impl TeacherShape {
    pub fn of(shape: &ModelShape) -> Self {
        Self {
            layers: shape.layers,
            heads: shape.heads,
            hidden: shape.hidden,
            num_labels: shape.labels,
        }
    }
}

/// Reported after each batch of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildProgress {
    pub examples: usize,
    pub total: usize,
    /// Shard bytes written so far.
    pub bytes: u64,
}

/// Whether a cache folder can be used, and if not why.
pub enum Probe {
    Ready(Box<TeacherCache>),
    /// No `index.json` (never built, or a build died before finishing).
    Absent,
    /// Built for something else, or damaged: the reason, for the caller to show.
    Stale(String),
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(c) => f.debug_tuple("Ready").field(c).finish(),
            Self::Absent => f.write_str("Absent"),
            Self::Stale(why) => f.debug_tuple("Stale").field(why).finish(),
        }
    }
}

/// A verified, memory-mapped cache.
pub struct TeacherCache {
    dir: PathBuf,
    index: Index,
    dtype: DType,
    shards: Vec<MmapedSafetensors>,
}

impl std::fmt::Debug for TeacherCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherCache")
            .field("dir", &self.dir)
            .field("key", &self.index.key)
            .field("dtype", &self.dtype)
            .field("examples", &self.index.examples.len())
            .field("shards", &self.index.shards.len())
            .finish_non_exhaustive()
    }
}

fn cache_err(msg: String) -> StageError {
    StageError::Cache(msg)
}

/// `1234567 bytes (1.18 MiB)`.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = None;
    for u in units {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{bytes} bytes ({v:.2} {u})"),
        None => format!("{bytes} bytes"),
    }
}
