//! `treaty bench report`: the figures of bench/README.md rendered from the benchmarks' JSON
//! lines, so that the README cannot drift from what was measured.
//!
//! A results file (`bench/results/*.jsonl`, written by `treaty bench run`) holds one JSON object
//! a line: either a run's envelope — the runner's `id`, the `run`'s number, the `date`, the
//! `commit`, the `build`, the `size` (`full` or `smoke`), the `machine`, the `load_average` when
//! it started and the workload's own `report` — or a workload's bare JSON line (then the machine and the date are unknown).
//!
//! The README keeps its prose by hand. Its figures live in regions between the lines
//! `<!-- bench: NAME -->` and `<!-- /bench: NAME -->` (each alone on its line), NAME a workload (`w1`, `w2`, ..., `policy`,
//! `timing`, `tabular`); rendering replaces what a region holds with the table of its workload's
//! runs, and leaves a region with no runs as it is. The runs of a series (a workload, and for W1
//! its recipe, for the tabular benchmark its data set) come from the last results file, in the
//! order given, that holds that series: a later sitting replaces an earlier one, series by
//! series. Rendering is deterministic: the same results and README give the same file, and
//! rendering its output again changes nothing.

use std::path::Path;

use serde_json::Value;

use super::tables;

/// What stops a rendering: input to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read `{path}`: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("`{file}` line {line}: {reason}")]
    BadLine {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("the region `<!-- bench: {name} -->` has no `<!-- /bench: {name} -->` after it")]
    Unclosed { name: String },
}

/// One run of a workload, as a results file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The results file's name (without its directory).
    pub file: String,
    /// The workload in lower case (`w1`, `policy`, ...).
    pub workload: String,
    /// The series within the workload: W1's recipe, the tabular benchmark's data set, W3's number
    /// of agencies, or empty.
    pub series: String,
    /// The envelope's date (RFC 3339), when recorded.
    pub date: Option<String>,
    /// The commit the binary was built from, when recorded.
    pub commit: Option<String>,
    /// `release` or `debug`, when recorded.
    pub build: Option<String>,
    /// `full` or `smoke`, when recorded.
    pub size: Option<String>,
    /// The machine, as one line (cores, CPU, memory), when recorded.
    pub machine: Option<String>,
    /// The one-minute load average when the run started, when recorded.
    pub load: Option<f64>,
    /// The workload's own JSON line.
    pub report: Value,
}

/// The machine of an envelope as one line: `2 cores, CPU, 23.4 GiB memory`.
fn machine_line(machine: &Value) -> Option<String> {
    let cores = machine.get("cores")?.as_u64()?;
    let mut line = format!("{cores} core{}", if cores == 1 { "" } else { "s" });
    if let Some(cpu) = machine.get("cpu").and_then(Value::as_str) {
        line.push_str(&format!(" ({cpu})"));
    }
    if let Some(bytes) = machine.get("memory_bytes").and_then(Value::as_f64) {
        line.push_str(&format!(", {:.1} GiB memory", bytes / f64::from(1 << 30)));
    }
    Some(line)
}

/// The runs of one results file (`file` names it in errors and captions).
pub fn parse(file: &str, text: &str) -> Result<Vec<Run>, ReportError> {
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ReportError::BadLine {
            file: file.to_owned(),
            line: i + 1,
            reason,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let (envelope, report) = match value.get("report") {
            Some(report) => (Some(&value), report.clone()),
            None => (None, value.clone()),
        };
        // A line of several runs (W3 at several sizes: `runs`, each a workload's own report)
        // is a run each.
        let reports = match report.get("runs").and_then(Value::as_array) {
            Some(each) if !each.is_empty() && each.iter().all(|r| r.get("workload").is_some()) => {
                each.clone()
            }
            _ => vec![report],
        };
        for report in reports {
            let workload = report
                .get("workload")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no `workload` in the report".into()))?
                .to_lowercase();
            let series = match workload.as_str() {
                // W1 by recipe, and by secure aggregation and distributed noise.
                "w1" => {
                    let recipe = report.get("recipe").and_then(Value::as_str).unwrap_or("w1");
                    let secure = report.get("secure_aggregation") == Some(&Value::Bool(true));
                    match report
                        .get("distributed_noise_assumed_dishonest")
                        .and_then(Value::as_u64)
                    {
                        Some(c) => format!("{recipe} + distributed noise, c = {c}"),
                        None if secure => format!("{recipe} + secure aggregation"),
                        None => recipe.to_owned(),
                    }
                }
                "tabular" => report
                    .get("data")
                    .and_then(Value::as_str)
                    .and_then(|d| Path::new(d).file_name()?.to_str())
                    .unwrap_or("")
                    .to_owned(),
                // W3 at each federation size.
                "w3" => report
                    .get("agencies")
                    .map(Value::to_string)
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let text = |key: &str| {
                envelope
                    .and_then(|e| e.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            runs.push(Run {
                file: file.to_owned(),
                workload,
                series,
                date: text("date"),
                commit: text("commit"),
                build: text("build"),
                size: text("size"),
                machine: envelope
                    .and_then(|e| e.get("machine"))
                    .and_then(machine_line),
                load: envelope
                    .and_then(|e| e.get("load_average"))
                    .and_then(Value::as_f64),
                report,
            });
        }
    }
    Ok(runs)
}

/// Reads and parses results files, in the order given.
pub fn read(paths: &[impl AsRef<Path>]) -> Result<Vec<Run>, ReportError> {
    let mut runs = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        runs.extend(parse(&name, &text)?);
    }
    Ok(runs)
}

/// The runs of `workload` to render: for each of its series, in the order they first appear,
/// the runs of the last file that holds that series.
pub fn select<'a>(runs: &'a [Run], workload: &str) -> Vec<&'a Run> {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.workload == workload).collect();
    let mut series: Vec<&str> = Vec::new();
    for r in &mine {
        if !series.contains(&r.series.as_str()) {
            series.push(&r.series);
        }
    }
    let mut chosen = Vec::new();
    for s in series {
        let Some(last) = mine.iter().rev().find(|r| r.series == s).map(|r| &r.file) else {
            continue;
        };
        chosen.extend(
            mine.iter()
                .filter(|r| r.series == s && &r.file == last)
                .copied(),
        );
    }
    chosen
}

/// The median of `values` (the mean of the middle two for an even count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The distinct values of `values`, in order, joined by `sep`.
fn distinct(values: impl Iterator<Item = String>, sep: &str) -> String {
    let mut seen: Vec<String> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join(sep)
}

/// The line above a table: how many runs, when, of which build, on which machine, from which
/// file.
pub fn caption(runs: &[&Run]) -> String {
    let dates = distinct(
        runs.iter()
            .filter_map(|r| r.date.as_deref())
            .map(|d| d.get(..10).unwrap_or(d).to_owned()),
        ", ",
    );
    let commits = distinct(
        runs.iter().filter_map(|r| r.commit.as_deref()).map(|c| {
            let (head, dirty) = match c.strip_suffix("-dirty") {
                Some(head) => (head, " with uncommitted changes"),
                None => (c, ""),
            };
            format!("`{}`{dirty}", head.get(..12).unwrap_or(head))
        }),
        ", ",
    );
    let builds = distinct(
        runs.iter().filter_map(|r| r.build.as_deref()).map(|b| {
            if b == "release" {
                "release build".to_owned()
            } else {
                format!("**{b} build** (not comparable with a release build)")
            }
        }),
        ", ",
    );
    let smoke = runs.iter().any(|r| r.size.as_deref() == Some("smoke"));
    let machines = distinct(runs.iter().filter_map(|r| r.machine.clone()), "; ");
    let loads: Vec<f64> = runs.iter().filter_map(|r| r.load).collect();
    let files = distinct(
        runs.iter()
            .map(|r| format!("[`results/{0}`](results/{0})", r.file)),
        ", ",
    );
    let mut parts = Vec::new();
    if smoke {
        parts.push("**smoke size** (a check that the workloads run, not a measurement)".to_owned());
    }
    parts.push(if dates.is_empty() {
        "date not recorded".to_owned()
    } else {
        dates
    });
    if !commits.is_empty() {
        parts.push(format!("commit {commits}"));
    }
    if !builds.is_empty() {
        parts.push(builds);
    }
    parts.push(if machines.is_empty() {
        "machine not recorded".to_owned()
    } else {
        machines
    });
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        parts.push(if lo == hi {
            format!("load average {lo:.2} at the start")
        } else {
            format!("load average {lo:.2} to {hi:.2} at the runs' start")
        });
    }
    format!(
        "_Rendered by `treaty bench report` from {}: {}._",
        files,
        parts.join(", ")
    )
}

/// What rendering did to each region: its name and how many runs filled it (0: left as it was).
pub type Rendered = Vec<(String, usize)>;

/// The name of the region a line opens: `<!-- bench: NAME -->` alone on its line.
fn region_start(line: &str) -> Option<String> {
    let name = line
        .trim()
        .strip_prefix("<!-- bench: ")?
        .strip_suffix(" -->")?
        .trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// `readme` with every region that has runs rendered from `runs`.
pub fn render(readme: &str, runs: &[Run]) -> Result<(String, Rendered), ReportError> {
    let lines: Vec<&str> = readme.split_inclusive('\n').collect();
    let mut out = String::with_capacity(readme.len());
    let mut rendered = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        out.push_str(lines[i]);
        let Some(name) = region_start(lines[i]) else {
            i += 1;
            continue;
        };
        let end_marker = format!("<!-- /bench: {name} -->");
        let Some(end) = (i + 1..lines.len()).find(|&j| lines[j].trim() == end_marker) else {
            return Err(ReportError::Unclosed { name });
        };
        let chosen = select(runs, &name);
        if chosen.is_empty() {
            lines[i + 1..end].iter().for_each(|l| out.push_str(l));
        } else {
            out.push('\n');
            out.push_str(&caption(&chosen));
            out.push_str("\n\n");
            out.push_str(&tables::table(&name, &chosen));
            out.push('\n');
        }
        rendered.push((name, chosen.len()));
        // The closing marker is copied as the next line.
        i = end;
    }
    Ok((out, rendered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(file: &str, run: u32, report: Value) -> String {
        serde_json::json!({
            "id": "x", "run": run, "date": "2026-12-02T10:00:00Z", "commit": "0123456789abcdef",
            "build": "release", "load_average": 0.25 * f64::from(run),
            "machine": {"cores": 2, "cpu": "Test CPU", "memory_bytes": 2u64 << 30},
            "report": report, "file": file,
        })
        .to_string()
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn a_later_file_replaces_a_series_and_leaves_the_others() {
        let w1 = |recipe: &str, seconds: f64| {
            serde_json::json!({"workload": "W1", "recipe": recipe, "job_seconds": seconds})
                .to_string()
        };
        let old = [w1("w1", 70.0), w1("default", 12.0), w1("w1", 71.0)].join("\n");
        let new = w1("default", 9.0);
        let mut runs = parse("a.jsonl", &old).unwrap();
        runs.extend(parse("b.jsonl", &new).unwrap());
        let chosen: Vec<(&str, &str, f64)> = select(&runs, "w1")
            .iter()
            .map(|r| {
                (
                    r.file.as_str(),
                    r.series.as_str(),
                    r.report["job_seconds"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            chosen,
            [
                ("a.jsonl", "w1", 70.0),
                ("a.jsonl", "w1", 71.0),
                ("b.jsonl", "default", 9.0)
            ]
        );
        assert!(select(&runs, "w2").is_empty());
    }

    #[test]
    fn a_line_without_a_workload_is_refused_with_its_place() {
        let err = parse("r.jsonl", "\n{\"workload\": \"W4\"}\n{\"x\": 1}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`r.jsonl` line 3: no `workload` in the report"
        );
        assert!(parse("r.jsonl", "not json").is_err());
    }

    /// Three W4 runs of known figures: the region holds their median (the middle one, computed
    /// here by hand), each run, and the machine and date of the envelopes; a region without
    /// runs and the prose stay as they were; rendering the output again changes nothing.
    #[test]
    fn renders_a_region_from_three_runs() {
        let w4 = |median: f64, p99: f64| {
            serde_json::json!({"workload": "W4", "agencies": 8, "rows": 100, "rounds": 100,
                "job_seconds": 1.5, "round_median_ms": median, "round_p99_ms": p99,
                "cycle_median_ms": median + 1.0, "cycle_p99_ms": p99 + 1.0})
        };
        let results = [
            envelope("r", 1, w4(4.5, 9.0)),
            envelope("r", 2, w4(3.2, 12.0)),
            envelope("r", 3, w4(3.7, 8.0)),
        ]
        .join("\n");
        let runs = parse("2026-12-02.jsonl", &results).unwrap();
        let readme = "# Title\n\nProse stays, `<!-- bench: w4 -->` in it too.\n<!-- bench: w4 -->\n\
            old table\n<!-- /bench: w4 -->\nMore prose.\n<!-- bench: w3 -->\nnot yet measured\n\
            <!-- /bench: w3 -->\n";
        let (out, rendered) = render(readme, &runs).unwrap();
        assert_eq!(rendered, [("w4".to_owned(), 3), ("w3".to_owned(), 0)]);
        assert!(out.starts_with(
            "# Title\n\nProse stays, `<!-- bench: w4 -->` in it too.\n<!-- bench: w4 -->\n"
        ));
        assert!(
            out.ends_with(
                "More prose.\n<!-- bench: w3 -->\nnot yet measured\n<!-- /bench: w3 -->\n"
            )
        );
        assert!(!out.contains("old table"));
        assert!(out.contains("2026-12-02"), "{out}");
        assert!(out.contains("2 cores (Test CPU), 2.0 GiB memory"), "{out}");
        assert!(out.contains("load average 0.25 to 0.75"), "{out}");
        assert!(
            out.contains("commit `0123456789ab`, release build"),
            "{out}"
        );
        assert!(out.contains("[`results/2026-12-02.jsonl`](results/2026-12-02.jsonl)"));
        // A round's rows: the three runs in order, then their median (4.7 ms completion to
        // completion, 3.7 ms start to completion).
        let row = |start: &str| out.lines().find(|l| l.starts_with(start)).unwrap();
        assert_eq!(
            row("| a round, completion to completion"),
            "| a round, completion to completion: median (ms) | 5.5 | 4.2 | 4.7 | **4.7** |"
        );
        assert_eq!(
            row("| 99th"),
            "| 99th percentile (ms) | 10.0 | 13.0 | 9.0 | **10.0** |"
        );
        assert_eq!(
            row("| of which start to completion"),
            "| of which start to completion: median (ms) | 4.5 | 3.2 | 3.7 | **3.7** |"
        );
        let (again, _) = render(&out, &runs).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn an_unclosed_region_is_refused() {
        let err = render("<!-- bench: w2 -->\n", &[]).unwrap_err();
        assert!(err.to_string().contains("<!-- /bench: w2 -->"), "{err}");
    }
}
