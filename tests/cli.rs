//! End-to-end tests of the `distillery` binary: the files it writes and the errors it prints.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, IndexOp};
use distillery_models::{
    load_model, mean_pool, random_student, save_model, testing, ForwardOptions, LoadOptions,
    TextInput, TextTokenizer,
};

fn distillery(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(args)
        .output()
        .unwrap()
}

/// `distillery embed --model M --input I --output O [extra..]`.
fn embed(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let (m, i, o) = (
        model.to_str().unwrap(),
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    );
    let mut args = vec!["embed", "--model", m, "--input", i, "--output", o];
    args.extend_from_slice(extra);
    distillery(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A saved tiny random model with a tokenizer, as a user's HF folder would be.
fn tiny_model_dir(root: &Path) -> PathBuf {
    let dir = root.join("tiny");
    let model = random_student(
        testing::tiny_config(&[]),
        3,
        false,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let tok = root.join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    testing::write_tiny_tokenizer(&tok).unwrap();
    save_model(&model, &dir, Some(&tok)).unwrap();
    dir
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn embed_writes_one_line_per_text_matching_the_library() {
    let root = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(root.path());
    let input = root.path().join("in.txt");
    let texts = [
        "the cat sat on the mat.",
        "a dog ran fast!",
        "good movie",
        "bad",
    ];
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    for pooling in ["mean", "cls"] {
        let output = root.path().join(format!("{pooling}.jsonl"));
        let o = embed(
            &model_dir,
            &input,
            &output,
            &["--pooling", pooling, "--batch-size", "3"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let rows = read_jsonl(&output);
        assert_eq!(rows.len(), texts.len());
        // Expected values from the library, one text at a time (batching must not change them).
        let model = load_model(&model_dir, &LoadOptions::default()).unwrap();
        let tok = TextTokenizer::from_file(&model_dir.join("tokenizer.json"), 128).unwrap();
        for (row, text) in rows.iter().zip(texts) {
            assert_eq!(row["text"], text);
            let b = tok
                .encode_batch(&[TextInput::Single(text.into())])
                .unwrap()
                .to_tensors(&Device::Cpu)
                .unwrap();
            let out = model
                .forward(
                    &b.input_ids,
                    Some(&b.token_type_ids),
                    &b.attention_mask,
                    &ForwardOptions::default(),
                )
                .unwrap();
            let want = match pooling {
                "mean" => mean_pool(out.last_hidden_state(), &out.mask)
                    .unwrap()
                    .i(0)
                    .unwrap(),
                _ => out.last_hidden_state().i((0, 0)).unwrap(),
            };
            let want = want.to_vec1::<f32>().unwrap();
            let got: Vec<f64> = row["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            assert_eq!(got.len(), 16);
            for (g, w) in got.iter().zip(want) {
                assert!((g - f64::from(w)).abs() < 1e-5, "{text}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn embed_reproduces_minilm_reference_embeddings() {
    let fixtures = std::env::var_os("DISTILLERY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"));
    let model_dir = fixtures.join("all-MiniLM-L6-v2");
    assert!(
        model_dir.join("model.safetensors").is_file(),
        "run scripts/fetch-fixtures.sh"
    );
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/tests/data/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let singles: Vec<&serde_json::Value> = reference["examples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("pair").is_none())
        .collect();
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("in.txt");
    let lines: Vec<&str> = singles
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = root.path().join("out.jsonl");
    let o = embed(&model_dir, &input, &output, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_jsonl(&output);
    assert!(!singles.is_empty());
    assert_eq!(rows.len(), singles.len(), "one embedding per input line");
    for (row, ex) in rows.iter().zip(&singles) {
        assert_eq!(row["text"], ex["text"]);
        let got = row["embedding"].as_array().unwrap();
        let want = ex["mean_pooled"].as_array().unwrap();
        assert_eq!(got.len(), 384);
        assert_eq!(want.len(), 384);
        for (g, w) in got.iter().zip(want) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() <= 1e-4);
        }
    }
}

#[test]
fn embed_errors_are_one_line_and_leave_existing_output_alone() {
    let root = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(root.path());
    let output = root.path().join("out.jsonl");
    std::fs::write(&output, "precious\n").unwrap();
    let input = root.path().join("in.txt");
    std::fs::write(&input, "good movie\n\nbad\n").unwrap();
    let o = embed(&model_dir, &input, &output, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("in.txt:2") && e.contains("empty line"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "precious\n");

    std::fs::write(&input, b"ok\n\xff\xfe\n").unwrap();
    let e = stderr(&embed(&model_dir, &input, &output, &[]));
    assert!(e.contains("in.txt:2") && e.contains("UTF-8"), "{e}");

    std::fs::write(&input, "good movie\n").unwrap();
    let e = stderr(&embed(Path::new("/no/such/model"), &input, &output, &[]));
    assert!(e.contains("/no/such/model"), "{e}");
    let o = embed(&model_dir, &input, &output, &["--batch-size", "0"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects a zero batch size");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "precious\n");
}

#[test]
fn inspect_prints_config_and_parameter_counts() {
    let root = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_dir(root.path());
    let o = distillery(&["inspect", "--model", model_dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // 40·16 + 32·16 + 2·16 + 2·16 embeddings; per layer 4·(16·16+16) + 2·2·16 + 16·24+24 + 24·16+16; pooler 16·16+16.
    let layer = 4 * (16 * 16 + 16) + 4 * 16 + (16 * 24 + 24) + (24 * 16 + 16);
    assert_eq!(
        doc["parameters"]["embeddings"],
        40 * 16 + 32 * 16 + 2 * 16 + 2 * 16
    );
    assert_eq!(doc["parameters"]["encoder.layer.2"], layer);
    assert_eq!(doc["total_parameters"], 40 * 16 + 32 * 16 + 64 + 3 * layer);
    assert_eq!(doc["config"]["num_attention_heads"], 4);
    let table = distillery(&["inspect", "--model", model_dir.to_str().unwrap()]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("heads        4 (head dim 4)") && text.contains("total"),
        "{text}"
    );
}

/// The tiny test LLaMA (crates/models/tests/data/llama/llama) with a word-level tokenizer whose
/// words `w0`..`w95` are the token ids, no special tokens.
fn tiny_decoder_dir(root: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/data/llama/llama");
    let dir = root.join("decoder");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = (0..96)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w1"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    dir
}

#[test]
fn perplexity_per_line_matches_transformers_and_does_not_depend_on_batching() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_decoder_dir(tmp.path());
    let input = tmp.path().join("lines.txt");
    // The first two lines are the reference batch's rows 0 and 1 (their nll from transformers,
    // in reference.json); the third has one token, so nothing to predict.
    std::fs::write(
        &input,
        "w5 w17 w33 w2 w71 w9 w44\nw12 w13 w90 w4 w61 w8\nw3\n",
    )
    .unwrap();
    let want: Vec<f64> = {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/data/llama/llama/reference.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["nll"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let mut results = Vec::new();
    for batch in ["8", "1"] {
        let out = tmp.path().join(format!("ppl-{batch}.jsonl"));
        let o = distillery(&[
            "perplexity",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--batch-size",
            batch,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("perplexity"), "{}", stderr(&o));
        results.push(read_jsonl(&out));
    }
    let (lines, one_by_one) = (&results[0], &results[1]);
    assert_eq!(lines.len(), 4);
    let tokens: Vec<u64> = lines[..3]
        .iter()
        .map(|l| l["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, [7, 6, 1]);
    for i in 0..2 {
        let nll = lines[i]["nll"].as_f64().unwrap();
        assert!(
            (nll - want[i]).abs() < 1e-4 * want[i],
            "line {i}: {nll} vs {}",
            want[i]
        );
        let ppl = lines[i]["perplexity"].as_f64().unwrap();
        assert!((ppl - nll.exp()).abs() < 1e-9 * ppl);
        let alone = one_by_one[i]["nll"].as_f64().unwrap();
        assert!(
            (alone - nll).abs() < 1e-5,
            "line {i} batched {nll} vs alone {alone}"
        );
    }
    assert!(lines[2]["nll"].is_null() && lines[2]["perplexity"].is_null());
    let s = &lines[3];
    assert_eq!(s["summary"], true);
    assert_eq!(s["lines"], 3);
    assert_eq!(s["predicted_tokens"], 11);
    let weighted =
        (6.0 * lines[0]["nll"].as_f64().unwrap() + 5.0 * lines[1]["nll"].as_f64().unwrap()) / 11.0;
    assert!((s["nll"].as_f64().unwrap() - weighted).abs() < 1e-9);
}

#[test]
fn perplexity_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_decoder_dir(tmp.path());
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let o = distillery(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.trim().lines().count() == 1 && e.contains("empty.txt"),
        "{e}"
    );
    let bert = tiny_model_dir(tmp.path());
    let input = tmp.path().join("x.txt");
    std::fs::write(&input, "w1 w2\n").unwrap();
    let o = distillery(&[
        "perplexity",
        "--model",
        bert.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.trim().lines().count() == 1 && e.contains("model_type"),
        "{e}"
    );
}

#[test]
fn generate_continues_prompts_greedily_as_transformers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_decoder_dir(tmp.path());
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/tests/data/llama/llama/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let words = |v: &serde_json::Value| -> String {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| format!("w{}", t.as_u64().unwrap()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (prompt, want) = (words(&reference["prompt"]), words(&reference["greedy"]));
    let o = distillery(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), want);
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));
    // A file of prompts: JSONL, one line each, the same continuation for the same prompt.
    let input = tmp.path().join("prompts.txt");
    std::fs::write(&input, format!("{prompt}\nw3 w4\n")).unwrap();
    let out = tmp.path().join("gen.jsonl");
    let o = distillery(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = read_jsonl(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], prompt.as_str());
    assert_eq!(lines[0]["completion"], want.as_str());
    assert_eq!(lines[0]["tokens"], 8);
    // Neither or both of --prompt and --input: a usage error, not a panic.
    let o = distillery(&["generate", "--model", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn inspect_reads_a_decoder_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_decoder_dir(tmp.path());
    let o = distillery(&["inspect", "--model", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["config"]["architectures"][0], "LlamaForCausalLM");
    assert_eq!(doc["config"]["num_key_value_heads"], 2);
    // 96 × 32 embeddings, untied head of the same size, final norm 32, and two blocks of
    // 2·32 norms + q 32·32 + k, v 16·32 each + o 32·32 + 3 · 32·64 MLP.
    let block = 2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 32 * 64;
    assert_eq!(doc["parameters"]["layer.0"], block);
    assert_eq!(doc["parameters"]["embeddings"], 96 * 32);
    assert_eq!(doc["parameters"]["lm_head"], 96 * 32);
    assert_eq!(doc["total_parameters"], 2 * 96 * 32 + 32 + 2 * block);
    let table = distillery(&["inspect", "--model", model.to_str().unwrap()]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("key/value heads 2") && text.contains("Llama3"),
        "{text}"
    );
}

/// The real GGUF teacher through the binary: `--chat` applies its template and the greedy
/// continuation is transformers' (reference of crates/models/tests/smollm2.rs) up to and
/// including its end-of-turn token; `inspect` shows the quantisation types from the header.
#[test]
fn gguf_model_generates_chat_replies_and_inspects() {
    let gguf = distillery_models::testing::fixture(distillery_models::testing::SMOLLM2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/tests/data/smollm2/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let chat = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chat")
        .unwrap();
    let greedy: Vec<u64> = chat["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let want_tokens = greedy.iter().position(|&t| t == 2).map_or(32, |i| i + 1);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("prompts.txt");
    std::fs::write(&input, "What is the boiling point of water at sea level?\n").unwrap();
    let out = tmp.path().join("gen.jsonl");
    let o = distillery(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--chat",
        "--max-new-tokens",
        "32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = read_jsonl(&out);
    assert_eq!(lines[0]["tokens"], want_tokens as u64, "{lines:?}");
    let completion = lines[0]["completion"].as_str().unwrap();
    assert!(completion.contains("100"), "{completion}");

    let o = distillery(&["inspect", "--model", gguf.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["quantisation"]["Q4_1"], 210);
    assert_eq!(doc["config"]["num_key_value_heads"], 3);
    assert_eq!(doc["total_parameters"], 134_515_008);

    // A truncated copy: one line naming the file and the tensor it could not read.
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = distillery(&[
        "perplexity",
        "--model",
        cut.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("cut.gguf") && e.contains("tensor `"), "{e}");
}
