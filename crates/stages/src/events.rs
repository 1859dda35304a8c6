//! What the trainer reports while it runs. The library never prints: observers (the runner's
//! progress bar and metrics file, a test's recorder) receive these events.

use std::path::PathBuf;

use serde::Serialize;

/// One optimisation step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// 0-based stage index and its name.
    pub stage_index: usize,
    pub stage: String,
    /// 1-based step within the stage, and over the whole schedule.
    pub step: usize,
    pub global_step: usize,
    pub epoch: u64,
    /// The weighted sum that was minimised.
    pub loss: f64,
    /// Each term's unweighted value, by kind name (`hidden`, `attention`, `logit`, `hard_label`).
    pub terms: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub examples: usize,
    pub examples_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        /// (name, steps) of every stage.
        stages: Vec<(String, usize)>,
        total_steps: usize,
        /// The global step a resumed run continues from (0 for a fresh run).
        resumed_at: usize,
    },
    /// Entering a stage; `done` > 0 when a resumed run continues mid-stage.
    StageStarted {
        stage_index: usize,
        stage: String,
        steps: usize,
        done: usize,
        global_step: usize,
    },
    Step(StepReport),
    Evaluated {
        stage_index: usize,
        stage: String,
        global_step: usize,
        accuracy: f64,
        macro_f1: f64,
        loss: f64,
        best: bool,
    },
    Checkpointed {
        global_step: usize,
        path: PathBuf,
    },
    StageFinished {
        stage_index: usize,
        stage: String,
        global_step: usize,
    },
    Finished {
        global_step: usize,
    },
}

/// Receives the trainer's events, in order.
pub trait Observer {
    fn on_event(&mut self, event: &Event);
}

/// Keeps every event (tests, reports).
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub events: Vec<Event>,
}

impl Observer for Recorder {
    fn on_event(&mut self, event: &Event) {
        self.events.push(event.clone());
    }
}

impl Recorder {
    pub fn steps(&self) -> impl Iterator<Item = &StepReport> {
        self.events.iter().filter_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
    }
}
