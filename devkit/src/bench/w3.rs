//! `treaty bench w3`: workload W3 (bench/README.md), many agencies.
//!
//! N agencies of 2,000 records each (W1's generator, its first 16 columns), one coordinator
//! process, and the agencies' nodes hosted together in one process (`treaty node --many DIR`):
//! each keeps its own certificate and key, its own mutual-TLS session, its own ledger (a sled
//! database of its own), its own policy files and its own data, exactly as a node of its own
//! would. One training job of logistic regression on the 16 features, the default recipe of
//! `treaty job train` (full-batch DP, epsilon 1 per agency for the whole job), every round
//! decided by the sharing policies, recorded in every agency's ledger (checked after the job)
//! and stored durably. Run for several N in turn (`--agencies 10,100,1000`), each on a fresh
//! federation.
//!
//! Reported for each N: the time to issue the PKI, the per-round median as the coordinator
//! records it (the round's start to its completion), the coordinator's CPU seconds over the job
//! and over each round (from the previous round's completion to this one's, read from
//! `/proc/PID/stat` every 20 ms), its peak RSS, and the cost of a round on the coordinator per
//! agency (CPU milliseconds per round per agency, the median over the rounds).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use treaty_node::{Budget, Ledger, Table};
use treaty_proto::v1::{ColumnKind, ColumnSpec, FeatureSchema, Job, LabelKind, LabelSpec};

use super::{median_or_nan, memory, mib};
use crate::local::{COORDINATOR_COUNTRY, Process, Site, SiteOptions, policies};
use crate::outln;
use crate::synth::numeric::{self, Written};

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];
/// W3's features: the generator's first 16 columns.
const FEATURES: usize = 16;
const SEED: u64 = 42;
/// The agencies whose pooled data give the schema's bounds (the same for every N).
const BOUNDS_FROM: usize = 10;
/// Each agency's privacy budget (the job spends at most 1).
const BUDGET: f64 = 10.0;
/// How often the coordinator's CPU time is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// How W3 runs (`treaty bench w3 --help` gives the defaults).
#[derive(Debug, Clone)]
pub struct W3Options {
    /// The numbers of agencies, one run each, in this order.
    pub agencies: Vec<usize>,
    /// Training rounds.
    pub rounds: u32,
    /// Records per agency (80 % train, 20 % test).
    pub rows: usize,
    /// Keep the working directory (data, PKI, configurations, databases, logs) here.
    pub keep: Option<PathBuf>,
    /// The training recipe (`default`: what `treaty job train` takes).
    pub recipe: super::Recipe,
}

/// What W3 cannot run: input to fix.
#[derive(Debug, thiserror::Error)]
pub enum W3Error {
    #[error("--agencies must name at least one number of agencies, each at least 1")]
    NoAgencies,
    #[error("--rounds must be at least 1")]
    NoRounds,
    #[error("--rows must be at least 10 (each agency needs records in its test split)")]
    TooFewRows,
}

/// Runs W3 with the `treaty` binary `exe`, printing its figures and, per number of agencies, a
/// JSON line; the last line sums up every run as JSON.
pub async fn w3(options: W3Options, exe: &Path) -> anyhow::Result<()> {
    if options.agencies.is_empty() || options.agencies.contains(&0) {
        return Err(W3Error::NoAgencies.into());
    }
    if options.rounds == 0 {
        return Err(W3Error::NoRounds.into());
    }
    if options.rows < 10 {
        return Err(W3Error::TooFewRows.into());
    }
    raise_open_files();
    let temp;
    let dir = match &options.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::canonicalize(dir)?
        }
        None => {
            temp = tempfile::Builder::new().prefix("treaty-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let most = options.agencies.iter().copied().max().unwrap_or(1);
    outln!(
        "W3: {} agencies x {} records ({FEATURES} features), logistic regression, {} rounds of the `{}` recipe, each agency over its own mutual-TLS session",
        options
            .agencies
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
        options.rows,
        options.rounds,
        options.recipe.name
    );
    let started = Instant::now();
    let (data_dir, rows) = (dir.join("data"), options.rows);
    let data = tokio::task::spawn_blocking(move || {
        numeric::generate_first(&data_dir, most, rows, SEED, FEATURES)
    })
    .await??;
    outln!(
        "  data of {most} agencies written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let schema = schema(&data[..most.min(BOUNDS_FROM)])?;
    let mut reports = Vec::new();
    for &n in &options.agencies {
        let run_dir = dir.join(format!("agencies-{n}"));
        let report = run(n, &run_dir, &data[..n], &schema, &options, exe).await?;
        outln!("{report}");
        reports.push(report);
        if options.keep.is_none() {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    if reports.len() > 1 {
        outln!(
            "  agencies | round median | coordinator CPU (job) | CPU per agency per round | peak RSS"
        );
        for r in &reports {
            outln!(
                "  {:>8} | {:>10.3} s | {:>19.2} s | {:>21.3} ms | {:>5.0} MiB",
                r["agencies"].as_u64().unwrap_or(0),
                r["round_median_seconds"].as_f64().unwrap_or(f64::NAN),
                r["coordinator_cpu_seconds"].as_f64().unwrap_or(f64::NAN),
                r["coordinator_cpu_ms_per_agency_round"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["coordinator_peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / (1 << 20) as f64
            );
        }
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "W3", "rows": options.rows, "rounds": options.rounds, "runs": reports})
    );
    Ok(())
}

/// Raises this process's soft limit of open files to its hard limit; the coordinator and the
/// node host inherit it (each holds a connection per agency, and each node its database files).
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, %error, "cannot raise the limit of open files");
    }
}

/// The job's schema: the 16 features with bounds from the 0.1 % and 99.9 % quantiles of the
/// pooled training data of `agencies` (the schema author's ranges; values beyond are clamped).
fn schema(agencies: &[Written]) -> anyhow::Result<FeatureSchema> {
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); FEATURES];
    for a in agencies {
        let table = Table::open(&a.train)?;
        for (j, column) in columns.iter_mut().enumerate() {
            column.extend(table.clamped_where(&format!("f{j}"), f64::MIN, f64::MAX, None)?);
        }
    }
    let columns = columns
        .into_iter()
        .enumerate()
        .map(|(j, mut c)| {
            c.sort_by(f64::total_cmp);
            let at = |p: f64| c.get(((c.len().max(1) - 1) as f64 * p) as usize).copied();
            let (lower, upper) = (at(0.001).unwrap_or(0.0), at(0.999).unwrap_or(1.0));
            ColumnSpec {
                name: format!("f{j}"),
                kind: ColumnKind::Numeric as i32,
                missing: treaty_proto::v1::MissingRule::Reject as i32,
                lower: Some(lower),
                upper: Some(upper.max(lower + 1e-9)),
                ..Default::default()
            }
        })
        .collect();
    Ok(FeatureSchema {
        columns,
        label: Some(LabelSpec {
            name: "seized".into(),
            kind: LabelKind::Binary as i32,
            classes: vec![],
        }),
    })
}

/// The processes of one run, stopped (SIGTERM, then SIGKILL after a grace) when dropped.
struct Processes {
    coordinator: Process,
    host: Option<Process>,
}

impl Processes {
    /// SIGTERM to both, then waits without blocking the runtime; those still running after
    /// `grace` are killed.
    async fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for process in self.host.iter_mut().chain([&mut self.coordinator]) {
            let _ = process.signal(nix::sys::signal::Signal::SIGTERM);
            while process.try_wait().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            process.stop(Duration::ZERO);
        }
    }
}

/// One agency of a run.
#[derive(Debug, Clone)]
struct Agency {
    id: String,
    country: String,
    state_dir: PathBuf,
}

/// One run of `n` agencies in `dir`.
async fn run(
    n: usize,
    dir: &Path,
    data: &[Written],
    schema: &FeatureSchema,
    options: &W3Options,
    exe: &Path,
) -> anyhow::Result<serde_json::Value> {
    outln!("  {n} agencies:");
    let agencies: Vec<Agency> = (0..n)
        .map(|k| Agency {
            id: format!("W3-AGENCY-{k:04}"),
            country: COUNTRIES[k % COUNTRIES.len()].to_owned(),
            state_dir: PathBuf::new(),
        })
        .collect();
    let (site, mut processes, address, agencies, pki_seconds) = {
        let (dir, exe, data) = (
            dir.to_owned(),
            exe.to_owned(),
            data.iter()
                .map(|w| (w.train.clone(), w.test.clone()))
                .collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || start(&dir, &exe, agencies, &data)).await??
    };
    outln!("    PKI of {n} agency certificates issued in {pki_seconds:.2} s");
    let result = measure(
        &site, &processes, &address, &agencies, data, schema, options,
    )
    .await;
    processes.stop(Duration::from_secs(30)).await;
    let mut report = result?;
    report["pki_seconds"] = serde_json::json!(pki_seconds);
    // Every agency's own ledger, read once its node stopped: a release for every round.
    let rounds = options.rounds;
    let spent = tokio::task::spawn_blocking(move || ledgers(&agencies, rounds)).await??;
    outln!(
        "    every agency's ledger records a release of the statistics round and of each training round ({rounds}); largest epsilon spent {spent:.4} (delta 1e-5)"
    );
    report["max_epsilon_spent"] = serde_json::json!(spent);
    Ok(report)
}

/// Makes the PKI, the policies and the configurations, starts the coordinator and the node
/// host: the site, the processes, the coordinator's address, the agencies with their state
/// directories, and the seconds the PKI took.
fn start(
    dir: &Path,
    exe: &Path,
    mut agencies: Vec<Agency>,
    data: &[(PathBuf, PathBuf)],
) -> anyhow::Result<(Site, Processes, String, Vec<Agency>, f64)> {
    let fields: Vec<String> = (0..FEATURES).map(|j| format!("f{j}")).collect();
    let started = Instant::now();
    let site = Site::create(
        dir,
        exe,
        &SiteOptions {
            federation: "treaty-w3".into(),
            coordinator: "w3-hub".into(),
            operator: "w3-operator".into(),
            agencies: agencies
                .iter()
                .map(|a| (a.id.clone(), a.country.clone()))
                .collect(),
        },
    )?;
    let pki_seconds = started.elapsed().as_secs_f64();
    let countries: Vec<&str> = agencies.iter().map(|a| a.country.as_str()).collect();
    policies::write_samples(&site, &countries, &fields)?;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (coordinator, address) =
        site.start_coordinator(&site.coordinator_config(listen, COORDINATOR_COUNTRY))?;
    let nodes = site.path("nodes");
    std::fs::create_dir_all(&nodes)?;
    for (a, (train, test)) in agencies.iter_mut().zip(data) {
        let mut config = site.node_config(&a.id, &a.country, &address, train, Some(test))?;
        config.privacy = Some(Budget {
            max_epsilon: BUDGET,
            delta: 1e-5,
        });
        a.state_dir = config.state_dir.clone();
        crate::local::write_toml(&nodes.join(format!("{}.toml", a.id)), &config)?;
    }
    let host = site.spawn(
        "the node host",
        &["node", "--many", &nodes.to_string_lossy()],
        "nodes",
    )?;
    Ok((
        site,
        Processes {
            coordinator,
            host: Some(host),
        },
        address,
        agencies,
        pki_seconds,
    ))
}

/// Connects the agencies, runs the job and reads its figures.
async fn measure(
    site: &Site,
    processes: &Processes,
    address: &str,
    agencies: &[Agency],
    data: &[Written],
    schema: &FeatureSchema,
    options: &W3Options,
) -> anyhow::Result<serde_json::Value> {
    let n = agencies.len();
    let coordinator = processes.coordinator.id();
    let host = processes.host.as_ref().map(Process::id).unwrap_or(0);
    let mut client = site.operator_config(address).connect().await?;
    let spawned = Instant::now();
    let timeout = Duration::from_secs(60 + n as u64 / 5);
    loop {
        let connected = treaty_coordinator::client::all_agencies(&mut client)
            .await?
            .len();
        if connected >= n {
            break;
        }
        if spawned.elapsed() > timeout {
            bail!(
                "only {connected} of {n} agencies connected within {} s; see `{}`",
                timeout.as_secs(),
                site.path("nodes.log").display()
            );
        }
        if !alive(host) || !alive(coordinator) {
            bail!(
                "a process stopped before the agencies connected; see `{}` and `{}`",
                site.path("nodes.log").display(),
                site.path("coordinator.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let startup = spawned.elapsed().as_secs_f64();
    let (idle_rss, _) = memory(coordinator).context("cannot read the coordinator's memory")?;
    let counts = |pid| (threads(pid).unwrap_or(0), open_files(pid).unwrap_or(0));
    let (coordinator_counts, host_counts) = (counts(coordinator), counts(host));
    outln!(
        "    {n} agencies connected in {startup:.2} s (node host: {} threads, {} open files; coordinator: {} threads, {} open files, RSS {:.0} MiB)",
        host_counts.0,
        host_counts.1,
        coordinator_counts.0,
        coordinator_counts.1,
        mib(idle_rss)
    );

    let members: Vec<(&str, &str)> = agencies
        .iter()
        .map(|a| (a.id.as_str(), a.country.as_str()))
        .collect();
    super::create_federation(&mut client, "w3", &members).await?;
    let spec = options.recipe.spec(schema, options.rounds, 1.0);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_cpu(coordinator, stopped));
    let (host_cpu_before, cpu_before) = (cpu_seconds(host), cpu_seconds(coordinator));
    let (job, wall) = super::run_job(&mut client, "w3", n, spec).await?;
    let (host_cpu, cpu) = (cpu_seconds(host), cpu_seconds(coordinator));
    let _ = stop.send(true);
    let samples = sampler.await?;
    let peak_rss = memory(coordinator).map(|(_, peak)| peak);
    let host_rss = memory(host).map(|(_, peak)| peak);
    let job_cpu = cpu.zip(cpu_before).map(|(a, b)| a - b);
    let host_job_cpu = host_cpu.zip(host_cpu_before).map(|(a, b)| a - b);

    let rounds = round_figures(&job, &samples);
    let mut durations: Vec<f64> = rounds.iter().map(|r| r.seconds).collect();
    let round_cpu: Vec<f64> = rounds.iter().filter_map(|r| r.cpu_seconds).collect();
    let per_agency: Vec<f64> = round_cpu.iter().map(|c| c * 1e3 / n as f64).collect();
    let median_per_agency = median_or_nan(&per_agency);
    // Over the whole job: every round of tasks (the statistics round, the training rounds, the
    // final evaluation) sent to each agency. Finer than one round's CPU at a few agencies (the
    // kernel counts CPU time in ticks of 10 ms).
    let task_rounds = job.rounds.len() + 2;
    let per_agency_task = job_cpu.map(|c| c * 1e3 / (n * task_rounds) as f64);
    let periods: Vec<f64> = rounds.iter().filter_map(|r| r.period).collect();
    durations.sort_by(f64::total_cmp);
    let round_median = median_or_nan(&durations);
    let tests: Vec<PathBuf> = data.iter().map(|w| w.test.clone()).collect();
    let scored = super::score(&mut client, &job.job_id, &tests).await?;

    outln!(
        "    job {}: {:.2} s from creation to the final model (statistics round, {} rounds, final evaluation)",
        job.job_id,
        wall.as_secs_f64(),
        job.rounds.len()
    );
    outln!(
        "    rounds (start to completion): median {round_median:.3} s ({}); from one completion to the next: median {:.3} s",
        rounds
            .iter()
            .map(|r| format!("{:.3}", r.seconds))
            .collect::<Vec<_>>()
            .join(", "),
        median_or_nan(&periods)
    );
    outln!(
        "    coordinator: {} CPU seconds over the job ({} ms per agency per round of tasks); per training round {} s, {median_per_agency:.3} ms per agency (median); peak RSS {}",
        job_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        per_agency_task.map_or("n/a".into(), |c| format!("{c:.3}")),
        round_cpu
            .iter()
            .map(|c| format!("{c:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        peak_rss.map_or("n/a".into(), |b| format!("{:.0} MiB", mib(b)))
    );
    outln!(
        "    node host ({n} agencies in one process): {} CPU seconds over the job, peak RSS {}",
        host_job_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        host_rss.map_or("n/a".into(), |b| format!("{:.0} MiB", mib(b)))
    );
    outln!(
        "    final model on the union of the test splits ({} rows): accuracy {:.4}, ROC AUC {:.4}",
        scored.records,
        scored.accuracy,
        scored.auc
    );
    Ok(serde_json::json!({
        "workload": "W3", "agencies": n, "rows": options.rows, "features": FEATURES,
        "recipe": options.recipe.name,
        "rounds": job.rounds.len(), "startup_seconds": startup, "job_seconds": wall.as_secs_f64(),
        "round_seconds": rounds.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        "round_median_seconds": round_median,
        "round_period_median_seconds": median_or_nan(&periods),
        "coordinator_cpu_seconds": job_cpu,
        "coordinator_round_cpu_seconds": round_cpu,
        "coordinator_cpu_ms_per_agency_round": median_per_agency,
        "coordinator_cpu_ms_per_agency_task_round_over_job": per_agency_task,
        "coordinator_peak_rss_bytes": peak_rss,
        "coordinator_rss_connected_bytes": idle_rss,
        "coordinator_threads": coordinator_counts.0,
        "coordinator_open_files": coordinator_counts.1,
        "host_threads": host_counts.0, "host_open_files": host_counts.1,
        "host_cpu_seconds": host_job_cpu, "host_peak_rss_bytes": host_rss,
        "accuracy": scored.accuracy, "auc": scored.auc,
    }))
}

/// One training round's figures.
#[derive(Debug, Clone, Copy)]
struct RoundFigures {
    /// From the round's start to its completion, as the coordinator records them.
    seconds: f64,
    /// From the previous round's completion (the statistics round's for round 1) to this one's.
    period: Option<f64>,
    /// The coordinator's CPU seconds over that period.
    cpu_seconds: Option<f64>,
}

/// Each training round's figures, from the job's record and the CPU samples.
fn round_figures(job: &Job, samples: &[(i64, f64)]) -> Vec<RoundFigures> {
    let mut previous = job.statistics.as_ref().map(|s| s.finished_unix_ms);
    job.rounds
        .iter()
        .map(|r| {
            let period = previous.map(|p| (r.finished_unix_ms - p) as f64 / 1e3);
            let cpu_seconds = previous
                .and_then(|p| Some(cpu_at(samples, r.finished_unix_ms)? - cpu_at(samples, p)?));
            previous = Some(r.finished_unix_ms);
            RoundFigures {
                seconds: (r.finished_unix_ms - r.started_unix_ms) as f64 / 1e3,
                period,
                cpu_seconds,
            }
        })
        .collect()
}

/// The CPU seconds of the first sample at or after `unix_ms`.
fn cpu_at(samples: &[(i64, f64)], unix_ms: i64) -> Option<f64> {
    let i = samples.partition_point(|(t, _)| *t < unix_ms);
    samples.get(i).map(|(_, c)| *c)
}

/// Reads the CPU seconds of process `pid` every [`SAMPLE_EVERY`] until `stop`: (unix ms, CPU
/// seconds) pairs.
async fn sample_cpu(pid: u32, mut stop: tokio::sync::watch::Receiver<bool>) -> Vec<(i64, f64)> {
    let mut samples = Vec::new();
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        if let Some(cpu) = cpu_seconds(pid) {
            samples.push((now_ms(), cpu));
        }
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(cpu) = cpu_seconds(pid) {
        samples.push((now_ms(), cpu));
    }
    samples
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The CPU seconds (user and system, every thread) process `pid` has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat, ticks_per_second()?)
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15; the name, field 2, may hold
/// spaces and parentheses, so fields are counted after its last `)`), in seconds.
fn parse_cpu(stat: &str, ticks: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn ticks_per_second() -> Option<f64> {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
}

/// How many threads process `pid` runs.
fn threads(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Threads:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How many files process `pid` holds open.
fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Whether process `pid` still runs (a child not yet reaped counts as stopped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Checks that every agency's ledger records a training release for each of `rounds` rounds
/// and the statistics round; the largest epsilon an agency spent.
fn ledgers(agencies: &[Agency], rounds: u32) -> anyhow::Result<f64> {
    let mut most: f64 = 0.0;
    for a in agencies {
        let ledger = Ledger::open(
            &a.state_dir,
            Some(Budget {
                max_epsilon: BUDGET,
                delta: 1e-5,
            }),
        )?;
        let entries = ledger.entries()?;
        for round in 0..=rounds {
            if !entries.iter().any(|e| e.round == round) {
                bail!(
                    "the ledger of {} records no release of round {round}: {entries:?}",
                    a.id
                );
            }
        }
        most = most.max(ledger.spent()?.epsilon);
    }
    Ok(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_name_whatever_it_holds() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let stat = "4242 (tr (eaty) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(parse_cpu(stat, 100.0), Some(3.0));
        assert_eq!(parse_cpu("4242 (treaty) S 1", 100.0), None);
    }

    #[test]
    fn the_cpu_of_a_moment_is_the_first_sample_at_or_after_it() {
        let samples = [(1000, 1.0), (1020, 1.5), (1040, 2.0)];
        assert_eq!(cpu_at(&samples, 1000), Some(1.0));
        assert_eq!(cpu_at(&samples, 1001), Some(1.5));
        assert_eq!(cpu_at(&samples, 1040), Some(2.0));
        assert_eq!(cpu_at(&samples, 1041), None);
    }
}
