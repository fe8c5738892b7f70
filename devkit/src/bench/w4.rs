//! `treaty bench w4`: workload W4 (bench/README.md), the cost of orchestration itself.
//!
//! Eight agencies of 100 records each (W1's generator, its first 4 columns), each a node process
//! with its own ledger, one coordinator, mutual TLS on loopback; one training job of 100 rounds
//! of a tiny model (logistic regression on 4 features, one full-batch DP step a round, noise
//! calibrated to epsilon 1 per agency, evaluations off). Each round is decided by the sharing
//! policies, recorded in every node's ledger, aggregated and stored durably, as in any job.
//! Reported: what a round costs, as the coordinator records it — from the completion of the
//! round before to its own (its decision, its model's loading, its tasks, results, aggregation
//! and durable completion) — the median and 99th percentile; and, as before 2026-12-06, the part
//! from the round's start (its decision recorded) to its completion.

use std::path::Path;
use std::time::{Duration, Instant};

use treaty_proto::v1::{
    Aggregation, ColumnKind, ColumnSpec, DpMode, FeatureSchema, Job, LabelKind, LabelSpec,
    ModelKind, PrivacySpec, Strategy, TrainingSpec,
};

use crate::local::{LocalFederation, Member};
use crate::outln;

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];

/// How W4 runs.
#[derive(Debug, Clone)]
pub struct W4Options {
    /// How many agencies.
    pub agencies: usize,
    /// Records per agency.
    pub rows: usize,
    /// Training rounds.
    pub rounds: u32,
    /// Keep the working directory (logs, databases) here.
    pub keep: Option<std::path::PathBuf>,
}

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Each round's whole cost, in ms: from the completion of the round before it (the statistics
/// round's, for the first) to its own, so the policy decision, the model's loading, the round
/// and its durable completion all count, with nothing left between one round and the next.
fn cycles(job: &Job) -> Vec<f64> {
    let mut previous = job.statistics.as_ref().map(|s| s.finished_unix_ms);
    job.rounds
        .iter()
        .filter_map(|r| {
            let cycle = previous.map(|p| (r.finished_unix_ms - p) as f64);
            previous = Some(r.finished_unix_ms);
            cycle
        })
        .collect()
}

/// Each round from its start (its decision made and recorded) to its completion, in ms.
fn spans(job: &Job) -> Vec<f64> {
    job.rounds
        .iter()
        .map(|r| (r.finished_unix_ms - r.started_unix_ms) as f64)
        .collect()
}

/// Runs W4 with the `treaty` binary `exe`, printing its figures and a JSON line.
pub async fn w4(args: W4Options, exe: &Path) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("treaty-bench-").tempdir()?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.as_path()
        }
        None => temp.path(),
    };
    let features = 4;
    let written = crate::synth::numeric::generate(&dir.join("data"), args.agencies, args.rows, 4)?;
    let members: Vec<Member> = written
        .into_iter()
        .enumerate()
        .map(|(k, w)| Member {
            agency: format!("W4-AGENCY-{k}"),
            country: COUNTRIES[k % COUNTRIES.len()].to_owned(),
            train: w.train,
            test: w.test,
        })
        .collect();
    let fields: Vec<String> = (0..features).map(|j| format!("f{j}")).collect();
    // DP statistics need bounds: the harness takes each column's range in the pooled data.
    let mut columns = Vec::new();
    for name in &fields {
        let mut values = Vec::new();
        for m in &members {
            values.extend(treaty_node::Table::open(&m.train)?.clamped_where(
                name,
                f64::MIN,
                f64::MAX,
                None,
            )?);
        }
        let lower = values.iter().copied().fold(f64::INFINITY, f64::min);
        let upper = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        columns.push(ColumnSpec {
            name: name.clone(),
            kind: ColumnKind::Numeric as i32,
            missing: treaty_proto::v1::MissingRule::Reject as i32,
            lower: Some(lower),
            upper: Some(upper.max(lower + 1.0)),
            ..Default::default()
        });
    }
    let schema = FeatureSchema {
        columns,
        label: Some(LabelSpec {
            name: "seized".into(),
            kind: LabelKind::Binary as i32,
            classes: vec![],
        }),
    };
    outln!(
        "W4: {} agencies x {} records, {} rounds of a tiny model (logistic regression on {features} features, one full-batch DP step a round)",
        args.agencies,
        args.rows,
        args.rounds
    );
    let mut fed = LocalFederation::start(dir, exe, &members, 10.0, &fields).await?;
    let result = async {
        let mut client = fed.operator().await?;
        fed.wait_connected(&mut client, args.agencies, Duration::from_secs(120))
            .await?;
        // A statistics round, then the rounds measured: every one alike.
        let spec = TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: Some(schema),
            rounds: args.rounds,
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.5,
            strategy: Some(Strategy {
                aggregation: Aggregation::Fedavg as i32,
                ..Default::default()
            }),
            privacy: Some(PrivacySpec {
                mode: DpMode::FullBatch as i32,
                clip_norm: 1.0,
                target_epsilon: 1.0,
                target_delta: 1e-5,
                evaluation_epsilon: Some(0.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = Instant::now();
        let (job, _, _) = super::train_and_score(&mut client, "w4", &members, spec).await?;
        let wall = started.elapsed();
        let (mut cycles, mut rounds) = (cycles(&job), spans(&job));
        cycles.sort_by(f64::total_cmp);
        rounds.sort_by(f64::total_cmp);
        let (median, p99) = (quantile(&cycles, 0.5), quantile(&cycles, 0.99));
        let (span_median, span_p99) = (quantile(&rounds, 0.5), quantile(&rounds, 0.99));
        outln!(
            "  {} rounds in {:.2} s: a round every {median:.1} ms (median; 99th percentile {p99:.1} ms, slowest {:.1} ms), of which {span_median:.1} ms from its start to its completion (99th percentile {span_p99:.1} ms)",
            rounds.len(),
            wall.as_secs_f64(),
            cycles.last().copied().unwrap_or(f64::NAN)
        );
        anyhow::Ok(serde_json::json!({
            "workload": "W4", "agencies": args.agencies, "rows": args.rows,
            "rounds": rounds.len(), "job_seconds": wall.as_secs_f64(),
            "cycle_median_ms": median, "cycle_p99_ms": p99,
            "round_median_ms": span_median, "round_p99_ms": span_p99,
        }))
    }
    .await;
    fed.stop().await;
    outln!("{}", result?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cycles, quantile, spans};
    use treaty_proto::v1::{Job, RoundSummary};

    fn round(started_unix_ms: i64, finished_unix_ms: i64) -> RoundSummary {
        RoundSummary {
            started_unix_ms,
            finished_unix_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_round_costs_from_the_completion_before_it_to_its_own() {
        // The statistics round completes at 100; the rounds start 2 ms, 3 ms and 1 ms after the
        // completion before them (their decisions) and take 9, 9 and 8 ms from their start.
        let job = Job {
            statistics: Some(round(90, 100)),
            rounds: vec![round(102, 111), round(114, 123), round(124, 132)],
            ..Default::default()
        };
        assert_eq!(cycles(&job), vec![11.0, 12.0, 9.0]);
        assert_eq!(spans(&job), vec![9.0, 9.0, 8.0]);
        // Without a statistics round the first round has no completion before it.
        let job = Job {
            statistics: None,
            ..job
        };
        assert_eq!(cycles(&job), vec![12.0, 9.0]);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
