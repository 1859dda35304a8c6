//! `distillery inspect`: a model's config and parameter counts per part, for both families
//! (BERT encoders and LLaMA-family decoders, told apart by `config.json`'s `model_type`).

use std::path::Path;

use anyhow::{Context, Result};
use distillery_models::llama::load_llama;
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
        match counts.iter_mut().find(|(p, _)| *p == part) {
            Some((_, n)) => *n += t.elem_count(),
            None => counts.push((part, t.elem_count())),
        }
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let c = &model.config;
    if json {
        let parts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(p, n)| (p.clone(), (*n).into()))
            .collect();
        let doc = serde_json::json!({ "config": c.to_hf_json(), "parameters": parts, "total_parameters": total });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("model        {}", dir.display());
    println!(
        "architecture {}",
        c.to_hf_json()["architectures"][0].as_str().unwrap_or("?")
    );
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
    for (part, n) in &counts {
        println!("{part:<20} {n:>12}");
    }
    println!("{:<20} {:>12}", "total", total);
    Ok(())
}
