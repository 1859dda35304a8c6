//! `distillery-stages`: the stage-scheduling engine.
//!
//! This slice holds the declarative part: [`Schedule`]s of [`Stage`]s (loss terms with weights,
//! length, AdamW settings, learning-rate schedule, parameter groups, optimiser carry-over,
//! evaluation and checkpoint cadence), the one-/two-/three-stage [`presets`] splitting one step
//! budget, and [`lr`] schedules. The trainer loop, events and checkpoints are the next slice.
//!
//! This crate knows nothing of the CLI, files named by the user, or the terminal.

pub mod error;
pub mod lr;
pub mod presets;
pub mod schedule;

pub use error::{Result, StageError};
pub use lr::{Decay, LrSchedule};
pub use presets::{expand, split_steps, Preset, PresetSettings};
pub use schedule::{AdamW, LossTerm, ParamGroups, Schedule, Stage};
