//! Config tests: full configs into the expected schedules, and one test per bad case asserting
//! that the one-line error names the file and the key.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use distillery_data::{MalformedPolicy, SplitFractions, SplitSpec};
use distillery_losses::{HiddenKind, HiddenLoss, LayerMap, LogitKind, LogitLoss};
use distillery_models::{testing::tiny_config, BertConfig, StudentSpec};
use distillery_stages::terms::{self, Weighted};
use distillery_stages::{Decay, Preset, Schedule};
use tempfile::TempDir;

use super::*;

mod loss_terms;

/// A complete, valid config; tests edit it with [`edit`].
const BASE: &str = r#"seed = 7
device = "cpu"

[data]
train = "train.tsv"
dev = "dev.tsv"
batch_size = 4

[teacher]
path = "teacher"

[student]
init = "teacher-layers"
teacher_layers = [0, 2, 4]

[losses.hidden]
kind = "mse"
map = "uniform"

[losses.attention]
kind = "kl"

[losses.logit]
temperature = 2.0
hard_label_weight = 0.5

[distill]
schedule = "three-stage"
total_steps = 600
split = [0.4, 0.3, 0.3]
lr = 1e-4
warmup = 0.1
"#;

/// A four-stage custom `[distill]` replacing BASE's.
const CUSTOM: &str = r#"[distill]
schedule = "custom"
lr = 2e-4
warmup = 0.1
frozen = ["embeddings."]

[[distill.stages]]
name = "intermediate"
losses = ["hidden", "attention"]
steps = 200

[[distill.stages]]
name = "joint"
losses = ["hidden", "attention", "logit"]
epochs = 1.5
lr = 5e-5
carry_optimizer = true

[[distill.stages]]
name = "prediction"
losses = ["logit"]
steps = 100
warmup = 0.0
decay = "cosine"
frozen = []

[[distill.stages]]
name = "labels"
losses = ["hard_label"]
steps = 50
eval_every = 10
"#;

/// The replacements applied in order; each `from` must occur (a typo in a test fails loudly).
fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut s = text.to_string();
    for (from, to) in edits {
        assert!(s.contains(from), "edit target {from:?} not in the config");
        s = s.replacen(from, to, 1);
    }
    s
}

/// A folder with the data files and teacher folder BASE names, and `text` as `x.toml`.
fn fixture(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["train.tsv", "dev.tsv", "all.csv"] {
        std::fs::write(dir.path().join(f), "text\tlabel\na\tb\n").unwrap();
    }
    std::fs::create_dir(dir.path().join("teacher")).unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn load_ok(text: &str) -> (TempDir, Config) {
    let (dir, path) = fixture(text);
    let config = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    (dir, config)
}

/// The error of loading `text`; asserts it is one line naming the file and `key`.
fn load_err(text: &str, key: &str) -> String {
    let (_dir, path) = fixture(text);
    let e = format!(
        "{:#}",
        load(&path).expect_err("the config should be rejected")
    );
    assert_named(&e, &path, key);
    e
}

fn assert_named(e: &str, file: &Path, key: &str) {
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(
        e.starts_with(&format!("{}: ", file.display())),
        "no file name: {e}"
    );
    assert!(e.contains(&format!("key `{key}`")), "no key `{key}`: {e}");
}

fn kinds(schedule: &Schedule) -> Vec<Vec<&'static str>> {
    schedule
        .stages
        .iter()
        .map(|s| s.losses.iter().map(Weighted::name).collect())
        .collect()
}

fn names(schedule: &Schedule) -> Vec<&str> {
    schedule.stages.iter().map(|s| s.name.as_str()).collect()
}

fn steps(schedule: &Schedule) -> Vec<usize> {
    schedule.stages.iter().map(|s| s.steps).collect()
}

fn warmups(schedule: &Schedule) -> Vec<usize> {
    schedule.stages.iter().map(|s| s.lr.warmup_steps).collect()
}

/// A 6-layer, 16-wide, 4-head teacher.
fn teacher() -> BertConfig {
    BertConfig {
        num_hidden_layers: 6,
        ..tiny_config(&["a", "b"])
    }
}

/// The student BASE builds from teacher layers [0, 2, 4].
fn student() -> BertConfig {
    BertConfig {
        num_hidden_layers: 3,
        ..tiny_config(&["a", "b"])
    }
}

fn check_models_err(text: &str, t: &BertConfig, s: &BertConfig, vocab: usize, key: &str) {
    let (_dir, config) = load_ok(text);
    let e = format!(
        "{:#}",
        config
            .check_models(t, s, vocab)
            .expect_err("the models should be rejected")
    );
    assert_named(&e, config.source(), key);
}

// ---------------------------------------------------------------- valid configs

#[test]
fn three_stage_preset_from_a_full_config() {
    let (dir, c) = load_ok(BASE);
    assert_eq!(c.base_dir(), dir.path());
    assert_eq!(
        c.schedule_choice(),
        ScheduleChoice::Preset(Preset::ThreeStage)
    );
    let s = c.schedule(c.schedule_choice(), 10).unwrap();
    assert_eq!(names(&s), ["I", "II", "III"]);
    assert_eq!(steps(&s), [240, 180, 180]);
    assert_eq!(warmups(&s), [24, 18, 18]);
    assert_eq!(
        kinds(&s),
        [
            vec!["hidden", "attention"],
            vec!["hidden", "attention", "logit", "hard_label"],
            vec!["logit", "hard_label"],
        ]
    );
    for stage in &s.stages {
        assert_eq!(stage.lr.peak, 1e-4);
        assert_eq!(stage.lr.decay, Decay::Linear);
        assert_eq!(stage.optimizer.weight_decay, 0.01);
        assert!(!stage.carry_optimizer);
    }
    assert_eq!(s.stages[2].losses[1], terms::hard_label(0.5));
    assert_eq!(
        s.stages[0].losses[0],
        terms::hidden(
            HiddenLoss {
                kind: HiddenKind::Mse,
                include_embeddings: true,
            },
            LayerMap::Uniform,
            1.0
        )
    );
    assert_eq!(
        s.stages[2].losses[0],
        Weighted::new(
            terms::LogitTerm {
                loss: LogitLoss {
                    kind: LogitKind::Kl,
                    temperature: 2.0,
                },
                hard_label_weight: 0.5,
            },
            1.0
        )
    );
}

#[test]
fn one_and_two_stage_presets_from_a_full_config() {
    let text = edit(
        BASE,
        &[
            ("schedule = \"three-stage\"", "schedule = \"one-stage\""),
            ("split = [0.4, 0.3, 0.3]\n", ""),
            ("hard_label_weight = 0.5", "hard_label_weight = 0.0"),
        ],
    );
    let (_dir, c) = load_ok(&text);
    let one = c
        .schedule(ScheduleChoice::Preset(Preset::OneStage), 10)
        .unwrap();
    assert_eq!(names(&one), ["I"]);
    assert_eq!(steps(&one), [600]);
    assert_eq!(warmups(&one), [60]);
    assert_eq!(kinds(&one), [vec!["hidden", "attention", "logit"]]);
    let two = c
        .schedule(ScheduleChoice::Preset(Preset::TwoStage), 10)
        .unwrap();
    assert_eq!(names(&two), ["I", "II"]);
    assert_eq!(steps(&two), [300, 300]);
    assert_eq!(warmups(&two), [30, 30]);
    assert_eq!(kinds(&two), [vec!["hidden", "attention"], vec!["logit"]]);
    assert!(two.stages.iter().all(|s| s.lr.peak == 1e-4));
}

#[test]
fn total_epochs_become_steps() {
    let text = edit(
        BASE,
        &[
            ("total_steps = 600", "total_epochs = 2.5"),
            ("split = [0.4, 0.3, 0.3]\n", ""),
        ],
    );
    let (_dir, c) = load_ok(&text);
    // ceil(2.5 · 7) = 18, split evenly.
    let s = c.schedule(c.schedule_choice(), 7).unwrap();
    assert_eq!(s.total_steps(), 18);
    assert_eq!(steps(&s), [6, 6, 6]);
}

#[test]
fn custom_four_stage_schedule() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    let (_dir, c) = load_ok(&text);
    assert_eq!(c.schedule_choice(), ScheduleChoice::Custom);
    let s = c.schedule(ScheduleChoice::Custom, 10).unwrap();
    assert_eq!(names(&s), ["intermediate", "joint", "prediction", "labels"]);
    // Stage 2: ceil(1.5 · 10).
    assert_eq!(steps(&s), [200, 15, 100, 50]);
    assert_eq!(warmups(&s), [20, 2, 0, 5]);
    assert_eq!(
        kinds(&s),
        [
            vec!["hidden", "attention"],
            vec!["hidden", "attention", "logit", "hard_label"],
            vec!["logit", "hard_label"],
            vec!["hard_label"],
        ]
    );
    let peaks: Vec<f64> = s.stages.iter().map(|x| x.lr.peak).collect();
    assert_eq!(peaks, [2e-4, 5e-5, 2e-4, 2e-4]);
    assert_eq!(s.stages[2].lr.decay, Decay::Cosine);
    assert_eq!(s.stages[0].lr.decay, Decay::Linear);
    assert!(s.stages[1].carry_optimizer && !s.stages[0].carry_optimizer);
    assert_eq!(s.stages[0].params.frozen, ["embeddings."]);
    assert!(s.stages[2].params.frozen.is_empty());
    assert_eq!(s.stages[3].eval_every, 10);
    // An explicit hard_label stage takes the logit table's weight.
    assert_eq!(s.stages[3].losses, [terms::hard_label(0.5)]);
    // The presets still build from the same loss tables (for `compare`).
    let three = c.schedule(ScheduleChoice::Preset(Preset::ThreeStage), 10);
    assert!(three.is_err(), "no total_steps: {three:?}");
}

#[test]
fn data_teacher_student_and_finetune_convert() {
    let text = edit(
        BASE,
        &[
            (
                "train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
                "path = \"all.csv\"\nsplit = [0.5, 0.25, 0.25]\ntext_pair = \"second\"\nmalformed = \"skip\"\n",
            ),
            (
                "path = \"teacher\"\n",
                "path = \"teacher\"\n[teacher.finetune]\nepochs = 2\nlr = 5e-5\n",
            ),
        ],
    );
    let (dir, c) = load_ok(&text);
    assert_eq!(
        c.split_spec(),
        Some(SplitSpec::Fractions {
            path: dir.path().join("all.csv"),
            fractions: SplitFractions::new(0.5, 0.25, 0.25),
            seed: 7,
        })
    );
    let rc = c.read_config();
    assert_eq!(rc.columns.text, "text");
    assert_eq!(rc.columns.text_pair.as_deref(), Some("second"));
    assert_eq!(rc.columns.label.as_deref(), Some("label"));
    assert_eq!(rc.malformed, MalformedPolicy::Skip);
    assert_eq!(c.train_batches().batch_size, 4);
    assert_eq!(c.train_batches().shuffle_seed, Some(7));
    assert_eq!(c.eval_batches().batch_size, 64);
    assert_eq!(
        c.teacher_source().unwrap(),
        TeacherSource::Folder(dir.path().join("teacher"))
    );
    assert_eq!(
        c.student_source().unwrap(),
        StudentSource::TeacherLayers(vec![0, 2, 4])
    );
    let f = c.finetune_schedule(30).unwrap().unwrap();
    assert_eq!(names(&f), ["finetune"]);
    assert_eq!(steps(&f), [60]);
    assert_eq!(warmups(&f), [6]);
    assert_eq!(f.stages[0].losses, [terms::hard_label(1.0)]);
    assert_eq!(f.stages[0].lr.peak, 5e-5);
    assert!(!f.needs_teacher());
}

#[test]
fn embedded_synthetic_random_config_parses_against_the_current_directory() {
    let text = r#"
[data.synthetic]
examples = 200

[teacher.random]
layers = 4
hidden = 32
heads = 4
intermediate = 64

[student]
init = "random"
layers = 2
hidden = 16
heads = 2
intermediate = 32

[losses.hidden]
[losses.attention]
kind = "relation"
relation_heads = 4
[losses.logit]

[distill]
total_steps = 20
"#;
    let c = parse(text, Path::new("quickstart.toml")).unwrap();
    assert_eq!(c.base_dir(), Path::new(""));
    assert_eq!(c.resolve(Path::new("a.tsv")), PathBuf::from("a.tsv"));
    assert_eq!(c.seed, 17);
    assert_eq!(c.device, DeviceSpec::Cpu);
    let syn = c.synthetic_config().unwrap();
    assert_eq!((syn.examples, syn.max_len, syn.seed), (200, 12, 17));
    assert_eq!(c.split_spec(), None);
    assert_eq!(
        c.teacher_source().unwrap(),
        TeacherSource::Random(StudentSpec {
            layers: 4,
            hidden: 32,
            heads: 4,
            intermediate: 64
        })
    );
    let s = c.schedule(c.schedule_choice(), 5).unwrap();
    assert_eq!(names(&s), ["I"]);
    assert_eq!(steps(&s), [20]);
    assert_eq!(DeviceSpec::parse("cuda:1"), Some(DeviceSpec::Cuda(1)));
    assert_eq!(DeviceSpec::parse("cuda:"), None);
}

#[test]
fn matching_models_pass_the_model_checks() {
    let (_dir, c) = load_ok(BASE);
    c.check_models(&teacher(), &student(), 40).unwrap();
}

// ---------------------------------------------------------------- one test per bad case

#[test]
fn unknown_top_level_key() {
    let e = load_err(&format!("sede = 3\n{BASE}"), "sede");
    assert!(
        e.contains("line 1") && e.contains("unknown field `sede`"),
        "{e}"
    );
}

#[test]
fn unknown_nested_key() {
    let e = load_err(&edit(BASE, &[("lr = 1e-4", "lrr = 1e-4")]), "distill.lrr");
    assert!(
        e.contains("line 31") && e.contains("unknown field `lrr`"),
        "{e}"
    );
}

#[test]
fn unknown_loss_kind_has_the_line() {
    let e = load_err(
        &edit(BASE, &[("kind = \"kl\"", "kind = \"foo\"")]),
        "losses.attention.kind",
    );
    assert!(
        e.contains("line 21") && e.contains("unknown variant `foo`") && e.contains("score-mse"),
        "{e}"
    );
}

#[test]
fn bad_stage_loss_name_has_index_and_line() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    let e = load_err(
        &edit(&text, &[("[\"hard_label\"]", "[\"hard_labels\"]")]),
        "distill.stages[3].losses[0]",
    );
    assert!(e.contains("unknown variant `hard_labels`"), "{e}");
}

#[test]
fn layer_map_out_of_range() {
    let text = edit(BASE, &[("map = \"uniform\"", "map = [2, 4, 7]")]);
    check_models_err(&text, &teacher(), &student(), 40, "losses.hidden.map");
}

#[test]
fn width_mismatch_without_projection() {
    let text = edit(BASE, &[("map = \"uniform\"", "projection = \"none\"")]);
    let s = BertConfig {
        hidden_size: 8,
        num_attention_heads: 4,
        ..student()
    };
    check_models_err(&text, &teacher(), &s, 40, "losses.hidden.projection");
}

#[test]
fn head_mismatch_for_attention_kl() {
    let s = BertConfig {
        num_attention_heads: 2,
        ..student()
    };
    check_models_err(BASE, &teacher(), &s, 40, "losses.attention.kind");
}

#[test]
fn relation_heads_must_divide_both_widths() {
    let text = edit(
        BASE,
        &[(
            "kind = \"kl\"\n",
            "kind = \"relation\"\nrelation_heads = 3\n",
        )],
    );
    check_models_err(
        &text,
        &teacher(),
        &student(),
        40,
        "losses.attention.relation_heads",
    );
}

#[test]
fn vocabulary_mismatch() {
    let s = BertConfig {
        vocab_size: 30,
        ..student()
    };
    check_models_err(BASE, &teacher(), &s, 30, "student");
}

#[test]
fn tokenizer_larger_than_the_teacher_embeddings() {
    check_models_err(BASE, &teacher(), &student(), 41, "teacher");
}

#[test]
fn teacher_layers_out_of_range() {
    let text = edit(BASE, &[("[0, 2, 4]", "[0, 2, 6]")]);
    check_models_err(&text, &teacher(), &student(), 40, "student.teacher_layers");
}

#[test]
fn unused_losses_are_not_checked_against_the_models() {
    // A custom schedule without attention: a head mismatch does not matter.
    let custom = edit(CUSTOM, &[("\"hidden\", \"attention\"]", "\"hidden\"]")]);
    let custom = edit(
        &custom,
        &[("\"hidden\", \"attention\", \"logit\"]", "\"logit\"]")],
    );
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], &custom)]);
    let (_dir, c) = load_ok(&text);
    let s = BertConfig {
        num_attention_heads: 2,
        ..student()
    };
    c.check_models(&teacher(), &s, 40).unwrap();
    assert!(c
        .check_models_for(
            &[ScheduleChoice::Preset(Preset::OneStage)],
            &teacher(),
            &s,
            40
        )
        .is_err());
}

#[test]
fn missing_data_file() {
    let e = load_err(
        &edit(BASE, &[("dev = \"dev.tsv\"", "dev = \"nope.tsv\"")]),
        "data.dev",
    );
    assert!(e.contains("no such file") && e.contains("nope.tsv"), "{e}");
}

#[test]
fn data_file_without_a_known_format() {
    let (dir, path) = fixture(&edit(BASE, &[("dev = \"dev.tsv\"", "dev = \"dev.txt\"")]));
    std::fs::write(dir.path().join("dev.txt"), "text\tlabel\n").unwrap();
    let e = format!("{:#}", load(&path).expect_err("no format"));
    assert_named(&e, &path, "data.dev");
    assert!(e.contains("data.format"), "{e}");
    let with_format = edit(
        BASE,
        &[("dev = \"dev.tsv\"", "dev = \"dev.txt\"\nformat = \"tsv\"")],
    );
    std::fs::write(&path, with_format).unwrap();
    load(&path).unwrap();
}

#[test]
fn bad_synthetic_setting() {
    let text = edit(
        BASE,
        &[
            ("train = \"train.tsv\"\ndev = \"dev.tsv\"\n", ""),
            (
                "batch_size = 4\n",
                "batch_size = 4\n[data.synthetic]\nmin_len = 8\nmax_len = 4\n",
            ),
        ],
    );
    let e = load_err(&text, "data.synthetic.max_len");
    assert!(e.contains("must be at least min_len (8), got 4"), "{e}");
}

#[test]
fn missing_teacher_folder() {
    let e = load_err(
        &edit(BASE, &[("path = \"teacher\"", "path = \"../nowhere\"")]),
        "teacher.path",
    );
    assert!(e.contains("no such folder"), "{e}");
}

#[test]
fn non_positive_lr() {
    let e = load_err(&edit(BASE, &[("lr = 1e-4", "lr = -1")]), "distill.lr");
    assert!(e.contains("must be positive, got -1"), "{e}");
}

#[test]
fn zero_steps() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    let e = load_err(
        &edit(&text, &[("steps = 100", "steps = 0")]),
        "distill.stages[2].steps",
    );
    assert!(e.contains("must be positive, got 0"), "{e}");
}

#[test]
fn steps_and_epochs_both_given() {
    let e = load_err(
        &edit(
            BASE,
            &[("total_steps = 600", "total_steps = 600\ntotal_epochs = 2")],
        ),
        "distill",
    );
    assert!(e.contains("exclusive"), "{e}");
}

#[test]
fn custom_stage_using_an_undefined_loss() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    let text = edit(&text, &[("[losses.attention]\nkind = \"kl\"\n", "")]);
    let e = load_err(&text, "distill.stages[0].losses");
    assert!(
        e.contains("\"intermediate\"") && e.contains("[losses.attention]"),
        "{e}"
    );
}

#[test]
fn preset_using_a_missing_loss_table() {
    let text = edit(
        BASE,
        &[(
            "[losses.logit]\ntemperature = 2.0\nhard_label_weight = 0.5\n",
            "",
        )],
    );
    let e = load_err(&text, "losses.logit");
    assert!(e.contains("stage II of the three-stage schedule"), "{e}");
}

#[test]
fn carry_optimizer_on_the_first_stage() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    load_err(
        &edit(
            &text,
            &[("steps = 200", "steps = 200\ncarry_optimizer = true")],
        ),
        "distill.stages[0].carry_optimizer",
    );
}

#[test]
fn duplicate_stage_names() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    load_err(
        &edit(&text, &[("name = \"labels\"", "name = \"joint\"")]),
        "distill.stages[3].name",
    );
}

#[test]
fn stages_with_a_preset_schedule() {
    load_err(
        &format!("{BASE}[[distill.stages]]\nname = \"x\"\nlosses = [\"logit\"]\nsteps = 1\n"),
        "distill.stages",
    );
}

#[test]
fn toml_syntax_error_has_the_line() {
    let (_dir, path) = fixture(&edit(BASE, &[("batch_size = 4", "batch_size = = 4")]));
    let e = format!("{:#}", load(&path).err().unwrap());
    assert!(
        e.starts_with(&format!("{}: line 7: ", path.display())) && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let e = format!("{:#}", load(&path).err().unwrap());
    assert!(
        e.starts_with(&format!("{}: cannot read", path.display())) && !e.contains('\n'),
        "{e}"
    );
}
