//! One schedule, end to end, into one folder:
//!
//! ```text
//! DIR/checkpoints/step-…/   resumable state (last k + best on dev)
//! DIR/metrics.jsonl         one line per step / evaluation / stage end
//! DIR/student/              the final student, Hugging Face layout (tokenizer copied)
//! DIR/loss.svg, report.md   the loss curve (stage boundaries marked) and the report
//! DIR/summary.json          written last: its presence marks a finished run
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use distillery_losses::Projection;
use distillery_models::{random_student, save_model, student_from_teacher, BertConfig, BertModel};
use distillery_stages::{
    CheckpointDir, CheckpointPolicy, Models, Schedule, Trainer, TrainerConfig,
};

use crate::config::schema::Export;
use crate::config::{Config, ScheduleChoice, StudentSource};
use crate::faults::fault_step;
use crate::observe::{MetricsFile, Progress};
use crate::plan::Plan;
use crate::records::{self, Record};
use crate::summary::{read_summary, stage_rows, Summary};
use crate::teacher::{scores, seed_of, Teacher};

/// Builds the student the config asks for.
pub fn build_student(config: &Config, teacher: &BertModel, device: &Device) -> Result<BertModel> {
    let student = match config.student_source()? {
        StudentSource::TeacherLayers(layers) => {
            // The teacher is frozen; copies of its tensors become the student's variables.
            student_from_teacher(teacher, &layers, seed_of(config, "student/init")).with_context(
                || {
                    format!(
                        "{}: key `student.teacher_layers`",
                        config.source().display()
                    )
                },
            )?
        }
        StudentSource::Random(spec) => {
            let cfg = spec
                .config(&teacher.config)
                .with_context(|| format!("{}: key `student`", config.source().display()))?;
            random_student(
                cfg,
                seed_of(config, "student/init"),
                true,
                DType::F32,
                device,
            )?
        }
    };
    Ok(student)
}

/// The learned projections `schedule`'s terms ask for (each name once, in schedule order),
/// registered in `vars` beside the student's weights.
pub fn build_projections(
    config: &Config,
    schedule: &Schedule,
    (student, teacher): (&BertConfig, &BertConfig),
    vars: &VarMap,
    device: &Device,
) -> Result<Vec<Projection>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for t in schedule.stages.iter().flat_map(|s| &s.losses) {
        for p in t.term.projections(&student.shape(), &teacher.shape()) {
            if seen.insert(p.name.clone()) {
                out.push(Projection::new(
                    vars,
                    &p.name,
                    p.from,
                    p.to,
                    seed_of(config, "projection"),
                    device,
                )?);
            }
        }
    }
    Ok(out)
}

/// How a run may treat what is already in its folder.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub resume: bool,
    pub quiet: bool,
}

/// Runs `choice` into `dir` (see the module doc); returns the finished run's summary and its
/// metrics records.
pub fn run_schedule(
    config: &Config,
    plan: &Plan,
    teacher: &Teacher,
    choice: ScheduleChoice,
    dir: &Path,
    device: &Device,
    opts: RunOptions,
) -> Result<(Summary, Vec<Record>)> {
    let task = &plan.task;
    // The teacher cache is shared by every schedule written under the output folder.
    let out_root = if dir.join("run.json").is_file() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    if let Some(done) = read_summary(dir)? {
        if opts.resume {
            return Ok((done, records::read(&dir.join("metrics.jsonl"))?));
        }
        bail!(
            "{}: already holds a finished run; choose another --out (nothing was overwritten)",
            dir.display()
        );
    }
    let policy = CheckpointPolicy {
        keep_last: config.distill.keep_checkpoints,
        keep_best: config.distill.keep_best,
    };
    let ckpt = CheckpointDir::with_policy(dir.join("checkpoints"), policy)
        .abort_while_writing(fault_step("DISTILLERY_ABORT_IN_CHECKPOINT", "distill"));
    let export_best = config.distill.export == Export::Best;
    if export_best && task.splits.dev.is_none() {
        bail!(
            "{}: key `distill.export`: = \"best\" needs a dev split to rank checkpoints, and the data has none",
            config.source().display()
        );
    }
    let resume = if opts.resume {
        ckpt.latest(device)?
    } else {
        None
    };
    if !opts.resume && !ckpt.list()?.is_empty() {
        bail!(
            "{}: holds checkpoints of an unfinished run; pass --resume to continue it or choose another --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let student = build_student(config, &teacher.model, device)?;
    config.check_models_for(
        &[choice],
        &teacher.model.config,
        &student.config,
        task.tokenizer.vocab_size(),
    )?;
    let mut batcher = task.train_batcher(
        config.train_batches(),
        resume.as_ref().map(|c| &c.state.cursor),
    )?;
    let schedule = plan.schedule(choice)?;
    let vars = VarMap::new();
    let projections = build_projections(
        config,
        schedule,
        (&student.config, &teacher.model.config),
        &vars,
        device,
    )?;
    let dev = task.dev_set(config.data.eval_batch_size, device)?;
    let cache = crate::cache::prepare(
        config,
        task,
        teacher,
        schedule,
        student.config.num_hidden_layers,
        out_root,
        opts.quiet,
    )?;
    let mut trainer = Trainer::new(
        Models {
            teacher: Some(&teacher.model),
            student: &student,
            projections: &projections,
            projection_vars: Some(&vars),
            teacher_cache: cache.as_ref(),
        },
        dev.as_ref(),
        TrainerConfig {
            seed: seed_of(config, "distill"),
            checkpoints: Some(ckpt),
            stop_after: fault_step("DISTILLERY_STOP_AFTER", "distill"),
            micro_batches: config.distill.micro_batches,
            best_metric: config.distill.best_metric,
            rank: 0,
        },
    )?;
    let clock_path = dir.join(".elapsed");
    let earlier: f64 = if resume.is_some() {
        std::fs::read_to_string(&clock_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0)
    } else {
        0.0
    };
    let mut clock = Clock {
        path: clock_path,
        start: Instant::now(),
        earlier,
    };
    let mut progress = Progress::new(choice.name(), opts.quiet);
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics =
        MetricsFile::open(&metrics_path, resume.as_ref().map(|c| c.state.global_step))?;
    let outcome = trainer
        .run(
            schedule,
            &mut batcher,
            &mut [&mut progress, &mut metrics, &mut clock],
            resume.as_ref(),
        )
        .with_context(|| format!("schedule {}", choice.name()))?;
    metrics.finish()?;
    if outcome.interrupted {
        bail!(
            "stopped after global step {} as asked (DISTILLERY_STOP_AFTER); continue with --resume",
            outcome.global_step
        );
    }
    let exported_step = match outcome.best.filter(|_| export_best) {
        Some(best) => {
            let kept = CheckpointDir::new(dir.join("checkpoints"), 1);
            let c = kept.load_step(best.global_step, device)?.with_context(|| {
                format!(
                    "{}: the best checkpoint (global step {}) is gone",
                    kept.root().display(),
                    best.global_step
                )
            })?;
            trainer.load_params(&c)?;
            best.global_step
        }
        None => outcome.global_step,
    };
    let student_dir = dir.join("student");
    save_model(&student, &student_dir, Some(&task.tokenizer_dir))?;
    let (dev_m, test_m) = scores(&student, task, config)?;
    let summary = Summary {
        schedule: choice.name().to_string(),
        stages: stage_rows(schedule),
        steps: schedule.total_steps(),
        dev: dev_m,
        test: test_m,
        best_dev: outcome.best.map(|b| (b.global_step, b.metric)),
        best_metric: config.distill.best_metric.name().to_string(),
        exported_step,
        student_parameters: student.num_parameters(),
        teacher_parameters: teacher.info.parameters,
        teacher_dev: teacher.info.dev,
        teacher_test: teacher.info.test,
        wall_secs: clock.total(),
        student_dir,
    };
    // Typed, from the file: a resumed run's earlier steps exist only there.
    let history = records::read(&metrics_path)?;
    crate::report::write_run_report(dir, &summary, &history, config)?;
    distillery_util::fs::write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok((summary, history))
}

/// Training wall time, saved at each checkpoint so that a resumed run reports the total.
struct Clock {
    path: PathBuf,
    start: Instant,
    earlier: f64,
}

impl Clock {
    fn total(&self) -> f64 {
        self.earlier + self.start.elapsed().as_secs_f64()
    }
}

impl distillery_stages::Observer for Clock {
    fn on_event(&mut self, event: &distillery_stages::Event) {
        if let distillery_stages::Event::Checkpointed { .. } = event {
            let _ = distillery_util::fs::write_atomic(
                &self.path,
                format!("{}", self.total()).as_bytes(),
            );
        }
    }
}
