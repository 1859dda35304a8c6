//! End-to-end tests of `distillery run / compare / eval / predict` on a tiny synthetic task:
//! the files a run promises, the student reproducing its logged dev metric, losses falling,
//! a SIGKILLed run resumed to the same bits, and one test per bad-config case.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn distillery(args: &[&str]) -> Output {
    distillery_env(args, &[])
}

/// `distillery ARGS` with extra environment variables (the fault-injection ones).
fn distillery_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `distillery run CFG --out OUT --resume --quiet` (a fresh folder or a continued one) with the
/// fault-injection variables `env`.
fn run_or_resume(cfg: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    let args = ["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    distillery_env(&[&args[..], &["--resume", "--quiet"]].concat(), env)
}

/// The global steps of the complete checkpoints in `dir` (those with a `state.json`), oldest
/// first.
fn checkpoint_steps(dir: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("state.json").is_file())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("step-")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps
}

/// The raw lines of a metrics file logged at or before global step `upto`.
fn metrics_lines_upto(path: &Path, upto: u64) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["global_step"].as_u64())
                .is_some_and(|g| g <= upto)
        })
        .map(str::to_string)
        .collect()
}

/// Resumes the run in `out` with `cfg` and checks that it continued after global step
/// `from` rather than starting over: it says so, and it kept the metrics lines the first
/// invocation logged up to there byte for byte (their measured throughput included, which a
/// run redoing those steps would have measured anew).
fn resume_after(cfg: &Path, out: &Path, label: &str, from: usize, metrics: &str) {
    let kept = metrics_lines_upto(&out.join(metrics), from as u64);
    assert!(!kept.is_empty(), "nothing logged before step {from}");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = format!("{label}: resuming after global step {from}\n");
    assert!(
        stderr(&o).contains(&said),
        "expected {said:?} in:\n{}",
        stderr(&o)
    );
    let now = metrics_lines_upto(&out.join(metrics), from as u64);
    assert_eq!(
        kept, now,
        "the resumed run rewrote the lines logged before it"
    );
}

/// The interrupted run in `out` ended as the uninterrupted one in `full`: the same bits in
/// each of `files`, the same `metrics` lines but for the measured throughput.
fn assert_same_run(full: &Path, out: &Path, files: &[&str], metrics: &str) {
    for f in files {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert_eq!(
        metrics_without_throughput(&full.join(metrics)),
        metrics_without_throughput(&out.join(metrics))
    );
}

/// Every line of a metrics file but for the measured throughput.
fn metrics_without_throughput(path: &Path) -> Vec<Value> {
    read_jsonl(path)
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("examples_per_sec");
            v
        })
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny task: 240 synthetic examples, a 2-layer 16-wide teacher trained for 30 steps, a
/// 1-layer 8-wide student.
fn tiny_config(schedule: &str, total_steps: usize, extra: &str) -> String {
    format!(
        r#"
seed = 3
[data]
max_len = 12
batch_size = 16
eval_batch_size = 32
[data.synthetic]
examples = 240
min_len = 4
max_len = 8
vocab_words = 10
[teacher.random]
layers = 2
hidden = 16
heads = 2
intermediate = 32
[teacher.finetune]
steps = 30
lr = 3e-3
[student]
init = "random"
layers = 1
hidden = 8
heads = 2
intermediate = 16
[losses.hidden]
[losses.attention]
[losses.logit]
[distill]
schedule = "{schedule}"
total_steps = {total_steps}
lr = 3e-3
eval_every = 5
checkpoint_every = 5
{extra}
"#
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn run_writes_every_file_and_the_student_reproduces_its_dev_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "tiny.toml", &tiny_config("one-stage", 40, ""));
    let out = tmp.path().join("out");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "student/config.json",
        "student/model.safetensors",
        "student/tokenizer.json",
        "teacher/model.safetensors",
        "teacher/teacher.json",
        "metrics.jsonl",
        "report.md",
        "loss.svg",
        "summary.json",
        "data/dev.jsonl",
        "data/test.jsonl",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // Outputs are ordinary readable files, not owner-only temporaries.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("report.md"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o044, 0o044, "report.md mode {mode:o}");
    }
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    let steps: Vec<&Value> = metrics.iter().filter(|v| v["event"] == "step").collect();
    assert_eq!(steps.len(), 40);
    assert_eq!(steps[39]["global_step"], 40);
    // The distillation terms fall (means of the first and last 8 steps).
    for term in ["hidden", "attention"] {
        let v: Vec<f64> = steps.iter().map(|s| s[term].as_f64().unwrap()).collect();
        let (head, tail) = (v[..8].iter().sum::<f64>(), v[32..].iter().sum::<f64>());
        assert!(tail < head, "{term}: {v:?}");
    }
    let evals = metrics.iter().filter(|v| v["event"] == "eval").count();
    assert_eq!(evals, 8);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("![training losses](loss.svg)"), "{report}");
    assert!(
        report.contains("| I | hidden + attention + logit | 40 |"),
        "{report}"
    );
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // The saved student, re-measured by `eval` on the run's own dev split, gives the logged metric.
    let summary = read_json(&out.join("summary.json"));
    let o = distillery(&[
        "eval",
        "--model",
        out.join("student").to_str().unwrap(),
        "--data",
        out.join("data/dev.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["accuracy"], summary["dev"]["accuracy"]);
    assert_eq!(m["macro_f1"], summary["dev"]["macro_f1"]);
    assert_eq!(m["examples"], 24);
    // `predict`: one line per text, probabilities summing to 1, label = argmax.
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "cat dog cat\nowl hen fox\n").unwrap();
    let pred = tmp.path().join("pred.jsonl");
    let o = distillery(&[
        "predict",
        "--model",
        out.join("student").to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--output",
        pred.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_jsonl(&pred);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let p = r["probabilities"].as_object().unwrap();
        let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let best = p
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(r["label"].as_str().unwrap(), best.0);
    }
    // Without --output, predictions go to stdout.
    let o = distillery(&[
        "predict",
        "--model",
        out.join("student").to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    // A finished run is never overwritten, not even its data files, by this config or another.
    let files = [
        "student/model.safetensors",
        "data/dev.jsonl",
        "summary.json",
        "run.json",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let other_text = tiny_config("one-stage", 40, "").replace("seed = 3", "seed = 4");
    let other = write_config(tmp.path(), "other.toml", &other_text);
    let (o_s, c_s) = (out.to_str().unwrap(), cfg.to_str().unwrap());
    for c in [c_s, other.to_str().unwrap()] {
        let o = distillery(&["run", c, "--out", o_s, "--quiet"]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("already holds a finished run"),
            "{}",
            stderr(&o)
        );
    }
    // --resume with another config is refused too; with the same one it reports the finished run.
    let o = distillery(&[
        "run",
        other.to_str().unwrap(),
        "--out",
        o_s,
        "--resume",
        "--quiet",
    ]);
    assert!(
        stderr(&o).contains("another config or other data"),
        "{}",
        stderr(&o)
    );
    let o = distillery(&["run", c_s, "--out", o_s, "--resume", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(b, &std::fs::read(out.join(f)).unwrap(), "{f} changed");
    }
}

fn step_losses(out: &Path) -> Vec<(u64, f64)> {
    read_jsonl(&out.join("metrics.jsonl"))
        .iter()
        .filter(|v| v["event"] == "step")
        .map(|v| {
            (
                v["global_step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_run_killed_mid_stage_and_resumed_ends_with_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "tiny.toml",
        &tiny_config("three-stage", 300, ""),
    );
    let full = tmp.path().join("full");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        full.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            killed.to_str().unwrap(),
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill (SIGKILL) as soon as the distillation has written its second checkpoint.
    let ckpts = killed.join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoint_steps(&ckpts).len() < 2 {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no second checkpoint within 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    assert!(!killed.join("summary.json").exists());
    let last = *checkpoint_steps(&ckpts).last().unwrap();
    assert!(last > 0 && last < 300, "{last}");

    resume_after(&cfg, &killed, "three-stage", last, "metrics.jsonl");
    assert_eq!(
        std::fs::read(full.join("student/model.safetensors")).unwrap(),
        std::fs::read(killed.join("student/model.safetensors")).unwrap(),
        "resumed student differs from the uninterrupted one"
    );
    // The metrics file reads as one uninterrupted run: every line (steps, evaluations, stage
    // ends) the same but for the measured throughput.
    assert_eq!(step_losses(&full), step_losses(&killed));
    assert_eq!(
        metrics_without_throughput(&full.join("metrics.jsonl")),
        metrics_without_throughput(&killed.join("metrics.jsonl"))
    );
}

#[test]
fn a_run_stopped_then_aborted_mid_checkpoint_write_resumes_to_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "tiny.toml", &tiny_config("three-stage", 60, ""));
    let run = |out: &Path, env: &[(&str, &str)]| run_or_resume(&cfg, out, env);
    let full = tmp.path().join("full");
    let o = run(&full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // 1. Stopped after step 23 (DISTILLERY_STOP_AFTER): an error that says how to go on; the
    //    checkpoints up to step 20 stay, nothing is final.
    let out = tmp.path().join("faulty");
    let ckpts = out.join("checkpoints");
    let o = run(&out, &[("DISTILLERY_STOP_AFTER", "23")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped after global step 23") && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    assert_eq!(checkpoint_steps(&ckpts).last(), Some(&20));
    assert!(!out.join("summary.json").exists() && !out.join("student").exists());

    // 2. Resumed, then aborted halfway through writing step 35's checkpoint: its temporary
    //    folder holds the parameters but no state, and step 30 is the newest complete one.
    let o = run(&out, &[("DISTILLERY_ABORT_IN_CHECKPOINT", "35")]);
    assert!(!o.status.success(), "the abort did not happen");
    let partial = ckpts.join(".step-00000035.tmp");
    assert!(
        partial.join("params.safetensors").is_file(),
        "no partial checkpoint"
    );
    assert!(!partial.join("state.json").exists());
    assert_eq!(checkpoint_steps(&ckpts).last(), Some(&30));

    // 3. Resumed from step 30: the partial folder is cleaned away, and the run ends with the
    //    uninterrupted run's bits and metrics.
    resume_after(&cfg, &out, "three-stage", 30, "metrics.jsonl");
    assert!(!partial.exists());
    assert_same_run(&full, &out, &["student/model.safetensors"], "metrics.jsonl");
}

#[test]
fn a_teacher_fine_tune_stopped_and_resumed_ends_with_the_same_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tiny_config("one-stage", 4, "").replace(
        "steps = 30\nlr = 3e-3",
        "steps = 30\nlr = 3e-3\neval_every = 4",
    );
    let cfg = write_config(tmp.path(), "tiny.toml", &text);
    let run = |out: &Path, env: &[(&str, &str)]| run_or_resume(&cfg, out, env);
    let full = tmp.path().join("full");
    let o = run(&full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Stopped after step 14 of the teacher's fine-tuning: no teacher is final, no distillation
    // started, and the newest teacher checkpoint is from an evaluation (every 4 steps).
    let out = tmp.path().join("stopped");
    let o = run(&out, &[("DISTILLERY_STOP_AFTER", "teacher:14")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("teacher fine-tuning stopped after global step 14"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("teacher/teacher.json").exists());
    assert!(!out.join("checkpoints").exists());
    let steps = checkpoint_steps(&out.join("teacher-checkpoints"));
    let last = *steps.last().expect("no teacher checkpoint");
    assert!(
        last > 0 && last <= 14 && last.is_multiple_of(4),
        "{steps:?}"
    );

    resume_after(&cfg, &out, "teacher", last, "teacher-metrics.jsonl");
    let models = ["teacher/model.safetensors", "student/model.safetensors"];
    assert_same_run(&full, &out, &models, "teacher-metrics.jsonl");
}

#[test]
fn compare_writes_a_table_and_a_plot_for_each_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "tiny.toml", &tiny_config("one-stage", 12, ""));
    let out = tmp.path().join("cmp");
    let o = distillery(&[
        "compare",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--schedules",
        "one-stage,two-stage,three-stage",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    for s in ["one-stage", "two-stage", "three-stage"] {
        assert!(md.contains(&format!("| {s} |")), "{md}");
        assert!(out.join(s).join("student/model.safetensors").is_file());
    }
    assert!(md.contains("share of teacher kept"), "{md}");
    let svg = std::fs::read_to_string(out.join("comparison.svg")).unwrap();
    for s in ["one-stage", "two-stage", "three-stage", "teacher"] {
        assert!(svg.contains(s), "{s} missing from the plot");
    }
    // Equal budget: every schedule ran 12 steps; the table shows each run's own figures.
    let rows = read_json(&out.join("comparison.json"));
    for r in rows.as_array().unwrap() {
        assert_eq!(r["steps"], 12);
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", r["schedule"].as_str().unwrap())))
            .unwrap();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let acc = |m: &Value| format!("{:.4}", m["accuracy"].as_f64().unwrap());
        assert_eq!(cells[3], acc(&r["dev"]), "{line}");
        assert_eq!(cells[4], acc(&r["test"]), "{line}");
        assert_eq!(
            cells[5],
            format!("{} / {}", acc(&r["teacher_dev"]), acc(&r["teacher_test"]))
        );
        let kept = 100.0 * r["test"]["accuracy"].as_f64().unwrap()
            / r["teacher_test"]["accuracy"].as_f64().unwrap();
        assert_eq!(cells[6], format!("{kept:.1}% (test)"), "{line}");
        assert_eq!(cells[7], r["student_parameters"].to_string());
    }
    // The teacher was trained once and shared.
    assert!(out.join("teacher/teacher.json").is_file());
    assert!(!out.join("one-stage/teacher").exists());
}

/// Runs `run` on `text`; asserts failure, and that the one-line message names the config file
/// and every string in `names`.
fn bad_config(text: &str, names: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "bad.toml", text);
    let out = tmp.path().join("out");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("bad.toml"),
        "{err}"
    );
    for n in names {
        assert!(last.contains(n), "expected {n:?} in: {err}");
    }
    assert!(
        !out.join("teacher").exists(),
        "nothing should train before the error: {err}"
    );
}

#[test]
fn bad_config_unknown_key() {
    bad_config(
        &tiny_config("one-stage", 10, "lrr = 1.0"),
        &["distill", "lrr"],
    );
}

#[test]
fn bad_config_unknown_loss_kind() {
    let t = tiny_config("one-stage", 10, "")
        .replace("[losses.attention]", "[losses.attention]\nkind = \"foo\"");
    bad_config(&t, &["losses.attention.kind", "foo", "line"]);
}

#[test]
fn bad_config_layer_map_out_of_range() {
    let t =
        tiny_config("one-stage", 10, "").replace("[losses.hidden]", "[losses.hidden]\nmap = [7]");
    bad_config(&t, &["losses.hidden.map"]);
}

#[test]
fn bad_config_width_mismatch_without_projection() {
    let t = tiny_config("one-stage", 10, "")
        .replace("[losses.hidden]", "[losses.hidden]\nprojection = \"none\"");
    bad_config(&t, &["losses.hidden.projection"]);
}

#[test]
fn bad_config_head_mismatch_for_attention_kl() {
    let t = tiny_config("one-stage", 10, "").replace(
        "heads = 2\nintermediate = 16",
        "heads = 4\nintermediate = 16",
    );
    bad_config(&t, &["losses.attention", "relation"]);
}

#[test]
fn bad_config_vocabulary_mismatch() {
    // A teacher folder whose embeddings are smaller than its tokenizer's vocabulary.
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    let mut c = distillery_models::testing::tiny_config(&["no", "yes"]);
    c.vocab_size = 8;
    let m = distillery_models::random_student(
        c,
        1,
        false,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tok = tmp.path().join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    distillery_models::testing::write_tiny_tokenizer(&tok).unwrap();
    distillery_models::save_model(&m, &teacher, Some(&tok)).unwrap();
    let data = tmp.path().join("d.tsv");
    std::fs::write(
        &data,
        "text\tlabel\nthe cat\tyes\na dog\tno\nthe mat\tyes\na cat\tno\nthe dog\tyes\n",
    )
    .unwrap();
    let t = format!(
        r#"
[data]
path = {data:?}
split = [0.6, 0.2, 0.2]
[teacher]
path = {teacher:?}
[student]
init = "teacher-layers"
teacher_layers = [0]
[losses.hidden]
[losses.attention]
[losses.logit]
[distill]
total_steps = 4
"#,
        data = data.to_str().unwrap(),
        teacher = teacher.to_str().unwrap()
    );
    bad_config(&t, &["key `teacher`", "tokenizer has 21 tokens"]);
}

#[test]
fn bad_config_missing_data_file() {
    let t = tiny_config("one-stage", 10, "").replace(
        "[data.synthetic]\nexamples = 240\nmin_len = 4\nmax_len = 8\nvocab_words = 10",
        "path = \"nope/reviews.csv\"",
    );
    bad_config(&t, &["data.path", "nope/reviews.csv"]);
}

#[test]
fn bad_config_missing_teacher_folder() {
    let t = tiny_config("one-stage", 10, "").replace(
        "[teacher.random]\nlayers = 2\nhidden = 16\nheads = 2\nintermediate = 32\n[teacher.finetune]",
        "[teacher]\npath = \"no-such-model\"\n[teacher.finetune]",
    );
    bad_config(&t, &["teacher.path", "no-such-model"]);
}

#[test]
fn bad_config_non_positive_lr() {
    let t = tiny_config("one-stage", 10, "").replace(
        "total_steps = 10\nlr = 3e-3",
        "total_steps = 10\nlr = -1e-3",
    );
    bad_config(&t, &["distill.lr"]);
}

#[test]
fn bad_config_zero_steps() {
    bad_config(&tiny_config("one-stage", 0, ""), &["distill.total_steps"]);
}

#[test]
fn every_shipped_config_passes_a_dry_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let configs = [
        "configs/quickstart.toml",
        "configs/rotten-tomatoes/distill.toml",
        "configs/rotten-tomatoes/custom.toml",
    ];
    for c in configs {
        let path = root.join(c);
        let o = distillery(&["run", path.to_str().unwrap(), "--dry-run"]);
        assert!(o.status.success(), "{c}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(" steps "), "{c}: {out}");
    }
    // The embedded default is the quickstart file, and comparing it plans the three presets.
    let o = distillery(&["compare", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for s in ["one-stage:", "two-stage:", "three-stage:"] {
        assert!(out.contains(s), "{out}");
    }
}

#[test]
fn bad_config_empty_test_split() {
    let t =
        tiny_config("one-stage", 10, "").replace("[data]", "[data]\nsplit = [0.899, 0.1, 0.001]");
    bad_config(
        &t,
        &["key `data.split`", "test split of <synthetic> is empty"],
    );
}

#[test]
fn a_run_reading_the_teacher_cache_ends_with_the_same_bits() {
    // Equal lengths (no padding): the teacher forward is then batch-independent to the bit, so
    // the f32 cache must reproduce the uncached run exactly (ragged lengths: see the tolerance
    // in crates/stages/tests/cache.rs).
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_config("two-stage", 20, "").replace("min_len = 4", "min_len = 8");
    let (a, b) = live_and_cached(tmp.path(), &base);
    assert!(!a.join("teacher-cache").exists());
    assert!(b.join("teacher-cache/index.json").is_file());
}

/// Runs `base` with a live teacher into `dir/a` and reading an f32 teacher cache into `dir/b`,
/// and asserts the two runs have the same step losses and the same student bits.
fn live_and_cached(dir: &Path, base: &str) -> (PathBuf, PathBuf) {
    let plain = write_config(dir, "plain.toml", base);
    let cached = write_config(
        dir,
        "cached.toml",
        &format!("{base}\n[teacher_cache]\ndtype = \"f32\"\n"),
    );
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (cfg, out) in [(&plain, &a), (&cached, &b)] {
        let o = distillery(&[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(step_losses(&a), step_losses(&b));
    let same = std::fs::read(a.join("student/model.safetensors")).unwrap()
        == std::fs::read(b.join("student/model.safetensors")).unwrap();
    assert!(same, "the student trained from the cache differs");
    (a, b)
}

#[test]
fn bad_config_teacher_cache_over_budget() {
    let t = format!(
        "{}\n[teacher_cache]\nbudget_mb = 1\n",
        tiny_config("one-stage", 10, "").replace("examples = 240", "examples = 4000")
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "bad.toml", &t);
    let out = tmp.path().join("out");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml: key `teacher_cache`") && err.contains("budget"),
        "{err}"
    );
    assert!(!out.join("teacher-cache/index.json").exists());
}

#[test]
fn bad_config_mse_logit_loss_with_top_k_cached_logits() {
    let t = tiny_config("one-stage", 10, "")
        .replace("[losses.logit]", "[losses.logit]\nkind = \"mse\"")
        + "\n[teacher_cache]\ntop_k_logits = 1\n";
    bad_config(&t, &["teacher_cache.top_k_logits", "mse"]);
}

#[test]
fn bad_config_zero_micro_batches() {
    bad_config(
        &tiny_config("one-stage", 10, "micro_batches = 0"),
        &["distill.micro_batches"],
    );
}

/// `best_metric = "loss"` + `export = "best"`: the student is the checkpoint with the lowest dev
/// loss (the first of equals), its re-measured dev loss is that value, and the folder keeps it
/// beside the newest. With `keep_best = false` only the newest checkpoint is left.
#[test]
fn the_best_checkpoint_by_dev_loss_is_exported_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "tiny.toml",
        &tiny_config(
            "one-stage",
            40,
            "best_metric = \"loss\"\nexport = \"best\"\nkeep_checkpoints = 1",
        ),
    );
    let out = tmp.path().join("out");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let evals: Vec<(u64, f64)> = read_jsonl(&out.join("metrics.jsonl"))
        .iter()
        .filter(|v| v["event"] == "eval")
        .map(|v| {
            (
                v["global_step"].as_u64().unwrap(),
                v["dev_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(evals.len(), 8);
    let best = evals
        .iter()
        .copied()
        .reduce(|b, e| if e.1 < b.1 { e } else { b })
        .unwrap();
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["best_metric"], "dev loss");
    assert_eq!(summary["best_dev"][0], best.0);
    assert_eq!(summary["best_dev"][1].as_f64().unwrap(), best.1);
    assert_eq!(summary["exported_step"], best.0);
    let kept = checkpoint_steps(&out.join("checkpoints"));
    let mut want = vec![best.0 as usize, 40];
    want.dedup();
    assert_eq!(kept, want);
    let o = distillery(&[
        "eval",
        "--model",
        out.join("student").to_str().unwrap(),
        "--data",
        out.join("data/dev.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    let loss = m["loss"].as_f64().unwrap();
    assert!(
        (loss - best.1).abs() <= 1e-6 * best.1.max(1.0),
        "{loss} vs {}",
        best.1
    );
    assert_eq!(summary["dev"]["loss"].as_f64().unwrap(), loss);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains(&format!(
            "Best dev loss {:.4} at global step {}",
            best.1, best.0
        )),
        "{report}"
    );

    let cfg = write_config(
        tmp.path(),
        "last.toml",
        &tiny_config("one-stage", 40, "keep_best = false\nkeep_checkpoints = 1"),
    );
    let out = tmp.path().join("last");
    let o = distillery(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint_steps(&out.join("checkpoints")), [40]);
    assert_eq!(read_json(&out.join("summary.json"))["exported_step"], 40);
}

#[test]
fn bad_config_export_best_without_keeping_it() {
    bad_config(
        &tiny_config("one-stage", 10, "export = \"best\"\nkeep_best = false"),
        &["distill.export", "keep_best"],
    );
}

#[test]
fn bad_config_unknown_best_metric() {
    bad_config(
        &tiny_config("one-stage", 10, "best_metric = \"bleu\""),
        &["distill.best_metric", "bleu", "line"],
    );
}

#[test]
fn a_minilm_schedule_with_the_value_relation_term_runs_live_and_from_the_cache() {
    // MiniLM's recipe as a custom stage: attention KL + value relation on the last layer. The
    // cache must store exactly what the two terms read (Q, K and V of teacher layer 2) and
    // reproduce the live run (equal lengths: bit-identical, as above).
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_config("custom", 0, "")
        .replace("min_len = 4", "min_len = 8")
        .replace("total_steps = 0\n", "")
        + "[[distill.stages]]\nname = \"minilm\"\nlosses = [\"attention\", \"value_relation\"]\nsteps = 12\n[losses.value_relation]\nweight = 2.0\n";
    let (a, b) = live_and_cached(tmp.path(), &base);
    let steps: Vec<Value> = read_jsonl(&a.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 12);
    for s in &steps {
        let (att, vr) = (
            s["attention"].as_f64().unwrap(),
            s["value_relation"].as_f64().unwrap(),
        );
        assert!(att > 0.0 && vr > 0.0, "{s}");
        assert!(
            (s["loss"].as_f64().unwrap() - (att + 2.0 * vr)).abs() < 1e-5 * (att + 2.0 * vr),
            "the objective is attention + 2 × value relation: {s}"
        );
    }
    let first = steps[0]["value_relation"].as_f64().unwrap();
    let last = steps[11]["value_relation"].as_f64().unwrap();
    assert!(
        last < first,
        "the value relation did not fall: {first} → {last}"
    );
    let index = read_json(&b.join("teacher-cache/index.json"));
    assert_eq!(index["needs"]["v"], serde_json::json!([2]), "{index}");
    assert_eq!(index["needs"]["q"], serde_json::json!([2]), "{index}");
    assert_eq!(index["needs"]["hidden"], serde_json::json!([]), "{index}");
    let svg = std::fs::read_to_string(a.join("loss.svg")).unwrap();
    assert!(
        svg.contains("value-relation"),
        "the loss plot lacks the term"
    );
}
