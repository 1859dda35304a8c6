//! `distillery-stages`: the stage-scheduling engine.
//!
//! - [`schedule`]: a [`Schedule`] is a list of [`Stage`]s (loss terms with weights, length,
//!   AdamW settings, learning-rate schedule, parameter groups, optimiser carry-over, evaluation
//!   and checkpoint cadence); [`presets`] expand the one-/two-/three-stage schedules at
//!   equal step budget; [`lr`] has warm-up + decay.
//! - [`terms`]: the [`LossTerm`] trait and the registry, the only list of loss names; every
//!   hidden-state, attention, value-relation, logit and hard-label term implements it.
//! - [`cache`]: the teacher-output cache — what a schedule reads of the teacher
//!   ([`TeacherNeeds`]), computed once into checksummed safetensors shards and read back
//!   memory-mapped by the trainer instead of running the teacher.
//! - [`trainer`]: the loop that runs a schedule on a teacher and a student, reporting
//!   [`events`] to observers; [`optim`] is AdamW with state that checkpoints exactly;
//!   [`checkpoint`] writes and finds checkpoints atomically; [`eval`] measures accuracy and
//!   macro-F1.
//!
//! This crate knows nothing of the CLI, config files (a term reads only its own `[losses.<name>]`
//! table, handed over as a TOML value) or the terminal: it writes only into the
//! checkpoint folder it is handed, and never prints.

pub mod cache;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod events;
pub mod gradients;
pub mod lr;
pub mod optim;
pub mod presets;
pub mod schedule;
pub mod strategy;
pub mod terms;
pub mod trainer;

pub use cache::{
    example_lengths, BuildProgress, CacheConfig, Probe, TeacherCache, TeacherNeeds, TeacherShape,
};
pub use checkpoint::{Best, Checkpoint, CheckpointDir, TrainState};
pub use error::{Result, StageError};
pub use eval::{EvalSet, Metrics};
pub use events::{Event, Observer, Recorder, StepReport};
pub use gradients::{GradientHook, Gradients, MeanOver, StepInfo};
pub use lr::{Decay, LrSchedule};
pub use optim::Optimizer;
pub use presets::{expand, split_steps, Preset, PresetSettings};
pub use schedule::{AdamW, ParamGroups, Schedule, Stage};
pub use strategy::{BestMetric, CheckpointPolicy};
pub use terms::{LossTerm, TermContext, Weighted};
pub use trainer::{Models, Outcome, Trainer, TrainerConfig};
