//! `treaty bench w1`: workload W1 (bench/README.md) on this machine, end to end.
//!
//! Eight agencies, each a separate node process with its own CSV data (from
//! `treaty synth --kind numeric`), one coordinator, mutual TLS on loopback: logistic regression on
//! the 64 standardised features, 20 rounds of one local epoch of mini-batch SGD (batch 256,
//! learning rate 0.1), FedAvg weighted by examples, evaluation on every test split each round.
//! Reported: the nodes' start-up (spawn to connected, data loaded), the job's wall time (from
//! its creation to the final model, including the statistics round), the per-round median,
//! accuracy and ROC AUC of the final model on the union of the test splits, and the peak RSS of
//! the coordinator and of one node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use treaty_node::Table;
use treaty_proto::v1::{DpMode, FeatureSchema, LabelKind, LabelSpec};

use crate::evaluate;
use crate::local::{LocalFederation, Member};
use crate::outln;

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];

/// W1's data directory is missing or incomplete: input to fix, with the command that writes it.
#[derive(Debug, thiserror::Error)]
pub enum W1DataError {
    #[error(
        "cannot read `{path}`: {source}; write W1's data with `treaty synth --kind numeric --agencies 8 --rows 100000 --out DIR`"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`{dir}` has no agency_{agency}_train.csv / agency_{agency}_test.csv; write them with `treaty synth --kind numeric --agencies {agencies} --out DIR` (see bench/README.md)"
    )]
    MissingSplit {
        dir: PathBuf,
        agency: usize,
        agencies: usize,
    },
}

/// How W1 runs (`treaty bench w1 --help` gives the defaults).
#[derive(Debug, Clone)]
pub struct W1Options {
    /// The directory `treaty synth --kind numeric` wrote.
    pub data: PathBuf,
    /// How many agencies (agency_0 .. agency_{N-1}).
    pub agencies: usize,
    /// Training rounds.
    pub rounds: u32,
    /// How many feature columns (f0 ..), 64 for W1.
    pub features: usize,
    /// Keep the working directory here.
    pub keep: Option<PathBuf>,
    /// Record-level DP (Poisson DP-SGD): each agency spends at most this epsilon on the whole
    /// job (statistics round and evaluations included), at delta 1e-5.
    pub epsilon: f64,
    /// The clipping norm of per-example gradients under DP.
    pub clip: f64,
    /// The local learning rate.
    pub learning_rate: f64,
    /// A recipe of `treaty bench tabular` to train by instead of W1's own (Poisson DP-SGD,
    /// batch 256, one epoch, `clip` and `learning_rate`).
    pub recipe: Option<super::Recipe>,
    /// Train under secure aggregation.
    pub secure_aggregation: bool,
    /// Under secure aggregation, distributed DP: each agency adds its share of the noise,
    /// assuming at most this many dishonest agencies a round (every node is configured so).
    pub distributed_noise: Option<u32>,
}

fn mib(bytes: Option<u64>) -> String {
    bytes
        .map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "n/a".into())
}

/// Runs W1 with the `treaty` binary `exe`, printing its figures and a JSON line.
pub async fn w1(args: W1Options, exe: &Path) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("treaty-bench-").tempdir()?;
            temp.path().to_owned()
        }
    };
    // The nodes' configurations live elsewhere: the data's path must not be relative.
    let data = std::fs::canonicalize(&args.data).map_err(|source| W1DataError::Unreadable {
        path: args.data.clone(),
        source,
    })?;
    let mut agencies = Vec::new();
    for k in 0..args.agencies {
        let train = data.join(format!("agency_{k}_train.csv"));
        let test = data.join(format!("agency_{k}_test.csv"));
        if !train.is_file() || !test.is_file() {
            return Err(W1DataError::MissingSplit {
                dir: data,
                agency: k,
                agencies: args.agencies,
            }
            .into());
        }
        agencies.push(Member {
            agency: format!("W1-AGENCY-{k}"),
            country: COUNTRIES[k % COUNTRIES.len()].to_owned(),
            train,
            test,
        });
    }
    let mut schema = FeatureSchema {
        columns: (0..args.features)
            .map(|j| treaty_proto::v1::ColumnSpec {
                name: format!("f{j}"),
                kind: treaty_proto::v1::ColumnKind::Numeric as i32,
                missing: treaty_proto::v1::MissingRule::Reject as i32,
                ..Default::default()
            })
            .collect(),
        label: Some(LabelSpec {
            name: "seized".into(),
            kind: LabelKind::Binary as i32,
            classes: vec![],
        }),
    };

    {
        // DP statistics need bounds on every numeric column. The schema's author would know each
        // column's plausible range; here the harness takes the 0.1 % and 99.9 % quantiles of the
        // pooled training data, before anything is timed. Values beyond are clamped.
        let names: Vec<String> = (0..args.features).map(|j| format!("f{j}")).collect();
        let mut columns: Vec<Vec<f64>> = vec![Vec::new(); args.features];
        for a in &agencies {
            let table = Table::open(&a.train)?;
            for (j, name) in names.iter().enumerate() {
                columns[j].extend(table.clamped_where(name, f64::MIN, f64::MAX, None)?);
            }
        }
        let bounds: Vec<(f64, f64)> = columns
            .iter_mut()
            .map(|c| {
                c.sort_by(f64::total_cmp);
                let at = |p: f64| c[((c.len() - 1) as f64 * p) as usize];
                (at(0.001), at(0.999))
            })
            .collect();
        drop(columns);
        for (c, (lo, hi)) in schema.columns.iter_mut().zip(bounds) {
            c.lower = Some(lo);
            c.upper = Some(hi);
        }
    }
    outln!(
        "W1: {} agencies, {} rounds, {} features, data in {}, record-level DP, epsilon {} per agency for the whole job (delta 1e-5)",
        args.agencies,
        args.rounds,
        args.features,
        args.data.display(),
        args.epsilon
    );
    let spawned = Instant::now();
    let fields: Vec<String> = (0..args.features).map(|j| format!("f{j}")).collect();
    let mut fed = LocalFederation::start_assuming(
        &dir,
        exe,
        &agencies,
        10.0_f64.max(args.epsilon * 1.5),
        &fields,
        args.distributed_noise,
    )
    .await?;
    let result = async {
        let mut client = fed.operator().await?;
        fed.wait_connected(&mut client, args.agencies, Duration::from_secs(300)).await?;
        let startup = spawned.elapsed();
        outln!("  nodes started, data loaded and connected in {:.2} s", startup.as_secs_f64());
        let recipe = args.recipe.unwrap_or(super::Recipe {
            name: "w1",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 256,
            learning_rate: args.learning_rate,
            clip_norm: args.clip,
            sampling_rate: 0.0,
        });
        outln!("  recipe `{}`: {recipe:?}", recipe.name);
        let mut spec = recipe.spec(&schema, args.rounds, args.epsilon);
        if args.secure_aggregation {
            spec.secure_aggregation = Some(treaty_proto::v1::SecureAggregationSpec {
                distributed_noise: args.distributed_noise.is_some(),
                assumed_dishonest: args.distributed_noise.unwrap_or(0),
                ..Default::default()
            });
            outln!("  under secure aggregation: the coordinator learns each round's sum only");
            if let Some(c) = args.distributed_noise {
                outln!("  distributed DP: each agency adds its share of the noise, assuming at most {c} dishonest agencies a round");
            }
        }
        let (job, wall, scored) = super::train_and_score(&mut client, "w1", &agencies, spec).await?;
        let evaluate::Evaluation { records, accuracy, auc } = scored;
        let mut rounds: Vec<f64> = job.rounds.iter().map(|r| (r.finished_unix_ms - r.started_unix_ms) as f64 / 1000.0).collect();
        rounds.sort_by(f64::total_cmp);
        let median = rounds.get(rounds.len() / 2).copied().unwrap_or(f64::NAN);
        let statistics = job.statistics.as_ref().map(|s| (s.finished_unix_ms - s.started_unix_ms) as f64 / 1000.0).unwrap_or(0.0);
        let coordinator_rss = fed.peak_rss("coordinator");
        let node_rss = fed.peak_rss(&agencies[0].agency);

        outln!("  job {}: {:.2} s from creation to the final model ({} rounds; statistics round {statistics:.3} s; per-round median {median:.3} s)", job.job_id, wall.as_secs_f64(), job.rounds.len());
        outln!("  final model on the union of the test splits ({records} rows): accuracy {accuracy:.4}, ROC AUC {auc:.4}");
        outln!("  peak RSS: coordinator {}, one node {}", mib(coordinator_rss), mib(node_rss));
        anyhow::Ok(serde_json::json!({
            "workload": "W1", "agencies": args.agencies, "rounds": job.rounds.len(),
            "startup_seconds": startup.as_secs_f64(), "job_seconds": wall.as_secs_f64(),
            "round_median_seconds": median, "statistics_seconds": statistics,
            "accuracy": accuracy, "auc": auc,
            "coordinator_peak_rss_bytes": coordinator_rss, "node_peak_rss_bytes": node_rss,
            "target_epsilon": args.epsilon, "recipe": recipe.name,
            "secure_aggregation": args.secure_aggregation,
            "distributed_noise_assumed_dishonest": args.distributed_noise,
        }))
    }
    .await;
    fed.stop().await;
    let mut report = result?;
    // Each agency's own ledger, read after its node stopped.
    let spent: Vec<f64> = fed.spent()?.into_iter().map(|(_, e)| e).collect();
    let max = spent.iter().copied().fold(0.0, f64::max);
    outln!(
        "  privacy: largest epsilon an agency spent: {max:.4} at delta 1e-5 (per agency: {})",
        spent
            .iter()
            .map(|e| format!("{e:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    report["max_epsilon_spent"] = serde_json::json!(max);
    outln!("{report}");
    Ok(())
}
