//! The TOML schema: one serde struct per table, `deny_unknown_fields` everywhere, defaults in
//! each section's `Default` impl (`#[serde(default)]` on the container takes them from there,
//! so every default is written once).
//!
//! Keys whose *presence* matters (exclusive choices such as `steps` / `epochs`, keys that are
//! only allowed in some modes, required keys) are `Option`s: serde's own "missing field" error
//! carries no position, so required keys are checked by [`super::validate`], which names them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use distillery_data::{Format, MalformedPolicy};
use distillery_stages::terms::{self, Weighted};
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The whole config file. `source` and `base_dir` are not keys: they are set by
/// [`super::load`] / [`super::parse`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Everything random (splits, shuffling, initialisation, dropout) derives from it.
    pub seed: u64,
    pub device: DeviceSpec,
    pub data: DataSection,
    pub teacher: TeacherSection,
    pub student: StudentSection,
    pub losses: Losses,
    pub distill: DistillSection,
    /// Present: the teacher's outputs are computed once and read back (`[teacher_cache]`).
    pub teacher_cache: Option<TeacherCacheSection>,
    /// The file the config came from (a display name for embedded configs).
    #[serde(skip)]
    pub(crate) source: PathBuf,
    /// Relative paths in the file resolve against this folder (empty: the current directory).
    #[serde(skip)]
    pub(crate) base_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 17,
            device: DeviceSpec::Cpu,
            data: DataSection::default(),
            teacher: TeacherSection::default(),
            student: StudentSection::default(),
            losses: Losses::default(),
            distill: DistillSection::default(),
            teacher_cache: None,
            source: PathBuf::new(),
            base_dir: PathBuf::new(),
        }
    }
}

/// `device = "cpu" | "cuda" | "cuda:N"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// A CUDA device by ordinal (`"cuda"` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceSpec::parse(&s).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Str(&s), &"\"cpu\", \"cuda\" or \"cuda:N\"")
        })
    }
}

/// `[data]`: exactly one source — `path` (+ `split`), `train` + `dev` (+ `test`), or
/// `[data.synthetic]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    pub path: Option<PathBuf>,
    /// Train / dev / test fractions of `path` (default `[0.8, 0.1, 0.1]`).
    pub split: Option<Vec<f64>>,
    /// Seed of the split (default: the top-level `seed`).
    pub split_seed: Option<u64>,
    pub train: Option<PathBuf>,
    pub dev: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// `None`: from each file's extension.
    pub format: Option<Format>,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
    pub malformed: MalformedPolicy,
    /// Tokens per sequence, special tokens included.
    pub max_len: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub synthetic: Option<SyntheticSection>,
}

pub const DEFAULT_SPLIT: [f64; 3] = [0.8, 0.1, 0.1];

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: None,
            split: None,
            split_seed: None,
            train: None,
            dev: None,
            test: None,
            format: None,
            text: "text".into(),
            text_pair: None,
            label: "label".into(),
            malformed: MalformedPolicy::Error,
            max_len: 128,
            batch_size: 32,
            eval_batch_size: 64,
            synthetic: None,
        }
    }
}

/// `[data.synthetic]`: the fields of `distillery_data::SyntheticConfig`, each optional (unset:
/// the generator's defaults; see [`Config::synthetic_config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticSection {
    pub examples: Option<usize>,
    pub min_len: Option<usize>,
    pub max_len: Option<usize>,
    pub vocab_words: Option<usize>,
    /// Default: the top-level `seed`.
    pub seed: Option<u64>,
    /// `order` (default) or `first-repeated`.
    pub rule: Option<distillery_data::synthetic::Rule>,
}

/// `[teacher]`: exactly one of `path` or `[teacher.random]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSection {
    /// A Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`).
    pub path: Option<PathBuf>,
    pub random: Option<ArchSection>,
    pub finetune: Option<FinetuneSection>,
}

/// An encoder shape; every key is required (checked by validation, which names the key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchSection {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub intermediate: Option<usize>,
}

/// `[teacher.finetune]`: hard-label training of the teacher before distilling.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneSection {
    pub steps: Option<usize>,
    pub epochs: Option<f64>,
    /// Required.
    pub lr: Option<f64>,
    pub warmup: f64,
    pub decay: DecayName,
    pub weight_decay: f64,
    pub eval_every: usize,
}

impl Default for FinetuneSection {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            lr: None,
            warmup: 0.1,
            decay: DecayName::Linear,
            weight_decay: 0.01,
            eval_every: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentInit {
    /// Embeddings and the listed (0-based) teacher layers copied.
    TeacherLayers,
    /// A fresh encoder of the given shape.
    Random,
}

/// `[student]`: `init = "teacher-layers"` with `teacher_layers`, or `init = "random"` with the
/// four shape keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentSection {
    /// Required.
    pub init: Option<StudentInit>,
    /// 0-based teacher layers to copy (unlike the 1-based layer maps of the losses, where 0 is
    /// the embedding output).
    pub teacher_layers: Option<Vec<usize>>,
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub intermediate: Option<usize>,
}

/// `[losses.<name>]`: one table per loss term, each read by its term's own spec in
/// [`distillery_stages::terms`] once the whole file has parsed (see `config::parse_in`, which
/// keeps the spans so that errors still name the line). A schedule using a term that has no
/// table is an error, unless the term needs none (`hard_label`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Losses {
    pub terms: BTreeMap<String, Weighted>,
}

impl<'de> Deserialize<'de> for Losses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only the shape here: a table of tables. The terms are built from the spanned text.
        BTreeMap::<String, toml::Table>::deserialize(d)?;
        Ok(Self::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecayName {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleName {
    OneStage,
    TwoStage,
    ThreeStage,
    Custom,
}

impl ScheduleName {
    /// The preset it names; `None` for `custom`.
    pub fn preset(self) -> Option<distillery_stages::Preset> {
        use distillery_stages::Preset;
        match self {
            Self::OneStage => Some(Preset::OneStage),
            Self::TwoStage => Some(Preset::TwoStage),
            Self::ThreeStage => Some(Preset::ThreeStage),
            Self::Custom => None,
        }
    }
}

/// A loss name in a custom stage's `losses`: one of the registry's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LossName(pub String);

impl LossName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LossName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error arises inside the element's deserialization and keeps
        // the element's span (the key then ends in `losses[i]`).
        struct Name;
        impl de::Visitor<'_> for Name {
            type Value = LossName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "one of {}", terms::names().join(", "))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<LossName, E> {
                match terms::entry(s) {
                    Some(e) => Ok(LossName(e.name.to_string())),
                    None => Err(E::unknown_variant(s, terms::names())),
                }
            }
        }
        d.deserialize_str(Name)
    }
}

/// `[distill]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSection {
    pub schedule: ScheduleName,
    /// Presets: exactly one of `total_steps` / `total_epochs`.
    pub total_steps: Option<usize>,
    pub total_epochs: Option<f64>,
    /// Presets: one fraction per stage (default: even).
    pub split: Option<Vec<f64>>,
    pub lr: f64,
    /// Warm-up as a fraction of each stage's steps, in [0, 1).
    pub warmup: f64,
    pub decay: DecayName,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    /// Parameter-name prefixes that do not train.
    pub frozen: Vec<String>,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    /// Also keep the best checkpoint by `best_metric` (default true).
    pub keep_best: bool,
    /// What makes a checkpoint best: `accuracy` (default), `macro_f1` or `loss` (lower wins).
    pub best_metric: distillery_stages::BestMetric,
    /// Which weights become `student/`: the last step's (`last`, default) or the best
    /// checkpoint's (`best`; needs a dev split and `keep_best`).
    pub export: Export,
    /// Batches of `data.batch_size` accumulated per optimiser step (gradient accumulation): the
    /// update is that of one batch of `micro_batches × batch_size`.
    pub micro_batches: usize,
    /// Only (and required) with `schedule = "custom"`.
    pub stages: Option<Vec<StageSection>>,
}

impl Default for DistillSection {
    fn default() -> Self {
        Self {
            schedule: ScheduleName::OneStage,
            total_steps: None,
            total_epochs: None,
            split: None,
            lr: 1e-4,
            warmup: 0.1,
            decay: DecayName::Linear,
            min_lr_ratio: 0.0,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            frozen: Vec::new(),
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            keep_best: true,
            best_metric: distillery_stages::BestMetric::Accuracy,
            export: Export::Last,
            micro_batches: 1,
            stages: None,
        }
    }
}

/// Which weights a run exports as its student.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// The weights after the last step.
    #[default]
    Last,
    /// The best checkpoint's weights (by `best_metric`).
    Best,
}

/// `[[distill.stages]]`: `None` overrides fall back to `[distill]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageSection {
    /// Required, unique.
    pub name: Option<String>,
    /// Required, non-empty, no duplicates.
    pub losses: Option<Vec<LossName>>,
    pub steps: Option<usize>,
    pub epochs: Option<f64>,
    pub lr: Option<f64>,
    pub warmup: Option<f64>,
    pub decay: Option<DecayName>,
    pub frozen: Option<Vec<String>>,
    pub eval_every: Option<usize>,
    pub checkpoint_every: Option<usize>,
    pub carry_optimizer: bool,
}

/// How cached teacher outputs are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheDtype {
    /// Exact: training reads the bits the teacher computed.
    #[default]
    F32,
    F16,
    Bf16,
}

/// `[teacher_cache]`: compute exactly the teacher outputs the schedule's losses read once, store
/// them (safetensors shards + checksummed index) and read them memory-mapped while training.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherCacheSection {
    /// Default: `OUT/teacher-cache` (shared by the schedules of a `compare`).
    pub dir: Option<PathBuf>,
    pub dtype: CacheDtype,
    /// Refuse (before building) a cache larger than this many MiB.
    pub budget_mb: Option<u64>,
    /// Keep only the k largest teacher logits per example (large label spaces).
    pub top_k_logits: Option<usize>,
}
