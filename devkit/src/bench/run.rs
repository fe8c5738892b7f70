//! `treaty bench run`: every workload of [`WORKLOADS`], each several times as a process of its
//! own (`treaty bench ...`, as a user runs it), every run's JSON line appended to a results file
//! in an envelope that records when, from which commit and build, and on which machine it ran
//! (`treaty bench report` renders bench/README.md's figures from these files).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::outln;

/// A workload of the runner: `treaty bench` arguments at full size and at the smoke size CI
/// runs, separated by spaces. `{w1-data}` stands for W1's data directory (written once by the
/// runner), `{tabular}` for a data directory given with `--tabular`: such a workload runs once
/// per directory (its repeats are its own `--repeats`).
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its name for `--only`.
    pub id: &'static str,
    /// The arguments of a full-size run.
    pub full: &'static str,
    /// The arguments of a smoke run.
    pub smoke: &'static str,
}

const fn workload(id: &'static str, full: &'static str, smoke: &'static str) -> Workload {
    Workload { id, full, smoke }
}

/// Every workload the runner knows, in the order it runs them (one entry a workload). W3 runs
/// after the others: its thousand agencies' databases are still being written back to disk for
/// a while after it ends, which would slow the rounds of a workload run next.
#[rustfmt::skip]
pub const WORKLOADS: &[Workload] = &[
    workload("w1", "w1 --data {w1-data}", "w1 --data {w1-data} --agencies 2 --rounds 2"),
    workload("w1-default", "w1 --data {w1-data} --recipe default", "w1 --data {w1-data} --agencies 2 --rounds 2 --recipe default"),
    workload("w1-poisson-fifth", "w1 --data {w1-data} --recipe poisson-fifth", "w1 --data {w1-data} --agencies 2 --rounds 2 --recipe poisson-fifth"),
    workload("w1-full-batch-10", "w1 --data {w1-data} --recipe full-batch-10", "w1 --data {w1-data} --agencies 2 --rounds 2 --recipe full-batch-10"),
    workload("w1-secure", "w1 --data {w1-data} --recipe default --secure-aggregation", "w1 --data {w1-data} --agencies 3 --rounds 2 --recipe default --secure-aggregation"),
    workload("w1-distributed", "w1 --data {w1-data} --recipe distributed --secure-aggregation --distributed-noise 2", "w1 --data {w1-data} --agencies 3 --rounds 2 --recipe distributed --secure-aggregation --distributed-noise 1"),
    workload("w2", "w2", "w2 --agencies 4 --parameters 10000 --rounds 1"),
    workload("w4", "w4", "w4 --agencies 2 --rounds 3"),
    workload("w5", "w5", "w5 --repeats 1 --sizes 1000,10000"),
    workload("policy", "policy", "policy --repeats 1"),
    workload("timing", "timing", "timing --records 2000 --repeats 1"),
    workload("score", "score", "score --requests 200"),
    workload("w3-10", "w3 --agencies 10", "w3 --agencies 3 --rounds 1 --rows 200"),
    workload("w3-100", "w3 --agencies 100", "w3 --agencies 3 --rounds 1 --rows 200"),
    workload("w3", "w3", "w3 --agencies 3 --rounds 1 --rows 200"),
    workload("tabular", "tabular --data {tabular} --recipes full-batch-10,poisson-fifth,default --repeats 10", "tabular --data {tabular} --agencies 2 --rounds 2 --recipes default --repeats 2"),
];

/// W1's data at full size and at the smoke size: agencies and rows per agency (seed 42).
const W1_DATA: (usize, usize) = (8, 100_000);
const W1_SMOKE_DATA: (usize, usize) = (3, 500);

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Every workload at its smoke size (CI, a quick look) instead of its full size.
    pub smoke: bool,
    /// Runs of each workload.
    pub repeats: usize,
    /// The results file the envelopes are appended to.
    pub results: PathBuf,
    /// W1's data directory (written there if it lacks it); `None`: a temporary one.
    pub w1_data: Option<PathBuf>,
    /// Data directories of the tabular benchmark (`bench/NAME/prepare.py` writes them).
    pub tabular: Vec<PathBuf>,
    /// Only these workloads (by id); empty: every workload whose data is at hand.
    pub only: Vec<String>,
}

/// What stops the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no workload `{id}`; the workloads are {known}")]
    Unknown { id: String, known: String },
    #[error("the tabular benchmark needs its data: give `--tabular DIR` (bench/README.md)")]
    NoTabularData,
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: String },
    #[error("`{command}` printed no JSON line of figures last: {reason}")]
    NoReport { command: String, reason: String },
}

impl RunError {
    /// Whether the command line is to blame.
    pub fn is_unusable(&self) -> bool {
        matches!(self, RunError::Unknown { .. } | RunError::NoTabularData)
    }
}

/// The machine: cores, the CPU's model name, the memory.
fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    serde_json::json!({"cores": cores, "cpu": cpu, "memory_bytes": memory})
}

/// The one-minute load average now.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The commit of the working directory's repository, `-dirty` when tracked files changed.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// Now, RFC 3339 in UTC to the second.
fn now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Runs `exe` with `args`, passing its output through; its last line, parsed.
fn run_one(exe: &Path, args: &[String]) -> Result<Value, RunError> {
    let command = format!("treaty bench {}", args.join(" "));
    outln!("== {command}");
    let failed = |status: String| RunError::Failed {
        command: command.clone(),
        status,
    };
    if crate::local::stopping() {
        return Err(failed("not started: the runner is stopping".into()));
    }
    let mut child = std::process::Command::new(exe)
        .arg("bench")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut last = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.map_err(|e| failed(e.to_string()))?;
            outln!("{line}");
            if !line.trim().is_empty() {
                last = line;
            }
        }
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    if !status.success() {
        return Err(failed(status.to_string()));
    }
    let report: Value = serde_json::from_str(&last).map_err(|e| RunError::NoReport {
        command: command.clone(),
        reason: e.to_string(),
    })?;
    if report.get("workload").is_none() {
        return Err(RunError::NoReport {
            command,
            reason: "no `workload` in it".into(),
        });
    }
    Ok(report)
}

/// Runs the workloads with the `treaty` binary `exe`, appending to the results file.
pub fn run(options: &RunOptions, exe: &Path) -> anyhow::Result<()> {
    for id in &options.only {
        if !WORKLOADS.iter().any(|w| w.id == id) {
            let known: Vec<&str> = WORKLOADS.iter().map(|w| w.id).collect();
            return Err(RunError::Unknown {
                id: id.clone(),
                known: known.join(", "),
            }
            .into());
        }
    }
    let args_of = |w: &Workload| if options.smoke { w.smoke } else { w.full };
    let chosen: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| options.only.is_empty() || options.only.iter().any(|id| id == w.id))
        .filter(|w| {
            // A tabular workload needs its data; without `--only` it is skipped without it.
            !args_of(w).contains("{tabular}")
                || !options.tabular.is_empty()
                || !options.only.is_empty()
        })
        .collect();
    if chosen.iter().any(|w| args_of(w).contains("{tabular}")) && options.tabular.is_empty() {
        return Err(RunError::NoTabularData.into());
    }
    let temp = tempfile::Builder::new()
        .prefix("treaty-bench-run-")
        .tempdir()?;
    let w1_data = options
        .w1_data
        .clone()
        .unwrap_or_else(|| temp.path().join("w1-data"));
    if chosen.iter().any(|w| args_of(w).contains("{w1-data}")) {
        let (agencies, rows) = if options.smoke {
            W1_SMOKE_DATA
        } else {
            W1_DATA
        };
        if !w1_data
            .join(format!("agency_{}_test.csv", agencies - 1))
            .is_file()
        {
            outln!(
                "== W1's data: {agencies} agencies x {rows} rows (seed 42) into {}",
                w1_data.display()
            );
            crate::synth::numeric::generate(&w1_data, agencies, rows, 42)?;
        }
    }
    if let Some(parent) = options.results.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let machine = machine();
    let commit = commit();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let repeats = options.repeats.max(1);
    let mut done = 0;
    for w in &chosen {
        let template: Vec<&str> = args_of(w).split_whitespace().collect();
        let (targets, runs): (Vec<Option<&PathBuf>>, usize) = if args_of(w).contains("{tabular}") {
            (options.tabular.iter().map(Some).collect(), 1)
        } else {
            (vec![None], repeats)
        };
        for target in targets {
            let args: Vec<String> = template
                .iter()
                .map(|a| match *a {
                    "{w1-data}" => w1_data.display().to_string(),
                    "{tabular}" => target.map(|t| t.display().to_string()).unwrap_or_default(),
                    other => other.to_owned(),
                })
                .collect();
            for run in 1..=runs {
                let date = now();
                let load = load_average();
                let report = run_one(exe, &args)?;
                let envelope = serde_json::json!({
                    "id": w.id, "run": run, "of": runs, "size": if options.smoke { "smoke" } else { "full" },
                    "date": date, "commit": commit, "build": build, "machine": machine,
                    "load_average": load, "command": format!("treaty bench {}", args.join(" ")),
                    "report": report,
                });
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&options.results)?;
                writeln!(file, "{envelope}")?;
                done += 1;
            }
        }
    }
    outln!(
        "== {done} run(s) of {} workload(s) appended to {}",
        chosen.len(),
        options.results.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_are_unique_and_smoke_runs_are_small() {
        for (i, w) in WORKLOADS.iter().enumerate() {
            assert!(WORKLOADS[..i].iter().all(|o| o.id != w.id), "{}", w.id);
            // The same subcommand at both sizes, and the same data.
            assert_eq!(w.full.split(' ').next(), w.smoke.split(' ').next());
            assert_eq!(w.full.contains("{w1-data}"), w.smoke.contains("{w1-data}"));
            assert_eq!(w.full.contains("{tabular}"), w.smoke.contains("{tabular}"));
        }
    }

    #[test]
    fn the_machine_is_described() {
        let m = machine();
        assert!(m["cores"].as_u64().unwrap() >= 1);
        if Path::new("/proc/meminfo").exists() {
            assert!(m["memory_bytes"].as_u64().unwrap() > 1 << 20);
        }
    }
}
