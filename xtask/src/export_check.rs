//! `cargo xtask export-check`: a student distillery saves is loaded by Python `transformers`
//! (AutoModelForSequenceClassification + AutoTokenizer) and gives the same logits and embeddings.
//! The student: all-MiniLM-L6-v2 layers 0, 2, 4 with a fresh two-label head.

use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use distillery_models::{
    load_model, mean_pool, save_model, student_from_teacher, with_new_head, ForwardOptions,
    LoadOptions, TextInput, TextTokenizer,
};

use crate::util;

const TEXTS: [&str; 3] = [
    "A gripping, beautifully shot film.",
    "Dull.",
    "I expected more from the director — sadly it never lands.",
];

pub fn run() -> Result<()> {
    let teacher_dir = util::root().join("fixtures/all-MiniLM-L6-v2");
    let teacher = load_model(&teacher_dir, &LoadOptions::default())
        .context("run `cargo xtask fixtures` first")?;
    let student = student_from_teacher(&teacher, &[0, 2, 4], 7)?;
    let student = with_new_head(&student, &["negative".into(), "positive".into()], 11)?;
    let dir = tempfile_dir()?;
    save_model(&student, &dir, Some(&teacher_dir))?;

    let tok = TextTokenizer::from_file(&teacher_dir.join("tokenizer.json"), 128)?;
    let inputs: Vec<TextInput> = TEXTS
        .iter()
        .map(|t| TextInput::Single(t.to_string()))
        .collect();
    let b = tok.encode_batch(&inputs)?.to_tensors(&Device::Cpu)?;
    let out = student.forward(
        &b.input_ids,
        Some(&b.token_type_ids),
        &b.attention_mask,
        &ForwardOptions::default(),
    )?;
    let logits = out
        .logits
        .as_ref()
        .context("no logits")?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let pooled = mean_pool(out.last_hidden_state(), &out.mask)?.to_vec2::<f32>()?;
    let expected = serde_json::json!({ "texts": TEXTS, "logits": logits, "mean_pooled": pooled });
    std::fs::write(dir.join("expected.json"), expected.to_string())?;

    let Some(py) = util::python_with_torch() else {
        bail!("needs a Python with torch and transformers")
    };
    let status = Command::new(py)
        .arg(util::root().join("scripts/reference/check_export.py"))
        .arg(&dir)
        .status()?;
    if !status.success() {
        bail!(
            "transformers disagrees with distillery on {}",
            dir.display()
        );
    }
    println!("export check passed ({})", dir.display());
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = util::root().join("target/export-check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
