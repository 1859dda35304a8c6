//! The teacher of a run: a Hugging Face folder used as is, or fine-tuned on the task's labels
//! first (hard-label CE through the same stage engine), or — for the synthetic quickstart —
//! trained from scratch. A fine-tuned teacher is saved to `OUT/teacher/` and reused by later
//! runs and by `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use distillery_models::{
    load_model, random_student, save_model, with_new_head, Activation, BertConfig, BertModel,
    LoadOptions,
};
use distillery_stages::{CheckpointDir, Metrics, Models, Trainer, TrainerConfig};
use distillery_util::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::config::{Config, TeacherSource};
use crate::faults::fault_step;
use crate::observe::{MetricsFile, Progress};
use crate::plan::Plan;
use crate::task::Task;

/// The teacher's scores, stored beside it (`teacher.json`); its presence marks a finished
/// fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherInfo {
    pub path: PathBuf,
    pub dev: Option<Metrics>,
    pub test: Option<Metrics>,
    pub parameters: usize,
    pub finetune_secs: f64,
}

#[derive(Debug)]
pub struct Teacher {
    pub model: BertModel,
    pub info: TeacherInfo,
}

pub fn seed_of(config: &Config, what: &str) -> u64 {
    SplitMix64::derive(config.seed, what).next_u64()
}

/// Metrics of `model` on the task's dev and test splits.
pub fn scores(
    model: &BertModel,
    task: &Task,
    config: &Config,
) -> Result<(Option<Metrics>, Option<Metrics>)> {
    let eval = |d: &Option<distillery_data::Dataset>| -> Result<Option<Metrics>> {
        d.as_ref()
            .map(|d| {
                task.eval_set(d, config.data.eval_batch_size, model.device())?
                    .evaluate(model)
                    .map_err(anyhow::Error::from)
            })
            .transpose()
    };
    Ok((eval(&task.splits.dev)?, eval(&task.splits.test)?))
}

pub fn from_scratch_config(
    config: &Config,
    task: &Task,
    spec: &distillery_models::StudentSpec,
) -> BertConfig {
    BertConfig {
        vocab_size: task.tokenizer.vocab_size(),
        hidden_size: spec.hidden,
        num_hidden_layers: spec.layers,
        num_attention_heads: spec.heads,
        intermediate_size: spec.intermediate,
        hidden_act: Activation::Gelu,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: config.data.max_len.max(2),
        type_vocab_size: 2,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        labels: task.vocab.names().to_vec(),
    }
}

/// The frozen teacher for the plan's task, fine-tuning (and saving) it first when the config
/// says so.
pub fn prepare(
    config: &Config,
    plan: &Plan,
    out: &Path,
    device: &Device,
    quiet: bool,
) -> Result<Teacher> {
    let task = &plan.task;
    let frozen = LoadOptions {
        trainable: false,
        dtype: DType::F32,
        device: device.clone(),
    };
    let saved = out.join("teacher");
    let info_path = saved.join("teacher.json");
    if info_path.is_file() {
        let info: TeacherInfo = serde_json::from_slice(
            &std::fs::read(&info_path)
                .with_context(|| format!("{}: cannot read", info_path.display()))?,
        )
        .with_context(|| format!("{}: not a teacher summary", info_path.display()))?;
        let model = load_model(&info.path, &frozen)
            .with_context(|| format!("loading the teacher {}", info.path.display()))?;
        return Ok(Teacher { model, info });
    }
    let source = config.teacher_source()?;
    if config.teacher.finetune.is_none() {
        let TeacherSource::Folder(dir) = source else {
            bail!(
                "{}: key `teacher.finetune`: a from-scratch teacher must be trained first; add [teacher.finetune]",
                config.source().display()
            );
        };
        let model = load_model(&dir, &frozen)
            .with_context(|| format!("loading the teacher {}", dir.display()))?;
        if model.config.labels != task.vocab.names() {
            bail!(
                "{}: key `teacher.finetune`: the teacher {} has labels {:?} but the data has {:?}; add [teacher.finetune] to train a head for them",
                config.source().display(),
                dir.display(),
                model.config.labels,
                task.vocab.names()
            );
        }
        let (dev, test) = scores(&model, task, config)?;
        let info = TeacherInfo {
            path: dir,
            dev,
            test,
            parameters: model.num_parameters(),
            finetune_secs: 0.0,
        };
        write_info(out, &info)?;
        return Ok(Teacher { model, info });
    }
    let labels = task.vocab.names().to_vec();
    let head_seed = seed_of(config, "teacher/head");
    let model = match source {
        TeacherSource::Folder(dir) => {
            let base = load_model(
                &dir,
                &LoadOptions {
                    trainable: true,
                    ..frozen.clone()
                },
            )
            .with_context(|| format!("loading the teacher {}", dir.display()))?;
            if base.config.labels == labels {
                base
            } else {
                with_new_head(&base, &labels, head_seed)?
            }
        }
        TeacherSource::Random(spec) => random_student(
            from_scratch_config(config, task, &spec),
            seed_of(config, "teacher/init"),
            true,
            DType::F32,
            device,
        )?,
    };
    let schedule = plan.finetune.as_ref().context("no [teacher.finetune]")?;
    let dev = task.dev_set(config.data.eval_batch_size, device)?;
    let ckpt = CheckpointDir::new(out.join("teacher-checkpoints"), 1)
        .abort_while_writing(fault_step("DISTILLERY_ABORT_IN_CHECKPOINT", "teacher"));
    let resume = ckpt.latest(device)?;
    let mut train = task.train_batcher(
        config.train_batches(),
        resume.as_ref().map(|c| &c.state.cursor),
    )?;
    let no_projections = VarMap::new();
    let start = std::time::Instant::now();
    let mut trainer = Trainer::new(
        Models {
            teacher: None,
            student: &model,
            projections: &[],
            projection_vars: Some(&no_projections),
            teacher_cache: None,
        },
        dev.as_ref(),
        TrainerConfig {
            seed: seed_of(config, "teacher/train"),
            checkpoints: Some(ckpt),
            stop_after: fault_step("DISTILLERY_STOP_AFTER", "teacher"),
            ..Default::default()
        },
    )?;
    let mut progress = Progress::new("teacher", quiet);
    let mut metrics = MetricsFile::open(
        &out.join("teacher-metrics.jsonl"),
        resume.as_ref().map(|c| c.state.global_step),
    )?;
    let outcome = trainer
        .run(
            schedule,
            &mut train,
            &mut [&mut progress, &mut metrics],
            resume.as_ref(),
        )
        .context("fine-tuning the teacher")?;
    metrics.finish()?;
    if outcome.interrupted {
        bail!(
            "teacher fine-tuning stopped after global step {} as asked (DISTILLERY_STOP_AFTER); continue with --resume",
            outcome.global_step
        );
    }
    save_model(&model, &saved, Some(&task.tokenizer_dir))?;
    let model = load_model(&saved, &frozen)?;
    let (dev, test) = scores(&model, task, config)?;
    let info = TeacherInfo {
        path: saved,
        dev,
        test,
        parameters: model.num_parameters(),
        finetune_secs: start.elapsed().as_secs_f64(),
    };
    write_info(out, &info)?;
    if let Some(d) = &info.dev {
        if !quiet {
            eprintln!(
                "teacher: dev accuracy {:.4}, macro-F1 {:.4}",
                d.accuracy, d.macro_f1
            );
        }
    }
    Ok(Teacher { model, info })
}

fn write_info(out: &Path, info: &TeacherInfo) -> Result<()> {
    let json = serde_json::to_vec_pretty(info)?;
    distillery_util::fs::write_atomic(&out.join("teacher").join("teacher.json"), &json)?;
    Ok(())
}
