//! The trainer on tiny models: losses go down, runs are deterministic, a resumed run ends with
//! the same bits as an uninterrupted one, NaN stops the run naming stage and step, frozen groups
//! stay put, and optimiser state carries over only when asked.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use distillery_data::{BatchConfig, Batcher, Dataset, Example, LabelOrder, LabelVocab};
use distillery_losses::*;
use distillery_models::{
    load_model, random_student, save_model, testing, BertModel, LoadOptions, TextTokenizer,
};
use distillery_stages::*;

const WORDS: [&str; 10] = [
    "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "movie",
];

fn dataset(n: usize) -> Dataset {
    let mut rng = distillery_models::rng::SplitMix64::new(5);
    let examples = (0..n)
        .map(|i| {
            let len = 3 + (rng.next_u64() % 5) as usize;
            let mut w: Vec<&str> = (0..len)
                .map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize])
                .collect();
            let label = if i % 2 == 0 { "pos" } else { "neg" };
            w.insert(
                (rng.next_u64() % len as u64) as usize,
                if i % 2 == 0 { "good" } else { "bad" },
            );
            Example {
                text: w.join(" "),
                pair: None,
                label: Some(label.into()),
                line: i + 1,
            }
        })
        .collect();
    Dataset {
        source: "mem.tsv".into(),
        examples,
        skipped: Vec::new(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    teacher: BertModel,
    tokenizer: TextTokenizer,
    data: Dataset,
    vocab: LabelVocab,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    testing::write_tiny_tokenizer(dir.path()).unwrap();
    let t = random_student(
        testing::tiny_config(&["neg", "pos"]),
        11,
        true,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    save_model(&t, &dir.path().join("teacher"), None).unwrap();
    let teacher = load_model(&dir.path().join("teacher"), &LoadOptions::default()).unwrap();
    let tokenizer = TextTokenizer::from_file(&dir.path().join("tokenizer.json"), 16).unwrap();
    let data = dataset(48);
    let vocab = LabelVocab::from_dataset(&data, LabelOrder::Sorted).unwrap();
    Fixture {
        _dir: dir,
        teacher,
        tokenizer,
        data,
        vocab,
    }
}

/// A 2-layer, 8-wide student (the teacher is 3 × 16) and its shared projection.
fn student(f: &Fixture) -> (BertModel, VarMap, Vec<Projection>) {
    common::student(&f.teacher.config)
}

use common::settings;

/// The models of a run with the live teacher of `f`.
fn live<'a>(
    f: &'a Fixture,
    s: &'a BertModel,
    vm: &'a VarMap,
    proj: &'a [Projection],
) -> Models<'a> {
    Models {
        teacher: Some(&f.teacher),
        student: s,
        projections: proj,
        projection_vars: Some(vm),
        teacher_cache: None,
    }
}

struct RunResult {
    params: Vec<(String, Vec<f32>)>,
    recorder: Recorder,
    outcome: Outcome,
}

fn flat(trainer_params: Vec<(String, Tensor)>) -> Vec<(String, Vec<f32>)> {
    trainer_params
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Runs `schedule` on a fresh student; with `ckpt`, checkpoints there, and resumes from the
/// newest checkpoint found there.
fn run(
    f: &Fixture,
    schedule: &Schedule,
    ckpt: Option<&Path>,
    stop_after: Option<usize>,
) -> distillery_stages::Result<RunResult> {
    let (s, vm, proj) = student(f);
    let dev = EvalSet::new(&f.data, &f.tokenizer, &f.vocab, 16, &Device::Cpu).unwrap();
    let dir = ckpt.map(|p| CheckpointDir::new(p, 2));
    let resume = match &dir {
        Some(d) => d.latest(&Device::Cpu)?,
        None => None,
    };
    let config = BatchConfig::shuffled(8, 99);
    let mut batcher = match &resume {
        Some(c) => Batcher::from_cursor(
            &f.data,
            &f.tokenizer,
            Some(&f.vocab),
            config,
            &c.state.cursor,
        )?,
        None => Batcher::new(&f.data, &f.tokenizer, Some(&f.vocab), config)?,
    };
    let models = live(f, &s, &vm, &proj);
    let mut trainer = Trainer::new(
        models,
        Some(&dev),
        TrainerConfig {
            seed: 7,
            checkpoints: dir,
            stop_after,
            ..Default::default()
        },
    )?;
    let mut recorder = Recorder::default();
    let outcome = trainer.run(
        schedule,
        &mut batcher,
        &mut [&mut recorder],
        resume.as_ref(),
    )?;
    Ok(RunResult {
        params: flat(trainer.params()),
        recorder,
        outcome,
    })
}

#[test]
fn three_stage_run_lowers_each_loss_and_is_deterministic() {
    let f = fixture();
    let schedule = expand(Preset::ThreeStage, &settings(60, 0)).unwrap();
    let a = run(&f, &schedule, None, None).unwrap();
    let steps: Vec<&StepReport> = a.recorder.steps().collect();
    assert_eq!(steps.len(), 60);
    assert_eq!(a.outcome.global_step, 60);
    // Stage I trains hidden + attention: both fall over its 20 steps.
    for term in ["hidden", "attention"] {
        let v: Vec<f64> = steps[..20]
            .iter()
            .map(|s| s.terms.iter().find(|(k, _)| k == term).unwrap().1)
            .collect();
        let (head, tail) = (v[..4].iter().sum::<f64>(), v[16..].iter().sum::<f64>());
        assert!(tail < 0.93 * head, "{term}: {v:?}");
    }
    // Stage III (KD + hard labels; the random teacher's soft labels are near uniform, so the
    // weighted sum is what must fall).
    let v: Vec<f64> = steps[40..].iter().map(|s| s.loss).collect();
    assert!(
        v[16..].iter().sum::<f64>() < v[..4].iter().sum::<f64>(),
        "{v:?}"
    );
    // Events arrive in order: started, stage I started, 20 steps, eval, stage end...
    let kinds: Vec<&str> = a
        .recorder
        .events
        .iter()
        .map(|e| match e {
            Event::Started { .. } => "start",
            Event::StageStarted { .. } => "stage",
            Event::Step(_) => "step",
            Event::Evaluated { .. } => "eval",
            Event::Checkpointed { .. } => "ckpt",
            Event::StageFinished { .. } => "end",
            Event::Finished { .. } => "finish",
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "eval").count(), 3);
    assert_eq!(kinds[..2], ["start", "stage"]);
    assert_eq!(kinds[22..25], ["eval", "end", "stage"]);
    // Same config, same seed: the same bits.
    let b = run(&f, &schedule, None, None).unwrap();
    assert_eq!(a.params, b.params);
}

#[test]
fn resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let f = fixture();
    let schedule = expand(Preset::TwoStage, &settings(24, 5)).unwrap();
    let full = run(&f, &schedule, None, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Interrupted at step 8 (mid stage I): the newest checkpoint is step 5.
    let part = run(&f, &schedule, Some(dir.path()), Some(8)).unwrap();
    assert!(part.outcome.interrupted);
    let steps: Vec<usize> = CheckpointDir::new(dir.path(), 2)
        .list()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, [5]);
    // Interrupted again at 15 (mid stage II, after the stage boundary at 12).
    run(&f, &schedule, Some(dir.path()), Some(15)).unwrap();
    let resumed = run(&f, &schedule, Some(dir.path()), None).unwrap();
    assert!(!resumed.outcome.interrupted);
    assert_eq!(resumed.outcome.global_step, 24);
    let first = resumed.recorder.steps().next().unwrap().global_step;
    assert_eq!(first, 13, "continues after the stage-end checkpoint at 12");
    assert_eq!(full.params, resumed.params);
    // Kept: the last two and the best on dev.
    let kept = CheckpointDir::new(dir.path(), 2).list().unwrap();
    assert!(kept.len() >= 2 && kept.len() <= 3, "{kept:?}");
    assert_eq!(kept.last().unwrap().0, 24);
    let best = resumed.outcome.best.unwrap().global_step;
    assert!(kept.iter().any(|(s, _)| *s == best), "{kept:?} best {best}");
}

/// Poisons a weight once a given checkpoint has been written.
struct Poison {
    var: candle_core::Var,
    at: usize,
}

impl Observer for Poison {
    fn on_event(&mut self, event: &Event) {
        if let Event::Checkpointed { global_step, .. } = event {
            if *global_step == self.at {
                let t = self.var.as_tensor();
                let nan = Tensor::full(f32::NAN, t.dims(), t.device()).unwrap();
                self.var.set(&nan).unwrap();
            }
        }
    }
}

#[test]
fn nan_stops_the_run_naming_stage_and_step_and_keeps_the_checkpoint() {
    let f = fixture();
    let schedule = expand(Preset::OneStage, &settings(12, 3)).unwrap();
    let (s, vm, proj) = student(&f);
    let var = s
        .varmap()
        .unwrap()
        .data()
        .lock()
        .unwrap()
        .get("encoder.layer.0.attention.self.query.weight")
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let mut batcher = Batcher::new(
        &f.data,
        &f.tokenizer,
        Some(&f.vocab),
        BatchConfig::shuffled(8, 1),
    )
    .unwrap();
    let mut trainer = Trainer::new(
        live(&f, &s, &vm, &proj),
        None,
        TrainerConfig {
            seed: 1,
            checkpoints: Some(CheckpointDir::new(dir.path(), 3)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut poison = Poison { var, at: 6 };
    let err = trainer
        .run(&schedule, &mut batcher, &mut [&mut poison], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stage 1 (\"I\") step 7"), "{err}");
    assert!(err.contains("NaN"), "{err}");
    assert!(err.contains("step-00000006"), "{err}");
    let ckpt = CheckpointDir::new(dir.path(), 3)
        .latest(&Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(ckpt.state.global_step, 6);
    let w = &ckpt.params["encoder.layer.0.attention.self.query.weight"];
    let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn frozen_groups_stay_put_and_optimizer_state_carries_only_when_asked() {
    let f = fixture();
    let mut schedule = expand(Preset::TwoStage, &settings(10, 0)).unwrap();
    schedule.stages[0].params.frozen = vec!["embeddings.".into()];
    let (s0, _, _) = student(&f);
    let before: Vec<f32> = s0.embeddings.word.flatten_all().unwrap().to_vec1().unwrap();
    // Stage I only: embeddings frozen.
    let dir = tempfile::tempdir().unwrap();
    run(&f, &schedule, Some(dir.path()), Some(5)).unwrap();
    let ck = CheckpointDir::new(dir.path(), 2)
        .latest(&Device::Cpu)
        .unwrap()
        .unwrap();
    let after: Vec<f32> = ck.params["embeddings.word_embeddings.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(before, after);
    let q: Vec<f32> = ck.params["encoder.layer.0.attention.self.query.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let q0: Vec<f32> = s0.layers[0]
        .query
        .weight
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(q, q0);
    let steps = |c: &Checkpoint, name: &str| {
        c.state
            .optimizer_steps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    };
    assert_eq!(steps(&ck, "embeddings.word_embeddings.weight"), None);
    assert_eq!(steps(&ck, "projection.hidden.weight"), Some(5));
    // Stage II fresh (default) vs carried: the moments' step counts tell.
    for (carry, want) in [(false, 5), (true, 10)] {
        let mut sch = schedule.clone();
        sch.stages[0].params.frozen.clear();
        sch.stages[1].carry_optimizer = carry;
        // Stage II (logit only) gives the projection no gradient: count on a student weight.
        let dir = tempfile::tempdir().unwrap();
        run(&f, &sch, Some(dir.path()), None).unwrap();
        let ck = CheckpointDir::new(dir.path(), 2)
            .latest(&Device::Cpu)
            .unwrap()
            .unwrap();
        assert_eq!(
            steps(&ck, "encoder.layer.1.output.dense.weight"),
            Some(want),
            "carry {carry}"
        );
    }
}

#[test]
fn resuming_under_another_schedule_is_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let a = expand(Preset::OneStage, &settings(6, 3)).unwrap();
    run(&f, &a, Some(dir.path()), Some(3)).unwrap();
    let b = expand(Preset::TwoStage, &settings(6, 3)).unwrap();
    let err = run(&f, &b, Some(dir.path()), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("stages"), "{err}");
}

#[test]
fn the_best_on_dev_always_has_a_checkpoint_even_between_checkpoint_steps() {
    let f = fixture();
    // Evaluate every 2 steps, checkpoint only at the stage end, keep 1: every new best is saved
    // and survives pruning.
    let mut s = settings(12, 0);
    s.eval_every = 2;
    let schedule = expand(Preset::OneStage, &s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (st, vm, proj) = student(&f);
    let dev = EvalSet::new(&f.data, &f.tokenizer, &f.vocab, 16, &Device::Cpu).unwrap();
    let mut batcher = Batcher::new(
        &f.data,
        &f.tokenizer,
        Some(&f.vocab),
        BatchConfig::shuffled(8, 99),
    )
    .unwrap();
    let mut trainer = Trainer::new(
        Models {
            teacher: Some(&f.teacher),
            student: &st,
            projections: &proj,
            projection_vars: Some(&vm),
            teacher_cache: None,
        },
        Some(&dev),
        TrainerConfig {
            seed: 7,
            checkpoints: Some(CheckpointDir::new(dir.path(), 1)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rec = Recorder::default();
    let out = trainer
        .run(&schedule, &mut batcher, &mut [&mut rec], None)
        .unwrap();
    let best = out.best.unwrap();
    let kept: Vec<usize> = CheckpointDir::new(dir.path(), 1)
        .list()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert!(
        kept.contains(&best.global_step),
        "best {best:?}, kept {kept:?}"
    );
    assert!(kept.contains(&12), "{kept:?}");
    assert!(kept.len() <= 2, "{kept:?}");
    // The kept best holds the dev metric it was chosen for.
    let ck = distillery_stages::checkpoint::load(
        &dir.path().join(format!("step-{:08}", best.global_step)),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ck.state.dev_metric, Some(best.metric));
}

/// Snapshots every trained variable at each step, for the largest change a step made.
struct Moves {
    vars: Vec<(String, candle_core::Var)>,
    last: Vec<Vec<f32>>,
    /// Per step: (stage index, step in stage, largest |Δθ| over every parameter).
    moves: Vec<(usize, usize, f64)>,
}

impl Moves {
    fn new(vms: &[&VarMap]) -> Self {
        let mut vars = Vec::new();
        for vm in vms {
            let data = vm.data().lock().unwrap();
            vars.extend(data.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
        let mut m = Self {
            vars,
            last: Vec::new(),
            moves: Vec::new(),
        };
        m.last = m.snapshot();
        m
    }

    fn snapshot(&self) -> Vec<Vec<f32>> {
        self.vars
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }
}

impl Observer for Moves {
    fn on_event(&mut self, event: &Event) {
        if let Event::Step(r) = event {
            let now = self.snapshot();
            let largest = now
                .iter()
                .zip(&self.last)
                .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())))
                .fold(0f64, f64::max);
            self.moves.push((r.stage_index, r.step, largest));
            self.last = now;
        }
    }
}

/// The objective is the weighted sum of the stage's terms, and every step applies the learning
/// rate the stage's schedule gives that step. With β1 = β2 = 0, no weight decay and no clipping,
/// AdamW's update is `lr · g / (|g| + ε)`: the largest parameter change of each step is the
/// step's learning rate, computed here from the schedules' definitions (linear warm-up to the
/// peak, then linear or cosine decay to `min_ratio · peak` at the stage's last step).
#[test]
fn the_objective_is_the_weighted_sum_and_each_step_moves_by_the_scheduled_lr() {
    let f = fixture();
    let sign_only = AdamW {
        beta1: 0.0,
        beta2: 0.0,
        eps: 1e-12,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
    };
    let mut schedule = expand(Preset::TwoStage, &settings(16, 0)).unwrap();
    let weights = [0.7, 1.9, 0.3, 2.5];
    for (stage, lr) in schedule.stages.iter_mut().zip([
        LrSchedule {
            peak: 1e-2,
            warmup_steps: 3,
            decay: Decay::Linear,
            min_ratio: 0.0,
        },
        LrSchedule {
            peak: 4e-3,
            warmup_steps: 0,
            decay: Decay::Cosine,
            min_ratio: 0.25,
        },
    ]) {
        stage.optimizer = sign_only;
        stage.lr = lr;
        for (i, term) in stage.losses.iter_mut().enumerate() {
            let w = weights[i];
            term.weight = w;
        }
    }
    let lengths: Vec<usize> = schedule.stages.iter().map(|s| s.steps).collect();
    assert!(lengths.iter().all(|&n| n > 4), "{lengths:?}");
    let expected_lr = |stage: usize, step: usize| -> f64 {
        let n = lengths[stage] as f64;
        let s = step as f64;
        match stage {
            0 if step < 3 => 1e-2 * (s + 1.0) / 3.0,
            0 => 1e-2 * (1.0 - (s - 3.0) / (n - 3.0 - 1.0)),
            _ => {
                let t = s / (n - 1.0);
                let floor = 0.25 * 4e-3;
                floor + (4e-3 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    };
    let (s, vm, proj) = student(&f);
    let mut moves = Moves::new(&[s.varmap().unwrap(), &vm]);
    let mut batcher = Batcher::new(
        &f.data,
        &f.tokenizer,
        Some(&f.vocab),
        BatchConfig::shuffled(8, 99),
    )
    .unwrap();
    let mut trainer = Trainer::new(
        live(&f, &s, &vm, &proj),
        None,
        TrainerConfig {
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rec = Recorder::default();
    trainer
        .run(&schedule, &mut batcher, &mut [&mut rec, &mut moves], None)
        .unwrap();
    let steps: Vec<&StepReport> = rec.steps().collect();
    assert_eq!(steps.len(), 16);
    for r in &steps {
        let stage = &schedule.stages[r.stage_index];
        assert_eq!(r.terms.len(), stage.losses.len());
        let sum: f64 = r.terms.iter().zip(&weights).map(|((_, v), w)| v * w).sum();
        assert!(
            (r.loss - sum).abs() <= 1e-5 * sum.abs(),
            "step {}: loss {} but Σ weight·term = {sum} ({:?})",
            r.global_step,
            r.loss,
            r.terms
        );
        let want = expected_lr(r.stage_index, r.step - 1);
        assert!(
            (r.lr - want).abs() <= 1e-12,
            "step {}: lr {} vs {want}",
            r.global_step,
            r.lr
        );
    }
    assert_eq!(moves.moves.len(), 16);
    for &(stage, step, moved) in &moves.moves {
        let want = expected_lr(stage, step - 1);
        assert!(
            (moved - want).abs() <= 1e-3 * want,
            "stage {stage} step {step}: largest change {moved:e}, scheduled lr {want:e}"
        );
    }
}

/// A dropout-free student (so that the masks cannot differ between batchings) and its
/// projection, otherwise as [`student`].
fn dropout_free_student(f: &Fixture) -> (BertModel, VarMap, Vec<Projection>) {
    let spec = distillery_models::StudentSpec {
        layers: 2,
        hidden: 8,
        heads: 4,
        intermediate: 16,
    };
    let mut cfg = spec.config(&f.teacher.config).unwrap();
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let s = random_student(cfg, 21, true, DType::F32, &Device::Cpu).unwrap();
    let vm = VarMap::new();
    let p = Projection::new(&vm, "projection.hidden", 8, 16, 3, &Device::Cpu).unwrap();
    (s, vm, vec![p])
}

/// Trains a dropout-free student with batches of `batch` examples, `micro` per step, running
/// `hook` on the gradients; returns the parameters and the step reports.
fn train_micro(
    f: &Fixture,
    schedule: &Schedule,
    batches: BatchConfig,
    micro: usize,
    hook: Option<Box<dyn GradientHook + '_>>,
) -> (Vec<(String, Vec<f32>)>, Vec<StepReport>) {
    let (s, vm, proj) = dropout_free_student(f);
    let mut batcher = Batcher::new(&f.data, &f.tokenizer, Some(&f.vocab), batches).unwrap();
    let mut trainer = Trainer::new(
        live(f, &s, &vm, &proj),
        None,
        TrainerConfig {
            seed: 7,
            micro_batches: micro,
            ..Default::default()
        },
    )
    .unwrap();
    if let Some(h) = hook {
        trainer = trainer.with_gradient_hook(h);
    }
    let mut rec = Recorder::default();
    trainer
        .run(schedule, &mut batcher, &mut [&mut rec], None)
        .unwrap();
    let steps = rec.steps().cloned().collect();
    (flat(trainer.params()), steps)
}

/// Every kind of mean: hidden MSE with embeddings and attention KL (tokens), score MSE (token
/// pairs), logit KD and hard labels (examples).
fn every_mean_schedule(steps: usize) -> Schedule {
    let mut s = expand(Preset::ThreeStage, &settings(steps, 0)).unwrap();
    for t in &mut s.stages[1].losses {
        if t.name() == "attention" {
            *t = terms::attention(
                AttentionLoss {
                    kind: AttentionKind::ScoreMse,
                },
                LayerMap::Uniform,
                t.weight,
            );
        }
    }
    s
}

/// Blocks of 8 two-word and 8 fourteen-word examples: in order, every batch of 16 is one short
/// and one long micro-batch of 8, whose token counts differ 4:16 and token pairs 16:256, so a
/// wrong weighting of the micro-batches cannot hide.
fn blocks(f: &mut Fixture) {
    let examples = (0..48)
        .map(|i| {
            let words = if (i / 8) % 2 == 0 { 2 } else { 14 };
            let text: Vec<&str> = (0..words)
                .map(|j| WORDS[(i * 3 + j) % WORDS.len()])
                .collect();
            Example {
                text: text.join(" "),
                pair: None,
                label: Some(if i % 3 == 0 { "pos" } else { "neg" }.into()),
                line: i + 1,
            }
        })
        .collect();
    f.data = Dataset {
        source: "blocks.tsv".into(),
        examples,
        skipped: Vec::new(),
    };
    f.vocab = LabelVocab::from_dataset(&f.data, LabelOrder::Sorted).unwrap();
}

/// Gradient accumulation: two micro-batches of 8 per step make the same update as one batch
/// of 16 (the same examples, each micro-batch padded to its own length), because each term is
/// weighted by the micro-batch's share of what the term averages over: tokens, token pairs or
/// examples. Weighting the micro-batches equally instead is off by 5e-3 or more here.
#[test]
fn micro_batches_make_the_update_of_one_large_batch() {
    let mut f = fixture();
    blocks(&mut f);
    let schedule = every_mean_schedule(15);
    let (one, one_steps) = train_micro(&f, &schedule, BatchConfig::in_order(16), 1, None);
    let (two, two_steps) = train_micro(&f, &schedule, BatchConfig::in_order(8), 2, None);
    assert_eq!(one_steps.len(), 15);
    assert_eq!(two_steps.len(), 15);
    // f32 sums in another order: ~1e-7 relative on most terms; the score MSE sums b·h·l² squares
    // (~1e-5). Later steps also carry the weights' rounding differences.
    for (a, b) in one_steps.iter().zip(&two_steps) {
        assert_eq!((a.examples, b.examples), (16, 16));
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(1e-2);
        assert!(
            close(a.loss, b.loss),
            "step {}: {} vs {}",
            a.global_step,
            a.loss,
            b.loss
        );
        for ((na, va), (nb, vb)) in a.terms.iter().zip(&b.terms) {
            assert_eq!(na, nb);
            assert!(close(*va, *vb), "step {} {na}: {va} vs {vb}", a.global_step);
        }
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-3 * a.grad_norm);
    }
    // Adam's normalised steps carry last-bit differences into the weights (as in the cache
    // tests' ragged case); measured 2.4e-4 after 15 steps on shuffled data.
    let diff = max_diff(&one, &two);
    assert!(diff < 5e-4, "micro-batched weights differ by {diff:e}");
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0f32, f32::max)
}

/// Records each step's gradient norms and zeroes the gradients of the word embeddings.
struct FreezeWords<'r> {
    seen: &'r std::cell::RefCell<Vec<StepInfo>>,
}

impl GradientHook for FreezeWords<'_> {
    fn on_gradients(
        &mut self,
        step: &StepInfo,
        grads: &mut Gradients,
    ) -> distillery_stages::Result<()> {
        self.seen.borrow_mut().push(*step);
        let names: Vec<&str> = grads.iter().map(|(n, _)| n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by name");
        for (name, g) in grads.iter_mut() {
            if name == "embeddings.word_embeddings.weight" {
                *g = None;
            }
        }
        Ok(())
    }
}

/// The hook runs once per optimiser step, after all micro-batches, and what it does to the
/// gradients is what the optimiser applies: the word embeddings it drops do not move.
#[test]
fn the_gradient_hook_sees_every_step_and_its_changes_are_applied() {
    let f = fixture();
    let schedule = expand(Preset::TwoStage, &settings(6, 0)).unwrap();
    let seen = std::cell::RefCell::new(Vec::new());
    let (after, steps) = train_micro(
        &f,
        &schedule,
        BatchConfig::shuffled(8, 99),
        3,
        Some(Box::new(FreezeWords { seen: &seen })),
    );
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 6);
    for (i, (info, report)) in seen.iter().zip(&steps).enumerate() {
        assert_eq!(info.global_step, i + 1);
        assert_eq!(info.micro_batches, 3);
        assert_eq!(
            (info.stage_index, info.step),
            (report.stage_index, report.step)
        );
        assert_eq!(report.examples, 24);
    }
    let (before, _, _) = dropout_free_student(&f);
    let initial = flat(
        before
            .varmap()
            .unwrap()
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect(),
    );
    let get = |ps: &[(String, Vec<f32>)], name: &str| {
        ps.iter().find(|(n, _)| n == name).unwrap().1.clone()
    };
    let words = "embeddings.word_embeddings.weight";
    assert_eq!(get(&after, words), get(&initial, words));
    let pos = "embeddings.position_embeddings.weight";
    assert_ne!(get(&after, pos), get(&initial, pos));
}
