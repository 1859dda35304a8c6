//! `distillery run` and `distillery compare`: load the config (or the embedded quickstart),
//! prepare the task and the teacher once, then run one schedule or several into `--out`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::{self, Config, DeviceSpec, ScheduleChoice};
use crate::distill::{run_schedule, RunOptions};
use crate::plan::Plan;
use crate::summary::Summary;

/// The embedded default: `configs/quickstart.toml`, compiled in so that the binary runs offline
/// with no file at all.
pub const QUICKSTART: &str = include_str!("../../../configs/quickstart.toml");

#[derive(Debug)]
pub struct JobArgs {
    pub config: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub device: Option<String>,
    pub quiet: bool,
    pub dry_run: bool,
}

fn load(args: &JobArgs) -> Result<Config> {
    match &args.config {
        Some(p) => config::load(p),
        None => config::parse(QUICKSTART, Path::new("quickstart.toml (embedded)")),
    }
}

fn device(config: &Config, flag: Option<&str>) -> Result<Device> {
    let spec = match flag {
        Some(s) => DeviceSpec::parse(s)
            .with_context(|| format!("--device: expected cpu, cuda or cuda:N, got {s:?}"))?,
        None => config.device,
    };
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => Ok(distillery_kernels::cuda_device(n)?),
    }
}

/// `--out`, else `runs/<config file stem>`.
fn out_dir(args: &JobArgs) -> PathBuf {
    args.out.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .as_deref()
            .and_then(Path::file_stem)
            .map_or("quickstart".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    })
}

/// Builds the plan (reading the data, checking everything checkable), then claims `out` (see
/// [`crate::fingerprint`]) before writing anything.
fn start(config: &Config, out: &Path, resume: bool, choices: &[ScheduleChoice]) -> Result<Plan> {
    let mut plan = Plan::build(config, choices)?;
    let fingerprint = crate::fingerprint::of(config, plan.task.digest())?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    crate::fingerprint::claim(out, &fingerprint, resume)?;
    plan.persist(out)?;
    Ok(plan)
}

pub fn run(args: &JobArgs) -> Result<()> {
    let config = load(args)?;
    let device = device(&config, args.device.as_deref())?;
    let out = out_dir(args);
    let choice = config.schedule_choice();
    if args.dry_run {
        return dry_run(&config, &[choice]);
    }
    let plan = start(&config, &out, args.resume, &[choice])?;
    let teacher = crate::teacher::prepare(&config, &plan, &out, &device, args.quiet)?;
    let (s, _) = run_schedule(
        &config,
        &plan,
        &teacher,
        choice,
        &out,
        &device,
        RunOptions {
            resume: args.resume,
            quiet: args.quiet,
        },
    )?;
    print_summary(&s);
    eprintln!("wrote {}", out.join("report.md").display());
    Ok(())
}

pub fn compare(args: &JobArgs, schedules: Option<&str>) -> Result<()> {
    let config = load(args)?;
    let choices: Vec<ScheduleChoice> = match schedules {
        None => distillery_stages::Preset::ALL
            .into_iter()
            .map(ScheduleChoice::Preset)
            .collect(),
        Some(list) => list
            .split(',')
            .map(|s| {
                ScheduleChoice::parse(s.trim()).with_context(|| {
                    format!("--schedules: unknown schedule {s:?} (expected one-stage, two-stage, three-stage or custom)")
                })
            })
            .collect::<Result<_>>()?,
    };
    let device = device(&config, args.device.as_deref())?;
    let out = out_dir(args);
    if args.dry_run {
        return dry_run(&config, &choices);
    }
    let plan = start(&config, &out, args.resume, &choices)?;
    let teacher = crate::teacher::prepare(&config, &plan, &out, &device, args.quiet)?;
    let mut rows: Vec<Summary> = Vec::new();
    let mut metrics = Vec::new();
    for &c in &choices {
        let dir = out.join(c.name());
        let (s, records) = run_schedule(
            &config,
            &plan,
            &teacher,
            c,
            &dir,
            &device,
            RunOptions {
                resume: args.resume,
                quiet: args.quiet,
            },
        )?;
        print_summary(&s);
        metrics.push(records);
        rows.push(s);
    }
    let md = crate::report::write_comparison(&out, &rows, &metrics)?;
    println!("{md}");
    eprintln!("wrote {}", out.join("comparison.md").display());
    Ok(())
}

/// Builds the plan (reading the data and checking every schedule against the planned models)
/// and prints it, writing nothing else.
fn dry_run(config: &Config, choices: &[ScheduleChoice]) -> Result<()> {
    let plan = Plan::build(config, choices)?;
    let task = &plan.task;
    println!(
        "{}: {} train / {} dev / {} test examples, labels {:?}, {} batches per epoch",
        config.source().display(),
        task.splits.train.len(),
        task.splits.dev.as_ref().map_or(0, |d| d.len()),
        task.splits.test.as_ref().map_or(0, |d| d.len()),
        task.vocab.names(),
        plan.batches_per_epoch
    );
    let shape = |c: &distillery_models::BertConfig| {
        format!(
            "{} layers, {} wide, {} heads",
            c.num_hidden_layers, c.hidden_size, c.num_attention_heads
        )
    };
    println!(
        "teacher: {}; student: {}",
        shape(&plan.teacher_config),
        shape(&plan.student_config)
    );
    if let Some(f) = &plan.finetune {
        println!("teacher fine-tuning: {} steps", f.total_steps());
    }
    for (c, s) in &plan.schedules {
        println!("{}:", c.name());
        for st in &s.stages {
            let losses: Vec<String> = st
                .losses
                .iter()
                .map(|l| format!("{}×{}", l.name(), l.weight))
                .collect();
            println!(
                "  {:<16} {:>6} steps  lr {:.1e} (warm-up {})  {}{}",
                st.name,
                st.steps,
                st.lr.peak,
                st.lr.warmup_steps,
                losses.join(" + "),
                if st.params.frozen.is_empty() {
                    String::new()
                } else {
                    format!("  frozen {:?}", st.params.frozen)
                }
            );
        }
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let acc = |m: Option<&distillery_stages::Metrics>| {
        m.map_or("–".into(), |m| format!("{:.4}", m.accuracy))
    };
    eprintln!(
        "{}: dev accuracy {} test accuracy {} (teacher test {}), {} steps in {:.1} s",
        s.schedule,
        acc(s.dev.as_ref()),
        acc(s.test.as_ref()),
        acc(s.teacher_test.as_ref()),
        s.steps,
        s.wall_secs
    );
}
