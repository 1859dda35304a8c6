//! Everything checkable before any model is loaded. The first problem found is returned, as a
//! [`KeyError`] naming the dotted key (`distill.stages[2].losses`; stage indices are 0-based,
//! as in the TOML array).

use std::collections::HashSet;
use std::path::Path;

use distillery_data::Format;
use distillery_stages::terms::{self, Weighted};

use super::error::{key_err, KeyResult};
use super::schema::{
    ArchSection, Config, DataSection, DistillSection, FinetuneSection, StageSection, StudentInit,
    StudentSection, TeacherSection,
};

impl Config {
    pub(crate) fn check(&self) -> KeyResult<()> {
        self.check_data(&self.data)?;
        self.check_teacher(&self.teacher)?;
        check_student(&self.student)?;
        if let Some(c) = &self.teacher_cache {
            if c.budget_mb == Some(0) {
                return Err(key_err(
                    "teacher_cache.budget_mb",
                    "must be positive, got 0",
                ));
            }
            if c.top_k_logits == Some(0) {
                return Err(key_err(
                    "teacher_cache.top_k_logits",
                    "must be positive, got 0",
                ));
            }
            let all_logits = self
                .losses
                .terms
                .iter()
                .find(|(_, t)| t.term.needs_all_logits());
            if let (Some(_), Some((name, _))) = (c.top_k_logits, all_logits) {
                return Err(key_err(
                    "teacher_cache.top_k_logits",
                    format!("cannot be used with the [losses.{name}] term, which reads every logit (with kind = \"mse\", the dropped logits would pull the student's towards the fill value); use kl, reverse-kl or jsd, or cache every logit"),
                ));
            }
        }
        self.check_distill(&self.distill)
    }

    fn check_data(&self, d: &DataSection) -> KeyResult<()> {
        let files = d.train.is_some() || d.dev.is_some() || d.test.is_some();
        let sources: Vec<&str> = [
            (d.path.is_some(), "`path`"),
            (files, "`train`/`dev`/`test`"),
            (d.synthetic.is_some(), "[data.synthetic]"),
        ]
        .into_iter()
        .filter_map(|(given, name)| given.then_some(name))
        .collect();
        if sources.len() != 1 {
            return Err(key_err(
                "data",
                format!(
                    "give exactly one source: `path` (+ `split`), `train` + `dev` (+ `test`), or a \
                     [data.synthetic] table; found {}",
                    if sources.is_empty() {
                        "none".to_string()
                    } else {
                        sources.join(" and ")
                    }
                ),
            ));
        }
        // `split` cuts one dataset: a file (`data.path`) or the synthetic task.
        if d.path.is_none() && d.synthetic.is_none() {
            if d.split.is_some() {
                return Err(key_err(
                    "data.split",
                    "only applies to `data.path` or [data.synthetic]",
                ));
            }
            if d.split_seed.is_some() {
                return Err(key_err(
                    "data.split_seed",
                    "only applies to `data.path` or [data.synthetic]",
                ));
            }
        }
        if files {
            if d.train.is_none() {
                return Err(key_err(
                    "data.train",
                    "is required with `data.dev`/`data.test`",
                ));
            }
            if d.dev.is_none() {
                return Err(key_err("data.dev", "is required with `data.train`"));
            }
        }
        if let Some(split) = &d.split {
            check_data_split(split)?;
        }
        for (key, path) in [
            ("data.path", &d.path),
            ("data.train", &d.train),
            ("data.dev", &d.dev),
            ("data.test", &d.test),
        ] {
            if let Some(p) = path {
                self.check_file(key, p)?;
                if d.format.is_none() && Format::from_extension(p).is_none() {
                    return Err(key_err(
                        key,
                        format!(
                            "{} has no .tsv, .csv or .jsonl extension; set `data.format`",
                            p.display()
                        ),
                    ));
                }
            }
        }
        for (key, column) in [
            ("data.text", Some(&d.text)),
            ("data.text_pair", d.text_pair.as_ref()),
            ("data.label", Some(&d.label)),
        ] {
            if column.is_some_and(|c| c.trim().is_empty()) {
                return Err(key_err(key, "must name a column, got an empty string"));
            }
        }
        if d.max_len < 2 {
            return Err(key_err(
                "data.max_len",
                format!(
                    "must be at least 2 (the special tokens count), got {}",
                    d.max_len
                ),
            ));
        }
        at_least_one("data.batch_size", d.batch_size)?;
        at_least_one("data.eval_batch_size", d.eval_batch_size)?;
        if let Some(s) = self.synthetic_config() {
            s.validate().map_err(synthetic_error)?;
        }
        Ok(())
    }

    fn check_file(&self, key: &str, p: &Path) -> KeyResult<()> {
        let path = self.resolve(p);
        if path.is_file() {
            Ok(())
        } else if path.exists() {
            Err(key_err(key, format!("{} is not a file", path.display())))
        } else {
            Err(key_err(key, format!("no such file: {}", path.display())))
        }
    }

    fn check_teacher(&self, t: &TeacherSection) -> KeyResult<()> {
        match (&t.path, &t.random) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(key_err(
                    "teacher",
                    "give exactly one of `path` (a Hugging Face model folder) or a [teacher.random] table",
                ))
            }
            (Some(p), None) => {
                let path = self.resolve(p);
                if !path.is_dir() {
                    return Err(key_err(
                        "teacher.path",
                        if path.exists() {
                            format!("{} is not a folder", path.display())
                        } else {
                            format!("no such folder: {}", path.display())
                        },
                    ));
                }
            }
            (None, Some(r)) => check_arch("teacher.random", r)?,
        }
        if let Some(f) = &t.finetune {
            check_finetune(f)?;
        }
        Ok(())
    }

    fn check_distill(&self, d: &DistillSection) -> KeyResult<()> {
        positive("distill.lr", d.lr)?;
        warmup("distill.warmup", d.warmup)?;
        in_unit("distill.min_lr_ratio", d.min_lr_ratio)?;
        non_negative("distill.weight_decay", d.weight_decay)?;
        below_one("distill.beta1", d.beta1)?;
        below_one("distill.beta2", d.beta2)?;
        positive("distill.eps", d.eps)?;
        non_negative("distill.max_grad_norm", d.max_grad_norm)?;
        frozen("distill.frozen", &d.frozen)?;
        at_least_one("distill.keep_checkpoints", d.keep_checkpoints)?;
        at_least_one("distill.micro_batches", d.micro_batches)?;
        if d.export == super::schema::Export::Best && !d.keep_best {
            return Err(key_err(
                "distill.export",
                "= \"best\" needs keep_best = true (the best checkpoint must be kept to be exported)",
            ));
        }
        steps_xor_epochs(
            "distill",
            ("total_steps", d.total_steps),
            ("total_epochs", d.total_epochs),
            false,
        )?;
        match d.schedule.preset() {
            None => {
                let Some(stages) = &d.stages else {
                    return Err(key_err(
                        "distill.stages",
                        "schedule = \"custom\" needs [[distill.stages]] tables",
                    ));
                };
                if stages.is_empty() {
                    return Err(key_err("distill.stages", "is empty"));
                }
                let mut names = HashSet::new();
                for (i, s) in stages.iter().enumerate() {
                    self.check_stage(i, s)?;
                    if let Some(name) = &s.name {
                        if !names.insert(name.as_str()) {
                            return Err(key_err(
                                format!("distill.stages[{i}].name"),
                                format!("{name:?} is already the name of an earlier stage"),
                            ));
                        }
                    }
                }
            }
            Some(preset) => {
                let name = preset.name();
                if d.stages.is_some() {
                    return Err(key_err(
                        "distill.stages",
                        format!("only applies to schedule = \"custom\" (the schedule is {name:?})"),
                    ));
                }
                if d.total_steps.is_none() && d.total_epochs.is_none() {
                    return Err(key_err(
                        "distill",
                        format!("the {name} schedule needs `total_steps` or `total_epochs`"),
                    ));
                }
                if let Some(split) = &d.split {
                    check_preset_split(split, preset)?;
                }
                self.check_preset_losses(preset)?;
            }
        }
        Ok(())
    }

    fn check_stage(&self, i: usize, s: &StageSection) -> KeyResult<()> {
        let key = |field: &str| format!("distill.stages[{i}].{field}");
        match &s.name {
            None => return Err(key_err(key("name"), "is required")),
            Some(n) if n.trim().is_empty() => return Err(key_err(key("name"), "is empty")),
            Some(_) => {}
        }
        let Some(losses) = &s.losses else {
            return Err(key_err(
                key("losses"),
                format!(
                    "is required (names among {})",
                    distillery_stages::terms::names().join(", ")
                ),
            ));
        };
        if losses.is_empty() {
            return Err(key_err(key("losses"), "is empty"));
        }
        let mut seen = HashSet::new();
        for l in losses {
            if !seen.insert(l) {
                return Err(key_err(
                    key("losses"),
                    format!("{:?} is listed twice", l.as_str()),
                ));
            }
            if !self.loss_defined(l.as_str()) {
                return Err(key_err(
                    key("losses"),
                    format!(
                        "stage {:?} uses the {} loss, but there is no [losses.{}] table",
                        s.name.as_deref().unwrap_or_default(),
                        l.as_str(),
                        l.as_str()
                    ),
                ));
            }
        }
        steps_xor_epochs(
            &format!("distill.stages[{i}]"),
            ("steps", s.steps),
            ("epochs", s.epochs),
            true,
        )?;
        if let Some(lr) = s.lr {
            positive(&key("lr"), lr)?;
        }
        if let Some(w) = s.warmup {
            warmup(&key("warmup"), w)?;
        }
        if let Some(f) = &s.frozen {
            frozen(&key("frozen"), f)?;
        }
        if i == 0 && s.carry_optimizer {
            return Err(key_err(
                key("carry_optimizer"),
                "the first stage has no earlier stage to carry the optimiser from",
            ));
        }
        Ok(())
    }

    /// The term a stage listing `name` gets: its `[losses.<name>]` table's; else the companion
    /// a configured term brings (`hard_label` takes `[losses.logit] hard_label_weight`); else
    /// its defaults when it needs no table; else `None`.
    pub(crate) fn listed_term(&self, name: &str) -> Option<Weighted> {
        if let Some(t) = self.losses.terms.get(name) {
            return Some(t.clone());
        }
        let companion = self
            .losses
            .terms
            .values()
            .flat_map(|t| t.term.companions())
            .find(|c| c.name() == name);
        companion.or_else(|| terms::build(name, None).ok())
    }

    /// Whether a stage can use loss `name`: its `[losses.<name>]` table is there, or it
    /// needs none (hard-label CE), or another configured term brings it along.
    pub(crate) fn loss_defined(&self, name: &str) -> bool {
        self.listed_term(name).is_some()
    }

    /// The presets use hidden, attention and logit; name the first stage that needs a missing
    /// table.
    pub(crate) fn check_preset_losses(&self, preset: distillery_stages::Preset) -> KeyResult<()> {
        for (l, stage) in preset.uses() {
            if !self.losses.terms.contains_key(l) {
                return Err(key_err(
                    format!("losses.{l}"),
                    format!(
                        "stage {stage} of the {} schedule uses the {l} loss; add a [losses.{l}] table",
                        preset.name(),
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The generator's own check names the field in backticks first (`` `max_len` must be … ``);
/// that field becomes the key.
fn synthetic_error(e: distillery_data::DataError) -> super::error::KeyError {
    let message = match e {
        distillery_data::DataError::Config { message, .. } => message,
        other => other.to_string(),
    };
    let field = message
        .strip_prefix('`')
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, rest)| (field.to_string(), rest.trim_start().to_string()));
    match field {
        Some((field, rest)) => key_err(format!("data.synthetic.{field}"), rest),
        None => key_err("data.synthetic", message),
    }
}

fn check_data_split(split: &[f64]) -> KeyResult<()> {
    let key = "data.split";
    let [train, dev, test] = split else {
        return Err(key_err(
            key,
            format!("needs 3 fractions (train, dev, test), got {}", split.len()),
        ));
    };
    if split
        .iter()
        .any(|f| !(f.is_finite() && (0.0..=1.0).contains(f)))
    {
        return Err(key_err(
            key,
            format!("fractions must be in [0, 1], got {split:?}"),
        ));
    }
    if *train <= 0.0 {
        return Err(key_err(key, "the train fraction must be positive"));
    }
    let sum = train + dev + test;
    if (sum - 1.0).abs() > 1e-6 {
        return Err(key_err(key, format!("fractions must sum to 1, got {sum}")));
    }
    Ok(())
}

fn check_preset_split(split: &[f64], preset: distillery_stages::Preset) -> KeyResult<()> {
    let key = "distill.split";
    if split.len() != preset.stages() {
        return Err(key_err(
            key,
            format!(
                "has {} fractions but the {} schedule has {} stages",
                split.len(),
                preset.name(),
                preset.stages()
            ),
        ));
    }
    if split.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
        return Err(key_err(
            key,
            format!("fractions must be positive, got {split:?}"),
        ));
    }
    let sum: f64 = split.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(key_err(key, format!("fractions must sum to 1, got {sum}")));
    }
    Ok(())
}

fn check_finetune(f: &FinetuneSection) -> KeyResult<()> {
    steps_xor_epochs(
        "teacher.finetune",
        ("steps", f.steps),
        ("epochs", f.epochs),
        true,
    )?;
    match f.lr {
        None => return Err(key_err("teacher.finetune.lr", "is required")),
        Some(lr) => positive("teacher.finetune.lr", lr)?,
    }
    warmup("teacher.finetune.warmup", f.warmup)?;
    non_negative("teacher.finetune.weight_decay", f.weight_decay)
}

fn check_student(s: &StudentSection) -> KeyResult<()> {
    let shape = [
        ("layers", s.layers),
        ("hidden", s.hidden), // tidy: not a loss name (the [student] width key)
        ("heads", s.heads),
        ("intermediate", s.intermediate),
    ];
    match s.init {
        None => Err(key_err(
            "student.init",
            "is required: \"teacher-layers\" or \"random\"",
        )),
        Some(StudentInit::TeacherLayers) => {
            if let Some((name, _)) = shape.iter().find(|(_, v)| v.is_some()) {
                return Err(key_err(
                    format!("student.{name}"),
                    "only applies to init = \"random\" (a student copied from teacher layers has the teacher's shape)",
                ));
            }
            match &s.teacher_layers {
                None => Err(key_err(
                    "student.teacher_layers",
                    "is required with init = \"teacher-layers\" (0-based teacher layers to copy)",
                )),
                Some(l) if l.is_empty() => Err(key_err("student.teacher_layers", "is empty")),
                Some(_) => Ok(()),
            }
        }
        Some(StudentInit::Random) => {
            if s.teacher_layers.is_some() {
                return Err(key_err(
                    "student.teacher_layers",
                    "only applies to init = \"teacher-layers\"",
                ));
            }
            check_arch(
                "student",
                &ArchSection {
                    layers: s.layers,
                    hidden: s.hidden,
                    heads: s.heads,
                    intermediate: s.intermediate,
                },
            )
        }
    }
}

/// Every shape key present and positive, and `hidden` divisible by `heads`.
pub(crate) fn check_arch(prefix: &str, a: &ArchSection) -> KeyResult<()> {
    for (name, v) in [
        ("layers", a.layers),
        ("hidden", a.hidden), // tidy: not a loss name (the width key)
        ("heads", a.heads),
        ("intermediate", a.intermediate),
    ] {
        match v {
            None => return Err(key_err(format!("{prefix}.{name}"), "is required")),
            Some(0) => {
                return Err(key_err(
                    format!("{prefix}.{name}"),
                    "must be positive, got 0",
                ))
            }
            Some(_) => {}
        }
    }
    if let (Some(h), Some(n)) = (a.hidden, a.heads) {
        if h % n != 0 {
            return Err(key_err(
                format!("{prefix}.heads"),
                format!("`hidden` {h} is not divisible by {n} heads"),
            ));
        }
    }
    Ok(())
}

/// Exactly one of a step count and an epoch count (or neither when not `required`), each > 0.
fn steps_xor_epochs(
    table: &str,
    (steps_name, steps): (&str, Option<usize>),
    (epochs_name, epochs): (&str, Option<f64>),
    required: bool,
) -> KeyResult<()> {
    match (steps, epochs) {
        (Some(_), Some(_)) => {
            return Err(key_err(
                table,
                format!("`{steps_name}` and `{epochs_name}` are exclusive: give one"),
            ))
        }
        (None, None) if required => {
            return Err(key_err(
                table,
                format!("give one of `{steps_name}` or `{epochs_name}`"),
            ))
        }
        _ => {}
    }
    if let Some(s) = steps {
        at_least_one(&format!("{table}.{steps_name}"), s)?;
    }
    if let Some(e) = epochs {
        positive(&format!("{table}.{epochs_name}"), e)?;
    }
    Ok(())
}

fn positive(key: &str, v: f64) -> KeyResult<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(key_err(key, format!("must be positive, got {v}")))
    }
}

fn non_negative(key: &str, v: f64) -> KeyResult<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(key_err(key, format!("must be ≥ 0, got {v}")))
    }
}

fn below_one(key: &str, v: f64) -> KeyResult<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(key_err(key, format!("must be in [0, 1), got {v}")))
    }
}

fn warmup(key: &str, v: f64) -> KeyResult<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(key_err(
            key,
            format!("is a fraction of the steps and must be in [0, 1), got {v}"),
        ))
    }
}

fn in_unit(key: &str, v: f64) -> KeyResult<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(key_err(key, format!("must be in [0, 1], got {v}")))
    }
}

fn at_least_one(key: &str, v: usize) -> KeyResult<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(key_err(key, format!("must be positive, got {v}")))
    }
}

fn frozen(key: &str, prefixes: &[String]) -> KeyResult<()> {
    if prefixes.iter().any(|p| p.is_empty()) {
        return Err(key_err(key, "an empty prefix would freeze every parameter"));
    }
    Ok(())
}
