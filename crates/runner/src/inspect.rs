//! `distillery inspect`: a model's config and parameter counts per part, for both families
//! (BERT encoders and LLaMA-family decoders, told apart by `config.json`'s `model_type`), and
//! for GGUF files from their header alone, with the quantisation types.

use std::path::Path;

use anyhow::{Context, Result};
use std::collections::BTreeMap;

use distillery_models::llama::{is_gguf, load_llama, GgufFile, LlamaConfig};
use distillery_models::{load_model, LoadOptions};

/// The `model_type` of `dir/config.json` (`bert` when absent); errors name the file.
fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (expected a Hugging Face model folder)",
            path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    Ok(v["model_type"].as_str().unwrap_or("bert").to_string())
}

pub fn run(dir: &Path, json: bool) -> Result<()> {
    if is_gguf(dir) {
        return gguf(dir, json);
    }
    if ["llama", "mistral", "qwen2"].contains(&model_type(dir)?.as_str()) {
        return decoder(dir, json);
    }
    let model = load_model(dir, &LoadOptions::default())
        .with_context(|| format!("loading model {}", dir.display()))?;
    let counts = model.parameter_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if json {
        let parts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(p, n)| (p.clone(), (*n).into()))
            .collect();
        let doc = serde_json::json!({ "config": model.config.to_hf_json(), "parameters": parts, "total_parameters": total });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let c = &model.config;
    println!("model        {}", dir.display());
    println!(
        "architecture {}",
        if c.labels.is_empty() {
            "BertModel"
        } else {
            "BertForSequenceClassification"
        }
    );
    println!("layers       {}", c.num_hidden_layers);
    println!("hidden       {}", c.hidden_size);
    println!(
        "heads        {} (head dim {})",
        c.num_attention_heads,
        c.head_dim()
    );
    println!("intermediate {}", c.intermediate_size);
    println!("activation   {}", c.hidden_act.as_str());
    println!("vocab        {}", c.vocab_size);
    println!("positions    {}", c.max_position_embeddings);
    if !c.labels.is_empty() {
        println!("labels       {}", c.labels.join(", "));
    }
    println!();
    println!("{:<20} {:>12}", "part", "parameters");
    for (part, n) in &counts {
        println!("{part:<20} {n:>12}");
    }
    println!("{:<20} {:>12}", "total", total);
    Ok(())
}

/// Parameters per part of a decoder: embeddings, each block, the final norm and the output
/// projection when it is not tied to the embeddings.
fn decoder(dir: &Path, json: bool) -> Result<()> {
    let model = load_llama(dir, &LoadOptions::default())
        .with_context(|| format!("loading model {}", dir.display()))?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (name, t) in model.named_tensors() {
        let part = match name.strip_prefix("model.layers.") {
            Some(rest) => format!("layer.{}", rest.split('.').next().unwrap_or("?")),
            None if name.starts_with("model.embed_tokens") => "embeddings".into(),
            None if name.starts_with("model.norm") => "final_norm".into(),
            None => "lm_head".into(),
        };
        add(&mut counts, part, t.elem_count());
    }
    report(dir, &model.config, &counts, None, json)
}

/// A GGUF file, read from its header alone: the config from its metadata, parameters per part
/// from the tensor shapes, and how many tensors use each quantisation type.
fn gguf(path: &Path, json: bool) -> Result<()> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in file.tensors() {
        let part = match t.name.strip_prefix("blk.") {
            Some(rest) => format!("layer.{}", rest.split('.').next().unwrap_or("?")),
            None if t.name.starts_with("token_embd") => "embeddings".into(),
            None if t.name.starts_with("output_norm") => "final_norm".into(),
            None => "lm_head".into(),
        };
        add(&mut counts, part, t.shape.iter().product());
    }
    counts.sort_by_key(|(p, _)| part_order(p));
    report(path, &config, &counts, Some(file.kind_counts()), json)
}

fn add(counts: &mut Vec<(String, usize)>, part: String, n: usize) {
    match counts.iter_mut().find(|(p, _)| *p == part) {
        Some((_, c)) => *c += n,
        None => counts.push((part, n)),
    }
}

/// Embeddings, the blocks in order, the final norm, the head.
fn part_order(part: &str) -> (usize, usize) {
    match part.strip_prefix("layer.") {
        Some(l) => (1, l.parse().unwrap_or(usize::MAX)),
        None if part == "embeddings" => (0, 0),
        None if part == "final_norm" => (2, 0),
        None => (3, 0),
    }
}

fn report(
    path: &Path,
    c: &LlamaConfig,
    counts: &[(String, usize)],
    kinds: Option<BTreeMap<String, usize>>,
    json: bool,
) -> Result<()> {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if json {
        let parts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(p, n)| (p.clone(), (*n).into()))
            .collect();
        let mut doc = serde_json::json!({ "config": c.to_hf_json(), "parameters": parts, "total_parameters": total });
        if let Some(k) = &kinds {
            doc["quantisation"] = serde_json::to_value(k)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("model        {}", path.display());
    println!(
        "architecture {}",
        c.to_hf_json()["architectures"][0].as_str().unwrap_or("?")
    );
    if let Some(k) = &kinds {
        let list: Vec<String> = k.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
        println!("tensors      {} (GGUF)", list.join(", "));
    }
    println!("layers       {}", c.num_hidden_layers);
    println!("hidden       {}", c.hidden_size);
    println!(
        "heads        {} (key/value heads {}, head dim {})",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim
    );
    println!("intermediate {} (SwiGLU)", c.intermediate_size);
    println!("vocab        {}", c.vocab_size);
    println!("rope theta   {} ({:?})", c.rope_theta, c.rope_scaling);
    println!("tied head    {}", c.tie_word_embeddings);
    println!();
    println!("{:<20} {:>12}", "part", "parameters");
    for (part, n) in counts {
        println!("{part:<20} {n:>12}");
    }
    println!("{:<20} {:>12}", "total", total);
    Ok(())
}
