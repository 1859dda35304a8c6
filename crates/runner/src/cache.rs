//! The runner's side of the teacher-output cache: its key (a hash of everything that decides
//! the teacher's outputs), where it lives, the expected size shown before building, and a
//! progress bar while it builds. The cache itself is `distillery_stages::cache`.
//!
//! Exactness: an f32 cache stores exactly what the teacher computed for each example in the
//! batch it was built in. candle's CPU matmul chooses its summation order from the operands'
//! shapes, and the softmax tail depends on the padded length, so a live teacher reproduces those
//! bits only for batches of the same shape: a run reading the cache is bit-identical to one
//! without when examples have equal lengths, and otherwise within the tolerance measured in
//! `crates/stages/tests/cache.rs` (weights within 5e-4 after 24 steps, losses within 1e-5).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::DType;
use distillery_stages::cache::human_bytes;
use distillery_stages::{example_lengths, CacheConfig, Probe, Schedule, TeacherCache};
use distillery_util::hash::{xxh64_file, Hasher};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{schema::CacheDtype, schema::TeacherCacheSection, Config};
use crate::task::Task;
use crate::teacher::Teacher;

fn cache_config(section: &TeacherCacheSection) -> CacheConfig {
    CacheConfig {
        dtype: match section.dtype {
            CacheDtype::F32 => DType::F32,
            CacheDtype::F16 => DType::F16,
            CacheDtype::Bf16 => DType::BF16,
        },
        budget_bytes: section.budget_mb.map(|m| m.saturating_mul(1 << 20)),
        top_k_logits: section.top_k_logits,
        ..CacheConfig::default()
    }
}

/// What decides the teacher's outputs: its weights and config, the tokenizer, the data (every
/// example, in order) and the truncation length. Any change gives another key, and the cache is
/// rebuilt.
fn key(config: &Config, task: &Task, teacher: &Teacher) -> Result<String> {
    let mut h = Hasher::new();
    let weights = distillery_models::hub::weights_path(&teacher.info.path)?;
    let (w, _) =
        xxh64_file(&weights).with_context(|| format!("{}: cannot read", weights.display()))?;
    h.write(&w.to_le_bytes());
    for f in [
        teacher.info.path.join("config.json"),
        task.tokenizer_dir.join("tokenizer.json"),
    ] {
        let bytes = std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?;
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(&bytes);
    }
    h.write(&task.digest().to_le_bytes());
    h.write(&(config.data.max_len as u64).to_le_bytes());
    Ok(format!("{:016x}", h.finish()))
}

/// Opens the cache for `schedule` or builds it (checking the budget first); `None` when the
/// config has no `[teacher_cache]`.
pub fn prepare(
    config: &Config,
    task: &Task,
    teacher: &Teacher,
    schedule: &Schedule,
    student_layers: usize,
    out_root: &Path,
    quiet: bool,
) -> Result<Option<TeacherCache>> {
    let Some(section) = &config.teacher_cache else {
        return Ok(None);
    };
    let needs = schedule.teacher_needs(student_layers, teacher.model.config.num_hidden_layers)?;
    let cfg = cache_config(section);
    let dir = section
        .dir
        .as_deref()
        .map_or_else(|| out_root.join("teacher-cache"), |d| config.resolve(d));
    let key = key(config, task, teacher)?;
    match TeacherCache::probe(&dir, &key, &needs, &cfg)? {
        Probe::Ready(c) => return Ok(Some(*c)),
        Probe::Stale(why) if !quiet => {
            eprintln!("teacher cache {}: {why}; rebuilding", dir.display())
        }
        _ => {}
    }
    // The training batch size: CPU matmuls pick their summation order from the shapes, so
    // equal shapes give the exact bits a live teacher would (see the module doc).
    let in_order = || task.train_in_order(config.data.batch_size);
    let lengths = example_lengths(&mut in_order()?)?;
    let expected = TeacherCache::estimate(&lengths, &needs, &teacher.model.config.shape(), &cfg);
    if !quiet {
        eprintln!(
            "building the teacher cache in {}: {} examples, expected {}",
            dir.display(),
            lengths.len(),
            human_bytes(expected)
        );
    }
    let bar = if quiet {
        ProgressBar::with_draw_target(Some(lengths.len() as u64), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(lengths.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "teacher cache {bar:24} {pos}/{len} examples eta {eta} | {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cache = TeacherCache::build(
        &dir,
        &key,
        &teacher.model,
        &mut in_order()?,
        &needs,
        &cfg,
        &mut |p| {
            bar.set_position(p.examples as u64);
            bar.set_message(human_bytes(p.bytes));
        },
    )
    .map_err(|e| anyhow::anyhow!("{}: key `teacher_cache`: {e}", config.source().display()))?;
    bar.finish_and_clear();
    Ok(Some(cache))
}
