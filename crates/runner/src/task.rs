//! The task of a run: its splits, label vocabulary and tokenizer, from data files or the
//! synthetic generator. The dev and test splits are also written to `OUT/data/` so that
//! `distillery eval` can re-measure a saved model on exactly the examples the run used.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use distillery_data::synthetic;
use distillery_data::{
    load_splits, split, BatchConfig, Batcher, Cursor, Dataset, LabelOrder, LabelVocab,
    SplitFractions, Splits,
};
use distillery_models::{BertConfig, TextTokenizer};
use distillery_stages::EvalSet;

use crate::config::{Config, TeacherSource, DEFAULT_SPLIT};

#[derive(Debug)]
pub struct Task {
    pub splits: Splits,
    pub vocab: LabelVocab,
    pub tokenizer: TextTokenizer,
    /// The folder whose tokenizer files are copied next to every saved model.
    pub tokenizer_dir: PathBuf,
}

/// The teacher folder's config, when the teacher is a folder.
pub fn teacher_folder_config(config: &Config) -> Result<Option<(PathBuf, BertConfig)>> {
    match config.teacher_source()? {
        TeacherSource::Folder(dir) => {
            let cfg = BertConfig::from_file(&dir.join("config.json"))
                .with_context(|| format!("teacher `{}`", dir.display()))?;
            Ok(Some((dir, cfg)))
        }
        TeacherSource::Random(_) => Ok(None),
    }
}

/// Reads (or generates) the data and loads the tokenizer. Writes nothing but, for the synthetic
/// task, its tokenizer into `scratch`; [`Task::persist`] writes into the output folder once the
/// runner has checked that it may.
pub fn prepare(
    config: &Config,
    scratch: &Path,
    teacher_folder: Option<&(PathBuf, BertConfig)>,
) -> Result<Task> {
    let (splits, tokenizer_dir) = match config.synthetic_config() {
        Some(syn) => {
            let data = synthetic::generate(&syn)?;
            let f = config.data.split.as_deref().unwrap_or(&DEFAULT_SPLIT);
            let fractions = SplitFractions::new(f[0], f[1], f[2]);
            let seed = config.data.split_seed.unwrap_or(config.seed);
            let dir = scratch.join("tokenizer");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
            synthetic::write_tokenizer(&dir, &syn)?;
            (split(data, fractions, seed)?, dir)
        }
        None => {
            let spec = config.split_spec().context(
                "the config names no data (give `data.path`, `data.train` or [data.synthetic])",
            )?;
            let Some((dir, _)) = teacher_folder else {
                bail!(
                    "{}: key `teacher.random`: a from-scratch teacher needs [data.synthetic] (it has no tokenizer for real text); give `teacher.path`",
                    config.source().display()
                );
            };
            (load_splits(&spec, &config.read_config())?, dir.clone())
        }
    };
    for s in std::iter::once(&splits.train)
        .chain(&splits.dev)
        .chain(&splits.test)
    {
        if let Some(msg) = s.skip_summary() {
            eprintln!("warning: {msg}");
        }
    }
    let tok_path = tokenizer_dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&tok_path, config.data.max_len)
        .with_context(|| format!("loading the tokenizer {}", tok_path.display()))?;
    // A teacher whose head is used as is fixes the label ids; otherwise they are sorted.
    let vocab = match teacher_folder {
        Some((_, cfg)) if config.teacher.finetune.is_none() && !cfg.labels.is_empty() => {
            LabelVocab::from_names(cfg.labels.iter().cloned())?
        }
        _ => LabelVocab::from_dataset(&splits.train, LabelOrder::Sorted)?,
    };
    let policy = config.data.malformed;
    let splits = Splits {
        train: vocab.validate(splits.train, policy)?,
        dev: splits.dev.map(|d| vocab.validate(d, policy)).transpose()?,
        test: splits.test.map(|d| vocab.validate(d, policy)).transpose()?,
    };
    if splits.train.is_empty() {
        bail!(
            "{}: the training split is empty",
            splits.train.source.display()
        );
    }
    for (name, d) in [("dev", &splits.dev), ("test", &splits.test)] {
        if let Some(d) = d.as_ref().filter(|d| d.is_empty()) {
            bail!(
                "{}: key `data.split`: the {name} split of {} is empty; give more data, a larger fraction for it, or 0 to have none",
                config.source().display(),
                d.source.display()
            );
        }
    }
    Ok(Task {
        splits,
        vocab,
        tokenizer,
        tokenizer_dir,
    })
}

impl Task {
    /// The training batches: shuffled by `config`, from the start or from a checkpoint's
    /// cursor. The one place that builds a task's batchers.
    pub fn train_batcher(
        &self,
        config: BatchConfig,
        cursor: Option<&Cursor>,
    ) -> Result<Batcher<'_>> {
        let (data, tok, vocab) = (&self.splits.train, &self.tokenizer, Some(&self.vocab));
        Ok(match cursor {
            Some(c) => Batcher::from_cursor(data, tok, vocab, config, c)?,
            None => Batcher::new(data, tok, vocab, config)?,
        })
    }

    /// The training examples in file order, `batch_size` at a time (the teacher cache).
    pub fn train_in_order(&self, batch_size: usize) -> Result<Batcher<'_>> {
        self.train_batcher(BatchConfig::in_order(batch_size), None)
    }

    /// `split` (dev or test) as an evaluation set.
    pub fn eval_set(&self, split: &Dataset, batch_size: usize, device: &Device) -> Result<EvalSet> {
        Ok(EvalSet::new(
            split,
            &self.tokenizer,
            &self.vocab,
            batch_size,
            device,
        )?)
    }

    /// The dev split as an evaluation set, when there is one.
    pub fn dev_set(&self, batch_size: usize, device: &Device) -> Result<Option<EvalSet>> {
        self.splits
            .dev
            .as_ref()
            .map(|d| self.eval_set(d, batch_size, device))
            .transpose()
    }

    /// A digest of every example of every split (text, pair, label, in order): part of the
    /// output folder's fingerprint, so that changed data is never mixed into a resumed run.
    pub fn digest(&self) -> u64 {
        let mut h = distillery_util::hash::Hasher::new();
        for (i, d) in std::iter::once(&self.splits.train)
            .chain(&self.splits.dev)
            .chain(&self.splits.test)
            .enumerate()
        {
            h.write(&[i as u8]);
            for e in &d.examples {
                h.write_str(&e.text);
                h.write_str(e.pair.as_deref().unwrap_or("\u{0}"));
                h.write_str(e.label.as_deref().unwrap_or("\u{0}"));
            }
        }
        h.finish()
    }

    /// Writes the dev and test splits to `out/data/` (for `distillery eval`) and, for the
    /// synthetic task, its tokenizer to `out/tokenizer/`, which saved models then copy.
    pub fn persist(&mut self, out: &Path, scratch: &Path) -> Result<()> {
        for (name, d) in [("dev", &self.splits.dev), ("test", &self.splits.test)] {
            if let Some(d) = d {
                write_split(&out.join("data").join(format!("{name}.jsonl")), d)?;
            }
        }
        if self.tokenizer_dir.starts_with(scratch) {
            let dir = out.join("tokenizer");
            let bytes = std::fs::read(self.tokenizer_dir.join("tokenizer.json"))?;
            distillery_util::fs::write_atomic(&dir.join("tokenizer.json"), &bytes)?;
            self.tokenizer_dir = dir;
        }
        Ok(())
    }
}

/// `{"text": .., ["text_pair": ..,] "label": ..}` per line.
fn write_split(path: &Path, d: &Dataset) -> Result<()> {
    let mut s = String::new();
    for e in &d.examples {
        let mut v = serde_json::json!({"text": e.text, "label": e.label});
        if let Some(p) = &e.pair {
            v["text_pair"] = serde_json::json!(p);
        }
        s.push_str(&v.to_string());
        s.push('\n');
    }
    distillery_util::fs::write_atomic(path, s.as_bytes())?;
    Ok(())
}
