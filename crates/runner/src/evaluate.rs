//! `distillery eval` (accuracy and macro-F1 as JSON) and `distillery predict` (JSONL of label
//! and probabilities) for any saved classifier folder.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use distillery_data::{
    read_dataset, BatchConfig, Batcher, ColumnSpec, Format, LabelVocab, ReadConfig,
};
use distillery_models::{load_model, BertModel, LoadOptions, TextTokenizer};
use distillery_stages::{eval::probabilities, EvalSet};

#[derive(Debug)]
pub struct DataArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
    pub format: Option<String>,
    pub batch_size: usize,
    pub max_len: usize,
}

fn load(args: &DataArgs) -> Result<(BertModel, TextTokenizer, LabelVocab)> {
    let model = load_model(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    if model.config.labels.is_empty() {
        bail!(
            "{}: the model has no classification head (config.json has no id2label)",
            args.model.display()
        );
    }
    // Never longer than the model's position table (a small student may have fewer than 128).
    let max_len = args.max_len.min(model.config.max_position_embeddings);
    let tok = TextTokenizer::from_file(&args.model.join("tokenizer.json"), max_len)
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let vocab = LabelVocab::from_names(model.config.labels.iter().cloned())?;
    Ok((model, tok, vocab))
}

fn format(s: &Option<String>) -> Result<Option<Format>> {
    s.as_deref()
        .map(|f| match f {
            "tsv" => Ok(Format::Tsv),
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            other => bail!("--format: expected tsv, csv or jsonl, got {other:?}"),
        })
        .transpose()
}

pub fn eval(args: &DataArgs) -> Result<()> {
    let (model, tok, vocab) = load(args)?;
    let mut columns = ColumnSpec::labelled(args.text.clone(), args.label.clone());
    columns.text_pair = args.text_pair.clone();
    let mut rc = ReadConfig::new(columns);
    rc.format = format(&args.format)?;
    let data = read_dataset(&args.data, &rc)?;
    let set = EvalSet::new(&data, &tok, &vocab, args.batch_size, &Device::Cpu)?;
    if set.is_empty() {
        bail!("{}: no examples to evaluate", args.data.display());
    }
    let m = set.evaluate(&model)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// Writes to `output`, or to stdout when `None`.
pub fn predict(args: &DataArgs, output: Option<&std::path::Path>) -> Result<()> {
    let (model, tok, vocab) = load(args)?;
    let mut columns = ColumnSpec::text(args.text.clone());
    columns.text_pair = args.text_pair.clone();
    let mut rc = ReadConfig::new(columns);
    rc.format = format(&args.format)?;
    // A plain text file is one text per line.
    let is_plain = rc.format.is_none() && Format::from_extension(&args.data).is_none();
    let data = if is_plain {
        let texts = crate::textfile::read_lines(&args.data)?;
        distillery_data::Dataset {
            source: args.data.clone(),
            examples: texts
                .into_iter()
                .enumerate()
                .map(|(i, t)| distillery_data::Example {
                    text: t,
                    pair: None,
                    label: None,
                    line: i + 1,
                })
                .collect(),
            skipped: Vec::new(),
        }
    } else {
        read_dataset(&args.data, &rc)?
    };
    let mut batcher = Batcher::new(&data, &tok, None, BatchConfig::in_order(args.batch_size))?;
    let mut out = String::new();
    for batch in batcher.epoch() {
        let batch = batch?;
        let probs =
            probabilities(&model, &batch.encoded.to_tensors(&Device::Cpu)?)?.to_vec2::<f32>()?;
        for (&i, row) in batch.indices.iter().zip(probs) {
            let best = distillery_stages::eval::argmax(&row);
            let p: serde_json::Map<String, serde_json::Value> = vocab
                .names()
                .iter()
                .zip(&row)
                .map(|(n, v)| (n.clone(), serde_json::json!(v)))
                .collect();
            let line = serde_json::json!({
                "text": data.examples[i].text,
                "label": vocab.names()[best],
                "probabilities": p,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    match output {
        Some(path) => {
            distillery_util::fs::write_atomic(path, out.as_bytes())?;
            eprintln!("predicted {} texts into {}", data.len(), path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(())
}
