//! `distillery generate`: continue prompts with a LLaMA-family decoder, greedy or sampled, on a
//! KV cache. One `--prompt` prints its continuation; `--input` (one prompt per line) or
//! `--output` writes JSONL `{prompt, completion, tokens}`. Tokens per second go to stderr.
//! `--chat` wraps each prompt as a user turn in the model's chat template; the JSONL keeps the
//! prompt as given.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use distillery_models::llama::{open_decoder, Sampling};
use distillery_models::{LoadOptions, TextInput};

#[derive(Debug)]
pub struct GenerateArgs {
    pub model: PathBuf,
    pub prompt: Option<String>,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub chat: bool,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let prompts = match (&args.prompt, &args.input) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(f)) => crate::textfile::read_lines(f)?,
        _ => bail!("give exactly one of --prompt and --input"),
    };
    let decoder = open_decoder(&args.model, &LoadOptions::default(), None)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let (model, tok) = (&decoder.model, &decoder.tokenizer);
    let sampling = Sampling {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: model.eos_ids(),
    };
    let start = std::time::Instant::now();
    let (mut out, mut generated) = (String::new(), 0usize);
    let mut texts = Vec::new();
    for prompt in &prompts {
        let text = match args.chat {
            true => decoder.chat_prompt(prompt)?,
            false => prompt.clone(),
        };
        let enc = tok.encode_batch(&[TextInput::Single(text)])?;
        let tokens = model
            .generate(&enc.input_ids, &sampling)
            .with_context(|| format!("prompt {prompt:?}"))?;
        generated += tokens.len();
        let completion = tok.decode(&tokens)?;
        let line = serde_json::json!({
            "prompt": prompt,
            "completion": completion,
            "tokens": tokens.len(),
        });
        out.push_str(&line.to_string());
        out.push('\n');
        texts.push(completion);
    }
    let secs = start.elapsed().as_secs_f64();
    match (&args.output, &args.input) {
        (Some(path), _) => distillery_util::fs::write_atomic(path, out.as_bytes())?,
        (None, Some(_)) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
        }
        (None, None) => println!("{}", texts.concat()),
    }
    eprintln!(
        "{generated} tokens in {secs:.2} s ({:.1} tokens/s)",
        generated as f64 / secs.max(1e-9)
    );
    Ok(())
}
