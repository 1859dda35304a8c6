//! The trainer loop: for each stage, for each step — next batch, teacher forward (only when a
//! term needs it), student forward with seeded dropout, the stage's weighted loss, backward, a
//! non-finite guard, AdamW on the stage's parameter groups; evaluation and checkpoints on the
//! stage's cadence and at every stage end.
//!
//! With [`Models::teacher_cache`] the teacher's outputs come from the cache (the batch's
//! `indices` index the dataset it was built on) instead of a forward: an optimisation only.
//!
//! Determinism: dropout masks derive from (seed, global step), the data order from the
//! batcher's cursor, the learning rate from the step, and the optimiser's moments are saved
//! exactly; so a run resumed from a checkpoint ends with the same bits as an uninterrupted one.

use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use distillery_data::{Batch, Batcher};
use distillery_losses::Projection;
use distillery_models::{ForwardOptions, Model, ModelOutput};
use distillery_util::rng::SplitMix64;

use crate::cache::{TeacherCache, TeacherNeeds, TeacherShape};
use crate::checkpoint::{Best, Checkpoint, CheckpointDir, TrainState};
use crate::error::{Result, StageError};
use crate::eval::{EvalSet, Metrics};
use crate::events::{Event, Observer, StepReport};
use crate::gradients::{self, GradientHook, Gradients, StepInfo};
use crate::optim::Optimizer;
use crate::schedule::{Schedule, Stage};
use crate::strategy::BestMetric;
use crate::terms::{Layers, TermContext};

/// Run-wide settings (per-stage ones live in [`Stage`]).
#[derive(Debug, Clone, Default)]
pub struct TrainerConfig {
    pub seed: u64,
    /// Where checkpoints go; `None` writes none.
    pub checkpoints: Option<CheckpointDir>,
    /// Stop (as if interrupted) once this global step is done and checkpointed when due; a
    /// later run resumes from the checkpoint. For time-boxed runs and the resume tests.
    pub stop_after: Option<usize>,
    /// Batches drawn, forwarded and backpropagated per optimiser step, their gradients
    /// accumulated exactly (see [`crate::gradients`]); 0 and 1 both mean one.
    pub micro_batches: usize,
    /// The dev metric that decides the best checkpoint (default: accuracy).
    pub best_metric: BestMetric,
    /// This process's rank in a data-parallel run (0 alone). Dropout masks derive from
    /// (seed, global step, rank, micro-batch); rank 0's first micro-batch draws the masks a
    /// single-process run always drew.
    pub rank: usize,
}

/// The models a schedule trains and reads.
#[derive(Clone, Copy)]
pub struct Models<'a> {
    /// Frozen; needed when any stage has a term other than hard-label CE.
    pub teacher: Option<&'a dyn Model>,
    /// Trainable (built with a `VarMap`).
    pub student: &'a dyn Model,
    /// Learned hidden-state projections (one shared, or one per hidden-state term), trained
    /// with the student; their variables live in `projection_vars`.
    pub projections: &'a [Projection],
    pub projection_vars: Option<&'a VarMap>,
    /// The teacher's outputs over the training set, read instead of running the teacher (the
    /// teacher may then be `None`). Must hold everything the schedule reads
    /// ([`Schedule::teacher_needs`]); checked when the run starts.
    pub teacher_cache: Option<&'a TeacherCache>,
}

impl std::fmt::Debug for Models<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("teacher", &self.teacher.map(|t| t.shape().layers))
            .field("student", &self.student.shape())
            .field("projections", &self.projections.len())
            .field("teacher_cache", &self.teacher_cache.map(TeacherCache::dir))
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub global_step: usize,
    pub best: Option<Best>,
    /// Dev metrics at the end of the last stage, when a dev set was given.
    pub final_dev: Option<Metrics>,
    /// Stopped early by [`TrainerConfig::stop_after`].
    pub interrupted: bool,
}

fn named_vars(models: &Models<'_>) -> Result<Vec<(String, Var)>> {
    let student = models.student.varmap().ok_or_else(|| {
        StageError::Config("the student is frozen (it was built without trainable weights)".into())
    })?;
    let mut out: Vec<(String, Var)> = Vec::new();
    for vm in std::iter::once(student).chain(models.projection_vars) {
        let data = vm
            .data()
            .lock()
            .map_err(|_| StageError::Config("parameter map lock poisoned".into()))?;
        out.extend(data.iter().map(|(n, v)| (n.clone(), v.clone())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(StageError::Config(format!(
            "parameter `{}` is both a student weight and a projection",
            w[0].0
        )));
    }
    Ok(out)
}

/// What a stage reads of the teacher (the rest of a teacher forward is dropped at once),
/// found before the first step so that a bad layer map fails then.
struct Prepared {
    needs: Option<TeacherNeeds>,
}

/// The teacher's layer count, from the teacher or else its cache.
fn teacher_layers(models: &Models<'_>) -> Option<usize> {
    models
        .teacher
        .map(|t| t.shape().layers)
        .or_else(|| models.teacher_cache.map(|c| c.teacher_shape().layers))
}

fn layers(models: &Models<'_>) -> Layers {
    Layers {
        student: models.student.shape().layers,
        teacher: teacher_layers(models).unwrap_or(0),
    }
}

fn prepare(stage: &Stage, models: &Models<'_>) -> Result<Prepared> {
    if teacher_layers(models).is_none() {
        if let Some(t) = stage.losses.iter().find(|t| t.term.needs_teacher()) {
            return Err(StageError::Config(format!(
                "stage {:?}: the {} loss needs a teacher",
                stage.name,
                t.name()
            )));
        }
        return Ok(Prepared { needs: None });
    }
    let needs = stage.teacher_needs(layers(models).student, layers(models).teacher)?;
    Ok(Prepared { needs: Some(needs) })
}

/// A cache must match the teacher (when both are given) and hold all the schedule reads.
fn check_cache(schedule: &Schedule, models: &Models<'_>) -> Result<()> {
    let Some(cache) = models.teacher_cache else {
        return Ok(());
    };
    let shape = cache.teacher_shape();
    if let Some(t) = models.teacher {
        if TeacherShape::of(&t.shape()) != shape {
            return Err(StageError::Config(format!(
                "the teacher cache {} was built for a teacher of shape {shape:?}, the teacher is {:?}",
                cache.dir().display(),
                TeacherShape::of(&t.shape())
            )));
        }
    }
    let needs = schedule.teacher_needs(models.student.shape().layers, shape.layers)?;
    if let Some(k) = cache.top_k() {
        let mse = schedule
            .stages
            .iter()
            .flat_map(|s| &s.losses)
            .any(|t| t.term.needs_all_logits());
        if mse {
            return Err(StageError::Config(format!(
                "the teacher cache {} keeps only the top {k} logits, which the MSE logit loss cannot use (it would pull the other logits towards the fill value); use a KL or JSD logit loss, or cache every logit",
                cache.dir().display()
            )));
        }
    }
    let missing = cache.needs().missing(&needs);
    if !missing.is_empty() {
        return Err(StageError::Config(format!(
            "the teacher cache {} lacks {} that the schedule reads",
            cache.dir().display(),
            missing.join(", ")
        )));
    }
    Ok(())
}

pub struct Trainer<'a> {
    models: Models<'a>,
    dev: Option<&'a EvalSet>,
    config: TrainerConfig,
    optimizer: Optimizer,
    vars: Vec<(String, Var)>,
    hook: Option<Box<dyn GradientHook + 'a>>,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("params", &self.vars.len())
            .finish()
    }
}

impl<'a> Trainer<'a> {
    pub fn new(
        models: Models<'a>,
        dev: Option<&'a EvalSet>,
        config: TrainerConfig,
    ) -> Result<Self> {
        let vars = named_vars(&models)?;
        let optimizer = Optimizer::new(vars.clone());
        Ok(Self {
            models,
            dev,
            config,
            optimizer,
            vars,
            hook: None,
        })
    }

    /// Runs `hook` on every step's gradients before the update (see [`crate::gradients`]).
    pub fn with_gradient_hook(mut self, hook: Box<dyn GradientHook + 'a>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The dropout seed of micro-batch `micro` of the step after `global_step`.
    fn dropout_seed(&self, global_step: usize, micro: usize) -> u64 {
        let label = if micro == 0 && self.config.rank == 0 {
            format!("dropout/{global_step}")
        } else {
            format!(
                "dropout/{global_step}/rank{}/micro{micro}",
                self.config.rank
            )
        };
        SplitMix64::derive(self.config.seed, &label).next_u64()
    }

    /// Every trained tensor by name (student weights and projections), for checkpoints.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Sets the trained tensors to `ckpt`'s (e.g. the best checkpoint's, to export it); the
    /// optimiser state is left alone.
    pub fn load_params(&mut self, ckpt: &Checkpoint) -> Result<()> {
        for (name, var) in &self.vars {
            let t = ckpt.params.get(name).ok_or_else(|| {
                StageError::Checkpoint(format!("{}: has no tensor `{name}`", ckpt.path.display()))
            })?;
            if t.dims() != var.as_tensor().dims() {
                return Err(StageError::Checkpoint(format!(
                    "{}: `{name}` has shape {:?}, the model {:?}",
                    ckpt.path.display(),
                    t.dims(),
                    var.as_tensor().dims()
                )));
            }
            var.set(&t.to_dtype(var.as_tensor().dtype())?)?;
        }
        Ok(())
    }

    fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.load_params(ckpt)?;
        self.optimizer
            .load_state(&ckpt.optimizer, &ckpt.state.optimizer_steps)
    }

    /// Runs `schedule` from the start, or from `resume`, drawing batches from `batcher` (which
    /// must already stand at the checkpoint's cursor when resuming).
    pub fn run(
        &mut self,
        schedule: &Schedule,
        batcher: &mut Batcher<'_>,
        observers: &mut [&mut dyn Observer],
        resume: Option<&Checkpoint>,
    ) -> Result<Outcome> {
        schedule.validate()?;
        let shape: Vec<(String, usize)> = schedule
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.steps))
            .collect();
        let prepared: Vec<Prepared> = schedule
            .stages
            .iter()
            .map(|s| prepare(s, &self.models))
            .collect::<Result<_>>()?;
        check_cache(schedule, &self.models)?;
        let mut state = match resume {
            Some(ckpt) => {
                if ckpt.state.schedule != shape {
                    return Err(StageError::Checkpoint(format!(
                        "{} was written by a run with stages {:?}, this schedule has {:?}",
                        ckpt.path.display(),
                        ckpt.state.schedule,
                        shape
                    )));
                }
                if ckpt.state.seed != self.config.seed {
                    return Err(StageError::Checkpoint(format!(
                        "{} was written with seed {}, this run has seed {}",
                        ckpt.path.display(),
                        ckpt.state.seed,
                        self.config.seed
                    )));
                }
                if ckpt.state.cursor != batcher.cursor() {
                    return Err(StageError::Checkpoint(
                        "the batcher does not stand at the checkpoint's data cursor".into(),
                    ));
                }
                self.restore(ckpt)?;
                ckpt.state.clone()
            }
            None => TrainState::new(self.config.seed, shape.clone(), batcher.cursor()),
        };
        if let Some(dir) = &self.config.checkpoints {
            dir.clean_partial()?;
        }
        emit(
            observers,
            &Event::Started {
                stages: shape,
                total_steps: schedule.total_steps(),
                resumed_at: state.global_step,
            },
        );
        let mut final_dev = None;
        for (si, stage) in schedule.stages.iter().enumerate().skip(state.stage) {
            if state.step_in_stage == 0 && !stage.carry_optimizer {
                self.optimizer.reset();
            }
            // Also on a resume mid-stage, so that observers know where they are.
            emit(
                observers,
                &Event::StageStarted {
                    stage_index: si,
                    stage: stage.name.clone(),
                    steps: stage.steps,
                    done: state.step_in_stage,
                    global_step: state.global_step,
                },
            );
            for step in state.step_in_stage..stage.steps {
                let report = self.step(stage, si, step, &prepared[si], batcher, &state)?;
                state.global_step += 1;
                state.step_in_stage = step + 1;
                emit(observers, &Event::Step(report));
                let last = step + 1 == stage.steps;
                let due = |every: usize| every > 0 && (step + 1) % every == 0;
                state.dev_metric = None;
                let mut better = false;
                if let Some(dev) = self.dev.filter(|_| last || due(stage.eval_every)) {
                    let m = dev.evaluate(self.models.student)?;
                    let value = self.config.best_metric.of(&m);
                    better = state
                        .best
                        .is_none_or(|b| self.config.best_metric.better(value, b.metric));
                    if better {
                        state.best = Some(Best {
                            global_step: state.global_step,
                            metric: value,
                        });
                    }
                    state.dev_metric = Some(value);
                    if last && si + 1 == schedule.stages.len() {
                        final_dev = Some(m);
                    }
                    emit(
                        observers,
                        &Event::Evaluated {
                            stage_index: si,
                            stage: stage.name.clone(),
                            global_step: state.global_step,
                            accuracy: m.accuracy,
                            macro_f1: m.macro_f1,
                            loss: m.loss,
                            best: better,
                        },
                    );
                }
                state.cursor = batcher.cursor();
                if last {
                    state.stage = si + 1;
                    state.step_in_stage = 0;
                    // Before the checkpoint, so that a run stopped right after it has logged it.
                    emit(
                        observers,
                        &Event::StageFinished {
                            stage_index: si,
                            stage: stage.name.clone(),
                            global_step: state.global_step,
                        },
                    );
                }
                // A new best is always checkpointed, so that "the best on dev" is kept.
                if last || better || due(stage.checkpoint_every) {
                    self.checkpoint(&mut state, observers)?;
                }
                if self.config.stop_after == Some(state.global_step) {
                    return Ok(Outcome {
                        global_step: state.global_step,
                        best: state.best,
                        final_dev,
                        interrupted: true,
                    });
                }
            }
            state.stage = si + 1;
            state.step_in_stage = 0;
        }
        emit(
            observers,
            &Event::Finished {
                global_step: state.global_step,
            },
        );
        Ok(Outcome {
            global_step: state.global_step,
            best: state.best,
            final_dev,
            interrupted: false,
        })
    }

    fn checkpoint(
        &self,
        state: &mut TrainState,
        observers: &mut [&mut dyn Observer],
    ) -> Result<()> {
        let Some(dir) = &self.config.checkpoints else {
            return Ok(());
        };
        let (moments, steps) = self.optimizer.state()?;
        state.optimizer_steps = steps;
        let path = dir.save(state, &self.params(), &moments)?;
        emit(
            observers,
            &Event::Checkpointed {
                global_step: state.global_step,
                path,
            },
        );
        Ok(())
    }

    fn step(
        &mut self,
        stage: &Stage,
        si: usize,
        step: usize,
        prepared: &Prepared,
        batcher: &mut Batcher<'_>,
        state: &TrainState,
    ) -> Result<StepReport> {
        let start = Instant::now();
        let global_step = state.global_step + 1;
        let n = self.config.micro_batches.max(1);
        let batches: Vec<Batch> = (0..n)
            .map(|_| batcher.next_batch())
            .collect::<std::result::Result<_, _>>()?;
        let shares = (n > 1).then(|| gradients::shares(&stage.losses, &batches));
        let where_ = || {
            format!(
                "stage {} ({:?}) step {} (global step {global_step})",
                si + 1,
                stage.name,
                step + 1
            )
        };
        // (a) forward + losses + backward per micro-batch, gradients accumulated.
        let mut loss = 0f64;
        let mut terms: Vec<(String, f64)> = Vec::new();
        let mut grads: Option<Gradients> = None;
        for (m, batch) in batches.iter().enumerate() {
            let share = shares.as_ref().map(|s| s[m].as_slice());
            let seed = self.dropout_seed(state.global_step, m);
            let (total, values) = self.objective(stage, prepared, batch, seed, share)?;
            let part = f64::from(
                total
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?,
            );
            if !part.is_finite() {
                let parts: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v}")).collect();
                return Err(StageError::NonFinite(format!(
                    "{}: the loss is {part} ({}){}",
                    where_(),
                    parts.join(", "),
                    self.last_good()
                )));
            }
            let g = Gradients::from_store(&self.vars, &total.backward()?);
            match &mut grads {
                None => grads = Some(g),
                Some(acc) => acc.accumulate(g)?,
            }
            loss += part;
            // Each term's value over the whole batch: its micro-batch values by share.
            for (i, (name, v)) in values.into_iter().enumerate() {
                let v = share.map_or(v, |s| v * s[i]);
                match terms.get_mut(i) {
                    Some(t) => t.1 += v,
                    None => terms.push((name, v)),
                }
            }
        }
        let mut grads =
            grads.ok_or_else(|| StageError::Config("a step needs a micro-batch".into()))?;
        // (b) the gradient hook (all-reduce, inspection), then (c) the update.
        if let Some(hook) = &mut self.hook {
            let info = StepInfo {
                stage_index: si,
                step: step + 1,
                global_step,
                micro_batches: n,
            };
            hook.on_gradients(&info, &mut grads)?;
        }
        let lr = stage.lr.at(step, stage.steps);
        let stats = self
            .optimizer
            .step(
                &grads.to_store(&self.vars),
                lr,
                &stage.optimizer,
                &stage.params,
            )
            .map_err(|e| match e {
                StageError::NonFinite(m) => {
                    StageError::NonFinite(format!("{}: {m}{}", where_(), self.last_good()))
                }
                other => other,
            })?;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let examples: usize = batches.iter().map(Batch::len).sum();
        Ok(StepReport {
            stage_index: si,
            stage: stage.name.clone(),
            step: step + 1,
            global_step,
            epoch: batches.last().map_or(0, |b| b.epoch),
            loss,
            terms,
            lr,
            grad_norm: stats.grad_norm,
            examples,
            examples_per_sec: examples as f64 / secs,
        })
    }

    fn last_good(&self) -> String {
        match self
            .config
            .checkpoints
            .as_ref()
            .and_then(|d| d.list().ok())
            .and_then(|mut l| l.pop())
        {
            Some((_, p)) => format!("; the last good checkpoint is {}", p.display()),
            None => "; no checkpoint was written before it".into(),
        }
    }

    /// The stage's weighted loss on `batch` and each term's unweighted value; with `shares`
    /// (micro-batches), each term also weighted by this micro-batch's share of the step's.
    fn objective(
        &self,
        stage: &Stage,
        prepared: &Prepared,
        batch: &Batch,
        seed: u64,
        shares: Option<&[f64]>,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let device = self.models.student.device();
        let t = batch.encoded.to_tensors(device)?;
        let needs_teacher = stage.losses.iter().any(|t| t.term.needs_teacher());
        let teacher_out: Option<ModelOutput> =
            match (self.models.teacher_cache, self.models.teacher) {
                _ if !needs_teacher => None,
                (Some(cache), _) => Some(cache.outputs(
                    &batch.indices,
                    batch.encoded.seq,
                    &t.attention_mask,
                    device,
                )?),
                (None, Some(teacher)) => {
                    let mut out = teacher.forward_batch(&t, &ForwardOptions::default())?;
                    if let Some(needs) = &prepared.needs {
                        needs.prune(&mut out)?;
                    }
                    Some(out)
                }
                (None, None) => None,
            };
        let s = self.models.student.forward_batch(
            &t,
            &ForwardOptions {
                train: true,
                seed,
                attention_maps: false,
            },
        )?;
        let cx = TermContext {
            stage: &stage.name,
            student: &s,
            teacher: teacher_out.as_ref(),
            batch,
            layers: layers(&self.models),
            projections: self.models.projections,
        };
        let mut total: Option<Tensor> = None;
        let mut values = Vec::new();
        for (i, term) in stage.losses.iter().enumerate() {
            let value = term.term.compute(&cx)?;
            let v = f64::from(
                value
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?,
            );
            values.push((term.name().to_string(), v));
            let weighted = match shares {
                None => (value * term.weight)?,
                Some(s) => (value * (term.weight * s[i]))?,
            };
            total = Some(match total {
                None => weighted,
                Some(acc) => (acc + weighted)?,
            });
        }
        let total = total.ok_or_else(|| StageError::Config("stage without losses".into()))?;
        Ok((total, values))
    }
}

fn emit(observers: &mut [&mut dyn Observer], event: &Event) {
    for o in observers.iter_mut() {
        o.on_event(event);
    }
}
