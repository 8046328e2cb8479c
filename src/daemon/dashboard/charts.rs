//! The charts' geometry: bars and lines in a 600×170 box with a scale of
//! three lines, as numbers the page's template draws. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Every chart's size: width, height, the left margin for the scale, the
/// bottom margin for the labels (the template's `chart` macro repeats them).
const W: f64 = 600.0;
const H: f64 = 170.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;

#[derive(Serialize, Default)]
pub(super) struct Chart {
    grid: Vec<Grid>,
    rects: Vec<Rect>,
    lines: Vec<Line>,
    /// The first and last labels under the axis.
    first: Option<String>,
    last: Option<String>,
}

#[derive(Serialize)]
struct Grid {
    y: String,
    text_y: String,
    label: String,
}

#[derive(Serialize)]
struct Rect {
    /// `bar` or `bar2`: the legend's keys carry the same class.
    class: &'static str,
    x: String,
    y: String,
    w: String,
    h: String,
    title: String,
}

#[derive(Serialize)]
struct Line {
    class: &'static str,
    points: String,
    title: String,
    /// The newest point, marked: a single day shows too.
    dot: Option<(String, String)>,
}

fn n1(v: f64) -> String {
    format!("{v:.1}")
}

pub(super) fn short_number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Chart {
    /// An empty chart with a scale of three lines up to `top`.
    fn frame(top: f64, first: Option<&str>, last: Option<&str>) -> Chart {
        let grid = [0.0, 0.5, 1.0]
            .into_iter()
            .map(|frac| {
                let y = (H - BOTTOM) * (1.0 - frac) + 4.0;
                Grid {
                    y: n1(y),
                    text_y: n1(y + 4.0),
                    label: short_number(top * frac),
                }
            })
            .collect();
        let (first, last) = match (first, last) {
            (Some(f), Some(l)) => (Some(f.to_string()), Some(l.to_string())),
            _ => (None, None),
        };
        Chart {
            grid,
            first,
            last,
            ..Default::default()
        }
    }

    fn rect(&mut self, class: &'static str, x: f64, width: f64, v: f64, top: f64, title: String) {
        let bh = (H - BOTTOM - 4.0) * (v / top);
        self.rects.push(Rect {
            class,
            x: n1(x),
            y: n1(H - BOTTOM - bh),
            w: n1(width),
            h: n1(bh),
            title,
        });
    }
}

fn top_of(max: f64, headroom: f64) -> f64 {
    if max > 0.0 { max * headroom } else { 1.0 }
}

/// Bars for `values` (label, value).
pub(super) fn bars(values: &[(String, f64)], unit: &str) -> Chart {
    let top = top_of(values.iter().map(|v| v.1).fold(0.0, f64::max), 1.1);
    let slot = (W - LEFT) / values.len().max(1) as f64;
    let mut c = Chart::frame(
        top,
        values.first().map(|v| v.0.as_str()),
        values.last().map(|v| v.0.as_str()),
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let title = format!("{label}: {} {unit}", short_number(*v));
        c.rect("bar", x, slot * 0.7, *v, top, title);
    }
    c
}

/// Two series per slot side by side: changes (`bar`) and drift (`bar2`).
pub(super) fn paired_bars(values: &[(String, f64, f64)]) -> Chart {
    let top = top_of(values.iter().map(|v| v.1.max(v.2)).fold(0.0, f64::max), 1.1);
    let slot = (W - LEFT) / values.len().max(1) as f64;
    let mut c = Chart::frame(
        top,
        values.first().map(|v| v.0.as_str()),
        values.last().map(|v| v.0.as_str()),
    );
    for (i, (label, a, b)) in values.iter().enumerate() {
        for (k, (v, class, what)) in [(a, "bar", "changes"), (b, "bar2", "drift")]
            .into_iter()
            .enumerate()
        {
            let x = LEFT + slot * i as f64 + slot * (0.1 + 0.4 * k as f64);
            let title = format!("{label}: {} {what}", short_number(*v));
            c.rect(class, x, slot * 0.38, *v, top, title);
        }
    }
    c
}

/// One line per currency over the days.
pub(super) fn cost_lines(points: &[(String, BTreeMap<String, f64>)]) -> Chart {
    let max = points
        .iter()
        .flat_map(|p| p.1.values())
        .fold(0.0_f64, |a, b| a.max(*b));
    let top = top_of(max, 1.15);
    let n = points.len().max(2) as f64 - 1.0;
    let mut c = Chart::frame(
        top,
        points.first().map(|p| p.0.as_str()),
        points.last().map(|p| p.0.as_str()),
    );
    let currencies: BTreeSet<&String> = points.iter().flat_map(|p| p.1.keys()).collect();
    for (k, cur) in currencies.iter().enumerate() {
        let pts: Vec<(String, String)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = p.1.get(*cur)?;
                let x = LEFT + (W - LEFT) * (i as f64 / n);
                let y = (H - BOTTOM) - (H - BOTTOM - 4.0) * (v / top);
                Some((n1(x), n1(y)))
            })
            .collect();
        let last = points.iter().rev().find_map(|p| p.1.get(*cur));
        c.lines.push(Line {
            class: if k % 2 == 0 { "line" } else { "line2" },
            points: pts
                .iter()
                .map(|(x, y)| format!("{x},{y}"))
                .collect::<Vec<_>>()
                .join(" "),
            title: format!("{cur}: {:.2} now", last.copied().unwrap_or(0.0)),
            dot: pts.last().cloned(),
        });
    }
    c
}
