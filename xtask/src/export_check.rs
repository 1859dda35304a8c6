//! `cargo xtask export-check`: a student distillery saves is loaded by Python `transformers`
//! and gives the same outputs. The BERT student: all-MiniLM-L6-v2 layers 0, 2, 4 with a fresh
//! two-label head (AutoModelForSequenceClassification + AutoTokenizer: logits and embeddings).
//! The decoder students (AutoModelForCausalLM: logits at every token of a padded batch): the
//! tiny test LLaMA's second block alone (GQA, untied, Llama-3 rope), and a seeded random
//! Qwen2-shaped one (q/k/v biases, tied), and SmolLM2-135M's blocks 0 and 29 from the GGUF
//! fixture with the tokenizer rebuilt from the file, saved as `tokenizer.json` (transformers'
//! `AutoTokenizer` must give our token ids and chat prompt).

use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use distillery_models::llama::{
    llama_from_layers, load_llama, open_decoder, random_llama, save_llama, LlamaModel, LlamaShape,
};
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
    check_in_python(&py, &dir)?;
    causal_lm(&py)
}

/// Runs `check_export.py` on `dir` (which holds the saved model and `expected.json`).
fn check_in_python(py: &str, dir: &std::path::Path) -> Result<()> {
    let status = Command::new(py)
        .arg(util::root().join("scripts/reference/check_export.py"))
        .arg(dir)
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

/// The two decoder students, saved and compared in transformers.
fn causal_lm(py: &str) -> Result<()> {
    let data = util::root().join("crates/models/tests/data/llama");
    let llama = load_llama(&data.join("llama"), &LoadOptions::default())?;
    let qwen = load_llama(&data.join("qwen2"), &LoadOptions::default())?;
    let shape = LlamaShape {
        layers: 2,
        hidden: 16,
        heads: 4,
        kv_heads: 2,
        intermediate: 24,
    };
    let students = [
        ("llama-layer-1", llama_from_layers(&llama, &[1], false)?.0),
        (
            "qwen2-random",
            random_llama(&qwen.config, &shape, 5, false, &Device::Cpu)?.0,
        ),
    ];
    let ids = vec![vec![5u32, 17, 33, 2, 71, 0], vec![0, 0, 12, 13, 90, 4]];
    let mask = vec![vec![1u32, 1, 1, 1, 1, 0], vec![0, 0, 1, 1, 1, 1]];
    for (name, student) in students {
        let dir = util::root().join("target/export-check").join(name);
        save_llama(&student, &dir, None)?;
        let mut expected = causal_expected(&student, &ids, &mask)?;
        expected["kind"] = "causal-lm".into();
        std::fs::write(dir.join("expected.json"), expected.to_string())?;
        check_in_python(py, &dir)?;
    }
    gguf_student(py)
}

/// Logits at every position of a padded batch.
fn causal_expected(
    student: &LlamaModel,
    ids: &[Vec<u32>],
    mask: &[Vec<u32>],
) -> Result<serde_json::Value> {
    let t = |v: &[Vec<u32>]| candle_core::Tensor::new(v.to_vec(), &Device::Cpu);
    let logits = student
        .forward(&t(ids)?, &t(mask)?)?
        .token_logits
        .context("no token logits")?
        .to_vec3::<f32>()?;
    Ok(serde_json::json!({ "input_ids": ids, "attention_mask": mask, "logits": logits }))
}

/// SmolLM2's first and last blocks from the GGUF file, with the rebuilt tokenizer.
fn gguf_student(py: &str) -> Result<()> {
    let gguf = util::root().join("fixtures/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let teacher = open_decoder(&gguf, &LoadOptions::default(), Some(64))
        .context("run scripts/fetch-fixtures.sh first")?;
    let student = llama_from_layers(&teacher.model, &[0, 29], false)?.0;
    let dir = util::root().join("target/export-check/smollm2-layers-0-29");
    teacher.save_student(&student, &dir)?;
    let user = "Größere Modelle lehren kleinere — ✓ 1969";
    let chat = teacher.chat_prompt(user)?;
    let texts = [TEXTS[0], TEXTS[2], user, chat.as_str()];
    let inputs: Vec<TextInput> = texts
        .iter()
        .map(|t| TextInput::Single(t.to_string()))
        .collect();
    let enc = teacher.tokenizer.encode_batch(&inputs)?;
    let rows = |v: &[u32]| -> Vec<Vec<u32>> { v.chunks(enc.seq).map(<[u32]>::to_vec).collect() };
    let (ids, mask) = (rows(&enc.input_ids), rows(&enc.attention_mask));
    let mut expected = causal_expected(&student, &ids, &mask)?;
    expected["kind"] = "causal-lm".into();
    expected["texts"] = serde_json::json!(texts);
    expected["chat"] = serde_json::json!({ "user": user, "prompt": chat });
    std::fs::write(dir.join("expected.json"), expected.to_string())?;
    check_in_python(py, &dir)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = util::root().join("target/export-check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
