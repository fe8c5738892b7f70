//! `treaty job train|watch|show|report|list` (operators).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use treaty_proto::v1::{
    Aggregation, CreateJobRequest, DpMode, GetJobRequest, GetRegistryFieldsRequest, Job, JobSpec,
    ListJobsRequest, ModelKind, PrivacySpec, SecureAggregationSpec, SharingSpec, Strategy,
    TrainingSpec, job_spec,
};
use treaty_proto::{evaluation, schema};

use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;
use treaty_devkit::output::{Follow, printable};

use super::privacy::print_plan;
use super::{Outcome, unusable};
use treaty_policies::privacy::{self, JobPrivacy};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Logistic,
    Multinomial,
    Linear,
    Mlp,
}

impl ModelArg {
    /// The model on the wire.
    pub fn kind(self) -> ModelKind {
        match self {
            ModelArg::Logistic => ModelKind::LogisticRegression,
            ModelArg::Multinomial => ModelKind::MultinomialLogisticRegression,
            ModelArg::Linear => ModelKind::LinearRegression,
            ModelArg::Mlp => ModelKind::Mlp,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DpModeArg {
    Poisson,
    FullBatch,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AggregationArg {
    Fedavg,
    Fedadam,
    Fedyogi,
    Fedadagrad,
    Median,
    TrimmedMean,
    NormBounded,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The operator's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// The federation.
    #[arg(long)]
    federation: String,
    /// The feature schema (TOML).
    #[arg(long)]
    schema: PathBuf,
    /// The model: logistic regression (binary label), multinomial logistic regression
    /// (categorical label), linear regression (numeric label) or a one-hidden-layer MLP (binary).
    #[arg(long, value_enum, default_value = "logistic")]
    model: ModelArg,
    /// Training rounds (after the statistics round).
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Passes over its own records each agency makes per round (full batch: DP gradient steps;
    /// Poisson: 1 / sampling rate steps each). The defaults of this and of --learning-rate,
    /// --dp-mode, --sampling-rate and --clip-norm are the recipe `treaty bench tabular` and
    /// `treaty bench w1` measured best (README: good models by default).
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    /// Records per step (under Poisson DP-SGD, the expected batch: the sampling rate is
    /// batch size / the agency's public record count).
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// The local SGD step size (default 1; under --distributed-noise, the step of each round's
    /// one gradient step, default the measured one-step recipe's, 16).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// The local SGD momentum (0: none).
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// L2 regularisation of the weights (not the biases).
    #[arg(long, default_value_t = 0.0)]
    l2: f64,
    /// Hidden units of an MLP.
    #[arg(long, default_value_t = 16)]
    hidden_units: u32,
    /// How the coordinator combines the agencies' updates: FedAvg, a server optimiser
    /// (FedAdam, FedYogi, FedAdagrad) or a robust rule (median, trimmed mean, norm bounding).
    #[arg(long, value_enum, default_value = "fedavg")]
    aggregation: AggregationArg,
    /// FedProx's mu (0: plain local SGD).
    #[arg(long, default_value_t = 0.0)]
    proximal_mu: f64,
    /// Server learning rate of FedAdam, FedYogi, FedAdagrad.
    #[arg(long, default_value_t = 0.1)]
    server_learning_rate: f64,
    /// Trimmed mean: fraction cut at each end.
    #[arg(long, default_value_t = 0.2)]
    trim_fraction: f64,
    /// Norm bounding: the bound (0: the round's median update norm).
    #[arg(long, default_value_t = 0.0)]
    max_update_norm: f64,
    /// Differential privacy: Poisson-subsampled DP-SGD or full-batch DP gradient descent.
    #[arg(long, value_enum, default_value = "poisson")]
    dp_mode: DpModeArg,
    /// Poisson DP-SGD: each record's chance of being in a step's batch, the same for every
    /// agency (an epoch is 1 / rate steps); 0 takes --batch-size / each agency's public record
    /// count.
    #[arg(long, default_value_t = 0.1)]
    sampling_rate: f64,
    /// Per-example gradients are clipped to this L2 norm.
    #[arg(long, default_value_t = 3.0)]
    clip_norm: f64,
    /// Noise standard deviation over the clipping norm; leave it out to calibrate to
    /// --target-epsilon.
    #[arg(long, default_value_t = 0.0)]
    noise_multiplier: f64,
    /// The whole job's epsilon per agency, when the noise is calibrated.
    #[arg(long, default_value_t = 1.0)]
    target_epsilon: f64,
    /// The delta of the target.
    #[arg(long, default_value_t = 1e-5)]
    target_delta: f64,
    /// The epsilon each agency spends per round on evaluating the global model; 0 turns
    /// evaluations off (default: the privacy plan's share, 10 % of the target's rho over all
    /// rounds).
    #[arg(long)]
    evaluation_epsilon: Option<f64>,
    /// The zCDP rho each agency spends on the statistics round that standardizes the numeric
    /// columns (default: the privacy plan's share, 10 % of the target's rho).
    #[arg(long)]
    statistics_rho: Option<f64>,
    /// The most epsilon one agency spends in one round, judged by the sharing policies
    /// (default: the target epsilon when the noise is calibrated).
    #[arg(long, default_value_t = 0.0)]
    epsilon_per_round: f64,
    /// How long the trained model is kept, in days (default: without limit, which policies
    /// with a retention limit refuse).
    #[arg(long)]
    retention_days: Option<u32>,
    /// The aggregated model may be passed on to third parties.
    #[arg(long)]
    onward_transfer: bool,
    /// Secure aggregation: the coordinator learns only the sum of each training round's
    /// updates, even when agencies drop out (docs/SECURE_AGGREGATION.md). Needs FedAvg or a
    /// server optimiser, and --min-participants 3 or more.
    #[arg(long)]
    secure_aggregation: bool,
    /// Secure aggregation: the most agencies that may drop out of a round while its sum is
    /// still recovered (0: a third of the round's agencies).
    #[arg(long, default_value_t = 0, requires = "secure_aggregation")]
    max_dropouts: u32,
    /// Secure aggregation with distributed DP (docs/SECURE_AGGREGATION.md): each agency adds
    /// only its share of the noise, so that the round's sum carries the noise the accounting
    /// states while at most --assume-dishonest agencies are dishonest (an agency whose own
    /// configuration assumes more adds its whole noise besides). Each round is then one step of
    /// full-batch DP gradient descent (it sets --dp-mode full-batch and one local epoch, and
    /// conflicts with them, --sampling-rate, --momentum, --l2 and --proximal-mu).
    #[arg(
        long,
        requires = "secure_aggregation",
        conflicts_with_all = ["dp_mode", "local_epochs", "sampling_rate", "momentum", "l2", "proximal_mu"]
    )]
    distributed_noise: bool,
    /// Distributed DP: the most agencies of a round the job assumes dishonest (colluding with
    /// the coordinator, or adding no noise).
    #[arg(long, default_value_t = 0, requires = "distributed_noise")]
    assume_dishonest: u32,
    /// Rounds go ahead with at least this many agencies.
    #[arg(long, default_value_t = 1)]
    min_participants: u32,
    /// Seconds to wait for a round's results.
    #[arg(long, default_value_t = 60)]
    round_timeout: u32,
    /// Return once the job is created instead of following it.
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Starts a training job and follows it.
    Train(Box<TrainArgs>),
    /// Follows a job until it ends.
    Watch {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The job, e.g. `job-000001`.
        #[arg(long)]
        job: String,
    },
    /// Shows a job: every round, its contributors, exclusions and metrics per agency.
    Show {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The job, e.g. `job-000001`.
        #[arg(long)]
        job: String,
    },
    /// Writes a job as one self-contained HTML page (no script, no network): its metrics round
    /// by round with their intervals, each agency's epsilon against its budget, contributors
    /// and exclusions with their reasons, a query's answer with its intervals.
    Report {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The job, e.g. `job-000001`.
        #[arg(long)]
        job: String,
        /// Where to write the page, e.g. `report.html`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Lists the jobs, newest first.
    List {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

pub async fn run(command: JobCommand) -> Outcome {
    match command {
        JobCommand::Train(args) => train(*args).await,
        JobCommand::Watch { config, job } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            let head = client
                .get_job(GetJobRequest {
                    job_id: job.clone(),
                })
                .await?
                .into_inner();
            let job = follow(&mut client, &job, rounds_of(&head), false).await?;
            show(&job);
            Ok(())
        }
        JobCommand::Show { config, job } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            show(
                &client
                    .get_job(GetJobRequest { job_id: job })
                    .await?
                    .into_inner(),
            );
            Ok(())
        }
        JobCommand::Report { config, job, out } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            let job = client
                .get_job(GetJobRequest { job_id: job })
                .await?
                .into_inner();
            let generated = treaty_devkit::report::now_utc();
            std::fs::write(&out, treaty_devkit::report::render(&job, &generated))
                .map_err(|e| unusable(anyhow::anyhow!("cannot write `{}`: {e}", out.display())))?;
            outln!("{}", out.display());
            Ok(())
        }
        JobCommand::List { config } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            let mut token = String::new();
            loop {
                let page = client
                    .list_jobs(ListJobsRequest {
                        page_size: 0,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                for j in page.jobs {
                    outln!(
                        "{}\t{}\t{}\t{} round(s)\t{}",
                        printable(&j.job_id),
                        printable(&j.federation),
                        state(&j),
                        j.rounds_completed,
                        printable(&j.message)
                    );
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                token = page.next_page_token;
            }
        }
    }
}

fn state(job: &Job) -> &'static str {
    treaty_coordinator::state_name(job.state)
}

/// The measured one-step recipe of distributed DP (`treaty bench w1 --recipe distributed`,
/// bench/README.md): its learning rate.
const DISTRIBUTED_LEARNING_RATE: f64 = 16.0;

/// The job's learning rate: the one given, else the measured recipe's.
fn learning_rate(a: &TrainArgs) -> f64 {
    a.learning_rate.unwrap_or(if a.distributed_noise {
        DISTRIBUTED_LEARNING_RATE
    } else {
        1.0
    })
}

async fn train(mut a: TrainArgs) -> Outcome {
    if a.distributed_noise {
        // One linear release a round: one step of full-batch DP gradient descent.
        a.dp_mode = DpModeArg::FullBatch;
        a.local_epochs = 1;
    }
    let learning_rate = learning_rate(&a);
    let model = a.model.kind();
    let mut client = OperatorConfig::load(&a.config)?.connect().await?;
    // The schema is checked whole before anything is submitted, as `treaty schema check` does,
    // with its fields against the coordinator's registry: every problem at once (the
    // coordinator checks again when the job is submitted).
    let registry = client
        .get_registry_fields(GetRegistryFieldsRequest {})
        .await?
        .into_inner();
    let known = super::schema::KnownFields {
        version: registry.registry_version,
        fields: registry.fields.into_keys().collect(),
    };
    let usage = schema::Usage::training(Some(model));
    let schema = super::schema::check_file(&a.schema, &usage, Some(&known))?.map_err(|lines| {
        unusable(anyhow::anyhow!(
            "the schema has {} problem(s); nothing was submitted:\n  {}",
            lines.len(),
            lines.join("\n  ")
        ))
    })?;
    let aggregation = match a.aggregation {
        AggregationArg::Fedavg => Aggregation::Fedavg,
        AggregationArg::Fedadam => Aggregation::Fedadam,
        AggregationArg::Fedyogi => Aggregation::Fedyogi,
        AggregationArg::Fedadagrad => Aggregation::Fedadagrad,
        AggregationArg::Median => Aggregation::Median,
        AggregationArg::TrimmedMean => Aggregation::TrimmedMean,
        AggregationArg::NormBounded => Aggregation::NormBounded,
    };
    let spec = TrainingSpec {
        model: model as i32,
        schema: Some(schema),
        rounds: a.rounds,
        local_epochs: a.local_epochs,
        batch_size: a.batch_size,
        learning_rate,
        momentum: a.momentum,
        l2: a.l2,
        hidden_units: if model == ModelKind::Mlp {
            a.hidden_units
        } else {
            0
        },
        strategy: Some(Strategy {
            aggregation: aggregation as i32,
            proximal_mu: a.proximal_mu,
            server_learning_rate: a.server_learning_rate,
            trim_fraction: a.trim_fraction,
            max_update_norm: a.max_update_norm,
            ..Default::default()
        }),
        privacy: Some(PrivacySpec {
            mode: match a.dp_mode {
                DpModeArg::Poisson => DpMode::Poisson,
                DpModeArg::FullBatch => DpMode::FullBatch,
            } as i32,
            clip_norm: a.clip_norm,
            sampling_rate: match a.dp_mode {
                DpModeArg::Poisson => a.sampling_rate,
                DpModeArg::FullBatch => 0.0,
            },
            noise_multiplier: a.noise_multiplier,
            target_epsilon: a.target_epsilon,
            target_delta: a.target_delta,
            evaluation_epsilon: a.evaluation_epsilon,
            statistics_rho: a.statistics_rho,
            ..Default::default()
        }),
        secure_aggregation: a.secure_aggregation.then_some(SecureAggregationSpec {
            max_dropouts: a.max_dropouts,
            fractional_bits: 0,
            distributed_noise: a.distributed_noise,
            assumed_dishonest: a.assume_dishonest,
        }),
        ..Default::default()
    };
    if a.noise_multiplier <= 0.0 {
        show_plan(&spec, &a)?;
    }
    let job = client
        .create_job(CreateJobRequest {
            federation: a.federation,
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Training(spec)),
                min_participants: a.min_participants,
                round_timeout_ms: a.round_timeout.saturating_mul(1000),
                join_timeout_ms: 60_000,
                sharing: Some(SharingSpec {
                    epsilon_per_round: a.epsilon_per_round,
                    model_retention_days: a.retention_days,
                    onward_transfer: a.onward_transfer,
                    ..Default::default()
                }),
            }),
        })
        .await?
        .into_inner();
    outln!("job {} created", job.job_id);
    if !a.detach {
        let job = follow(&mut client, &job.job_id, rounds_of(&job), false).await?;
        show(&job);
    }
    Ok(())
}

/// Follows a job to its success, its progress shown as [`Follow`] shows it (events on
/// standard error when `to_stderr`).
pub async fn follow(
    client: &mut client::Client,
    job_id: &str,
    rounds: u64,
    to_stderr: bool,
) -> Result<Job, client::ClientError> {
    let progress = Follow::new(rounds, to_stderr);
    let job = client::follow_to_success(client, job_id, |e| progress.event(e)).await;
    progress.finish();
    job
}

/// The rounds a job runs, as far as its spec tells: a training job's rounds and the final
/// model's evaluation (a statistics round adds one when it comes), a query's one.
pub fn rounds_of(job: &Job) -> u64 {
    match job.spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(job_spec::Kind::Training(t)) => u64::from(t.rounds) + 1,
        _ => 1,
    }
}

/// Prints the privacy plan each node will follow, before the job starts.
fn show_plan(spec: &TrainingSpec, a: &TrainArgs) -> Outcome {
    let statistics =
        !schema::numeric_columns(spec.schema.as_ref().unwrap_or(&Default::default())).is_empty();
    let epochs = u64::from(a.local_epochs.max(1));
    // The job's own sampling rate, when it sets one: then every agency's plan is this one.
    let fixed_rate = match a.dp_mode {
        DpModeArg::FullBatch => None,
        DpModeArg::Poisson if a.sampling_rate > 0.0 && a.sampling_rate <= 1.0 => {
            Some(a.sampling_rate)
        }
        DpModeArg::Poisson if a.sampling_rate == 0.0 => None,
        DpModeArg::Poisson => {
            return Err(unusable(anyhow::anyhow!(
                "--sampling-rate {} must be in (0, 1], or 0 for --batch-size / each agency's record count",
                a.sampling_rate
            )));
        }
    };
    let job = JobPrivacy {
        target_epsilon: a.target_epsilon,
        delta: a.target_delta,
        rounds: u64::from(a.rounds),
        steps_per_round: match fixed_rate {
            Some(q) => epochs.saturating_mul((1.0 / q).ceil() as u64),
            None => epochs,
        },
        sampling_rate: fixed_rate,
        statistics,
        statistics_rho: a.statistics_rho,
        evaluation_epsilon: a.evaluation_epsilon,
    };
    let plan = privacy::plan(&job).map_err(unusable)?;
    print_plan(&job, &plan);
    if matches!(a.dp_mode, DpModeArg::Poisson) && fixed_rate.is_none() {
        // Each agency's sampling rate (batch / its public record count) sets its own noise;
        // the statistics and evaluation parts are the same for all.
        outln!(
            "  (Poisson sampling: each agency calibrates its noise to its own sampling rate, batch size / its public record count; the figures above are for full batches)"
        );
    }
    Ok(())
}

/// Prints a job: its rounds, who contributed, who was excluded and why, and the metrics.
pub fn show(job: &Job) {
    outln!(
        "job {} in federation {}: {} ({} round(s)) {}",
        job.job_id,
        job.federation,
        state(job),
        job.rounds_completed,
        printable(&job.message)
    );
    // Under DP every metric comes from the agencies' noisy counts: a count is shown as the
    // whole number it estimates (`~`), each figure with the interval of its noise, and flagged
    // when the noise makes it meaningless. No agency reports its number of records (a node's
    // result counts 1, whatever its data).
    let rounds = job
        .statistics
        .iter()
        .chain(&job.rounds)
        .chain(&job.final_evaluation);
    for r in rounds {
        let final_model = job.final_evaluation.as_ref() == Some(r);
        let name = if r.round == 0 {
            "statistics".to_owned()
        } else if final_model {
            format!("final model {}", r.evaluated_model_version)
        } else {
            format!("round {}", r.round)
        };
        let of = if r.evaluated_model_version.is_empty() || final_model {
            String::new()
        } else {
            format!("  (of {})", r.evaluated_model_version)
        };
        let mut metrics = evaluation::describe(&r.metrics, &r.metric_intervals);
        if metrics.is_empty() && !r.evaluated_model_version.is_empty() {
            metrics = "no metric: the noise left no positive count to compute one from".into();
        }
        outln!(
            "  {name}: {} of {} invited  {metrics}{of}",
            r.contributors.len(),
            r.invited.len(),
        );
        let mut agencies: Vec<_> = r.agency_metrics.iter().collect();
        agencies.sort_by(|a, b| a.0.cmp(b.0));
        for (agency, m) in agencies {
            outln!(
                "    {agency}:  {}",
                evaluation::describe(&m.values, &m.intervals)
            );
        }
        for e in &r.excluded {
            outln!(
                "    {} excluded: {} — {}",
                printable(&e.agency),
                printable(&e.reason_code),
                printable(&e.message)
            );
        }
        for v in &r.answer {
            outln!(
                "    {}: {:.4} (noise sd {:.4}, interval {:.4} to {:.4})",
                v.label,
                v.value,
                v.noise_std,
                v.ci_low,
                v.ci_high
            );
        }
        for o in &r.outliers {
            outln!(
                "    {} flagged as an outlier: `{}` answered {} against a median of {} ({:.1} robust sd)",
                o.agency,
                o.label,
                o.value,
                o.median,
                o.score
            );
        }
    }
    if !job.latest_model_version.is_empty() {
        outln!("  latest model: {}", job.latest_model_version);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Train {
        #[command(flatten)]
        args: TrainArgs,
    }

    /// A job that sets only its schema, target and rounds gets the recipe `treaty bench
    /// tabular` measured as `default`.
    #[test]
    fn the_defaults_are_the_measured_recipe() {
        let a = Train::parse_from([
            "train",
            "--config",
            "c",
            "--federation",
            "f",
            "--schema",
            "s",
        ])
        .args;
        let recipes = treaty_devkit::bench::recipes();
        let default = recipes.iter().find(|r| r.name == "default").unwrap();
        assert!(matches!(a.dp_mode, DpModeArg::Poisson));
        assert_eq!(default.mode, DpMode::Poisson);
        assert_eq!(a.sampling_rate, default.sampling_rate);
        assert_eq!(a.local_epochs, default.local_epochs);
        assert_eq!(learning_rate(&a), default.learning_rate);
        assert_eq!(a.clip_norm, default.clip_norm);
        assert_eq!(a.rounds, 20);
        assert_eq!(a.target_epsilon, 1.0);
    }

    /// Under distributed noise the learning rate is the measured one-step recipe's, and the
    /// options that would make a round more than one linear release are refused.
    #[test]
    fn distributed_noise_takes_the_one_step_recipe() {
        let base = [
            "train",
            "--config",
            "c",
            "--federation",
            "f",
            "--schema",
            "s",
            "--secure-aggregation",
            "--distributed-noise",
        ];
        let a = Train::parse_from(base).args;
        let recipes = treaty_devkit::bench::recipes();
        let one_step = recipes.iter().find(|r| r.name == "distributed").unwrap();
        assert_eq!(one_step.mode, DpMode::FullBatch);
        assert_eq!(one_step.local_epochs, 1);
        assert_eq!(learning_rate(&a), one_step.learning_rate);
        assert_eq!(a.clip_norm, one_step.clip_norm);
        for extra in [
            ["--dp-mode", "poisson"],
            ["--local-epochs", "2"],
            ["--momentum", "0.9"],
        ] {
            let args = base.iter().chain(extra.iter());
            assert!(Train::try_parse_from(args).is_err(), "{extra:?}");
        }
        // And it needs secure aggregation.
        assert!(Train::try_parse_from(&base[..8]).is_ok());
        let without: Vec<&str> = base
            .iter()
            .copied()
            .filter(|a| *a != "--secure-aggregation")
            .collect();
        assert!(Train::try_parse_from(without).is_err());
    }
}
