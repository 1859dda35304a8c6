//! `distillery embed`: sentence embeddings from any BERT folder, as JSONL.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp};
use distillery_models::{
    load_model, mean_pool, ForwardOptions, LoadOptions, TextInput, TextTokenizer,
};
use distillery_util::fs::write_atomic_with;
use indicatif::{ProgressBar, ProgressStyle};

/// How a text's token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// Average of the last hidden state over non-padding tokens (not normalised).
    Mean,
    /// The last hidden state of the [CLS] token.
    Cls,
}

#[derive(Debug)]
pub struct EmbedArgs {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub pooling: Pooling,
    pub batch_size: usize,
    pub max_len: usize,
}

/// One output line; a struct (not a map) so that `text` comes first and floats print as f32.
#[derive(serde::Serialize)]
struct Row<'a> {
    text: &'a str,
    embedding: Vec<f32>,
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    let texts = crate::textfile::read_lines(&args.input)?;
    let model = load_model(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let tok = TextTokenizer::from_file(&args.model.join("tokenizer.json"), args.max_len)?;

    let bar = ProgressBar::new(texts.len() as u64).with_style(
        ProgressStyle::with_template("embed {bar:30} {pos}/{len} texts  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Written beside the target and renamed at the end: an existing output is never half-replaced.
    write_atomic_with(&args.output, |tmp| -> Result<()> {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        for chunk in texts.chunks(args.batch_size) {
            let inputs: Vec<TextInput> =
                chunk.iter().map(|t| TextInput::Single(t.clone())).collect();
            let batch = tok.encode_batch(&inputs)?.to_tensors(&Device::Cpu)?;
            let out = model.forward(
                &batch.input_ids,
                Some(&batch.token_type_ids),
                &batch.attention_mask,
                &ForwardOptions::default(),
            )?;
            let emb = match args.pooling {
                Pooling::Mean => mean_pool(out.last_hidden_state(), &out.mask)?,
                Pooling::Cls => out.last_hidden_state().i((.., 0))?,
            };
            let rows = emb.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (text, e) in chunk.iter().zip(rows) {
                serde_json::to_writer(&mut w, &Row { text, embedding: e })?;
                w.write_all(b"\n")?;
            }
            bar.inc(chunk.len() as u64);
        }
        w.flush()
            .with_context(|| format!("{}: write failed", args.output.display()))
    })?;
    bar.finish_and_clear();
    eprintln!(
        "embedded {} texts into {}",
        texts.len(),
        args.output.display()
    );
    Ok(())
}
