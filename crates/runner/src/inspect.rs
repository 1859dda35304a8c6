//! `distillery inspect`: a model's config and parameter counts per part.

use std::path::Path;

use anyhow::{Context, Result};
use distillery_models::{load_model, LoadOptions};

pub fn run(dir: &Path, json: bool) -> Result<()> {
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
