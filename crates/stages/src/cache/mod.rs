//! The teacher-output cache: the teacher's outputs that a schedule reads, computed once over the
//! training set and read back memory-mapped in every later step, epoch and stage.
//!
//! ```text
//! needs  = TeacherNeeds::of(&schedule, student_layers, teacher_layers)?
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

mod needs;

pub use needs::TeacherNeeds;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use distillery_data::Batcher;
use distillery_models::{BertConfig, BertModel, BertOutput, ForwardOptions, LayerAttention};
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
    pub fn of(config: &BertConfig) -> Self {
        Self {
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            num_labels: config.labels.len(),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardMeta {
    file: String,
    bytes: u64,
    /// XXH64 (seed 0) of the file's bytes, 16 lower-case hex digits.
    xxh64: String,
    first_example: usize,
    examples: usize,
    tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    format: u32,
    key: String,
    needs: TeacherNeeds,
    dtype: String,
    top_k_logits: Option<usize>,
    teacher: TeacherShape,
    /// The checksum algorithm of `shards[].xxh64`.
    checksum: String,
    shards: Vec<ShardMeta>,
    /// Per example in dataset order: (shard, token offset in the shard, valid length).
    examples: Vec<(u32, u64, u32)>,
}

impl Index {
    /// The internal consistency a reader relies on; `Err` says what is off.
    fn consistent(&self) -> std::result::Result<(), String> {
        if self.teacher.heads == 0 || !self.teacher.hidden.is_multiple_of(self.teacher.heads) {
            return Err(format!("bad teacher shape {:?}", self.teacher));
        }
        let mut next = 0;
        for (si, s) in self.shards.iter().enumerate() {
            if s.first_example != next {
                return Err(format!("{}: examples out of order", s.file));
            }
            let mut offset = 0u64;
            for (i, &(shard, off, len)) in self
                .examples
                .get(next..next + s.examples)
                .ok_or("fewer examples than the shards hold")?
                .iter()
                .enumerate()
            {
                if shard as usize != si || off != offset || len == 0 {
                    return Err(format!("example {} has a bad entry", next + i));
                }
                offset += u64::from(len);
            }
            if offset != s.tokens as u64 {
                return Err(format!("{}: token count does not add up", s.file));
            }
            next += s.examples;
        }
        if next != self.examples.len() {
            return Err("more examples than the shards hold".into());
        }
        Ok(())
    }
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

/// Bytes per stored token and per example.
fn unit_sizes(needs: &TeacherNeeds, shape: &TeacherShape, cfg: &CacheConfig) -> (u64, u64) {
    let elem = cfg.dtype.size_in_bytes() as u64;
    let per_token = needs.token_tensors().len() as u64 * shape.hidden as u64 * elem;
    let per_example = if !needs.logits {
        0
    } else {
        match cfg.effective_top_k(shape.num_labels) {
            Some(k) => k as u64 * (elem + 4),
            None => shape.num_labels as u64 * elem,
        }
    };
    (per_token, per_example)
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

fn check_in_order(batcher: &Batcher<'_>) -> Result<()> {
    let c = batcher.sampler().config();
    if c.shuffle_seed.is_some() || c.drop_last || batcher.cursor().position != 0 {
        return Err(StageError::Config(
            "teacher cache: the batcher must visit the whole dataset in file order \
             (BatchConfig::in_order, at the start of an epoch)"
                .into(),
        ));
    }
    Ok(())
}

/// Checks that a batch continues the dataset in order at example `next`.
fn check_indices(indices: &[usize], next: usize) -> Result<()> {
    if indices.iter().enumerate().any(|(i, &x)| x != next + i) {
        return Err(StageError::Config(format!(
            "teacher cache: expected examples {next}.. in file order, got {:?}",
            &indices[..indices.len().min(8)]
        )));
    }
    Ok(())
}

/// The valid (non-padding) token count of every example, in dataset order, from one in-order
/// pass of `batcher` (`BatchConfig::in_order`, at the start of an epoch; it ends at the start
/// of the next). For [`TeacherCache::estimate`].
pub fn example_lengths(batcher: &mut Batcher<'_>) -> Result<Vec<usize>> {
    check_in_order(batcher)?;
    let total = batcher.dataset().len();
    let mut lengths = Vec::with_capacity(total);
    for batch in batcher.epoch() {
        let batch = batch?;
        check_indices(&batch.indices, lengths.len())?;
        let seq = batch.encoded.seq;
        for row in batch.encoded.attention_mask.chunks(seq.max(1)) {
            lengths.push(row.iter().filter(|&&m| m != 0).count());
        }
    }
    if lengths.len() != total {
        return Err(StageError::Config(format!(
            "teacher cache: one pass gave {} of the {total} examples",
            lengths.len()
        )));
    }
    Ok(lengths)
}

/// Host copies of one batch's needed outputs, f32, each `[batch, seq, hidden]` row-major
/// (Q/K/V with heads merged back to the per-token layout), and the logits `[batch, classes]`.
struct HostBatch {
    tensors: Vec<Vec<f32>>,
    logits: Vec<f32>,
}

fn host_batch(out: &BertOutput, needs: &TeacherNeeds) -> Result<HostBatch> {
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let mut tensors = Vec::new();
    for &l in &needs.hidden {
        tensors.push(flat(&out.hidden_states[l])?);
    }
    for (pick, set) in [(0usize, &needs.q), (1, &needs.k), (2, &needs.v)] {
        for &l in set {
            let a = &out.attentions[l - 1];
            // [b·s, heads·d]: heads concatenated per token, as stored.
            tensors.push(flat(match pick {
                0 => &a.query,
                1 => &a.key,
                _ => &a.value,
            })?);
        }
    }
    let logits = match (&out.logits, needs.logits) {
        (Some(z), true) => flat(z)?,
        _ => Vec::new(),
    };
    Ok(HostBatch { tensors, logits })
}

/// Accumulates examples into shards and writes each once it is full.
struct ShardWriter<'a> {
    dir: &'a Path,
    cfg: &'a CacheConfig,
    names: Vec<String>,
    hidden: usize,
    classes: usize,
    top_k: Option<usize>,
    per_token: u64,
    per_example: u64,
    bufs: Vec<Vec<f32>>,
    logit_values: Vec<f32>,
    logit_indices: Vec<u32>,
    tokens: usize,
    examples: usize,
    first_example: usize,
    shards: Vec<ShardMeta>,
    entries: Vec<(u32, u64, u32)>,
    bytes_written: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(
        dir: &'a Path,
        needs: &TeacherNeeds,
        shape: &TeacherShape,
        cfg: &'a CacheConfig,
    ) -> Self {
        let names = needs.token_tensors();
        let (per_token, per_example) = unit_sizes(needs, shape, cfg);
        Self {
            dir,
            cfg,
            bufs: vec![Vec::new(); names.len()],
            names,
            hidden: shape.hidden,
            classes: if needs.logits { shape.num_labels } else { 0 },
            top_k: cfg.effective_top_k(shape.num_labels),
            per_token,
            per_example,
            logit_values: Vec::new(),
            logit_indices: Vec::new(),
            tokens: 0,
            examples: 0,
            first_example: 0,
            shards: Vec::new(),
            entries: Vec::new(),
            bytes_written: 0,
        }
    }

    /// Appends example `row` of a batch padded to `seq`, `len` valid tokens.
    fn push(&mut self, host: &HostBatch, row: usize, seq: usize, len: usize) -> Result<()> {
        let h = self.hidden;
        for (buf, src) in self.bufs.iter_mut().zip(&host.tensors) {
            buf.extend_from_slice(&src[row * seq * h..(row * seq + len) * h]);
        }
        if self.classes > 0 {
            let z = &host.logits[row * self.classes..(row + 1) * self.classes];
            match self.top_k {
                None => self.logit_values.extend_from_slice(z),
                Some(k) => {
                    let order =
                        |a: &u32, b: &u32| z[*b as usize].total_cmp(&z[*a as usize]).then(a.cmp(b));
                    let mut idx: Vec<u32> = (0..self.classes as u32).collect();
                    idx.select_nth_unstable_by(k - 1, order);
                    idx.truncate(k);
                    idx.sort_by(order);
                    self.logit_values.extend(idx.iter().map(|&i| z[i as usize]));
                    self.logit_indices.extend_from_slice(&idx);
                }
            }
        }
        self.entries
            .push((self.shards.len() as u32, self.tokens as u64, len as u32));
        self.tokens += len;
        self.examples += 1;
        let bytes = self.tokens as u64 * self.per_token + self.examples as u64 * self.per_example;
        if bytes >= self.cfg.shard_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.examples == 0 {
            return Ok(());
        }
        let cpu = Device::Cpu;
        let dtype = self.cfg.dtype;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, buf) in self.names.iter().zip(self.bufs.iter_mut()) {
            let t = Tensor::from_vec(std::mem::take(buf), (self.tokens, self.hidden), &cpu)?;
            tensors.insert(name.clone(), t.to_dtype(dtype)?);
        }
        if self.classes > 0 {
            let values = std::mem::take(&mut self.logit_values);
            match self.top_k {
                None => {
                    let t = Tensor::from_vec(values, (self.examples, self.classes), &cpu)?;
                    tensors.insert("logits".into(), t.to_dtype(dtype)?);
                }
                Some(k) => {
                    let t = Tensor::from_vec(values, (self.examples, k), &cpu)?;
                    tensors.insert("logits.values".into(), t.to_dtype(dtype)?);
                    let i = std::mem::take(&mut self.logit_indices);
                    tensors.insert(
                        "logits.indices".into(),
                        Tensor::from_vec(i, (self.examples, k), &cpu)?,
                    );
                }
            }
        }
        let file = format!("{SHARD_PREFIX}{:05}{SHARD_SUFFIX}", self.shards.len());
        let path = self.dir.join(&file);
        let (hash, bytes) = write_atomic_with(&path, |tmp| -> Result<(u64, u64)> {
            candle_core::safetensors::save(&tensors, tmp)?;
            xxh64_file(tmp).map_err(|e| io_err(tmp, e))
        })?;
        self.shards.push(ShardMeta {
            file,
            bytes,
            xxh64: format!("{hash:016x}"),
            first_example: self.first_example,
            examples: self.examples,
            tokens: self.tokens,
        });
        self.bytes_written += bytes;
        self.first_example += self.examples;
        self.examples = 0;
        self.tokens = 0;
        Ok(())
    }
}

/// Removes the index first (so a build that dies leaves no usable cache), then old shards and
/// temporary files.
fn clear_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let index = dir.join(INDEX);
    match std::fs::remove_file(&index) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&index, e)),
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with(SHARD_PREFIX) && name.ends_with(SHARD_SUFFIX))
            || (name.starts_with('.') && name.ends_with(".tmp"));
        if ours {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        }
    }
    Ok(())
}

fn check_needs(needs: &TeacherNeeds, teacher: &BertModel) -> Result<()> {
    let layers = teacher.config.num_hidden_layers;
    let bad = needs.hidden.iter().any(|&l| l > layers)
        || [&needs.q, &needs.k, &needs.v]
            .iter()
            .any(|s| s.iter().any(|&l| l == 0 || l > layers));
    if bad {
        return Err(StageError::Config(format!(
            "teacher cache: needs {needs:?} name layers the {layers}-layer teacher does not have"
        )));
    }
    if needs.logits && (teacher.classifier.is_none() || teacher.config.labels.is_empty()) {
        return Err(StageError::Config(
            "teacher cache: the logit loss needs teacher logits, and the teacher has no \
             classification head"
                .into(),
        ));
    }
    Ok(())
}

impl TeacherCache {
    /// The expected size in bytes of a cache over examples of `lengths` valid tokens (see
    /// [`example_lengths`]): the stored tensors exactly, plus an allowance for the shard
    /// headers and the index.
    pub fn estimate(
        lengths: &[usize],
        needs: &TeacherNeeds,
        teacher: &BertConfig,
        cfg: &CacheConfig,
    ) -> u64 {
        let shape = TeacherShape::of(teacher);
        let (per_token, per_example) = unit_sizes(needs, &shape, cfg);
        let tokens: u64 = lengths.iter().map(|&l| l as u64).sum();
        let n = lengths.len() as u64;
        let data = tokens * per_token + n * per_example;
        let shards = data.div_ceil(cfg.shard_bytes.max(1)).max(1);
        let tensors = needs.token_tensors().len() as u64 + 2;
        // Shard header: ~100 bytes of JSON per tensor; index: ~24 bytes per example entry,
        // ~200 per shard entry, ~1 KiB of fixed fields.
        data + shards * (tensors * 100 + 200) + n * 24 + 1024
    }

    /// Runs `teacher` over the whole dataset of `batcher` (which must be `BatchConfig::in_order`
    /// at the start of an epoch; it passes twice: once for the lengths, once for the teacher)
    /// and writes the cache into `dir`, replacing what is there. Refuses, before running
    /// anything, when [`Self::estimate`] exceeds `cfg.budget_bytes`. `progress` is called after
    /// every batch.
    pub fn build(
        dir: &Path,
        key: &str,
        teacher: &BertModel,
        batcher: &mut Batcher<'_>,
        needs: &TeacherNeeds,
        cfg: &CacheConfig,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<TeacherCache> {
        cfg.validate()?;
        check_needs(needs, teacher)?;
        let shape = TeacherShape::of(&teacher.config);
        let lengths = example_lengths(batcher)?;
        let expected = Self::estimate(&lengths, needs, &teacher.config, cfg);
        if let Some(budget) = cfg.budget_bytes.filter(|&b| expected > b) {
            return Err(StageError::Config(format!(
                "teacher cache: {} would need about {} for {} examples, over the budget of {}; \
                 raise the budget, store f16/bf16, keep top-k logits, or turn the cache off",
                dir.display(),
                human_bytes(expected),
                lengths.len(),
                human_bytes(budget)
            )));
        }
        clear_dir(dir)?;
        let mut writer = ShardWriter::new(dir, needs, &shape, cfg);
        let total = lengths.len();
        let mut done = 0usize;
        for batch in batcher.epoch() {
            let batch = batch?;
            check_indices(&batch.indices, done)?;
            let t = batch.encoded.to_tensors(teacher.device())?;
            let out = teacher.forward(
                &t.input_ids,
                Some(&t.token_type_ids),
                &t.attention_mask,
                &ForwardOptions::default(),
            )?;
            let host = host_batch(&out, needs)?;
            let seq = batch.encoded.seq;
            for row in 0..batch.len() {
                let mask = &batch.encoded.attention_mask[row * seq..(row + 1) * seq];
                let len = mask.iter().filter(|&&m| m != 0).count();
                if lengths.get(done + row) != Some(&len) || mask[..len].contains(&0) {
                    return Err(StageError::Config(format!(
                        "teacher cache: example {} changed length between passes, or its \
                         padding is not on the right",
                        done + row
                    )));
                }
                writer.push(&host, row, seq, len)?;
            }
            done += batch.len();
            progress(BuildProgress {
                examples: done,
                total,
                bytes: writer.bytes_written,
            });
        }
        if done != total {
            return Err(StageError::Config(format!(
                "teacher cache: the second pass gave {done} of the {total} examples"
            )));
        }
        writer.flush()?;
        let index = Index {
            format: FORMAT,
            key: key.to_string(),
            needs: needs.clone(),
            dtype: dtype_name(cfg.dtype)?.to_string(),
            top_k_logits: cfg.top_k_logits,
            teacher: shape,
            checksum: "xxh64".into(),
            shards: writer.shards,
            examples: writer.entries,
        };
        let json = serde_json::to_vec(&index).map_err(|e| cache_err(e.to_string()))?;
        write_atomic(&dir.join(INDEX), &json)?;
        match Self::probe(dir, key, needs, cfg)? {
            Probe::Ready(cache) => Ok(*cache),
            Probe::Absent => Err(cache_err(format!(
                "{}: the index just written is gone",
                dir.display()
            ))),
            Probe::Stale(why) => Err(cache_err(format!(
                "{}: the cache just written does not verify: {why}",
                dir.display()
            ))),
        }
    }

    /// The cache in `dir` when it was built for `key`, `needs` and `cfg`'s dtype and top-k and
    /// every shard verifies; `None` otherwise (rebuild it).
    pub fn open(
        dir: &Path,
        key: &str,
        needs: &TeacherNeeds,
        cfg: &CacheConfig,
    ) -> Result<Option<TeacherCache>> {
        Ok(match Self::probe(dir, key, needs, cfg)? {
            Probe::Ready(c) => Some(*c),
            Probe::Absent | Probe::Stale(_) => None,
        })
    }

    /// As [`Self::open`], saying why a cache cannot be used. `Err` only for I/O failures other
    /// than a missing file.
    pub fn probe(dir: &Path, key: &str, needs: &TeacherNeeds, cfg: &CacheConfig) -> Result<Probe> {
        cfg.validate()?;
        let path = dir.join(INDEX);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Absent),
            Err(e) => return Err(io_err(&path, e)),
        };
        let stale = |why: String| Ok(Probe::Stale(why));
        let index: Index = match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => return stale(format!("{}: unreadable ({e})", path.display())),
        };
        if index.format != FORMAT {
            return stale(format!(
                "format {} (this build writes {FORMAT})",
                index.format
            ));
        }
        if index.key != key {
            return stale(format!(
                "built for key {}, this run's key is {key}",
                index.key
            ));
        }
        if index.needs != *needs {
            return stale(format!(
                "built for teacher outputs {:?}, this run needs {needs:?}",
                index.needs
            ));
        }
        let want = dtype_name(cfg.dtype)?;
        if index.dtype != want {
            return stale(format!("stored as {}, configured {want}", index.dtype));
        }
        if index.top_k_logits != cfg.top_k_logits {
            return stale(format!(
                "built with top-k logits {:?}, configured {:?}",
                index.top_k_logits, cfg.top_k_logits
            ));
        }
        if let Err(why) = index.consistent() {
            return stale(format!("{}: {why}", path.display()));
        }
        let mut shards = Vec::with_capacity(index.shards.len());
        for s in &index.shards {
            let p = dir.join(&s.file);
            if s.file.contains(['/', '\\']) || s.file.starts_with('.') {
                return stale(format!("{}: bad shard name {:?}", path.display(), s.file));
            }
            let len = match std::fs::metadata(&p) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return stale(format!("{}: missing", p.display()))
                }
                Err(e) => return Err(io_err(&p, e)),
            };
            if len != s.bytes {
                return stale(format!(
                    "{}: {len} bytes, the index says {} (truncated or rewritten)",
                    p.display(),
                    s.bytes
                ));
            }
            let (hash, _) = xxh64_file(&p).map_err(|e| io_err(&p, e))?;
            if format!("{hash:016x}") != s.xxh64 {
                return stale(format!(
                    "{}: checksum {hash:016x}, the index says {} (corrupted)",
                    p.display(),
                    s.xxh64
                ));
            }
            // SAFETY: the file is opened read-only and this process does not modify it while
            // mapped; a concurrent writer elsewhere is outside what any mmap-based reader can
            // defend against (as for the models' weights).
            let st = match unsafe { MmapedSafetensors::new(&p) } {
                Ok(st) => st,
                Err(e) => return stale(format!("{}: {e}", p.display())),
            };
            if let Err(why) = check_shard(&st, s, &index, cfg) {
                return stale(format!("{}: {why}", p.display()));
            }
            shards.push(st);
        }
        Ok(Probe::Ready(Box::new(TeacherCache {
            dir: dir.to_path_buf(),
            index,
            dtype: cfg.dtype,
            shards,
        })))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> &str {
        &self.index.key
    }

    pub fn needs(&self) -> &TeacherNeeds {
        &self.index.needs
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn teacher_shape(&self) -> TeacherShape {
        self.index.teacher
    }

    /// Examples held (the dataset's size).
    pub fn len(&self) -> usize {
        self.index.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.examples.is_empty()
    }

    /// Bytes of all shards.
    pub fn shard_bytes(&self) -> u64 {
        self.index.shards.iter().map(|s| s.bytes).sum()
    }

    /// The stored valid length of example `i`.
    pub fn length(&self, i: usize) -> Option<usize> {
        self.index.examples.get(i).map(|e| e.2 as usize)
    }

    /// The teacher outputs of examples `indices` (indices into the dataset the cache was built
    /// on), padded with zeros to `seq`, as f32 on `device` — what a teacher forward on the
    /// batch would return at every valid position. `mask` is the batch's `[batch, seq]`
    /// attention mask (1 = token, right padding); each row's token count must equal the
    /// example's stored length (an error otherwise: the cache is from other data or another
    /// tokenizer).
    ///
    /// - `hidden_states` has the teacher's `layers + 1` entries and `attentions` its `layers`,
    ///   so `hidden_states[l]` / `attentions[l - 1]` index as usual; the layers and
    ///   projections the cache does not hold are zero-size placeholders
    ///   (`[batch, seq, 0]`, `[batch·seq, 0]`) that fail any shape check.
    /// - Padded positions are zeros, not the teacher's values there: every loss excludes them.
    /// - `scores`, `probs` and `pooled` are `None`; `logits` is `None` unless needed. Top-k
    ///   logits come back with [`MISSING_LOGIT`] for the dropped classes.
    pub fn outputs(
        &self,
        indices: &[usize],
        seq: usize,
        mask: &Tensor,
        device: &Device,
    ) -> Result<BertOutput> {
        let b = indices.len();
        if mask.dims() != [b, seq] {
            return Err(cache_err(format!(
                "the mask has shape {:?}, expected [{b}, {seq}]",
                mask.dims()
            )));
        }
        let host_mask: Vec<Vec<f32>> = mask
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        let mut rows = Vec::with_capacity(b);
        for (row, (&i, m)) in indices.iter().zip(&host_mask).enumerate() {
            let &(shard, offset, len) = self.index.examples.get(i).ok_or_else(|| {
                cache_err(format!(
                    "example {i} is out of range (the cache holds {})",
                    self.len()
                ))
            })?;
            let (shard, offset, len) = (shard as usize, offset as usize, len as usize);
            let count = m.iter().filter(|&&x| x != 0.0).count();
            if count != len {
                return Err(cache_err(format!(
                    "example {i} (batch row {row}) has {count} tokens, the cache stored {len} \
                     (built from other data, or another tokenizer or maximum length?)"
                )));
            }
            if m[..len].contains(&0.0) {
                return Err(cache_err(format!(
                    "example {i} (batch row {row}): padding must be on the right"
                )));
            }
            let example_row = i - self.index.shards[shard].first_example;
            rows.push((shard, offset, len, example_row));
        }
        let shape = self.index.teacher;
        let (h, heads) = (shape.hidden, shape.heads);
        let elem = self.dtype.size_in_bytes();
        let needs = &self.index.needs;
        let view = |shard: usize, name: &str| -> Result<&[u8]> {
            Ok(self.shards[shard].get(name)?.data())
        };
        let tokens = |name: &str| -> Result<Tensor> {
            let row_bytes = h * elem;
            let mut buf = vec![0u8; b * seq * row_bytes];
            for (i, &(shard, offset, len, _)) in rows.iter().enumerate() {
                let src = &view(shard, name)?[offset * row_bytes..(offset + len) * row_bytes];
                buf[i * seq * row_bytes..][..len * row_bytes].copy_from_slice(src);
            }
            Ok(
                Tensor::from_raw_buffer(&buf, self.dtype, &[b, seq, h], device)?
                    .to_dtype(DType::F32)?,
            )
        };
        let hidden_states = (0..=shape.layers)
            .map(|l| {
                if needs.hidden.contains(&l) {
                    tokens(&format!("hidden.{l}"))
                } else {
                    Ok(Tensor::zeros((b, seq, 0), DType::F32, device)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // Q, K, V as the model hands them out: [b·seq, heads·d], heads side by side per token.
        let packed = |name: &str, l: usize, set: &std::collections::BTreeSet<usize>| {
            if set.contains(&l) {
                Ok(tokens(&format!("{name}.{l}"))?.reshape((b * seq, h))?)
            } else {
                Ok::<_, StageError>(Tensor::zeros((b * seq, 0), DType::F32, device)?)
            }
        };
        let attentions = (1..=shape.layers)
            .map(|l| {
                Ok(LayerAttention {
                    query: packed("q", l, &needs.q)?,
                    key: packed("k", l, &needs.k)?,
                    value: packed("v", l, &needs.v)?,
                    batch: b,
                    heads,
                    scores: None,
                    probs: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let logits = if needs.logits {
            let c = shape.num_labels;
            Some(match self.top_k() {
                None => {
                    let row_bytes = c * elem;
                    let mut buf = vec![0u8; b * row_bytes];
                    for (i, &(shard, _, _, r)) in rows.iter().enumerate() {
                        let src = &view(shard, "logits")?[r * row_bytes..(r + 1) * row_bytes];
                        buf[i * row_bytes..(i + 1) * row_bytes].copy_from_slice(src);
                    }
                    Tensor::from_raw_buffer(&buf, self.dtype, &[b, c], device)?
                        .to_dtype(DType::F32)?
                }
                Some(k) => {
                    let mut full = vec![MISSING_LOGIT; b * c];
                    for (i, &(shard, _, _, r)) in rows.iter().enumerate() {
                        let vals = &view(shard, "logits.values")?[r * k * elem..(r + 1) * k * elem];
                        let vals: Vec<f32> =
                            Tensor::from_raw_buffer(vals, self.dtype, &[k], &Device::Cpu)?
                                .to_dtype(DType::F32)?
                                .to_vec1()?;
                        let idx = &view(shard, "logits.indices")?[r * k * 4..(r + 1) * k * 4];
                        for (v, ib) in vals.iter().zip(idx.chunks_exact(4)) {
                            let ci = u32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]]) as usize;
                            if ci >= c {
                                return Err(cache_err(format!(
                                    "a top-k class index {ci} is out of range ({c} classes)"
                                )));
                            }
                            full[i * c + ci] = *v;
                        }
                    }
                    Tensor::from_vec(full, (b, c), device)?
                }
            })
        } else {
            None
        };
        Ok(BertOutput {
            hidden_states,
            attentions,
            pooled: None,
            logits,
            mask: mask.to_dtype(DType::F32)?,
        })
    }

    /// The number of logits kept per example when the cache drops the rest (top-k, fewer than
    /// the classes); `None` when it holds every logit.
    pub fn top_k(&self) -> Option<usize> {
        self.index
            .top_k_logits
            .filter(|&k| k < self.index.teacher.num_labels)
    }
}

/// Checks that a shard holds every tensor the index promises, in the right dtype and shape.
fn check_shard(
    st: &MmapedSafetensors,
    s: &ShardMeta,
    index: &Index,
    cfg: &CacheConfig,
) -> std::result::Result<(), String> {
    let want = index.dtype.to_uppercase();
    let check = |name: &str, dtype: &str, shape: &[usize], elem: usize| {
        let v = st
            .get(name)
            .map_err(|_| format!("has no tensor `{name}`"))?;
        let got = format!("{:?}", v.dtype());
        if got != dtype
            || v.shape() != shape
            || v.data().len() != shape.iter().product::<usize>() * elem
        {
            return Err(format!(
                "`{name}` is {} {:?}, expected {dtype} {shape:?}",
                got,
                v.shape()
            ));
        }
        Ok(())
    };
    let elem = cfg.dtype.size_in_bytes();
    let h = index.teacher.hidden;
    for name in index.needs.token_tensors() {
        check(&name, &want, &[s.tokens, h], elem)?;
    }
    if index.needs.logits {
        let c = index.teacher.num_labels;
        match index.top_k_logits.filter(|&k| k < c) {
            None => check("logits", &want, &[s.examples, c], elem)?,
            Some(k) => {
                check("logits.values", &want, &[s.examples, k], elem)?;
                check("logits.indices", "U32", &[s.examples, k], 4)?;
            }
        }
    }
    Ok(())
}
