//! `treaty query` (analysts): one differentially private statistic over a federation — a count,
//! sum, mean, histogram or quantiles — answered by every agency's node with the Laplace
//! mechanism and combined by the coordinator. It is a job like any other: each country's sharing
//! policy decides whether its agencies answer, and each node debits its ledger before its answer
//! leaves. The answer is printed as a table, or as JSON (`--json`) or CSV (`--csv`) on standard
//! output, with the job's progress on standard error.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use treaty_coordinator::client::OperatorConfig;
use treaty_devkit::outln;
use treaty_devkit::output::printable;
use treaty_proto::v1::{
    Combine, CreateJobRequest, Job, JobSpec, QueryKind, QuerySpec, SharingSpec, job_spec,
};

use super::{Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// The number of records (that meet --where).
    Count {
        #[command(flatten)]
        common: Common,
    },
    /// The sum of a numeric column, each value clamped to [--lower, --upper].
    Sum {
        #[command(flatten)]
        column: Clamped,
        #[command(flatten)]
        common: Common,
    },
    /// The mean of a numeric column, each value clamped to [--lower, --upper]: a noisy sum over
    /// a noisy count, each with half the epsilon.
    Mean {
        #[command(flatten)]
        column: Clamped,
        #[command(flatten)]
        common: Common,
    },
    /// Counts of a categorical column's values, optionally by a second column's.
    Histogram {
        /// The categorical column counted.
        #[arg(long)]
        column: String,
        /// Its values counted, in order (comma-separated); anything else counts as `other`.
        #[arg(long, value_delimiter = ',', required = true)]
        categories: Vec<String>,
        /// A second categorical column: counts of each pair of values.
        #[arg(long, requires = "by_categories")]
        by: Option<String>,
        /// The second column's values, in order (comma-separated); anything else is `other`.
        #[arg(long, value_delimiter = ',', requires = "by")]
        by_categories: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Quantiles of a numeric column, from a noisy histogram of --bins equal bins on
    /// [--lower, --upper] (each interval also holds the bin's width).
    Quantiles {
        #[command(flatten)]
        column: Clamped,
        /// The quantiles wanted, each in (0, 1), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
        quantiles: Vec<f64>,
        /// The number of bins.
        #[arg(long, default_value_t = 64)]
        bins: u32,
        #[command(flatten)]
        common: Common,
    },
}

/// A numeric column and the public bounds each of its values is clamped to.
#[derive(Debug, Args)]
pub struct Clamped {
    /// The numeric column.
    #[arg(long)]
    column: String,
    /// The lower bound each value is clamped to (public: it is not learned from the data).
    #[arg(long, allow_hyphen_values = true)]
    lower: f64,
    /// The upper bound each value is clamped to.
    #[arg(long, allow_hyphen_values = true)]
    upper: f64,
}

/// What every query states.
#[derive(Debug, Args)]
pub struct Common {
    /// The operator's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// The federation asked.
    #[arg(long)]
    federation: String,
    /// The epsilon each agency spends on its answer (pure DP, debited from its ledger).
    #[arg(long)]
    epsilon: f64,
    /// The confidence level of the intervals reported.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Only records whose column reads this value count, as `COLUMN=VALUE` (e.g. `seized=1`).
    #[arg(long = "where", value_name = "COLUMN=VALUE")]
    filter: Option<String>,
    /// How the agencies' answers are combined: their sum, or (robust to a minority of wrong
    /// answers) the median or trimmed mean of the answers times their number.
    #[arg(long, value_enum, default_value = "sum")]
    combine: CombineArg,
    /// The query is answered only when at least this many agencies answer.
    #[arg(long, default_value_t = 1)]
    min_participants: u32,
    /// Seconds to wait for the agencies' answers.
    #[arg(long, default_value_t = 60)]
    timeout: u32,
    /// Print the answer as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the answer as CSV (label, value, noise_std, ci_low, ci_high).
    #[arg(long)]
    csv: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CombineArg {
    Sum,
    Median,
    Trimmed,
}

/// The query's answer as `--json` prints it.
#[derive(Debug, Serialize)]
struct Answer<'a> {
    job: &'a str,
    federation: &'a str,
    statistic: &'a str,
    column: &'a str,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    filter: Option<Filter<'a>>,
    epsilon_per_agency: f64,
    confidence: f64,
    values: Vec<Value<'a>>,
    contributors: &'a [String],
    excluded: Vec<Excluded<'a>>,
    outliers: Vec<Outlier<'a>>,
}

/// `--where`: only records whose column reads the value count.
#[derive(Debug, Serialize)]
struct Filter<'a> {
    column: &'a str,
    value: &'a str,
}

#[derive(Debug, Serialize)]
struct Value<'a> {
    label: &'a str,
    value: f64,
    noise_std: f64,
    ci_low: f64,
    ci_high: f64,
}

#[derive(Debug, Serialize)]
struct Excluded<'a> {
    agency: &'a str,
    code: &'a str,
    message: &'a str,
}

#[derive(Debug, Serialize)]
struct Outlier<'a> {
    agency: &'a str,
    label: &'a str,
    value: f64,
    median: f64,
    score: f64,
}

pub async fn run(command: QueryCommand) -> Outcome {
    let (spec, common) = spec_of(command)?;
    let mut client = OperatorConfig::load(&common.config)
        .map_err(unusable)?
        .connect()
        .await?;
    let machine = common.json || common.csv;
    let job = client
        .create_job(CreateJobRequest {
            federation: common.federation.clone(),
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Query(spec.clone())),
                min_participants: common.min_participants,
                round_timeout_ms: common.timeout.saturating_mul(1000),
                join_timeout_ms: common.timeout.saturating_mul(1000),
                // A query states its epsilon and its columns to the policies.
                sharing: Some(SharingSpec::default()),
            }),
        })
        .await?
        .into_inner();
    if !machine {
        outln!("query job {} created", job.job_id);
    }
    let job = super::job::follow(&mut client, &job.job_id, 1, machine).await?;
    if common.json {
        outln!("{}", serde_json::to_string_pretty(&answer(&job, &spec))?);
    } else if common.csv {
        print_csv(&job)?;
    } else {
        print_table(&job, &spec);
    }
    Ok(())
}

/// The query a command asks, checked for what the command line alone can tell (the
/// coordinator checks the rest, and every node again).
fn spec_of(command: QueryCommand) -> Result<(QuerySpec, Common), super::CliError> {
    let (mut spec, common) = match command {
        QueryCommand::Count { common } => (
            QuerySpec {
                kind: QueryKind::Count as i32,
                ..Default::default()
            },
            common,
        ),
        QueryCommand::Sum { column, common } => (clamped(QueryKind::Sum, column), common),
        QueryCommand::Mean { column, common } => (clamped(QueryKind::Mean, column), common),
        QueryCommand::Histogram {
            column,
            categories,
            by,
            by_categories,
            common,
        } => (
            QuerySpec {
                kind: QueryKind::Histogram as i32,
                column,
                categories,
                by_column: by.unwrap_or_default(),
                by_categories,
                ..Default::default()
            },
            common,
        ),
        QueryCommand::Quantiles {
            column,
            quantiles,
            bins,
            common,
        } => {
            if let Some(q) = quantiles.iter().find(|q| !(**q > 0.0 && **q < 1.0)) {
                return Err(unusable(anyhow::anyhow!(
                    "--quantiles {q} is not in (0, 1): give each as a fraction, e.g. 0.5 for the median"
                )));
            }
            let mut spec = clamped(QueryKind::Quantile, column);
            spec.quantiles = quantiles;
            spec.bins = bins;
            (spec, common)
        }
    };
    if !(common.epsilon.is_finite() && common.epsilon > 0.0) {
        return Err(unusable(anyhow::anyhow!(
            "--epsilon {} must be a positive number: the epsilon each agency spends on its answer",
            common.epsilon
        )));
    }
    if !(common.confidence > 0.0 && common.confidence < 1.0) {
        return Err(unusable(anyhow::anyhow!(
            "--confidence {} must be in (0, 1), e.g. 0.95",
            common.confidence
        )));
    }
    if let Some(filter) = &common.filter {
        let Some((column, value)) = filter.split_once('=') else {
            return Err(unusable(anyhow::anyhow!(
                "--where `{filter}` is not COLUMN=VALUE, e.g. --where seized=1"
            )));
        };
        if column.trim().is_empty() {
            return Err(unusable(anyhow::anyhow!(
                "--where `{filter}` names no column: give it as COLUMN=VALUE, e.g. --where seized=1"
            )));
        }
        // As cells are read: trimmed.
        spec.where_column = column.trim().to_owned();
        spec.where_value = value.trim().to_owned();
    }
    spec.epsilon = common.epsilon;
    spec.confidence = common.confidence;
    spec.combine = match common.combine {
        CombineArg::Sum => Combine::Sum,
        CombineArg::Median => Combine::Median,
        CombineArg::Trimmed => Combine::Trimmed,
    } as i32;
    Ok((spec, common))
}

fn clamped(kind: QueryKind, c: Clamped) -> QuerySpec {
    QuerySpec {
        kind: kind as i32,
        column: c.column,
        lower: c.lower,
        upper: c.upper,
        ..Default::default()
    }
}

fn statistic(spec: &QuerySpec) -> &'static str {
    match QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified) {
        QueryKind::Count => "count",
        QueryKind::Sum => "sum",
        QueryKind::Mean => "mean",
        QueryKind::Histogram => "histogram",
        QueryKind::Quantile => "quantiles",
        QueryKind::Unspecified => "unspecified",
    }
}

fn answer<'a>(job: &'a Job, spec: &'a QuerySpec) -> Answer<'a> {
    let round = job.rounds.first();
    Answer {
        job: &job.job_id,
        federation: &job.federation,
        statistic: statistic(spec),
        column: &spec.column,
        filter: (!spec.where_column.is_empty()).then_some(Filter {
            column: &spec.where_column,
            value: &spec.where_value,
        }),
        epsilon_per_agency: spec.epsilon,
        confidence: spec.confidence,
        values: round
            .map(|r| {
                r.answer
                    .iter()
                    .map(|v| Value {
                        label: &v.label,
                        value: v.value,
                        noise_std: v.noise_std,
                        ci_low: v.ci_low,
                        ci_high: v.ci_high,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        contributors: round.map(|r| r.contributors.as_slice()).unwrap_or_default(),
        excluded: round
            .map(|r| {
                r.excluded
                    .iter()
                    .map(|e| Excluded {
                        agency: &e.agency,
                        code: &e.reason_code,
                        message: &e.message,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        outliers: round
            .map(|r| {
                r.outliers
                    .iter()
                    .map(|o| Outlier {
                        agency: &o.agency,
                        label: &o.label,
                        value: o.value,
                        median: o.median,
                        score: o.score,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn print_csv(job: &Job) -> Outcome {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(["label", "value", "noise_std", "ci_low", "ci_high"])?;
    for v in job.rounds.iter().take(1).flat_map(|r| &r.answer) {
        out.write_record([
            v.label.clone(),
            v.value.to_string(),
            v.noise_std.to_string(),
            v.ci_low.to_string(),
            v.ci_high.to_string(),
        ])?;
    }
    let text = String::from_utf8(out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    treaty_devkit::out!("{text}");
    Ok(())
}

/// The federation's members a round concerned: those invited, and those the policies or their
/// budgets kept out.
fn members(round: &treaty_proto::v1::RoundSummary) -> usize {
    let mut all: Vec<&str> = round.invited.iter().map(String::as_str).collect();
    all.extend(round.excluded.iter().map(|e| e.agency.as_str()));
    all.sort_unstable();
    all.dedup();
    all.len()
}

fn print_table(job: &Job, spec: &QuerySpec) {
    let Some(round) = job.rounds.first() else {
        outln!("job {}: no answer", job.job_id);
        return;
    };
    let filter = if spec.where_column.is_empty() {
        String::new()
    } else {
        format!(" where {} = {}", spec.where_column, spec.where_value)
    };
    let of = if spec.column.is_empty() {
        String::new()
    } else {
        format!(" of {}", spec.column)
    };
    outln!(
        "{}{of}{filter} over {}: {} of {} agencies answered, epsilon {} each; {} % intervals (noise only{})",
        statistic(spec),
        job.federation,
        round.contributors.len(),
        members(round),
        spec.epsilon,
        (spec.confidence * 1000.0).round() / 10.0,
        if QueryKind::try_from(spec.kind) == Ok(QueryKind::Quantile) {
            ", and the bin's width"
        } else {
            ""
        }
    );
    let width = round
        .answer
        .iter()
        .map(|v| v.label.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    outln!(
        "  {:<width$}  {:>14}  {:>12}  {:>14}  {:>14}",
        "value",
        "estimate",
        "noise sd",
        "interval from",
        "to"
    );
    for v in &round.answer {
        outln!(
            "  {:<width$}  {:>14.4}  {:>12.4}  {:>14.4}  {:>14.4}",
            printable(&v.label),
            v.value,
            v.noise_std,
            v.ci_low,
            v.ci_high
        );
    }
    for e in &round.excluded {
        outln!(
            "  {} did not answer: {} — {}",
            printable(&e.agency),
            printable(&e.reason_code),
            printable(&e.message)
        );
    }
    for o in &round.outliers {
        outln!(
            "  {} flagged as an outlier: `{}` answered {} against a median of {} ({:.1} robust sd)",
            printable(&o.agency),
            printable(&o.label),
            o.value,
            o.median,
            o.score
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Query {
        #[command(subcommand)]
        command: QueryCommand,
    }

    fn parse(args: &[&str]) -> Result<(QuerySpec, Common), super::super::CliError> {
        let base = ["query"];
        spec_of(
            Query::try_parse_from(base.iter().chain(args))
                .unwrap()
                .command,
        )
    }

    #[test]
    fn a_histogram_by_a_second_column_with_a_filter() {
        let (spec, common) = parse(&[
            "histogram",
            "--config",
            "op.toml",
            "--federation",
            "f",
            "--column",
            "band",
            "--categories",
            "low,mid,high",
            "--by",
            "mode",
            "--by-categories",
            "sea,air",
            "--where",
            "seized=1",
            "--epsilon",
            "0.5",
            "--combine",
            "median",
        ])
        .unwrap();
        assert_eq!(spec.kind, QueryKind::Histogram as i32);
        assert_eq!(spec.categories, ["low", "mid", "high"]);
        assert_eq!(spec.by_column, "mode");
        assert_eq!(spec.by_categories, ["sea", "air"]);
        assert_eq!(
            (spec.where_column.as_str(), spec.where_value.as_str()),
            ("seized", "1")
        );
        assert_eq!(spec.epsilon, 0.5);
        assert_eq!(spec.confidence, 0.95);
        assert_eq!(spec.combine, Combine::Median as i32);
        assert!(!common.json && !common.csv);
    }

    #[test]
    fn negative_bounds_and_quantiles() {
        let (spec, _) = parse(&[
            "quantiles",
            "--config",
            "op.toml",
            "--federation",
            "f",
            "--column",
            "x1",
            "--lower",
            "-3",
            "--upper",
            "3",
            "--quantiles",
            "0.1,0.9",
            "--epsilon",
            "1",
            "--json",
        ])
        .unwrap();
        assert_eq!((spec.lower, spec.upper), (-3.0, 3.0));
        assert_eq!(spec.quantiles, [0.1, 0.9]);
        assert_eq!(spec.bins, 64);
    }

    #[test]
    fn bad_input_is_named() {
        let common = ["--config", "c", "--federation", "f"];
        for (args, named) in [
            (vec!["count", "--epsilon", "0"], "--epsilon 0"),
            (vec!["count", "--epsilon", "NaN"], "--epsilon NaN"),
            (
                vec!["count", "--epsilon", "1", "--confidence", "95"],
                "--confidence 95",
            ),
            (
                vec!["count", "--epsilon", "1", "--where", "seized"],
                "--where `seized`",
            ),
            (
                vec!["count", "--epsilon", "1", "--where", "=1"],
                "names no column",
            ),
            (
                vec![
                    "quantiles",
                    "--column",
                    "x",
                    "--lower",
                    "0",
                    "--upper",
                    "1",
                    "--quantiles",
                    "50",
                    "--epsilon",
                    "1",
                ],
                "--quantiles 50",
            ),
        ] {
            let all: Vec<&str> = args.iter().chain(&common).copied().collect();
            let Err(super::super::CliError::Unusable(e)) = parse(&all) else {
                panic!("{args:?} was taken");
            };
            assert!(e.to_string().contains(named), "{e}");
        }
    }
}
