//! `treaty bench w4`: workload W4 (bench/README.md), the cost of orchestration itself.
//!
//! Eight agencies of 100 records each (W1's generator, its first 4 columns), each a node process
//! with its own ledger, one coordinator, mutual TLS on loopback; one training job of 100 rounds
//! of a tiny model (logistic regression on 4 features, one full-batch DP step a round, noise
//! calibrated to epsilon 1 per agency, evaluations off). Each round is decided by the sharing
//! policies, recorded in every node's ledger, aggregated and stored durably, as in any job.
//! Reported: the rounds' durations as the coordinator records them (from the round's start to
//! its completion, stored), their median and 99th percentile.

use std::path::Path;
use std::time::{Duration, Instant};

use treaty_proto::v1::{
    Aggregation, ColumnKind, ColumnSpec, DpMode, FeatureSchema, LabelKind, LabelSpec, ModelKind,
    PrivacySpec, Strategy, TrainingSpec,
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
        let mut rounds: Vec<f64> = job
            .rounds
            .iter()
            .map(|r| (r.finished_unix_ms - r.started_unix_ms) as f64)
            .collect();
        rounds.sort_by(f64::total_cmp);
        let (median, p99) = (quantile(&rounds, 0.5), quantile(&rounds, 0.99));
        outln!(
            "  {} rounds in {:.2} s: per round median {median:.1} ms, 99th percentile {p99:.1} ms, slowest {:.1} ms",
            rounds.len(),
            wall.as_secs_f64(),
            rounds.last().copied().unwrap_or(f64::NAN)
        );
        anyhow::Ok(serde_json::json!({
            "workload": "W4", "agencies": args.agencies, "rows": args.rows,
            "rounds": rounds.len(), "job_seconds": wall.as_secs_f64(),
            "round_median_ms": median, "round_p99_ms": p99,
        }))
    }
    .await;
    fed.stop().await;
    outln!("{}", result?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quantile;

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
