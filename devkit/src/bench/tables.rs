//! The tables of `treaty bench report`, one per workload: medians over the runs, and each run
//! where it matters. A workload without a table of its own (a new one) gets every numeric figure
//! of its JSON line, run by run.

use serde_json::Value;

use super::Spread;
use super::report::{Run, median};

/// A figure's value in a run's report (`None` when absent or not a number).
fn figure(report: &Value, key: &str) -> Option<f64> {
    report.get(key).and_then(Value::as_f64)
}

/// A figure of every run that has it.
fn figures(runs: &[&Run], key: &str) -> Vec<f64> {
    runs.iter().filter_map(|r| figure(&r.report, key)).collect()
}

/// `decimals` places.
fn fixed(decimals: usize) -> impl Fn(f64) -> String {
    move |v| format!("{v:.decimals$}")
}

/// Bytes as whole MiB.
fn mib(v: f64) -> String {
    format!("{:.0}", v / f64::from(1 << 20))
}

/// A whole number with thousands separated by commas: `1,234,567`.
pub(super) fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// The median, bold, then each run in parentheses when there are several; `n/a` for none.
fn with_runs(values: &[f64], f: &dyn Fn(f64) -> String) -> String {
    match (median(values), values.len()) {
        (None, _) => "n/a".into(),
        (Some(m), 1) => f(m),
        (Some(m), _) => format!(
            "**{}** ({})",
            f(m),
            values.iter().map(|v| f(*v)).collect::<Vec<_>>().join(" / ")
        ),
    }
}

/// The median alone; `n/a` for none.
fn median_of(values: &[f64], f: &dyn Fn(f64) -> String) -> String {
    median(values).map_or_else(|| "n/a".into(), f)
}

/// The distinct values of a figure over the runs, as text joined by ` / `.
fn setting(runs: &[&Run], key: &str) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in runs {
        let v = match r.report.get(key) {
            Some(Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), thousands),
            Some(Value::String(s)) => s.clone(),
            _ => continue,
        };
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    if seen.is_empty() {
        "?".into()
    } else {
        seen.join(" / ")
    }
}

fn header(cells: &[&str]) -> String {
    format!(
        "| {} |\n|{}\n",
        cells.join(" | "),
        "---|".repeat(cells.len())
    )
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// A figure of the runs table: its label, its key in the report, its format.
type Figure<'a> = (&'a str, &'a str, &'a dyn Fn(f64) -> String);

/// One row per figure, one column per run, then the median.
fn runs_table(runs: &[&Run], rows: &[Figure<'_>]) -> String {
    let labels: Vec<String> = (1..=runs.len()).map(|i| format!("run {i}")).collect();
    let mut cells: Vec<&str> = vec!["figure"];
    cells.extend(labels.iter().map(String::as_str));
    cells.push("median");
    let mut out = header(&cells);
    for (label, key, f) in rows {
        let mut cells = vec![(*label).to_owned()];
        cells.extend(
            runs.iter()
                .map(|r| figure(&r.report, key).map_or_else(|| "n/a".into(), f)),
        );
        cells.push(format!("**{}**", median_of(&figures(runs, key), f)));
        out.push_str(&row(&cells));
    }
    out
}

/// The runs grouped by series, in the order the series first appear.
fn by_series<'a>(runs: &[&'a Run]) -> Vec<(String, Vec<&'a Run>)> {
    let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
    for r in runs {
        match groups.iter_mut().find(|(s, _)| *s == r.series) {
            Some((_, g)) => g.push(r),
            None => groups.push((r.series.clone(), vec![r])),
        }
    }
    groups
}

/// The entries of a run's `results` array whose `key` is `value`.
fn results_where<'a>(runs: &[&'a Run], key: &str, value: &Value) -> Vec<&'a Value> {
    runs.iter()
        .filter_map(|r| r.report.get("results").and_then(Value::as_array))
        .flatten()
        .filter(|e| e.get(key) == Some(value))
        .collect()
}

/// The distinct values of `key` over every run's `results`, in order of first appearance.
fn result_keys(runs: &[&Run], key: &str) -> Vec<Value> {
    let mut keys: Vec<Value> = Vec::new();
    for r in runs {
        for e in r
            .report
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = e.get(key)
                && !keys.contains(k)
            {
                keys.push(k.clone());
            }
        }
    }
    keys
}

fn entry_figures(entries: &[&Value], key: &str) -> Vec<f64> {
    entries
        .iter()
        .filter_map(|e| e.get(key).and_then(Value::as_f64))
        .collect()
}

/// The markdown of workload `name`'s runs (at least one).
pub(super) fn table(name: &str, runs: &[&Run]) -> String {
    match name {
        "w1" => w1(runs),
        "w2" => w2(runs),
        "w3" => w3(runs),
        "w4" => w4(runs),
        "w5" => w5(runs),
        "policy" => policy(runs),
        "timing" => timing(runs),
        "score" => score(runs),
        "tabular" => tabular(runs),
        _ => generic(runs),
    }
}

fn w1(runs: &[&Run]) -> String {
    let mut out = header(&[
        "recipe",
        "agencies, rounds, epsilon",
        "accuracy",
        "ROC AUC",
        "job seconds",
        "per-round median (s)",
        "nodes' start-up (s)",
        "largest epsilon spent",
        "peak RSS, coordinator / one node (MiB)",
    ]);
    for (recipe, group) in by_series(runs) {
        out.push_str(&row(&[
            match recipe.split_once(" + ") {
                Some((name, under)) => format!("`{name}` + {under}"),
                None => format!("`{recipe}`"),
            },
            format!(
                "{}, {}, {}",
                setting(&group, "agencies"),
                setting(&group, "rounds"),
                setting(&group, "target_epsilon")
            ),
            with_runs(&figures(&group, "accuracy"), &fixed(4)),
            with_runs(&figures(&group, "auc"), &fixed(4)),
            with_runs(&figures(&group, "job_seconds"), &fixed(1)),
            median_of(&figures(&group, "round_median_seconds"), &fixed(3)),
            median_of(&figures(&group, "startup_seconds"), &fixed(2)),
            median_of(&figures(&group, "max_epsilon_spent"), &fixed(4)),
            format!(
                "{} / {}",
                median_of(&figures(&group, "coordinator_peak_rss_bytes"), &mib),
                median_of(&figures(&group, "node_peak_rss_bytes"), &mib)
            ),
        ]));
    }
    out
}

fn w2(runs: &[&Run]) -> String {
    let models = |v: f64| format!("{v:.2}");
    format!(
        "{} agencies, {} `f32` parameters, {} round(s) a run (each run's figure the median of its rounds):\n\n{}",
        setting(runs, "agencies"),
        setting(runs, "parameters"),
        setting(runs, "rounds"),
        runs_table(
            runs,
            &[
                (
                    "aggregate ready after the last chunk (ms)",
                    "aggregate_ready_ms_median",
                    &fixed(1)
                ),
                (
                    "last upload acknowledged to round completed (ms)",
                    "round_completed_after_last_ack_ms_median",
                    &fixed(0)
                ),
                (
                    "coordinator peak RSS above the round's start (models of f32)",
                    "peak_rss_above_round_start_models",
                    &models
                ),
                (
                    "coordinator peak RSS over the job (MiB)",
                    "coordinator_peak_rss_bytes",
                    &mib
                ),
                ("job seconds", "job_seconds", &fixed(2)),
            ],
        )
    )
}

fn w3(runs: &[&Run]) -> String {
    let mut out = format!(
        "{} rows of {} features per agency, {} rounds a run, each agency over its own mutual-TLS session:\n\n",
        setting(runs, "rows"),
        setting(runs, "features"),
        setting(runs, "rounds"),
    );
    out.push_str(&header(&[
        "agencies",
        "round, completion to completion: median (s)",
        "of which start to completion: median (s)",
        "coordinator CPU per agency per round (ms)",
        "coordinator CPU over the job (s)",
        "coordinator peak RSS (MiB)",
        "agencies' host peak RSS (MiB)",
        "job seconds",
    ]));
    for (agencies, group) in by_series(runs) {
        out.push_str(&row(&[
            thousands(agencies.parse().unwrap_or(f64::NAN)),
            with_runs(&figures(&group, "round_period_median_seconds"), &fixed(3)),
            with_runs(&figures(&group, "round_median_seconds"), &fixed(3)),
            median_of(
                &figures(&group, "coordinator_cpu_ms_per_agency_task_round_over_job"),
                &fixed(2),
            ),
            median_of(&figures(&group, "coordinator_cpu_seconds"), &fixed(2)),
            median_of(&figures(&group, "coordinator_peak_rss_bytes"), &mib),
            median_of(&figures(&group, "host_peak_rss_bytes"), &mib),
            median_of(&figures(&group, "job_seconds"), &fixed(2)),
        ]));
    }
    out
}

fn w4(runs: &[&Run]) -> String {
    format!(
        "{} agencies × {} records, {} rounds a run:\n\n{}",
        setting(runs, "agencies"),
        setting(runs, "rows"),
        setting(runs, "rounds"),
        runs_table(
            runs,
            &[
                (
                    "a round, completion to completion: median (ms)",
                    "cycle_median_ms",
                    &fixed(1)
                ),
                ("99th percentile (ms)", "cycle_p99_ms", &fixed(1)),
                (
                    "of which start to completion: median (ms)",
                    "round_median_ms",
                    &fixed(1)
                ),
                ("99th percentile (ms)", "round_p99_ms", &fixed(1)),
                ("job seconds", "job_seconds", &fixed(2)),
            ],
        )
    )
}

fn score(runs: &[&Run]) -> String {
    format!(
        "{} declarations of {} columns a run, one at a time, each with its top 3 contributions:\n\n{}",
        setting(runs, "requests"),
        setting(runs, "columns"),
        runs_table(
            runs,
            &[
                ("median (ms)", "median_ms", &fixed(3)),
                ("99th percentile (ms)", "p99_ms", &fixed(3)),
                ("99.9th percentile (ms)", "p999_ms", &fixed(3)),
            ],
        )
    )
}

fn w5(runs: &[&Run]) -> String {
    let mut out = format!(
        "{} cores; each run the median of its own repeats:\n\n",
        setting(runs, "cores")
    );
    out.push_str(&header(&[
        "parameters",
        "one thread (samples/s)",
        "all cores (samples/s)",
        "one update, all cores (s)",
    ]));
    for size in result_keys(runs, "parameters") {
        let entries = results_where(runs, "parameters", &size);
        out.push_str(&row(&[
            size.as_f64().map_or_else(|| size.to_string(), thousands),
            with_runs(
                &entry_figures(&entries, "single_thread_samples_per_second"),
                &thousands,
            ),
            with_runs(
                &entry_figures(&entries, "all_cores_samples_per_second"),
                &thousands,
            ),
            median_of(&entry_figures(&entries, "all_cores_seconds"), &fixed(3)),
        ]));
    }
    out
}

fn policy(runs: &[&Run]) -> String {
    let mut out = format!(
        "Each run the median of its own {} repeats:\n\n",
        setting(runs, "repeats")
    );
    out.push_str(&header(&[
        "instance",
        "admitted",
        "whole command (ms)",
        "parse + decide (ms)",
        "decide (ms)",
    ]));
    for instance in result_keys(runs, "instance") {
        let entries = results_where(runs, "instance", &instance);
        let admitted = entries
            .iter()
            .filter_map(|e| Some((e.get("admitted")?, e.get("agencies")?)))
            .map(|(a, n)| format!("{a} of {n}"))
            .next()
            .unwrap_or_else(|| "?".into());
        out.push_str(&row(&[
            instance.as_str().unwrap_or("?").to_owned(),
            admitted,
            with_runs(&entry_figures(&entries, "command_ms"), &fixed(2)),
            median_of(&entry_figures(&entries, "parse_decide_ms"), &fixed(2)),
            median_of(&entry_figures(&entries, "decide_ms"), &fixed(2)),
        ]));
    }
    out
}

fn timing(runs: &[&Run]) -> String {
    let mut out = format!(
        "A public count of {} records (q = {}, {} steps a round); each run the median of its own {} repeats:\n\n",
        setting(runs, "public_records"),
        median_of(&figures(runs, "sampling_rate"), &fixed(5)),
        setting(runs, "steps"),
        setting(runs, "repeats"),
    );
    out.push_str(&header(&["true records", "a round (s)"]));
    for records in result_keys(runs, "records") {
        let entries = results_where(runs, "records", &records);
        out.push_str(&row(&[
            records
                .as_f64()
                .map_or_else(|| records.to_string(), thousands),
            with_runs(&entry_figures(&entries, "median_seconds"), &fixed(4)),
        ]));
    }
    let sci = |v: f64| format!("{v:.2e}");
    out.push_str(&format!(
        "\nA round grows by {} s per record (median over the runs); one record's effect is {} of the run-to-run spread at the public count.\n",
        median_of(&figures(runs, "seconds_per_record"), &sci),
        median_of(&figures(runs, "record_over_spread"), &sci),
    ));
    out
}

fn tabular(runs: &[&Run]) -> String {
    let mut out = header(&[
        "data set",
        "recipe",
        "runs",
        "accuracy (mean ± sd)",
        "ROC AUC (mean ± sd)",
        "gap to centralised (points)",
    ]);
    let pm = |s: Spread| format!("{:.4} ± {:.4}", s.mean, s.sd);
    for (dataset, group) in by_series(runs) {
        let centralised = results_where(&group, "recipe", &Value::from("centralised"));
        let reference = median(&entry_figures(&centralised, "accuracy"));
        out.push_str(&row(&[
            format!(
                "{dataset} ({} agencies, {} rounds, epsilon {})",
                setting(&group, "agencies"),
                setting(&group, "rounds"),
                setting(&group, "epsilon")
            ),
            "centralised, no DP".into(),
            "—".into(),
            median_of(&entry_figures(&centralised, "accuracy"), &fixed(4)),
            median_of(&entry_figures(&centralised, "auc"), &fixed(4)),
            "—".into(),
        ]));
        for recipe in result_keys(&group, "recipe") {
            if recipe == "centralised" {
                continue;
            }
            let trials: Vec<&Value> = results_where(&group, "recipe", &recipe)
                .into_iter()
                .filter_map(|e| e.get("runs").and_then(Value::as_array))
                .flatten()
                .collect();
            let accuracy = Spread::of(&entry_figures(&trials, "accuracy"));
            out.push_str(&row(&[
                dataset.clone(),
                format!("`{}`", recipe.as_str().unwrap_or("?")),
                trials.len().to_string(),
                pm(accuracy),
                pm(Spread::of(&entry_figures(&trials, "auc"))),
                reference.map_or_else(
                    || "n/a".into(),
                    |r| format!("{:+.2}", 100.0 * (accuracy.mean - r)),
                ),
            ]));
        }
    }
    out
}

fn generic(runs: &[&Run]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for r in runs {
        if let Some(map) = r.report.as_object() {
            for (k, v) in map {
                if v.is_number() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    keys.sort();
    let f = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.0}")
        } else {
            format!("{v:.4}")
        }
    };
    let rows: Vec<Figure<'_>> = keys
        .iter()
        .map(|k| (k.as_str(), k.as_str(), &f as &dyn Fn(f64) -> String))
        .collect();
    runs_table(runs, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::parse;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(117_553.4), "117,553");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(thousands(0.2), "0");
    }

    /// W1 by recipe: each recipe one row, the median of its three runs beside the runs.
    #[test]
    fn w1_has_a_row_per_recipe_with_the_median_of_its_runs() {
        let line = |recipe: &str, accuracy: f64, seconds: f64| {
            serde_json::json!({"workload": "W1", "recipe": recipe, "agencies": 8, "rounds": 20,
                "target_epsilon": 1.0, "accuracy": accuracy, "auc": accuracy + 0.02, "job_seconds": seconds,
                "round_median_seconds": 0.5, "startup_seconds": 1.5, "max_epsilon_spent": 1.0,
                "coordinator_peak_rss_bytes": 20u64 << 20, "node_peak_rss_bytes": null})
            .to_string()
        };
        let text = [
            line("w1", 0.95, 70.0),
            line("default", 0.9491, 12.0),
            line("w1", 0.9512, 68.0),
            line("default", 0.9489, 11.0),
            line("w1", 0.9503, 72.0),
            line("default", 0.9495, 13.5),
        ]
        .join("\n");
        let runs = parse("r.jsonl", &text).unwrap();
        let refs: Vec<&Run> = runs.iter().collect();
        let table = table("w1", &refs);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| `w1` | 8, 20, 1 | **0.9503** (0.9500 / 0.9512 / 0.9503) | **0.9703** (0.9700 / 0.9712 / 0.9703) | **70.0** (70.0 / 68.0 / 72.0) | 0.500 | 1.50 | 1.0000 | 20 / n/a |",
                "| `default` | 8, 20, 1 | **0.9491** (0.9491 / 0.9489 / 0.9495) | **0.9691** (0.9691 / 0.9689 / 0.9695) | **12.0** (12.0 / 11.0 / 13.5) | 0.500 | 1.50 | 1.0000 | 20 / n/a |",
            ]
        );
    }

    /// Tabular: the runs of two lines of one data set pooled; mean and sample sd by hand.
    #[test]
    fn tabular_pools_the_runs_of_a_data_set() {
        let line = |accuracies: &[f64]| {
            let runs: Vec<Value> = accuracies
                .iter()
                .map(|a| serde_json::json!({"accuracy": a, "auc": 0.9}))
                .collect();
            serde_json::json!({"workload": "tabular", "data": "/tmp/x/adult", "agencies": 8,
                "rounds": 20, "epsilon": 1.0, "results": [
                    {"recipe": "centralised", "accuracy": 0.85, "auc": 0.9},
                    {"recipe": "default", "runs": runs}]})
            .to_string()
        };
        let text = [line(&[0.84, 0.83]), line(&[0.82])].join("\n");
        let runs = parse("t.jsonl", &text).unwrap();
        let refs: Vec<&Run> = runs.iter().collect();
        let table = table("tabular", &refs);
        // Mean 0.83, sd sqrt(((0.01)^2 + 0 + (0.01)^2) / 2) = 0.01, gap -2.00 points.
        assert!(
            table.contains("| adult | `default` | 3 | 0.8300 ± 0.0100 | 0.9000 ± 0.0000 | -2.00 |"),
            "{table}"
        );
        assert!(table.contains("| adult (8 agencies, 20 rounds, epsilon 1) | centralised, no DP | — | 0.8500 | 0.9000 | — |"), "{table}");
    }

    /// W3 prints one line for all its sizes (`runs`): a row per size, medians by hand.
    #[test]
    fn w3_has_a_row_per_federation_size() {
        let size = |agencies: u64, medians: &[f64]| {
            let runs: Vec<Value> = medians
                .iter()
                .map(|m| {
                    serde_json::json!({"workload": "W3", "agencies": agencies, "rows": 2000,
                    "features": 16, "rounds": 5, "round_median_seconds": m,
                    "round_period_median_seconds": m + 0.01,
                    "coordinator_cpu_ms_per_agency_task_round_over_job": 1.0,
                    "coordinator_cpu_seconds": 0.5, "coordinator_peak_rss_bytes": 30u64 << 20,
                    "host_peak_rss_bytes": 100u64 << 20, "job_seconds": 2.0})
                })
                .collect();
            serde_json::json!({"workload": "W3", "rows": 2000, "rounds": 5, "runs": runs})
                .to_string()
        };
        let text = [
            size(10, &[0.04]),
            size(10, &[0.05]),
            size(10, &[0.03]),
            size(1000, &[5.2]),
        ]
        .join("\n");
        let runs = parse("r.jsonl", &text).unwrap();
        assert_eq!(runs.len(), 4);
        let refs: Vec<&Run> = runs.iter().collect();
        let table = table("w3", &refs);
        let rows: Vec<&str> = table.lines().skip(4).collect();
        assert_eq!(
            rows,
            [
                "| 10 | **0.050** (0.050 / 0.060 / 0.040) | **0.040** (0.040 / 0.050 / 0.030) | 1.00 | 0.50 | 30 | 100 | 2.00 |",
                "| 1,000 | 5.210 | 5.200 | 1.00 | 0.50 | 30 | 100 | 2.00 |",
            ],
            "{table}"
        );
    }

    #[test]
    fn a_new_workload_gets_every_numeric_figure() {
        let text = "{\"workload\": \"W9\", \"agencies\": 10, \"round_median_seconds\": 0.25}\n\
            {\"workload\": \"W9\", \"agencies\": 10, \"round_median_seconds\": 0.75}";
        let runs = parse("r.jsonl", text).unwrap();
        let refs: Vec<&Run> = runs.iter().collect();
        let table = table("w9", &refs);
        assert!(table.contains("| agencies | 10 | 10 | **10** |"), "{table}");
        assert!(
            table.contains("| round_median_seconds | 0.2500 | 0.7500 | **0.5000** |"),
            "{table}"
        );
    }
}
