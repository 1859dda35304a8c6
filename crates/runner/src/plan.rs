//! A job's plan: everything derived from the config, derived once — the task (data, labels,
//! tokenizer), the teacher folder's `config.json` (read once), the teacher's and the student's
//! shapes as the run will build them, every chosen schedule expanded at the task's batches per
//! epoch, the teacher's fine-tuning schedule, and the checks that need those shapes. `run`,
//! `compare` and `--dry-run` consume it; nothing is written while it is built.

use anyhow::{Context, Result};
use distillery_models::BertConfig;
use distillery_stages::Schedule;

use crate::config::{Config, ScheduleChoice, StudentSource, TeacherSource};
use crate::task::{self, Task};

#[derive(Debug)]
pub struct Plan {
    pub task: Task,
    /// The teacher's shape: its folder's `config.json`, or the from-scratch spec.
    pub teacher_config: BertConfig,
    /// The student's shape as `distill` will build it.
    pub student_config: BertConfig,
    /// Batches of `data.batch_size` per epoch of the training split.
    pub batches_per_epoch: usize,
    /// Each chosen schedule, expanded (epochs turned into steps).
    pub schedules: Vec<(ScheduleChoice, Schedule)>,
    /// `[teacher.finetune]` as a schedule.
    pub finetune: Option<Schedule>,
    /// Holds the synthetic task's tokenizer until [`Task::persist`] copies it out.
    scratch: tempfile::TempDir,
}

impl Plan {
    /// Reads the data and the teacher's config, expands the schedules `choices` and checks them
    /// against the planned models: every error a config can cause before training, in
    /// milliseconds rather than after the teacher fine-tunes.
    pub fn build(config: &Config, choices: &[ScheduleChoice]) -> Result<Self> {
        let scratch = tempfile::tempdir().context("creating a scratch folder")?;
        let teacher_folder = task::teacher_folder_config(config)?;
        let task = task::prepare(config, scratch.path(), teacher_folder.as_ref())?;
        let batches_per_epoch = task
            .train_batcher(config.train_batches(), None)?
            .batches_per_epoch();
        let schedules = choices
            .iter()
            .map(|&c| Ok((c, config.schedule(c, batches_per_epoch)?)))
            .collect::<Result<Vec<_>>>()?;
        let finetune = config.finetune_schedule(batches_per_epoch)?;
        let (teacher_config, student_config) =
            planned_configs(config, &task, teacher_folder.map(|(_, c)| c))?;
        config.check_models_for(
            choices,
            &teacher_config,
            &student_config,
            task.tokenizer.vocab_size(),
        )?;
        Ok(Self {
            task,
            teacher_config,
            student_config,
            batches_per_epoch,
            schedules,
            finetune,
            scratch,
        })
    }

    /// The expanded schedule `c` (one of the planned choices).
    pub fn schedule(&self, c: ScheduleChoice) -> Result<&Schedule> {
        self.schedules
            .iter()
            .find(|(x, _)| *x == c)
            .map(|(_, s)| s)
            .with_context(|| format!("the {} schedule was not planned", c.name()))
    }

    /// Writes the task's files into `out` (see [`Task::persist`]).
    pub fn persist(&mut self, out: &std::path::Path) -> Result<()> {
        self.task.persist(out, self.scratch.path())
    }
}

/// The teacher's and the student's configs as the run will build them.
fn planned_configs(
    config: &Config,
    task: &Task,
    teacher_folder: Option<BertConfig>,
) -> Result<(BertConfig, BertConfig)> {
    let teacher = match (teacher_folder, config.teacher_source()?) {
        (Some(cfg), _) => cfg,
        (None, TeacherSource::Random(spec)) => {
            crate::teacher::from_scratch_config(config, task, &spec)
        }
        (None, TeacherSource::Folder(dir)) => {
            anyhow::bail!("teacher `{}`: its config was not read", dir.display())
        }
    };
    let student = match config.student_source()? {
        StudentSource::TeacherLayers(layers) => BertConfig {
            num_hidden_layers: layers.len(),
            ..teacher.clone()
        },
        StudentSource::Random(spec) => spec
            .config(&teacher)
            .with_context(|| format!("{}: key `student`", config.source().display()))?,
    };
    Ok((teacher, student))
}
