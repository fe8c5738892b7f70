//! `treaty bench`: the benchmark workloads (`treaty_devkit::bench`, bench/README.md).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use treaty_devkit::bench::{self, RunOptions, W1Options, W2Options};
use treaty_devkit::outln;

use super::{Outcome, this_binary, unusable};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// W1: a training job of 8 agencies x 100,000 rows, 20 rounds, end to end.
    W1(W1Args),
    /// W4: 8 agencies x 100 records, 100 rounds of a tiny model: the cost of orchestration.
    W4 {
        /// How many agencies.
        #[arg(long, default_value_t = 8)]
        agencies: usize,
        /// Records per agency.
        #[arg(long, default_value_t = 100)]
        rows: usize,
        /// Training rounds.
        #[arg(long, default_value_t = 100)]
        rounds: u32,
        /// Keep the working directory (logs, databases) here.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// W2: 100 updates of 10^6 f32 parameters arriving at a coordinator over mutual TLS, each
    /// round: the time from the last chunk to the aggregate ready, and the coordinator's peak
    /// memory (release build).
    W2 {
        /// Agencies uploading an update each round (each with its own certificate and session).
        #[arg(long, default_value_t = 100)]
        agencies: usize,
        /// Parameters of the model (an MLP of exactly this many).
        #[arg(long, default_value_t = 1_000_000)]
        parameters: usize,
        /// Rounds, each one measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Keep the working directory (PKI, configurations, the coordinator's log) here.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// W3: many agencies (1,000 by default) x 2,000 records, 16 features, 5 rounds of logistic
    /// regression, each agency over its own mutual-TLS session with its own certificate and
    /// ledger, to one coordinator: per-round median, the coordinator's CPU and peak memory, and
    /// its CPU per agency per round (release build).
    W3 {
        /// How many agencies; several, comma-separated, run one after another (each on a fresh
        /// federation), e.g. 10,100,1000.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        agencies: Vec<usize>,
        /// Training rounds.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Records per agency (80 % train, 20 % test).
        #[arg(long, default_value_t = 2000)]
        rows: usize,
        /// Keep the working directory (data, PKI, configurations, databases, logs) here.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Train by another of `treaty bench tabular`'s recipes than `default` (what `treaty
        /// job train` takes), to compare them at many agencies.
        #[arg(long, default_value = "default")]
        recipe: String,
    },
    /// Training recipes on a real tabular data set split across agencies (write one with
    /// `python3 bench/adult/prepare.py DIR` or `python3 bench/cces/prepare.py DIR`), against
    /// centralised non-private logistic regression.
    Tabular {
        /// The directory of `schema.toml` and `agency_K_train.csv` / `agency_K_test.csv`.
        #[arg(long)]
        data: PathBuf,
        /// How many agencies (agency_0 .. agency_{N-1}) [default: every agency in --data].
        #[arg(long)]
        agencies: Option<usize>,
        /// Training rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Each agency's epsilon for the whole job (delta 1e-5).
        #[arg(long, default_value_t = 1.0)]
        epsilon: f64,
        /// The recipes to compare, comma-separated: poisson, poisson-tuned, full-batch,
        /// full-batch-10, poisson-fifth, default.
        #[arg(long, value_delimiter = ',', default_value = "poisson,default")]
        recipes: Vec<String>,
        /// How many times each recipe runs, each on a fresh federation (the DP noise differs):
        /// the mean and standard deviation over the runs are reported.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Keep the working directories here.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// `treaty policy decide` for 30 countries and 60 agencies, whole command and engine.
    Policy {
        /// Runs per measurement (the median is reported).
        #[arg(long, default_value_t = 21)]
        repeats: usize,
    },
    /// The timing channel: a DP-SGD round's time as the true number of records varies, with
    /// the sampling rate fixed by a public figure (docs/THREAT_MODEL.md).
    Timing {
        /// The public record count the sampling rate comes from (W1: 80,000).
        #[arg(long, default_value_t = 80_000)]
        records: usize,
        /// Runs per size (the median is reported).
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// Risk scoring at the agency: `treaty serve` on a model of the customs schema, one
    /// declaration at a time over loopback gRPC: latency median and 99th percentile.
    Score {
        /// Timed requests (after a tenth as many to warm up).
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// W5: Gaussian noise through opendp for 10^3, 10^5, 10^6 parameters.
    W5 {
        /// Runs per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// The update sizes, in parameters.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        sizes: Vec<usize>,
    },
    /// Runs every workload (or those of `--only`) several times, each run a process of its own,
    /// and appends each run's JSON line to a results file with the date, the commit, the build
    /// and the machine (`bash bench/run.sh` runs it, then renders bench/README.md).
    Run(RunArgs),
    /// Renders bench/README.md's figures from results files: the regions between
    /// `<!-- bench: NAME -->` and `<!-- /bench: NAME -->`; the prose stays as it is.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Every workload at a tiny size (what CI runs) instead of its full size.
    #[arg(long)]
    smoke: bool,
    /// Runs of each workload.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The results file to append to (e.g. bench/results/DATE.jsonl).
    #[arg(long)]
    results: PathBuf,
    /// W1's data directory, written there (seed 42) unless it holds it already [default: a
    /// temporary directory].
    #[arg(long)]
    w1_data: Option<PathBuf>,
    /// A data directory of `treaty bench tabular` (`bench/NAME/prepare.py` writes one); may be
    /// given several times. Without it the tabular benchmark is left out.
    #[arg(long)]
    tabular: Vec<PathBuf>,
    /// Only these workloads, comma-separated (w1, w1-default, w2, ...; a wrong name lists them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The results files, oldest first: each series of runs (a workload; W1's recipe; a tabular
    /// data set) is rendered from the last file that holds it.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// The README whose regions are rendered.
    #[arg(long, default_value = "bench/README.md")]
    readme: PathBuf,
    /// Where to write the rendered README [default: the README itself].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write nothing; fail if the README is not what the results render.
    #[arg(long)]
    check: bool,
}

/// `treaty bench report`.
fn report(a: ReportArgs) -> Outcome {
    use bench::report;
    let readme = std::fs::read_to_string(&a.readme)
        .map_err(|e| unusable(anyhow::anyhow!("cannot read `{}`: {e}", a.readme.display())))?;
    let runs = report::read(&a.results).map_err(unusable)?;
    let (rendered, regions) = report::render(&readme, &runs).map_err(unusable)?;
    for (name, count) in &regions {
        if *count == 0 {
            outln!("  {name}: no runs in the results; left as it was");
        } else {
            outln!("  {name}: rendered from {count} run(s)");
        }
    }
    if a.check {
        if rendered != readme {
            return Err(anyhow::anyhow!(
                "`{}` is not what its results render: run `treaty bench report` on them and commit the README",
                a.readme.display()
            )
            .into());
        }
        outln!("{} is what its results render", a.readme.display());
        return Ok(());
    }
    let out = a.out.unwrap_or(a.readme);
    std::fs::write(&out, rendered)
        .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", out.display()))?;
    outln!("wrote {}", out.display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct W1Args {
    /// The directory `treaty synth --kind numeric --agencies 8 --rows 100000 --out DIR` wrote.
    #[arg(long)]
    data: PathBuf,
    /// How many agencies (agency_0 .. agency_{N-1}).
    #[arg(long, default_value_t = 8)]
    agencies: usize,
    /// Training rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// How many feature columns (f0 ..), 64 for W1.
    #[arg(long, default_value_t = 64)]
    features: usize,
    /// Keep the working directory here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Record-level DP (Poisson DP-SGD): each agency spends at most this epsilon on the whole job
    /// (statistics round and evaluations included), at delta 1e-5.
    #[arg(long, default_value_t = 1.0)]
    epsilon: f64,
    /// The clipping norm of per-example gradients under DP.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// The local learning rate (W1 says 0.1; clipped DP gradients take a larger one).
    #[arg(long, default_value_t = 1.0)]
    learning_rate: f64,
    /// Train by one of `treaty bench tabular`'s recipes (`poisson`, `poisson-tuned`,
    /// `full-batch`, `full-batch-10`, `poisson-fifth`, `default`: what `treaty job train` takes;
    /// `distributed`: what it takes with --distributed-noise)
    /// instead of W1's own (Poisson DP-SGD, batch 256, one epoch, with `--clip` and
    /// `--learning-rate`).
    #[arg(long)]
    recipe: Option<String>,
    /// Train under secure aggregation (docs/SECURE_AGGREGATION.md): the coordinator learns only
    /// each round's sum of updates.
    #[arg(long)]
    secure_aggregation: bool,
    /// Under secure aggregation, distributed DP (docs/SECURE_AGGREGATION.md): each agency adds
    /// its share of the noise, assuming at most this many dishonest agencies a round (every node
    /// is configured so). Needs a one-step recipe (`--recipe distributed`).
    #[arg(long, requires = "secure_aggregation")]
    distributed_noise: Option<u32>,
}

pub async fn run(command: BenchCommand) -> Outcome {
    match command {
        BenchCommand::W1(a) => {
            let recipe = a
                .recipe
                .as_deref()
                .map(bench::recipe)
                .transpose()
                .map_err(unusable)?;
            let options = W1Options {
                recipe,
                data: a.data,
                agencies: a.agencies,
                rounds: a.rounds,
                features: a.features,
                keep: a.keep,
                epsilon: a.epsilon,
                clip: a.clip,
                learning_rate: a.learning_rate,
                secure_aggregation: a.secure_aggregation,
                distributed_noise: a.distributed_noise,
            };
            bench::w1(options, &this_binary()?).await?;
        }
        BenchCommand::W4 {
            agencies,
            rows,
            rounds,
            keep,
        } => {
            let options = bench::W4Options {
                agencies,
                rows,
                rounds,
                keep,
            };
            bench::w4(options, &this_binary()?).await?;
        }
        BenchCommand::W2 {
            agencies,
            parameters,
            rounds,
            keep,
        } => {
            let options = W2Options {
                agencies,
                parameters,
                rounds,
                keep,
            };
            bench::w2(options, &this_binary()?).await?;
        }
        BenchCommand::W3 {
            agencies,
            rounds,
            rows,
            keep,
            recipe,
        } => {
            let options = bench::W3Options {
                agencies,
                rounds,
                rows,
                keep,
                recipe: bench::recipe(&recipe).map_err(unusable)?,
            };
            bench::w3(options, &this_binary()?).await?;
        }
        BenchCommand::Tabular {
            data,
            agencies,
            rounds,
            epsilon,
            recipes,
            repeats,
            keep,
        } => {
            let options = bench::TabularOptions {
                data,
                agencies,
                rounds,
                epsilon,
                recipes,
                repeats,
                keep,
            };
            bench::tabular(options, &this_binary()?).await?;
        }
        BenchCommand::Policy { repeats } => {
            let exe = this_binary()?;
            tokio::task::spawn_blocking(move || bench::policy(repeats.max(1), &exe)).await??;
        }
        BenchCommand::Timing { records, repeats } => {
            tokio::task::spawn_blocking(move || bench::timing(records.max(2), repeats.max(1)))
                .await??;
        }
        BenchCommand::Score { requests } => {
            bench::serving(requests.max(1), &this_binary()?).await?;
        }
        BenchCommand::W5 { repeats, sizes } => {
            tokio::task::spawn_blocking(move || bench::w5(repeats.max(1), &sizes)).await??;
        }
        BenchCommand::Run(a) => {
            let options = RunOptions {
                smoke: a.smoke,
                repeats: a.repeats,
                results: a.results,
                w1_data: a.w1_data,
                tabular: a.tabular,
                only: a.only,
            };
            let exe = this_binary()?;
            let ran = tokio::task::spawn_blocking(move || bench::run(&options, &exe)).await?;
            if let Err(e) = ran {
                let input = e
                    .downcast_ref::<bench::RunError>()
                    .is_some_and(bench::RunError::is_unusable);
                return Err(if input { unusable(e) } else { e.into() });
            }
        }
        BenchCommand::Report(a) => report(a)?,
    }
    Ok(())
}
