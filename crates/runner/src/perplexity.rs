//! `distillery perplexity`: for each line of a text file, a decoder's (LLaMA family) mean
//! next-token negative log-likelihood in nats and its perplexity, as JSONL, then one summary
//! line over the whole file (weighted by predicted tokens, so it is the file's perplexity).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use distillery_models::llama::{next_token_nll, open_decoder};
use distillery_models::{LoadOptions, TextInput};
use serde_json::json;

#[derive(Debug)]
pub struct PerplexityArgs {
    /// A Hugging Face decoder folder (config.json, model.safetensors, tokenizer.json) or a
    /// GGUF file.
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub max_len: usize,
    pub batch_size: usize,
}

pub fn run(args: &PerplexityArgs) -> Result<()> {
    let decoder = open_decoder(&args.model, &LoadOptions::default(), Some(args.max_len))
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let (model, tok) = (&decoder.model, &decoder.tokenizer);
    let texts = crate::textfile::read_lines(&args.input)?;
    let start = std::time::Instant::now();
    let mut out = String::new();
    let (mut nll_sum, mut predicted) = (0.0f64, 0usize);
    let mut tokens_total = 0usize;
    for chunk in texts.chunks(args.batch_size.max(1)) {
        let inputs: Vec<TextInput> = chunk.iter().map(|t| TextInput::Single(t.clone())).collect();
        let enc = tok.encode_batch(&inputs)?;
        let t = enc.to_tensors(&Device::Cpu)?;
        let logits = model
            .forward(&t.input_ids, &t.attention_mask)?
            .token_logits
            .context("the decoder returned no token logits")?;
        let rows = next_token_nll(&logits, &t.input_ids, &t.attention_mask)?;
        for (i, (text, r)) in chunk.iter().zip(rows).enumerate() {
            let tokens: u32 = enc.attention_mask[i * enc.seq..(i + 1) * enc.seq]
                .iter()
                .sum();
            tokens_total += tokens as usize;
            if let Some(nll) = r.nll {
                nll_sum += nll * r.predicted as f64;
                predicted += r.predicted;
            }
            let line = json!({
                "text": text,
                "tokens": tokens,
                "nll": r.nll,
                "perplexity": r.nll.map(f64::exp),
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    let nll = (predicted > 0).then(|| nll_sum / predicted as f64);
    let summary = json!({
        "summary": true,
        "lines": texts.len(),
        "tokens": tokens_total,
        "predicted_tokens": predicted,
        "nll": nll,
        "perplexity": nll.map(f64::exp),
    });
    out.push_str(&summary.to_string());
    out.push('\n');
    let secs = start.elapsed().as_secs_f64();
    match &args.output {
        Some(path) => distillery_util::fs::write_atomic(path, out.as_bytes())?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
        }
    }
    eprintln!(
        "{} lines, {predicted} predicted tokens: perplexity {} ({:.0} tokens/s)",
        texts.len(),
        nll.map_or("–".into(), |n| format!("{:.4}", n.exp())),
        tokens_total as f64 / secs.max(1e-9)
    );
    Ok(())
}
