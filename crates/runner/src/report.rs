//! `report.md` + `loss.svg` for one run, and `comparison.md` + `comparison.svg` (+ `.json`)
//! for `distillery compare`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::config::Config;
use crate::plot::{LineChart, Marker, Series};
use crate::records::{dev_points, steps, Record};
use crate::summary::Summary;
use distillery_util::fs::write_atomic;

/// The loss curve: the minimised sum and each term, over the global step, stage ends marked.
pub fn loss_chart(title: &str, records: &[Record]) -> LineChart {
    let mut series = vec![Series {
        name: "total (weighted)".into(),
        points: steps(records)
            .map(|s| (s.global_step as f64, s.loss))
            .collect(),
    }];
    for term in distillery_stages::terms::names() {
        let points: Vec<(f64, f64)> = steps(records)
            .filter_map(|s| Some((s.global_step as f64, *s.terms.get(*term)?)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                name: term.replace('_', "-"),
                points,
            });
        }
    }
    let markers = records
        .iter()
        .filter_map(|r| match r {
            Record::StageEnd(e) => Some(Marker {
                x: e.global_step as f64,
                label: format!("end of {}", e.stage),
            }),
            _ => None,
        })
        .collect();
    LineChart {
        title: title.into(),
        x_label: "global step".into(),
        y_label: "loss (log scale)".into(),
        series,
        markers,
        log_y: true,
        smoothing: Some(0.9),
    }
}

fn metric(m: Option<&distillery_stages::Metrics>) -> String {
    m.map_or("–".into(), |m| {
        format!("{:.4} / {:.4}", m.accuracy, m.macro_f1)
    })
}

pub fn write_run_report(
    dir: &Path,
    s: &Summary,
    records: &[Record],
    config: &Config,
) -> Result<()> {
    let chart = loss_chart(&format!("{} — training losses", s.schedule), records);
    write_atomic(&dir.join("loss.svg"), chart.to_svg().as_bytes())?;
    let mut md = String::new();
    let _ = writeln!(md, "# distillery run — {}\n", s.schedule);
    let _ = writeln!(
        md,
        "Config: `{}` (seed {}).\n",
        config.source().display(),
        config.seed
    );
    let _ = writeln!(md, "| stage | losses | steps |\n|---|---|---|");
    for (name, steps, losses) in &s.stages {
        let _ = writeln!(md, "| {name} | {} | {steps} |", losses.join(" + "));
    }
    let _ = writeln!(md, "\n| model | parameters | dev accuracy / macro-F1 | test accuracy / macro-F1 |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| teacher | {} | {} | {} |",
        s.teacher_parameters,
        metric(s.teacher_dev.as_ref()),
        metric(s.teacher_test.as_ref())
    );
    let _ = writeln!(
        md,
        "| student | {} | {} | {} |",
        s.student_parameters,
        metric(s.dev.as_ref()),
        metric(s.test.as_ref())
    );
    if let Some((step, value)) = s.best_dev {
        let _ = writeln!(
            md,
            "\nBest {} {value:.4} at global step {step} (kept in `checkpoints/` unless `keep_best = false`).",
            s.best_metric
        );
    }
    let weights = if s.exported_step == s.steps {
        "the last step's weights".to_string()
    } else {
        format!(
            "the best checkpoint's weights, global step {}",
            s.exported_step
        )
    };
    let _ = writeln!(
        md,
        "\nTraining wall time: {:.1} s for {} steps (CPU matrix products on {}). The student is in `student/` (Hugging Face layout; {weights}).\n",
        s.wall_secs,
        s.steps,
        distillery_kernels::gemm_backend()
    );
    let _ = writeln!(md, "![training losses](loss.svg)\n");
    let evals = dev_points(records);
    if !evals.is_empty() {
        let _ = writeln!(md, "| global step | dev accuracy |\n|---|---|");
        for (x, y) in evals {
            let _ = writeln!(md, "| {x} | {y:.4} |");
        }
    }
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// One row per schedule; `records` are each run's metrics lines, in the same order. Returns
/// the markdown it wrote.
pub fn write_comparison(out: &Path, rows: &[Summary], records: &[Vec<Record>]) -> Result<String> {
    let mut series: Vec<Series> = rows
        .iter()
        .zip(records)
        .map(|(s, m)| Series {
            name: s.schedule.clone(),
            points: dev_points(m),
        })
        .collect();
    let last = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    if let Some(t) = rows.first().and_then(|r| r.teacher_dev) {
        series.push(Series {
            name: "teacher".into(),
            points: vec![(0.0, t.accuracy), (last, t.accuracy)],
        });
    }
    let chart = LineChart {
        title: "dev accuracy by schedule (equal step budget)".into(),
        x_label: "global step".into(),
        y_label: "dev accuracy".into(),
        series,
        markers: Vec::new(),
        log_y: false,
        smoothing: None,
    };
    write_atomic(&out.join("comparison.svg"), chart.to_svg().as_bytes())?;
    let mut md = String::new();
    let _ = writeln!(md, "# Schedule comparison\n");
    if let Some(r) = rows.first() {
        let _ = writeln!(
            md,
            "Teacher: {} parameters, dev {}, test {} (accuracy / macro-F1).\n",
            r.teacher_parameters,
            metric(r.teacher_dev.as_ref()),
            metric(r.teacher_test.as_ref())
        );
    }
    let _ = writeln!(md, "| schedule | stages (steps) | dev accuracy | test accuracy | teacher dev / test accuracy | share of teacher kept | student parameters | wall time (s) |\n|---|---|---|---|---|---|---|---|");
    for r in rows {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|(n, s, l)| format!("{n}: {} ({s})", l.join("+")))
            .collect();
        let acc = |m: Option<&distillery_stages::Metrics>| {
            m.map_or("–".to_string(), |m| format!("{:.4}", m.accuracy))
        };
        // Student over teacher on the same split: test when there is one, else dev.
        let kept = match (&r.test, &r.teacher_test, &r.dev, &r.teacher_dev) {
            (Some(s), Some(t), _, _) if t.accuracy > 0.0 => {
                format!("{:.1}% (test)", 100.0 * s.accuracy / t.accuracy)
            }
            (_, _, Some(s), Some(t)) if t.accuracy > 0.0 => {
                format!("{:.1}% (dev)", 100.0 * s.accuracy / t.accuracy)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} | {kept} | {} | {:.1} |",
            r.schedule,
            stages.join("; "),
            acc(r.dev.as_ref()),
            acc(r.test.as_ref()),
            acc(r.teacher_dev.as_ref()),
            acc(r.teacher_test.as_ref()),
            r.student_parameters,
            r.wall_secs
        );
    }
    let _ = writeln!(md, "\n![dev accuracy by schedule](comparison.svg)");
    write_atomic(&out.join("comparison.md"), md.as_bytes())?;
    write_atomic(
        &out.join("comparison.json"),
        &serde_json::to_vec_pretty(rows)?,
    )?;
    Ok(md)
}
