//! `cargo xtask bench step`: one one-stage distillation step at the shape of all-MiniLM-L6-v2 as
//! teacher and a 3-layer student copied from its layers 0, 2, 4 (same width), batch 32 x seq 128:
//! hidden MSE with a learned projection (embeddings + uniform map), streaming attention KL on the
//! mapped layers, logit KD (T = 2), AdamW — through the real trainer (`distillery_stages`), in
//! its own process so that the peak RSS is its own; then the same step in PyTorch eager
//! (`scripts/bench/step_torch.py`) when a Python with torch is available.
//!
//! `--student-hidden H` (H ≠ 384) swaps in a seeded random 3-layer student of width H (12 heads,
//! FFN 4H, a learned H→384 projection): a shape where the teacher's forward dominates the step,
//! to measure what the teacher cache saves there. PyTorch's baseline runs at the default only.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use distillery_data::{BatchConfig, Batcher, Dataset, Example, LabelOrder, LabelVocab};
use distillery_losses::{
    AttentionKind, AttentionLoss, HiddenKind, HiddenLoss, LayerMap, LogitKind, LogitLoss,
    Projection,
};
use distillery_models::{
    load_model, random_student, save_model, student_from_teacher, with_new_head, LoadOptions,
    StudentSpec, TextTokenizer,
};
use distillery_stages::{
    terms, AdamW, CacheConfig, Decay, Event, LrSchedule, Models, Observer, ParamGroups, Schedule,
    Stage, TeacherCache, Trainer, TrainerConfig,
};

use crate::util;

const BATCH: usize = 32;
const SEQ: usize = 128;
/// The teacher's width: a student of this width is copied from the teacher's layers 0, 2, 4.
const TEACHER_HIDDEN: usize = 384;
/// Where the teacher's outputs come from: its forward pass, or the f32 teacher cache.
const MODES: [&str; 2] = ["teacher", "cache"];

pub fn run(json: bool, args: &[String]) -> Result<()> {
    let iters: usize = util::flag(args, "--iters")
        .unwrap_or("10")
        .parse()
        .context("--iters")?;
    let rounds: usize = util::flag(args, "--rounds")
        .unwrap_or("3")
        .parse()
        .context("--rounds")?;
    let student_hidden: usize = util::flag(args, "--student-hidden")
        .unwrap_or("384")
        .parse()
        .context("--student-hidden: expected a width such as 192")?;
    if student_hidden == 0 || !student_hidden.is_multiple_of(12) {
        bail!("--student-hidden {student_hidden}: expected a positive multiple of 12 (the head count)");
    }
    let model = util::root().join("fixtures/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").is_file() {
        bail!(
            "{}: missing; run `cargo xtask fixtures` first",
            model.display()
        );
    }
    let model_s = model.to_str().context("non-UTF-8 path")?;
    let exe = std::env::current_exe()?;
    let iters_s = iters.to_string();
    let (b, s) = (BATCH.to_string(), SEQ.to_string());
    let hidden_s = student_hidden.to_string();
    // Rounds alternate the implementations, so that a slow spell of a shared machine lands on
    // all of them; the ratios are taken within a round, then their median reported.
    let mut all: Vec<Vec<serde_json::Value>> = Vec::new();
    for round in 0..rounds.max(1) {
        let mut rows = Vec::new();
        for mode in MODES {
            let args = ["bench-step-child", model_s, &iters_s, mode, &hidden_s];
            let mut r = util::json_from(
                exe.as_os_str(),
                &args,
                &format!("the candle step bench ({mode})"),
            )?;
            r["round"] = round.into();
            rows.push(r);
        }
        if student_hidden == TEACHER_HIDDEN {
            if let Some(mut t) =
                util::torch_baseline("step_torch.py", &[model_s, &b, &s, &iters_s])?
            {
                t["round"] = round.into();
                rows.push(t);
            }
        }
        for r in &rows {
            if json {
                println!("{r}");
            } else {
                println!(
                    "round {round}: {:<26} median {:>8.1} ms   peak RSS {:>7.0} MiB{}{}",
                    r["impl"].as_str().unwrap_or("?"),
                    secs(r) * 1e3,
                    r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                    r["import_baseline_rss_mib"]
                        .as_f64()
                        .map_or(String::new(), |b| format!(" (import baseline {b:.0} MiB)")),
                    r["gemm"]
                        .as_str()
                        .map_or(String::new(), |g| format!("   GEMM: {g}"))
                );
            }
        }
        all.push(rows);
    }
    let by = |rows: &[serde_json::Value], name: &str| {
        rows.iter()
            .find(|r| r["impl"].as_str() == Some(name))
            .cloned()
    };
    let ratios = |num: &str, den: &str| -> Vec<f64> {
        all.iter()
            .filter_map(|rows| Some(secs(&by(rows, num)?) / secs(&by(rows, den)?)))
            .collect()
    };
    let mut speedups = ratios("distillery-step-teacher", "distillery-step-cache");
    let mut vs_torch = ratios("distillery-step-teacher", "pytorch-eager");
    let summary = serde_json::json!({
        "rounds": all.len(),
        "student_hidden": student_hidden,
        "cache_speedup_median": median_or_nan(&mut speedups),
        "cache_speedups": speedups,
        "ratio_vs_torch_median": median_or_nan(&mut vs_torch),
        "ratios_vs_torch": vs_torch,
    });
    if json {
        println!("{summary}");
        return Ok(());
    }
    if !speedups.is_empty() {
        println!(
            "teacher read from the cache: {:.2}x faster than running it, median of {speedups:.2?} (goal >= 1.8)",
            util::median(&mut speedups)
        );
    }
    if !vs_torch.is_empty() {
        println!(
            "step time ratio distillery / pytorch: {:.2}, median of {vs_torch:.2?} (goal <= 1.0)",
            util::median(&mut vs_torch)
        );
    }
    let peak = |name: &str, field: &str| {
        all.iter()
            .filter_map(|rows| by(rows, name)?[field].as_f64())
            .fold(f64::NAN, f64::max)
    };
    let budget =
        peak("pytorch-eager", "peak_rss_mib") - peak("pytorch-eager", "import_baseline_rss_mib");
    if budget.is_finite() {
        println!(
            "peak RSS {:.0} MiB vs pytorch's minus its import baseline {budget:.0} MiB",
            peak("distillery-step-teacher", "peak_rss_mib")
        );
    }
    Ok(())
}

fn median_or_nan(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        util::median(xs)
    }
}

fn secs(r: &serde_json::Value) -> f64 {
    r["median_s"].as_f64().unwrap_or(f64::NAN)
}

/// Step durations from the trainer's reports.
#[derive(Default)]
struct Timer {
    secs: Vec<f64>,
}

impl Observer for Timer {
    fn on_event(&mut self, event: &Event) {
        if let Event::Step(s) = event {
            self.secs.push(s.examples as f64 / s.examples_per_sec);
        }
    }
}

/// Texts long enough to fill 128 tokens, different per example.
fn dataset() -> Dataset {
    const WORDS: [&str; 16] = [
        "the", "film", "was", "quite", "good", "but", "its", "ending", "felt", "rushed", "and",
        "the", "actors", "seemed", "tired", "today",
    ];
    let examples = (0..BATCH * 4)
        .map(|i| Example {
            text: (0..200)
                .map(|j| WORDS[(i * 7 + j * 3 + j / 5) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" "),
            pair: None,
            label: Some(if i % 2 == 0 { "pos" } else { "neg" }.into()),
            line: i + 1,
        })
        .collect();
    Dataset {
        source: "<bench>".into(),
        examples,
        skipped: Vec::new(),
    }
}

pub fn child(model_dir: &str, iters: usize, mode: &str, student_hidden: usize) -> Result<()> {
    let dir = std::path::Path::new(model_dir);
    // A two-class head on the teacher, saved and reloaded frozen (memory-mapped, no Vars).
    let tmp = tempfile_dir()?;
    let base = load_model(
        dir,
        &LoadOptions {
            trainable: true,
            ..LoadOptions::default()
        },
    )?;
    let labels = vec!["neg".to_string(), "pos".to_string()];
    save_model(&with_new_head(&base, &labels, 1)?, &tmp, Some(dir))?;
    drop(base);
    let teacher = load_model(&tmp, &LoadOptions::default())?;
    let h = teacher.config.hidden_size;
    let student = if student_hidden == h {
        student_from_teacher(&teacher, &[0, 2, 4], 2)?
    } else {
        let spec = StudentSpec {
            layers: 3,
            hidden: student_hidden,
            heads: teacher.config.num_attention_heads,
            intermediate: 4 * student_hidden,
        };
        random_student(
            spec.config(&teacher.config)?,
            2,
            true,
            DType::F32,
            &Device::Cpu,
        )?
    };
    let vars = VarMap::new();
    let proj = vec![Projection::new(
        &vars,
        "projection.hidden",
        student_hidden,
        h,
        3,
        &Device::Cpu,
    )?];
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"), SEQ)?;
    let data = dataset();
    let vocab = LabelVocab::from_dataset(&data, LabelOrder::Sorted)?;
    let mut batcher = Batcher::new(&data, &tok, Some(&vocab), BatchConfig::shuffled(BATCH, 1))?;
    let stage = Stage {
        name: "I".into(),
        losses: vec![
            terms::hidden(
                HiddenLoss {
                    kind: HiddenKind::Mse,
                    include_embeddings: true,
                },
                LayerMap::Uniform,
                1.0,
            ),
            terms::attention(
                AttentionLoss {
                    kind: AttentionKind::Kl,
                },
                LayerMap::Uniform,
                1.0,
            ),
            terms::logit(
                LogitLoss {
                    kind: LogitKind::Kl,
                    temperature: 2.0,
                },
                1.0,
            ),
        ],
        steps: iters + 1,
        optimizer: AdamW::default(),
        lr: LrSchedule {
            peak: 1e-4,
            warmup_steps: 0,
            decay: Decay::Constant,
            min_ratio: 0.0,
        },
        params: ParamGroups::default(),
        carry_optimizer: false,
        eval_every: 0,
        checkpoint_every: 0,
    };
    let schedule = Schedule {
        stages: vec![stage],
    };
    let cache = match mode {
        "teacher" => None,
        "cache" => {
            let needs = schedule.teacher_needs(3, teacher.config.num_hidden_layers)?;
            let mut in_order =
                Batcher::new(&data, &tok, Some(&vocab), BatchConfig::in_order(BATCH))?;
            Some(TeacherCache::build(
                &tmp.join("cache"),
                "bench",
                &teacher,
                &mut in_order,
                &needs,
                &CacheConfig::default(),
                &mut |_| {},
            )?)
        }
        other => bail!("unknown step-bench mode {other:?}"),
    };
    let mut trainer = Trainer::new(
        Models {
            teacher: Some(&teacher),
            student: &student,
            projections: &proj,
            projection_vars: Some(&vars),
            teacher_cache: cache.as_ref(),
        },
        None,
        TrainerConfig {
            seed: 1,
            ..TrainerConfig::default()
        },
    )?;
    let mut timer = Timer::default();
    trainer.run(&schedule, &mut batcher, &mut [&mut timer], None)?;
    let mut times: Vec<f64> = timer.secs.into_iter().skip(1).collect(); // the first is warm-up
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("distillery-step-{mode}"),
            "batch": BATCH, "seq": SEQ, "student_hidden": student_hidden,
            "median_s": util::median(&mut times),
            "min_s": min,
            "peak_rss_mib": util::peak_rss_mib(),
            "dtype": format!("{:?}", DType::F32),
            "gemm": distillery_kernels::gemm_backend(),
        })
    );
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("distillery-bench-step-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
