//! From the config's sections to the library types: schedules (presets and custom), loss
//! settings, optimiser and LR schedules, data reading, and the checks that need the models'
//! shapes.

use std::path::PathBuf;

use distillery_data::{
    BatchConfig, ColumnSpec, ReadConfig, SplitFractions, SplitSpec, SyntheticConfig,
};
use distillery_models::{BertConfig, StudentSpec};
use distillery_stages::terms::{self, Weighted};
use distillery_stages::{
    expand, AdamW, Decay, LrSchedule, ParamGroups, Preset, PresetSettings, Schedule, Stage,
};

use super::error::{key_err, term_key_err, KeyError, KeyResult};
use super::schema::{
    ArchSection, Config, DecayName, DistillSection, FinetuneSection, StageSection, StudentInit,
    DEFAULT_SPLIT,
};

/// Which schedule to build: one of the presets (as `distillery compare` runs all three from one
/// config) or the config's `[[distill.stages]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleChoice {
    Preset(Preset),
    Custom,
}

impl ScheduleChoice {
    /// `one-stage`, `two-stage`, `three-stage` or `custom`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "custom" => Some(Self::Custom),
            _ => Preset::parse(s).map(Self::Preset),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Preset(p) => p.name(),
            Self::Custom => "custom",
        }
    }
}

/// Where the teacher comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeacherSource {
    /// A Hugging Face folder, resolved against the config's folder.
    Folder(PathBuf),
    /// A from-scratch teacher of this shape (seeded from `seed`).
    Random(StudentSpec),
}

/// How the student is initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StudentSource {
    /// Embeddings and these 0-based teacher layers copied.
    TeacherLayers(Vec<usize>),
    /// A fresh encoder of this shape (vocabulary etc. from the teacher).
    Random(StudentSpec),
}

impl From<DecayName> for Decay {
    fn from(d: DecayName) -> Self {
        match d {
            DecayName::Constant => Decay::Constant,
            DecayName::Linear => Decay::Linear,
            DecayName::Cosine => Decay::Cosine,
        }
    }
}

impl DistillSection {
    pub fn adamw(&self) -> AdamW {
        AdamW {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
        }
    }

    /// The LR schedule of a stage of `steps` steps with this section's peak, warm-up fraction
    /// and decay.
    pub fn lr_schedule(&self, steps: usize) -> LrSchedule {
        lr_schedule(self.lr, self.warmup, self.decay, self.min_lr_ratio, steps)
    }
}

/// Warm-up is a fraction of the stage, rounded up (as the presets do), never past its end.
fn lr_schedule(
    peak: f64,
    warmup: f64,
    decay: DecayName,
    min_ratio: f64,
    steps: usize,
) -> LrSchedule {
    LrSchedule {
        peak,
        warmup_steps: ((warmup * steps as f64).ceil() as usize).min(steps),
        decay: decay.into(),
        min_ratio,
    }
}

/// `ceil(epochs · batches_per_epoch)`; an error (naming `key`) when there are no batches.
fn epochs_to_steps(key: &str, epochs: f64, batches_per_epoch: usize) -> KeyResult<usize> {
    if batches_per_epoch == 0 {
        return Err(key_err(
            key,
            "counts epochs, but the training data gives no batch per epoch",
        ));
    }
    let steps = (epochs * batches_per_epoch as f64).ceil();
    if !(steps.is_finite() && steps >= 1.0 && steps <= usize::MAX as f64) {
        return Err(key_err(
            key,
            format!("{epochs} epochs of {batches_per_epoch} batches is not a usable step count"),
        ));
    }
    Ok(steps as usize)
}

fn steps_of(
    table: &str,
    (steps_name, steps): (&str, Option<usize>),
    (epochs_name, epochs): (&str, Option<f64>),
    batches_per_epoch: usize,
) -> KeyResult<usize> {
    match (steps, epochs) {
        (Some(s), None) => Ok(s),
        (None, Some(e)) => epochs_to_steps(&format!("{table}.{epochs_name}"), e, batches_per_epoch),
        _ => Err(key_err(
            table,
            format!("give exactly one of `{steps_name}` or `{epochs_name}`"),
        )),
    }
}

fn stage_error(key: &str) -> impl Fn(distillery_stages::StageError) -> KeyError + '_ {
    move |e| key_err(key, e)
}

impl Config {
    /// The schedule the config names.
    pub fn schedule_choice(&self) -> ScheduleChoice {
        self.distill
            .schedule
            .preset()
            .map_or(ScheduleChoice::Custom, ScheduleChoice::Preset)
    }

    /// The distillation schedule `which`, with epoch counts turned into steps as
    /// `ceil(epochs · steps per epoch)`, a step drawing `micro_batches` of the epoch's
    /// `batches_per_epoch` batches.
    pub fn schedule(
        &self,
        which: ScheduleChoice,
        batches_per_epoch: usize,
    ) -> anyhow::Result<Schedule> {
        let batches_per_epoch = batches_per_epoch.div_ceil(self.distill.micro_batches.max(1));
        let built = match which {
            ScheduleChoice::Preset(p) => self.preset_schedule(p, batches_per_epoch),
            ScheduleChoice::Custom => self.custom_schedule(batches_per_epoch),
        };
        built.map_err(|e| e.in_file(&self.source))
    }

    fn preset_schedule(&self, preset: Preset, batches_per_epoch: usize) -> KeyResult<Schedule> {
        let d = &self.distill;
        self.check_preset_losses(preset)?;
        let term =
            |name: &str| {
                self.losses.terms.get(name).cloned().ok_or_else(|| {
                    key_err("losses", "the presets need hidden, attention and logit")
                })
            };
        let (hidden, attention, logit) = (
            term(terms::HIDDEN)?,
            term(terms::ATTENTION)?,
            term(terms::LOGIT)?,
        );
        let total_steps = match (d.total_steps, d.total_epochs) {
            (Some(s), None) => s,
            (None, Some(e)) => epochs_to_steps("distill.total_epochs", e, batches_per_epoch)?,
            _ => {
                return Err(key_err(
                    "distill",
                    format!(
                        "the {} schedule needs exactly one of `total_steps` or `total_epochs`",
                        preset.name()
                    ),
                ))
            }
        };
        if let Some(split) = &d.split {
            if split.len() != preset.stages() {
                return Err(key_err(
                    "distill.split",
                    format!(
                        "has {} fractions but the {} schedule has {} stages",
                        split.len(),
                        preset.name(),
                        preset.stages()
                    ),
                ));
            }
        }
        let settings = PresetSettings {
            hard_label: logit.term.companions().into_iter().next(),
            hidden,
            attention,
            logit,
            total_steps,
            split: d.split.clone(),
            optimizer: d.adamw(),
            lr: d.lr_schedule(0),
            warmup_ratio: Some(d.warmup),
            params: ParamGroups {
                frozen: d.frozen.clone(),
            },
            eval_every: d.eval_every,
            checkpoint_every: d.checkpoint_every,
        };
        let key = if d.total_steps.is_some() {
            "distill.total_steps"
        } else {
            "distill.total_epochs"
        };
        expand(preset, &settings).map_err(stage_error(key))
    }

    fn custom_schedule(&self, batches_per_epoch: usize) -> KeyResult<Schedule> {
        let d = &self.distill;
        let stages = match &d.stages {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err(key_err(
                    "distill.stages",
                    "the custom schedule needs [[distill.stages]] tables",
                ))
            }
        };
        let stages = stages
            .iter()
            .enumerate()
            .map(|(i, s)| self.custom_stage(i, s, batches_per_epoch))
            .collect::<KeyResult<Vec<_>>>()?;
        let schedule = Schedule { stages };
        schedule.validate().map_err(stage_error("distill.stages"))?;
        Ok(schedule)
    }

    fn custom_stage(
        &self,
        i: usize,
        s: &StageSection,
        batches_per_epoch: usize,
    ) -> KeyResult<Stage> {
        let d = &self.distill;
        let table = format!("distill.stages[{i}]");
        let name = s
            .name
            .clone()
            .ok_or_else(|| key_err(format!("{table}.name"), "is required"))?;
        let steps = steps_of(
            &table,
            ("steps", s.steps),
            ("epochs", s.epochs),
            batches_per_epoch,
        )?;
        let names = s.losses.as_deref().unwrap_or_default();
        let mut losses = Vec::with_capacity(names.len() + 1);
        for l in names {
            let term = self.listed_term(l.as_str()).ok_or_else(|| {
                key_err(
                    format!("{table}.losses"),
                    format!(
                        "stage {name:?} uses the {l} loss, but there is no [losses.{l}] table",
                        l = l.as_str()
                    ),
                )
            })?;
            losses.push(term);
        }
        // As in the presets, a listed term's companions (the logit term's hard-label CE when
        // `hard_label_weight` > 0) join the stage — unless the stage lists them itself.
        let companions: Vec<_> = losses.iter().flat_map(|t| t.term.companions()).collect();
        for c in companions {
            if !losses.iter().any(|t| t.name() == c.name()) {
                losses.push(c);
            }
        }
        Ok(Stage {
            name,
            losses,
            steps,
            optimizer: d.adamw(),
            lr: lr_schedule(
                s.lr.unwrap_or(d.lr),
                s.warmup.unwrap_or(d.warmup),
                s.decay.unwrap_or(d.decay),
                d.min_lr_ratio,
                steps,
            ),
            params: ParamGroups {
                frozen: s.frozen.clone().unwrap_or_else(|| d.frozen.clone()),
            },
            carry_optimizer: s.carry_optimizer,
            eval_every: s.eval_every.unwrap_or(d.eval_every),
            checkpoint_every: s.checkpoint_every.unwrap_or(d.checkpoint_every),
        })
    }

    /// The teacher fine-tuning of `[teacher.finetune]` as a one-stage schedule (stage
    /// `finetune`) of hard-label CE only; `None` without that table.
    pub fn finetune_schedule(&self, batches_per_epoch: usize) -> anyhow::Result<Option<Schedule>> {
        let Some(f) = &self.teacher.finetune else {
            return Ok(None);
        };
        finetune(f, batches_per_epoch)
            .map(Some)
            .map_err(|e| e.in_file(&self.source))
    }

    /// Where the teacher comes from (the folder resolved against the config's folder).
    pub fn teacher_source(&self) -> anyhow::Result<TeacherSource> {
        let t = &self.teacher;
        let source = match (&t.path, &t.random) {
            (Some(p), None) => Ok(TeacherSource::Folder(self.resolve(p))),
            (None, Some(r)) => arch_spec("teacher.random", r).map(TeacherSource::Random),
            _ => Err(key_err(
                "teacher",
                "give exactly one of `path` or a [teacher.random] table",
            )),
        };
        source.map_err(|e| e.in_file(&self.source))
    }

    pub fn student_source(&self) -> anyhow::Result<StudentSource> {
        let s = &self.student;
        let source = match s.init {
            Some(StudentInit::TeacherLayers) => s
                .teacher_layers
                .clone()
                .map(StudentSource::TeacherLayers)
                .ok_or_else(|| key_err("student.teacher_layers", "is required")),
            Some(StudentInit::Random) => arch_spec(
                "student",
                &ArchSection {
                    layers: s.layers,
                    hidden: s.hidden,
                    heads: s.heads,
                    intermediate: s.intermediate,
                },
            )
            .map(StudentSource::Random),
            None => Err(key_err("student.init", "is required")),
        };
        source.map_err(|e| e.in_file(&self.source))
    }

    /// How to read the data files: columns, format, malformed rows.
    pub fn read_config(&self) -> ReadConfig {
        let d = &self.data;
        let mut columns = ColumnSpec::labelled(d.text.clone(), d.label.clone());
        columns.text_pair = d.text_pair.clone();
        ReadConfig {
            format: d.format,
            columns,
            malformed: d.malformed,
        }
    }

    /// The data files as `load_splits` takes them, paths resolved against the config's folder;
    /// `None` for `[data.synthetic]`.
    pub fn split_spec(&self) -> Option<SplitSpec> {
        let d = &self.data;
        if let Some(path) = &d.path {
            let f = d.split.as_deref().unwrap_or(&DEFAULT_SPLIT);
            let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
            return Some(SplitSpec::Fractions {
                path: self.resolve(path),
                fractions: SplitFractions::new(at(0), at(1), at(2)),
                seed: d.split_seed.unwrap_or(self.seed),
            });
        }
        d.train.as_ref().map(|train| SplitSpec::Files {
            train: self.resolve(train),
            dev: d.dev.as_ref().map(|p| self.resolve(p)),
            test: d.test.as_ref().map(|p| self.resolve(p)),
        })
    }

    /// The synthetic task of `[data.synthetic]`, unset keys at the generator's defaults and
    /// the seed at the top-level `seed`; `None` for file data.
    pub fn synthetic_config(&self) -> Option<SyntheticConfig> {
        let s = self.data.synthetic.as_ref()?;
        let d = SyntheticConfig::default();
        Some(SyntheticConfig {
            examples: s.examples.unwrap_or(d.examples),
            min_len: s.min_len.unwrap_or(d.min_len),
            max_len: s.max_len.unwrap_or(d.max_len),
            vocab_words: s.vocab_words.unwrap_or(d.vocab_words),
            seed: s.seed.unwrap_or(self.seed),
            rule: s.rule.unwrap_or(d.rule),
        })
    }

    /// Training batches, shuffled with the top-level `seed`.
    pub fn train_batches(&self) -> BatchConfig {
        BatchConfig::shuffled(self.data.batch_size, self.seed)
    }

    /// Evaluation batches, in file order.
    #[allow(dead_code)] // API; the evaluation code builds its own
    pub fn eval_batches(&self) -> BatchConfig {
        BatchConfig::in_order(self.data.eval_batch_size)
    }

    /// [`Config::check_models_for`] the configured schedule.
    #[allow(dead_code)] // API; `distill` checks every compared schedule with `check_models_for`
    pub fn check_models(
        &self,
        teacher: &BertConfig,
        student: &BertConfig,
        tokenizer_vocab: usize,
    ) -> anyhow::Result<()> {
        self.check_models_for(&[self.schedule_choice()], teacher, student, tokenizer_vocab)
    }

    /// What can only be checked once the models' shapes are known: vocabularies, the copied
    /// teacher layers, and — for the losses the `choices` use — layer maps, widths and heads.
    pub fn check_models_for(
        &self,
        choices: &[ScheduleChoice],
        teacher: &BertConfig,
        student: &BertConfig,
        tokenizer_vocab: usize,
    ) -> anyhow::Result<()> {
        self.check_shapes(choices, teacher, student, tokenizer_vocab)
            .map_err(|e| e.in_file(&self.source))
    }

    fn check_shapes(
        &self,
        choices: &[ScheduleChoice],
        teacher: &BertConfig,
        student: &BertConfig,
        tokenizer_vocab: usize,
    ) -> KeyResult<()> {
        let (t, s) = (teacher, student);
        if let (Some(StudentInit::TeacherLayers), Some(layers)) =
            (self.student.init, &self.student.teacher_layers)
        {
            if let Some((j, bad)) = layers
                .iter()
                .enumerate()
                .find(|(_, &l)| l >= t.num_hidden_layers)
            {
                return Err(key_err(
                    "student.teacher_layers",
                    format!(
                        "entry {j} is layer {bad}, but the teacher has {} layers (0-based here: \
                         0 is the first encoder layer)",
                        t.num_hidden_layers
                    ),
                ));
            }
        }
        if tokenizer_vocab > t.vocab_size {
            return Err(key_err(
                "teacher",
                format!(
                    "the tokenizer has {tokenizer_vocab} tokens but the teacher embeds only {}",
                    t.vocab_size
                ),
            ));
        }
        if s.vocab_size != t.vocab_size {
            return Err(key_err(
                "student",
                format!(
                    "vocabulary mismatch: the student embeds {} tokens and the teacher {}; both must \
                     use the teacher's tokenizer",
                    s.vocab_size, t.vocab_size
                ),
            ));
        }
        for (name, term) in self.used_terms(choices) {
            term.term
                .check(&s.shape(), &t.shape())
                .map_err(|e| match e {
                    terms::TermError::Key { key, message } => term_key_err(&name, &key, message),
                    terms::TermError::Toml(e) => term_key_err(&name, "", e.message()),
                })?;
        }
        Ok(())
    }

    /// The configured terms that the schedules `choices` use, by name (each once).
    fn used_terms(&self, choices: &[ScheduleChoice]) -> Vec<(String, Weighted)> {
        let mut names: Vec<&str> = Vec::new();
        for c in choices {
            match c {
                ScheduleChoice::Preset(p) => names.extend(p.uses().iter().map(|(n, _)| *n)),
                ScheduleChoice::Custom => names.extend(
                    self.distill
                        .stages
                        .iter()
                        .flatten()
                        .flat_map(|s| s.losses.iter().flatten())
                        .map(|l| l.as_str()),
                ),
            }
        }
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| Some((n.to_string(), self.losses.terms.get(n)?.clone())))
            .collect()
    }
}

fn arch_spec(prefix: &str, a: &ArchSection) -> KeyResult<StudentSpec> {
    super::validate::check_arch(prefix, a)?;
    let get = |name: &str, v: Option<usize>| {
        v.ok_or_else(|| key_err(format!("{prefix}.{name}"), "is required"))
    };
    Ok(StudentSpec {
        layers: get("layers", a.layers)?,
        hidden: get("hidden", a.hidden)?, // tidy: not a loss name (the width key)
        heads: get("heads", a.heads)?,
        intermediate: get("intermediate", a.intermediate)?,
    })
}

fn finetune(f: &FinetuneSection, batches_per_epoch: usize) -> KeyResult<Schedule> {
    let steps = steps_of(
        "teacher.finetune",
        ("steps", f.steps),
        ("epochs", f.epochs),
        batches_per_epoch,
    )?;
    let lr =
        f.lr.ok_or_else(|| key_err("teacher.finetune.lr", "is required"))?;
    let schedule = Schedule {
        stages: vec![Stage {
            name: "finetune".into(),
            losses: vec![terms::hard_label(1.0)],
            steps,
            optimizer: AdamW {
                weight_decay: f.weight_decay,
                ..AdamW::default()
            },
            lr: lr_schedule(lr, f.warmup, f.decay, 0.0, steps),
            params: ParamGroups::default(),
            carry_optimizer: false,
            eval_every: f.eval_every,
            checkpoint_every: 0,
        }],
    };
    schedule
        .validate()
        .map_err(stage_error("teacher.finetune"))?;
    Ok(schedule)
}
