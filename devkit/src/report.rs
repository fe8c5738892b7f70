//! `treaty job report`: a job as one self-contained HTML page for the people who answer for it —
//! its metrics round by round with their intervals, each agency's epsilon against its budget,
//! who contributed and who was left out of each round and why, and a query's answer with its
//! intervals. Plain HTML and inline SVG: no script, no network (its Content-Security-Policy
//! forbids both), every text from the coordinator escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use treaty_proto::v1::{Job, RoundSummary, job_spec};

/// Escapes text for HTML (content and attribute values alike).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for a chart's axis or label.
fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// The range a chart's y axis shows: the values' and intervals', a little wider.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.08;
    // A figure that cannot be negative (a count, a rate, epsilon) is not drawn below zero, nor
    // one that cannot pass 1 (a rate) above it.
    let floor = if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
    let ceiling = if (0.0..=1.0).contains(&lo) && hi <= 1.0 {
        1.0
    } else {
        f64::INFINITY
    };
    ((lo - pad).max(floor), (hi + pad).min(ceiling))
}

/// The frame of a chart: axes, y ticks and the label of each x position.
fn frame(svg: &mut String, title: &str, (lo, hi): (f64, f64), points: &[Point]) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{t}" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"><title>{t}</title>"#,
        t = esc(title)
    );
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    let _ = write!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>"##
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * f64::from(k) / 4.0;
        let y = y0 - (y0 - y1) * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            num(v)
        );
    }
    let step = (points.len() / 12).max(1);
    for (i, point) in points.iter().enumerate() {
        if i % step == 0 || i + 1 == points.len() {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                x_of(i, points.len()),
                y0 + 16.0,
                esc(&point.tick)
            );
        }
    }
}

fn x_of(i: usize, n: usize) -> f64 {
    let span = WIDTH - LEFT - RIGHT;
    LEFT + span * (i as f64 + 0.5) / n.max(1) as f64
}

fn y_of(v: f64, (lo, hi): (f64, f64)) -> f64 {
    let y0 = HEIGHT - BOTTOM;
    y0 - (y0 - TOP) * ((v - lo) / (hi - lo)).clamp(-0.05, 1.05)
}

/// One point of a series: its tick on the x axis, a label, a value, and its interval if it
/// has one.
struct Point {
    tick: String,
    label: String,
    value: f64,
    interval: Option<(f64, f64)>,
}

/// Every value and interval end of the points: what a chart's y axis must show.
fn figures(points: &[Point]) -> impl Iterator<Item = f64> + '_ {
    points.iter().flat_map(|p| {
        [
            Some(p.value),
            p.interval.map(|i| i.0),
            p.interval.map(|i| i.1),
        ]
        .into_iter()
        .flatten()
    })
}

/// A line through the points, each with its interval as a bar.
fn line_chart(title: &str, points: &[Point]) -> String {
    let range = y_range(figures(points));
    let mut svg = String::new();
    frame(&mut svg, title, range, points);
    let n = points.len();
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.value.is_finite())
        .map(|(i, p)| format!("{:.1},{:.1}", x_of(i, n), y_of(p.value, range)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline class="series" fill="none" stroke="#1f5fa8" stroke-width="2" points="{}"/>"##,
        path.join(" ")
    );
    for (i, p) in points.iter().enumerate() {
        let x = x_of(i, n);
        if let Some((lo, hi)) = p.interval {
            let _ = write!(
                svg,
                r##"<line class="interval" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#8fb3dd" stroke-width="3"/>"##,
                y_of(lo, range),
                y_of(hi, range)
            );
        }
        if p.value.is_finite() {
            let _ = write!(
                svg,
                r##"<circle class="point" cx="{x:.1}" cy="{:.1}" r="3.5" fill="#1f5fa8"><title>{}: {}</title></circle>"##,
                y_of(p.value, range),
                esc(&p.label),
                num(p.value)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bars, each with its interval as a whisker and, when given, a mark (a budget).
fn bar_chart(title: &str, points: &[Point], marks: &[Option<f64>]) -> String {
    let range = y_range(
        figures(points)
            .chain(marks.iter().flatten().copied())
            .chain([0.0]),
    );
    let mut svg = String::new();
    frame(&mut svg, title, range, points);
    let n = points.len();
    let width = ((WIDTH - LEFT - RIGHT) / n.max(1) as f64 * 0.6).min(60.0);
    let zero = y_of(0.0, range);
    for (i, p) in points.iter().enumerate() {
        let x = x_of(i, n);
        if p.value.is_finite() {
            let y = y_of(p.value, range);
            let _ = write!(
                svg,
                r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="#4a86c5"><title>{}: {}</title></rect>"##,
                x - width / 2.0,
                y.min(zero),
                (zero - y).abs(),
                esc(&p.label),
                num(p.value)
            );
        }
        if let Some((lo, hi)) = p.interval {
            let _ = write!(
                svg,
                r##"<line class="interval" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#222" stroke-width="1.5"/>"##,
                y_of(lo, range),
                y_of(hi, range)
            );
        }
        if let Some(Some(mark)) = marks.get(i) {
            let y = y_of(*mark, range);
            let _ = write!(
                svg,
                r##"<line class="budget" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c0392b" stroke-width="2.5"><title>budget {}</title></line>"##,
                x - width / 2.0 - 4.0,
                x + width / 2.0 + 4.0,
                num(*mark)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The name of a round for people.
fn round_name(job: &Job, r: &RoundSummary) -> String {
    if job.final_evaluation.as_ref() == Some(r) {
        "final".into()
    } else if r.round == 0 {
        "statistics".into()
    } else {
        format!("round {}", r.round)
    }
}

/// A round's tick on a chart's x axis: its number, `S` for statistics, `F` for the final
/// model's evaluation.
fn round_tick(job: &Job, r: &RoundSummary) -> String {
    if job.final_evaluation.as_ref() == Some(r) {
        "F".into()
    } else if r.round == 0 {
        "S".into()
    } else {
        r.round.to_string()
    }
}

/// The metrics charted per round: the model's on the test splits and its training loss (not
/// the counts of examples, nor a query's noise scale).
fn charted(name: &str) -> bool {
    (name.starts_with("test_") || name.starts_with("train_")) && !name.ends_with("_examples")
}

/// Now, in UTC (RFC 3339), for a page's "report written".
pub fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The page of `job` (read whole, with its rounds), written at `generated`.
pub fn render(job: &Job, generated: &str) -> String {
    let mut html = String::new();
    let kind = match job.spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(job_spec::Kind::Query(_)) => "query",
        Some(job_spec::Kind::Training(_)) => "training",
        None => "job",
    };
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Treaty {kind} job {id}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }} .excluded {{ color: #a33; }} .note {{ color: #555; font-size: 0.9em; }}
figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.9em; color: #555; }}
</style></head><body>
<h1>Treaty {kind} job {id}</h1>
"#,
        id = esc(&job.job_id)
    );
    let _ = writeln!(
        html,
        r#"<table class="summary"><tr><th>federation</th><td>{}</td></tr><tr><th>state</th><td>{}</td></tr><tr><th>rounds completed</th><td>{}</td></tr><tr><th>message</th><td>{}</td></tr><tr><th>latest model</th><td>{}</td></tr><tr><th>report written</th><td>{}</td></tr></table>"#,
        esc(&job.federation),
        esc(treaty_coordinator::state_name(job.state)),
        job.rounds_completed,
        esc(&job.message),
        esc(&job.latest_model_version),
        esc(generated)
    );
    let rounds: Vec<&RoundSummary> = job
        .statistics
        .iter()
        .chain(&job.rounds)
        .chain(&job.final_evaluation)
        .collect();

    // Metrics per round.
    let names: BTreeSet<&String> = rounds
        .iter()
        .flat_map(|r| r.metrics.keys())
        .filter(|n| charted(n))
        .collect();
    if !names.is_empty() {
        html.push_str("<h2>Metrics round by round</h2>\n<p class=\"note\">Computed from the agencies' noisy counts on their test splits; each bar is the central 95 % of the metric over redraws of the noise.</p>\n");
        for name in names {
            let points: Vec<Point> = rounds
                .iter()
                .filter_map(|r| {
                    r.metrics.get(name).map(|v| Point {
                        tick: round_tick(job, r),
                        label: round_name(job, r),
                        value: *v,
                        interval: r.metric_intervals.get(name).map(|i| (i.low, i.high)),
                    })
                })
                .collect();
            let _ = writeln!(
                html,
                "<figure class=\"metric\" data-metric=\"{n}\">{}<figcaption>{n}, by round (F: the final model)</figcaption></figure>",
                line_chart(name, &points),
                n = esc(name)
            );
        }
    }

    // Each agency's spending, as its node last reported it.
    let mut spending: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for r in &rounds {
        for (agency, m) in &r.agency_metrics {
            if let Some(s) = &m.spending {
                spending.insert(
                    agency,
                    (s.job_spent_epsilon, s.spent_epsilon, s.max_epsilon),
                );
            }
        }
    }
    if !spending.is_empty() {
        html.push_str("<h2>Privacy spent by each agency</h2>\n<p class=\"note\">As each agency's node last reported it from its own ledger. Bars: epsilon spent over every job; red marks: the agency's whole budget (none when its node keeps none).</p>\n");
        let points: Vec<Point> = spending
            .iter()
            .map(|(agency, (_, total, _))| Point {
                tick: (*agency).to_owned(),
                label: (*agency).to_owned(),
                value: *total,
                interval: None,
            })
            .collect();
        let marks: Vec<Option<f64>> = spending
            .values()
            .map(|(_, _, max)| (*max > 0.0).then_some(*max))
            .collect();
        let _ = write!(
            html,
            "<figure class=\"spending\">{}<figcaption>epsilon spent against each agency's budget</figcaption></figure>\n<table class=\"spending\"><tr><th>agency</th><th>on this job</th><th>over every job</th><th>budget</th></tr>\n",
            bar_chart("epsilon spent", &points, &marks)
        );
        for (agency, (job_spent, total, max)) in &spending {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{job_spent:.4}</td><td>{total:.4}</td><td>{}</td></tr>",
                esc(agency),
                if *max > 0.0 {
                    format!("{max:.4}")
                } else {
                    "none kept".into()
                }
            );
        }
        html.push_str("</table>\n");
    }

    // A query's answer.
    let answers: Vec<&RoundSummary> = rounds
        .iter()
        .copied()
        .filter(|r| !r.answer.is_empty())
        .collect();
    for r in answers {
        let points: Vec<Point> = r
            .answer
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                // Long labels are numbered on the axis, and named in the table below.
                tick: match v.label.chars().count() <= 10 {
                    true => v.label.clone(),
                    false => (i + 1).to_string(),
                },
                label: v.label.clone(),
                value: v.value,
                interval: Some((v.ci_low, v.ci_high)),
            })
            .collect();
        let _ = write!(
            html,
            "<h2>The answer</h2>\n<figure class=\"answer\">{}<figcaption>each value with its confidence interval (noise only)</figcaption></figure>\n<table class=\"answer\"><tr><th>#</th><th>value</th><th>estimate</th><th>noise sd</th><th>interval</th></tr>\n",
            bar_chart("the answer", &points, &[])
        );
        for (i, v) in r.answer.iter().enumerate() {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4} to {:.4}</td></tr>",
                i + 1,
                esc(&v.label),
                v.value,
                v.noise_std,
                v.ci_low,
                v.ci_high
            );
        }
        html.push_str("</table>\n");
    }

    // Who took part in each round, who did not, and why.
    html.push_str("<h2>Contributors and exclusions</h2>\n<table class=\"rounds\"><tr><th>round</th><th>contributors</th><th>left out, and why</th></tr>\n");
    for r in &rounds {
        let excluded: Vec<String> = r
            .excluded
            .iter()
            .map(|e| {
                format!(
                    "<div class=\"excluded\"><b>{}</b> {}: {}</div>",
                    esc(&e.agency),
                    esc(&e.reason_code),
                    esc(&e.message)
                )
            })
            .collect();
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&round_name(job, r)),
            esc(&r.contributors.join(", ")),
            excluded.join("")
        );
    }
    html.push_str("</table>\n<p class=\"note\">Written by treaty job report from the coordinator's record of the job. The job's signed evidence is exported with treaty audit export.</p>\n</body></html>\n");
    html
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use treaty_proto::v1::Exclusion;

    #[test]
    fn text_from_the_coordinator_cannot_become_markup() {
        let job = Job {
            job_id: "job-<1>".into(),
            federation: "f\"&'".into(),
            rounds: vec![RoundSummary {
                round: 1,
                excluded: vec![Exclusion {
                    agency: "<script>alert(1)</script>".into(),
                    reason_code: "REFUSED".into(),
                    message: "<img src=x onerror=alert(1)>".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let html = render(&job, "now");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("f&quot;&amp;&#39;"));
        assert!(html.contains("default-src 'none'"));
    }

    #[test]
    fn a_point_sits_where_its_value_is() {
        // The middle of the range is the middle of the plot area.
        let y = y_of(0.5, (0.0, 1.0));
        assert!((y - (TOP + (HEIGHT - BOTTOM - TOP) / 2.0)).abs() < 1e-9);
        assert_eq!(y_of(1.0, (0.0, 1.0)), TOP);
    }
}
