//! A dependency-free SVG line chart: loss curves (log axis, stage boundaries as markers) and schedule
//! comparisons (one line per schedule). Plain data in, a standalone SVG string out; no I/O, no panics.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
// The plot area; the space right of it holds the legend so that it never hides data.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 580.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 360.0;
const LEGEND_ROWS: usize = 16;
/// Okabe–Ito, the colour-blind-safe palette; yellow last because it is faint on white.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A vertical dashed line with a label at the top (e.g. a stage boundary).
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// log10 y axis (loss curves span decades); non-positive values are skipped.
    pub log_y: bool,
    /// EMA weight on the history, in [0, 1); when set the raw points are drawn faint behind.
    pub smoothing: Option<f64>,
}

/// Exponential moving average `s_i = alpha * s_{i-1} + (1 - alpha) * y_i`, seeded with the first
/// finite value (no debiasing): `alpha` weighs the history as TensorBoard's smoothing does, so 0 leaves
/// the points as they are. Non-finite values pass through and do not touch the state, so a NaN still
/// breaks the drawn line. `alpha` is clamped to [0, 1].
pub fn ema(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let alpha = if alpha.is_finite() {
        alpha.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut state: Option<f64> = None;
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            let s = state.map_or(y, |s| alpha * s + (1.0 - alpha) * y);
            state = Some(s);
            (x, s)
        })
        .collect()
}

/// One axis: its domain (in log10 space for a log axis) and its ticks (value, label) in data space.
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn linear((mut lo, mut hi): (f64, f64), pad: bool, target: usize) -> Axis {
        if hi <= lo {
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - d, hi + d);
        } else if pad {
            let d = (hi - lo) * 0.05;
            (lo, hi) = (lo - d, hi + d);
        }
        let ticks = linear_ticks(lo, hi, target);
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    fn log((lo, hi): (f64, f64)) -> Axis {
        let (mut l, mut h) = (lo.log10(), hi.log10());
        let d = if h <= l { 0.5 } else { (h - l) * 0.05 };
        (l, h) = (l - d, h + d);
        let ticks = log_ticks(10f64.powf(l), 10f64.powf(h));
        Axis {
            lo: l,
            hi: h,
            log: true,
            ticks,
        }
    }

    /// Where `v` falls in the domain (0 = low end, 1 = high end); `None` if it cannot be drawn.
    fn frac(&self, v: f64) -> Option<f64> {
        let t = match self.log {
            true if v > 0.0 => v.log10(),
            true => return None,
            false => v,
        };
        let f = (t - self.lo) / (self.hi - self.lo);
        f.is_finite().then_some(f)
    }
}

fn x_px(axis: &Axis, x: f64) -> Option<f64> {
    axis.frac(x).map(|f| LEFT + f * (RIGHT - LEFT))
}

fn y_px(axis: &Axis, y: f64) -> Option<f64> {
    axis.frac(y).map(|f| BOTTOM - f * (BOTTOM - TOP))
}

/// A 1-2-5 step giving at most about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = [1.0, 2.0, 5.0].into_iter().find(|&n| m <= n + 1e-9);
    nice.unwrap_or(10.0) * mag
}

fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    let step = nice_step(hi - lo, target);
    if !(step.is_finite() && step > 0.0 && lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let decimals = (-step.log10()).ceil().max(0.0) as usize;
    let (k0, k1) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
    // The cap also stops a loop whose `k + 1.0 == k` (a tiny span far from zero).
    let mut ticks = Vec::new();
    let mut k = k0;
    while k <= k1 && ticks.len() < 50 {
        ticks.push((k * step, fmt_num(k * step, decimals)));
        k += 1.0;
    }
    ticks
}

/// Decades when at least three fit; otherwise 1-2-5 multiples, or linear ticks for a narrow range.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let inside = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let tick = |m: f64, e: i32| {
        (
            m * 10f64.powi(e),
            fmt_num(m * 10f64.powi(e), (-e).max(0) as usize),
        )
    };
    let decades: Vec<i32> = (e0..=e1).filter(|&e| inside(10f64.powi(e))).collect();
    if decades.len() >= 3 {
        let stride = decades.len().div_ceil(8);
        return decades
            .iter()
            .step_by(stride)
            .map(|&e| tick(1.0, e))
            .collect();
    }
    let ticks: Vec<_> = (e0..=e1)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| tick(m, e)))
        .filter(|&(v, _)| inside(v))
        .collect();
    if ticks.len() >= 2 {
        ticks
    } else {
        linear_ticks(lo, hi, 5)
    }
}

/// Rounds to `decimals` then drops trailing zeros, so float noise never reaches a label; very large
/// and very small magnitudes use exponent notation (`1.5e-5`).
fn fmt_num(v: f64, decimals: usize) -> String {
    let trim = |s: &str| -> String {
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s.to_string(),
        }
    };
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        let s = format!("{v:.3e}");
        if let Some((m, e)) = s.split_once('e') {
            return format!("{}e{e}", trim(m));
        }
    }
    let s = trim(&format!("{:.*}", decimals.min(15), v));
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

/// Escapes text for XML content and attributes; drops the control characters XML 1.0 forbids.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c < ' ' && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.chars().count() > max_chars {
        true => s.chars().take(max_chars - 1).chain(['…']).collect(),
        false => s.to_string(),
    }
}

/// Runs of consecutive drawable points, in pixels: an undrawable point ends a run.
fn segments(points: &[(f64, f64)], xa: &Axis, ya: &Axis) -> Vec<Vec<(f64, f64)>> {
    let mut segs = Vec::new();
    let mut cur = Vec::new();
    for &(x, y) in points {
        match (x_px(xa, x), y_px(ya, y)) {
            (Some(px), Some(py)) => cur.push((px, py)),
            _ if !cur.is_empty() => segs.push(std::mem::take(&mut cur)),
            _ => {}
        }
    }
    if !cur.is_empty() {
        segs.push(cur);
    }
    segs
}

fn path_d(segs: &[Vec<(f64, f64)>]) -> String {
    let mut d = String::new();
    for seg in segs {
        for (i, (x, y)) in seg.iter().enumerate() {
            let cmd = if i == 0 { 'M' } else { 'L' };
            let sep = if d.is_empty() { "" } else { " " };
            let _ = write!(d, "{sep}{cmd}{x:.1},{y:.1}");
        }
    }
    d
}

impl LineChart {
    fn drawable(&self, y: f64) -> bool {
        y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// Domains cover every drawable point and marker exactly on x, with a margin on y.
    fn axes(&self) -> (Axis, Axis) {
        let widen = |r: Option<(f64, f64)>, v: f64| {
            Some(r.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        };
        let (mut xr, mut yr) = (None, None);
        for &(x, y) in self.series.iter().flat_map(|s| &s.points) {
            if x.is_finite() && self.drawable(y) {
                (xr, yr) = (widen(xr, x), widen(yr, y));
            }
        }
        for m in self.markers.iter().filter(|m| m.x.is_finite()) {
            xr = widen(xr, m.x);
        }
        let x = Axis::linear(xr.unwrap_or((0.0, 1.0)), false, 6);
        let y = match self.log_y {
            true => Axis::log(yr.unwrap_or((0.1, 10.0))),
            false => Axis::linear(yr.unwrap_or((0.0, 1.0)), true, 5),
        };
        (x, y)
    }

    pub fn to_svg(&self) -> String {
        let (xa, ya) = self.axes();
        let smoothing = self
            .smoothing
            .filter(|a| a.is_finite() && *a > 0.0)
            .map(|a| a.min(0.999));
        let mid = (LEFT + RIGHT) / 2.0;
        let mut o = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        o.push_str(&format!(
            "\n<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n"
        ));
        text(
            &mut o,
            (mid, 24.0),
            r#"text-anchor="middle" font-size="15" font-weight="bold""#,
            &self.title,
        );
        let grid = r##"stroke="#e5e5e5""##;
        for (v, label) in &xa.ticks {
            if let Some(x) = x_px(&xa, *v) {
                line(&mut o, (x, TOP), (x, BOTTOM), grid);
                text(&mut o, (x, BOTTOM + 18.0), r#"text-anchor="middle""#, label);
            }
        }
        for (v, label) in &ya.ticks {
            if let Some(y) = y_px(&ya, *v) {
                line(&mut o, (LEFT, y), (RIGHT, y), grid);
                text(&mut o, (LEFT - 6.0, y + 4.0), r#"text-anchor="end""#, label);
            }
        }
        let (w, h) = (RIGHT - LEFT, BOTTOM - TOP);
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
        );
        text(
            &mut o,
            (mid, HEIGHT - 12.0),
            r#"text-anchor="middle""#,
            &self.x_label,
        );
        let rotate = format!(
            r#"transform="translate(18,{}) rotate(-90)" text-anchor="middle""#,
            (TOP + BOTTOM) / 2.0
        );
        text(&mut o, (0.0, 0.0), &rotate, &self.y_label);

        for (i, s) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            // Undrawable points become NaN so that they break the line (and the EMA skips them).
            let clean: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|&(x, y)| (x, if self.drawable(y) { y } else { f64::NAN }))
                .collect();
            let main = match smoothing {
                Some(alpha) => {
                    let raw = segments(&clean, &xa, &ya);
                    path(
                        &mut o,
                        &raw,
                        &format!(r#"stroke="{colour}" stroke-opacity="0.25" stroke-width="1""#),
                    );
                    segments(&ema(&clean, alpha), &xa, &ya)
                }
                None => segments(&clean, &xa, &ya),
            };
            path(
                &mut o,
                &main,
                &format!(r#"stroke="{colour}" stroke-width="2" stroke-linejoin="round""#),
            );
            // A lone point draws nothing as a path, so it gets a dot.
            for seg in main.iter().filter(|seg| seg.len() == 1) {
                let (x, y) = seg[0];
                let _ = writeln!(
                    o,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                );
            }
        }

        for (i, m) in self.markers.iter().enumerate() {
            let Some(x) = x_px(&xa, m.x) else { continue };
            line(
                &mut o,
                (x, TOP),
                (x, BOTTOM),
                r##"stroke="#555" stroke-dasharray="5 4""##,
            );
            // Staggered rows keep the labels of close boundaries apart.
            let (lx, anchor) = if x > RIGHT - 80.0 {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let style = format!(r##"text-anchor="{anchor}" font-size="11" fill="#333""##);
            text(
                &mut o,
                (lx, TOP + 12.0 + (i % 2) as f64 * 13.0),
                &style,
                &m.label,
            );
        }

        let lx = RIGHT + 16.0;
        let n = self.series.len();
        let shown = if n > LEGEND_ROWS { LEGEND_ROWS - 1 } else { n };
        for (i, s) in self.series.iter().enumerate().take(shown) {
            let y = TOP + 10.0 + i as f64 * 18.0;
            let colour = PALETTE[i % PALETTE.len()];
            line(
                &mut o,
                (lx, y),
                (lx + 22.0, y),
                &format!(r#"stroke="{colour}" stroke-width="2""#),
            );
            text(&mut o, (lx + 28.0, y + 4.0), "", &truncate(&s.name, 20));
        }
        if n > shown {
            text(
                &mut o,
                (lx, TOP + 14.0 + shown as f64 * 18.0),
                "",
                &format!("… and {} more", n - shown),
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

fn line(o: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), style: &str) {
    let _ = writeln!(
        o,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
    );
}

/// `content` is escaped here; `attrs` is trusted markup.
fn text(o: &mut String, (x, y): (f64, f64), attrs: &str, content: &str) {
    let _ = writeln!(
        o,
        r#"<text x="{x:.1}" y="{y:.1}" {attrs}>{}</text>"#,
        escape(content)
    );
}

/// Nothing for an empty run list, so paths correspond one-to-one to drawable series.
fn path(o: &mut String, segs: &[Vec<(f64, f64)>], style: &str) {
    if !segs.is_empty() {
        let _ = writeln!(o, r#"<path d="{}" fill="none" {style}/>"#, path_d(segs));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_string(),
            points: points.to_vec(),
        }
    }

    fn chart(series: Vec<Series>) -> LineChart {
        LineChart {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series,
            ..Default::default()
        }
    }

    fn labels(ticks: &[(f64, String)]) -> Vec<&str> {
        ticks.iter().map(|(_, l)| l.as_str()).collect()
    }

    /// The `d` attribute of every `<path>`, in document order.
    fn path_ds(svg: &str) -> Vec<&str> {
        svg.split("<path d=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect()
    }

    fn assert_standalone(svg: &str) {
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn linear_ticks_use_1_2_5_steps_with_compact_labels() {
        let t = linear_ticks(0.0, 1.0, 5);
        assert_eq!(labels(&t), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert!((t[3].0 - 0.6).abs() < 1e-12);
        assert_eq!(
            labels(&linear_ticks(0.0, 873.0, 5)),
            ["0", "200", "400", "600", "800"]
        );
        assert_eq!(
            labels(&linear_ticks(0.05, 0.45, 5)),
            ["0.1", "0.2", "0.3", "0.4"]
        );
        assert_eq!(
            labels(&linear_ticks(-1.0, 1.0, 4)),
            ["-1", "-0.5", "0", "0.5", "1"]
        );
        assert_eq!(
            labels(&linear_ticks(0.0, 3e6, 3)),
            ["0", "1e6", "2e6", "3e6"]
        );
        assert!(linear_ticks(0.0, f64::INFINITY, 5).is_empty());
    }

    #[test]
    fn log_ticks_are_decades_or_1_2_5_multiples() {
        let t = log_ticks(1e-3, 2.0);
        assert_eq!(labels(&t), ["0.001", "0.01", "0.1", "1"]);
        assert!((t[1].0 - 0.01).abs() < 1e-15);
        assert_eq!(
            labels(&log_ticks(1e-6, 1e-3)),
            ["1e-6", "1e-5", "0.0001", "0.001"]
        );
        assert_eq!(
            labels(&log_ticks(0.15, 12.0)),
            ["0.2", "0.5", "1", "2", "5", "10"]
        );
        assert_eq!(
            labels(&log_ticks(0.3, 0.8)),
            ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]
        );
        // Many decades are thinned rather than crowded.
        assert_eq!(log_ticks(1e-20, 1.0).len(), 7);
        assert!(log_ticks(0.0, 1.0).is_empty());
    }

    #[test]
    fn fmt_num_hides_float_noise() {
        assert_eq!(fmt_num(0.1 + 0.2, 1), "0.3");
        assert_eq!(fmt_num(-0.0, 2), "0");
        assert_eq!(fmt_num(1500.0, 0), "1500");
        assert_eq!(fmt_num(1.5e-5, 6), "1.5e-5");
        assert_eq!(fmt_num(2_500_000.0, 0), "2.5e6");
    }

    #[test]
    fn data_extremes_map_to_plot_edges() {
        let c = chart(vec![series("a", &[(2.0, 1.0), (6.0, 3.0), (10.0, 5.0)])]);
        let (xa, ya) = c.axes();
        assert_eq!(x_px(&xa, 2.0), Some(LEFT));
        assert_eq!(x_px(&xa, 10.0), Some(RIGHT));
        assert_eq!(x_px(&xa, 6.0), Some((LEFT + RIGHT) / 2.0));
        // y is padded by 5% of the range at each end.
        let (lo, hi) = (y_px(&ya, 1.0).unwrap(), y_px(&ya, 5.0).unwrap());
        assert!(
            (BOTTOM - lo - (BOTTOM - TOP) / 1.1 * 0.05).abs() < 1e-9,
            "{lo}"
        );
        assert!(
            (hi - TOP - (BOTTOM - TOP) / 1.1 * 0.05).abs() < 1e-9,
            "{hi}"
        );
        let svg = c.to_svg();
        let d = path_ds(&svg);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with("M70.0,") && d[0].contains(" L580.0,"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn log_axis_maps_decades_evenly_and_skips_non_positive() {
        let mut c = chart(vec![series(
            "loss",
            &[(0.0, 10.0), (1.0, 1.0), (2.0, 0.0), (3.0, 0.1)],
        )]);
        c.log_y = true;
        let (_, ya) = c.axes();
        let (a, b, d) = (
            y_px(&ya, 10.0).unwrap(),
            y_px(&ya, 1.0).unwrap(),
            y_px(&ya, 0.1).unwrap(),
        );
        assert!(((b - a) - (d - b)).abs() < 1e-9);
        assert_eq!(y_px(&ya, 0.0), None);
        assert_eq!(y_px(&ya, -1.0), None);
        let svg = c.to_svg();
        assert_standalone(&svg);
        assert_eq!(
            path_ds(&svg)[0].matches('M').count(),
            2,
            "the zero splits the line"
        );
    }

    #[test]
    fn text_is_escaped() {
        let mut c = chart(vec![series("a<b> & \"c\"", &[(0.0, 1.0), (1.0, 2.0)])]);
        c.title = "KL <T=2> & 'more'".into();
        c.markers = vec![Marker {
            x: 0.5,
            label: "stage \"2\"\u{1}".into(),
        }];
        let svg = c.to_svg();
        assert!(svg.contains(">KL &lt;T=2&gt; &amp; &apos;more&apos;</text>"));
        assert!(svg.contains(">a&lt;b&gt; &amp; &quot;c&quot;</text>"));
        assert!(svg.contains(">stage &quot;2&quot;</text>"));
        assert!(!svg.contains("<T=2>") && !svg.contains('\u{1}'));
    }

    #[test]
    fn nan_splits_a_series_into_two_segments() {
        let pts = [
            (0.0, 1.0),
            (1.0, 2.0),
            (2.0, f64::NAN),
            (3.0, 3.0),
            (4.0, 4.0),
        ];
        let svg = chart(vec![series("a", &pts)]).to_svg();
        assert_standalone(&svg);
        let d = path_ds(&svg);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].matches('M').count(), 2);
        assert_eq!(d[0].matches('L').count(), 2);
    }

    #[test]
    fn ema_known_values() {
        let out = ema(&[(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 3.0)], 0.5);
        assert_eq!(out[0], (0.0, 1.0));
        assert_eq!(out[1], (1.0, 1.5));
        assert!(out[2].1.is_nan());
        assert_eq!(out[3], (3.0, 2.25));
        assert_eq!(
            ema(&[(0.0, 4.0), (1.0, 8.0)], 0.0),
            [(0.0, 4.0), (1.0, 8.0)]
        );
        assert_eq!(
            ema(&[(0.0, 4.0), (1.0, 8.0)], 0.75),
            [(0.0, 4.0), (1.0, 5.0)]
        );
        assert!(ema(&[], 0.5).is_empty());
    }

    #[test]
    fn one_path_per_series_plus_faint_raw_when_smoothing() {
        let a = series("a", &[(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)]);
        let b = series("b", &[(0.0, 2.0), (1.0, 1.0), (2.0, 0.8)]);
        let mut c = chart(vec![a, b]);
        let svg = c.to_svg();
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains(&format!("stroke=\"{}\"", PALETTE[0])));
        assert!(svg.contains(&format!("stroke=\"{}\"", PALETTE[1])));
        c.smoothing = Some(0.6);
        let svg = c.to_svg();
        assert_eq!(svg.matches("<path").count(), 4);
        assert_eq!(svg.matches("stroke-opacity=\"0.25\"").count(), 2);
        // The faint raw line and the smoothed line share their first point, then part.
        let d = path_ds(&svg);
        assert_eq!(d[0].split(' ').next(), d[1].split(' ').next());
        assert_ne!(d[0], d[1]);
    }

    #[test]
    fn palette_cycles() {
        let many: Vec<Series> = (0..10)
            .map(|i| series(&format!("s{i}"), &[(0.0, 0.0), (1.0, i as f64)]))
            .collect();
        let svg = chart(many).to_svg();
        assert_eq!(
            svg.matches(&format!(
                "stroke=\"{}\" stroke-width=\"2\" stroke-linejoin",
                PALETTE[0]
            ))
            .count(),
            2
        );
    }

    #[test]
    fn markers_are_dashed_lines_at_their_x() {
        let mut c = chart(vec![series("loss", &[(0.0, 1.0), (400.0, 0.5)])]);
        c.markers = vec![
            Marker {
                x: 100.0,
                label: "hidden".into(),
            },
            Marker {
                x: 300.0,
                label: "logits".into(),
            },
            Marker {
                x: f64::NAN,
                label: "bad".into(),
            },
        ];
        let svg = c.to_svg();
        let dashed: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("stroke-dasharray"))
            .collect();
        assert_eq!(dashed.len(), 2);
        let x100 = LEFT + 0.25 * (RIGHT - LEFT);
        let x300 = LEFT + 0.75 * (RIGHT - LEFT);
        assert!(
            dashed[0].starts_with(&format!(
                "<line x1=\"{x100:.1}\" y1=\"{TOP:.1}\" x2=\"{x100:.1}\""
            )),
            "{}",
            dashed[0]
        );
        assert!(
            dashed[1].starts_with(&format!("<line x1=\"{x300:.1}\"")),
            "{}",
            dashed[1]
        );
        assert!(svg.contains(">hidden</text>") && svg.contains(">logits</text>"));
        assert!(!svg.contains(">bad</text>"));
    }

    #[test]
    fn degenerate_inputs_still_give_valid_svg() {
        let empty = chart(vec![]).to_svg();
        assert_standalone(&empty);
        assert_eq!(empty.matches("<path").count(), 0);
        assert_standalone(&chart(vec![series("none", &[])]).to_svg());
        assert_standalone(
            &chart(vec![series(
                "nan",
                &[(f64::NAN, 1.0), (1.0, f64::INFINITY)],
            )])
            .to_svg(),
        );

        // All-equal y is padded around the value, and the value gets a tick.
        let flat = chart(vec![series("flat", &[(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)])]);
        let (_, ya) = flat.axes();
        assert!(ya.lo < 3.0 && ya.hi > 3.0);
        assert!(labels(&ya.ticks).contains(&"3"));
        assert_standalone(&flat.to_svg());

        // A single point: both axes padded, drawn as a dot in the middle.
        let one = chart(vec![series("one", &[(5.0, 0.5)])]).to_svg();
        assert_standalone(&one);
        let (cx, cy) = ((LEFT + RIGHT) / 2.0, (TOP + BOTTOM) / 2.0);
        assert!(
            one.contains(&format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\"")),
            "{one}"
        );

        let mut log = chart(vec![series("neg", &[(0.0, -1.0), (1.0, 0.0)])]);
        (log.log_y, log.smoothing) = (true, Some(1.5));
        assert_standalone(&log.to_svg());
    }

    #[test]
    fn legend_truncates_long_names_and_overflow() {
        let long = "x".repeat(40);
        let mut many: Vec<Series> = (0..20)
            .map(|i| series(&format!("s{i}"), &[(0.0, 1.0)]))
            .collect();
        many[0].name = long.clone();
        let svg = chart(many).to_svg();
        assert!(!svg.contains(&long));
        assert!(svg.contains(&format!(">{}…</text>", "x".repeat(19))));
        assert!(svg.contains(">… and 5 more</text>"));
    }
}
