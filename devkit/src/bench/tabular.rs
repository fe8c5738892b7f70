//! `treaty bench tabular`: the recipes of a training job compared on a real tabular data set
//! split across agencies (`bench/<name>/prepare.py` writes one: UCI Adult split by occupation,
//! the CCES 2016 survey split by region, bench/README.md), with centralised non-private
//! logistic regression on the pooled data as the reference.
//!
//! Each recipe runs as a whole job on a fresh local federation (a coordinator and one node
//! process per agency over mutual TLS, each with its own ledger): a DP statistics round, then
//! the rounds of federated logistic regression with DP at the given epsilon per agency for the
//! whole job. A recipe may run several times, each on a fresh federation (the DP noise differs
//! from run to run). Reported: accuracy and ROC AUC of the final model on the union of the
//! agencies' test splits (the mean and standard deviation over the runs), beside the
//! reference's, and the largest epsilon an agency's ledger shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use treaty_node::{Architecture, Sgd, Table, train};
use treaty_proto::schema;
use treaty_proto::v1::{
    Aggregation, ColumnStats, DpMode, FeatureSchema, ModelKind, PrivacySpec, Strategy, TrainingSpec,
};

use crate::evaluate::{self, Evaluation};
use crate::local::{LocalFederation, Member};
use crate::outln;

const COUNTRIES: [&str; 8] = ["AT", "BE", "DE", "ES", "FR", "IT", "NL", "PL"];

/// How `treaty bench tabular` runs.
#[derive(Debug, Clone)]
pub struct TabularOptions {
    /// The directory of `schema.toml` and `agency_K_train.csv` / `agency_K_test.csv`.
    pub data: PathBuf,
    /// How many agencies (agency_0 .. agency_{N-1}); `None`: every agency the directory holds.
    pub agencies: Option<usize>,
    /// Training rounds.
    pub rounds: u32,
    /// Each agency's epsilon for the whole job (delta 1e-5).
    pub epsilon: f64,
    /// The recipes to run, by name (see [`recipes`]).
    pub recipes: Vec<String>,
    /// How many times each recipe runs, each time on a fresh federation (at least 1).
    pub repeats: usize,
    /// Keep the working directories here.
    pub keep: Option<PathBuf>,
}

/// A training recipe: what a job sets besides its schema, rounds and target.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// Its name on the command line.
    pub name: &'static str,
    /// Full-batch DP gradient descent or Poisson-subsampled DP-SGD.
    pub mode: DpMode,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// The batch size (Poisson: the expected batch).
    pub batch_size: u32,
    /// The local learning rate.
    pub learning_rate: f64,
    /// The clipping norm of per-example gradients.
    pub clip_norm: f64,
    /// Poisson: each record's chance of being in a step's batch (then one epoch is 1 / q
    /// steps); 0 takes batch / the agency's public record count.
    pub sampling_rate: f64,
}

impl Recipe {
    /// The training spec of a job by this recipe: logistic regression on `schema`, FedAvg,
    /// `rounds` rounds, its noise calibrated to `epsilon` per agency for the whole job (delta
    /// 1e-5).
    pub fn spec(&self, schema: &FeatureSchema, rounds: u32, epsilon: f64) -> TrainingSpec {
        TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: Some(schema.clone()),
            rounds,
            local_epochs: self.local_epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            strategy: Some(Strategy {
                aggregation: Aggregation::Fedavg as i32,
                ..Default::default()
            }),
            privacy: Some(PrivacySpec {
                mode: self.mode as i32,
                clip_norm: self.clip_norm,
                sampling_rate: self.sampling_rate,
                target_epsilon: epsilon,
                target_delta: 1e-5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The recipes the benchmark knows.
pub fn recipes() -> Vec<Recipe> {
    vec![
        // `treaty job train`'s defaults before the evidence of this benchmark.
        Recipe {
            name: "poisson",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 64,
            learning_rate: 0.05,
            clip_norm: 1.0,
            sampling_rate: 0.0,
        },
        Recipe {
            name: "poisson-tuned",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 256,
            learning_rate: 1.0,
            clip_norm: 3.0,
            sampling_rate: 0.0,
        },
        Recipe {
            name: "full-batch",
            mode: DpMode::FullBatch,
            local_epochs: 5,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
            sampling_rate: 0.0,
        },
        // `treaty job train`'s defaults until 2026-12-01 (full batch, 10 steps a round).
        Recipe {
            name: "full-batch-10",
            mode: DpMode::FullBatch,
            local_epochs: 10,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
            sampling_rate: 0.0,
        },
        // The same pass over the data a round in half the steps (a fifth of the records a step,
        // 5 steps): half the noise draws.
        Recipe {
            name: "poisson-fifth",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
            sampling_rate: 0.2,
        },
        // `treaty job train`'s defaults since, the best of these on W1 and the tabular data
        // (README): Poisson DP-SGD with a large expected batch, a tenth of the records a step,
        // one epoch (10 steps) a round: one pass over the data a round, where full batch takes
        // one a step.
        Recipe {
            name: "default",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
            sampling_rate: 0.1,
        },
        // Distributed DP under secure aggregation needs one linear release a round: one step of
        // full-batch DP gradient descent (docs/SECURE_AGGREGATION.md). The learning rate is the
        // best of 2, 4, 8, 16 and 32 measured on W1 (bench/README.md); `treaty job train
        // --distributed-noise` takes it.
        Recipe {
            name: "distributed",
            mode: DpMode::FullBatch,
            local_epochs: 1,
            batch_size: 64,
            learning_rate: 16.0,
            clip_norm: 3.0,
            sampling_rate: 0.0,
        },
    ]
}

/// The recipe of this name, or an error that lists the recipes.
pub fn recipe(name: &str) -> anyhow::Result<Recipe> {
    let known = recipes();
    known
        .iter()
        .find(|r| r.name == name)
        .copied()
        .with_context(|| {
            let names: Vec<&str> = known.iter().map(|r| r.name).collect();
            format!("no recipe `{name}`; the recipes are {}", names.join(", "))
        })
}

/// The mean and the standard deviation of a recipe's figure over its runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The arithmetic mean.
    pub mean: f64,
    /// The sample standard deviation (divisor n - 1); 0 for a single run.
    pub sd: f64,
}

impl Spread {
    /// The spread of `values` (a mean of 0 for none).
    pub fn of(values: &[f64]) -> Spread {
        let n = values.len() as f64;
        if values.is_empty() {
            return Spread { mean: 0.0, sd: 0.0 };
        }
        let mean = values.iter().sum::<f64>() / n;
        let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        let sd = if values.len() > 1 {
            (squares / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Spread { mean, sd }
    }
}

/// How a data directory is written: named in the errors about one.
const PREPARE: &str = "write one with `python3 bench/<name>/prepare.py DIR` (bench/README.md)";

/// The data set's agencies: `agencies` of them, or every agency_K from 0 on that the directory
/// holds.
fn members(data: &Path, agencies: Option<usize>) -> anyhow::Result<Vec<Member>> {
    let present = |k: usize| data.join(format!("agency_{k}_train.csv")).is_file();
    let agencies = match agencies {
        Some(n) => n,
        None => (0..).take_while(|k| present(*k)).count(),
    };
    if agencies == 0 {
        bail!(
            "`{}` holds no agency_0_train.csv; {PREPARE}",
            data.display()
        );
    }
    (0..agencies)
        .map(|k| {
            let train = data.join(format!("agency_{k}_train.csv"));
            let test = data.join(format!("agency_{k}_test.csv"));
            if !train.is_file() || !test.is_file() {
                bail!(
                    "`{}` has no agency_{k}_train.csv / agency_{k}_test.csv (it holds fewer agencies than asked); {PREPARE}",
                    data.display()
                );
            }
            Ok(Member {
                agency: format!("AGENCY-{k}"),
                country: COUNTRIES[k % COUNTRIES.len()].to_owned(),
                train,
                test,
            })
        })
        .collect()
}

/// Centralised non-private logistic regression: the pooled training data, standardised by its
/// exact statistics, trained to convergence by mini-batch SGD with momentum.
fn centralised(
    schema: &FeatureSchema,
    members: &[Member],
    tests: &[PathBuf],
) -> anyhow::Result<Evaluation> {
    let tables = members
        .iter()
        .map(|m| Table::open(&m.train))
        .collect::<Result<Vec<_>, _>>()?;
    let numeric = schema::numeric_columns(schema);
    let mut sums = vec![[0.0f64; 3]; numeric.len()];
    for table in &tables {
        for (total, s) in sums.iter_mut().zip(table.column_sums(schema)?) {
            for (t, v) in total.iter_mut().zip(s) {
                *t += v;
            }
        }
    }
    let stats: Vec<ColumnStats> = numeric
        .iter()
        .zip(&sums)
        .map(|(c, [n, s, q])| {
            // The sums are centred on the middle of the column's bounds after its transform.
            let centre = schema::transformed_bounds(c)
                .ok()
                .flatten()
                .map_or(0.0, |b| b.centre());
            let shift = s / n;
            ColumnStats {
                name: c.name.clone(),
                mean: centre + shift,
                std: (q / n - shift * shift).max(1e-12).sqrt(),
                count: *n,
            }
        })
        .collect();
    let encoded = tables
        .iter()
        .map(|t| t.encode(schema, &stats))
        .collect::<Result<Vec<_>, _>>()?;
    let x = ndarray::concatenate(
        ndarray::Axis(0),
        &encoded.iter().map(|e| e.x.view()).collect::<Vec<_>>(),
    )?;
    let y = ndarray::concatenate(
        ndarray::Axis(0),
        &encoded.iter().map(|e| e.y.view()).collect::<Vec<_>>(),
    )?;
    let pooled = treaty_node::Examples { x, y };
    let architecture = Architecture::of(ModelKind::LogisticRegression, 2, 0)
        .context("logistic regression has an architecture")?;
    let mut model = treaty_node::Model::zeros(architecture, pooled.x.ncols());
    train(
        &mut model,
        &pooled,
        &Sgd {
            epochs: 30,
            batch_size: 64,
            learning_rate: 0.02,
            momentum: 0.9,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        },
    );
    evaluate::binary_model(&model, schema, &stats, tests)
}

/// One recipe's job on a fresh federation: its final model's scores and the largest epsilon an
/// agency spent.
async fn run_recipe(
    recipe: &Recipe,
    options: &TabularOptions,
    schema: &FeatureSchema,
    members: &[Member],
    dir: &Path,
    exe: &Path,
) -> anyhow::Result<(Evaluation, f64, f64)> {
    let fields: Vec<String> = schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .chain(schema.label.iter().map(|l| l.name.clone()))
        .collect();
    let budget = 10.0_f64.max(options.epsilon * 1.5);
    let mut fed = LocalFederation::start(dir, exe, members, budget, &fields).await?;
    let started = Instant::now();
    let result = async {
        let mut client = fed.operator().await?;
        fed.wait_connected(&mut client, members.len(), Duration::from_secs(120))
            .await?;
        let spec = recipe.spec(schema, options.rounds, options.epsilon);
        let (_, _, scored) = super::train_and_score(&mut client, "tabular", members, spec).await?;
        anyhow::Ok(scored)
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    fed.stop().await;
    let scored = result?;
    let spent = fed.spent()?.into_iter().map(|(_, e)| e).fold(0.0, f64::max);
    Ok((scored, spent, seconds))
}

/// Runs every chosen recipe and the centralised reference, printing a table and a JSON line.
pub async fn tabular(options: TabularOptions, exe: &Path) -> anyhow::Result<()> {
    let temp;
    let dir = match &options.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("treaty-bench-tabular-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let data = std::fs::canonicalize(&options.data)
        .with_context(|| format!("cannot read `{}`; {PREPARE}", options.data.display()))?;
    let schema = schema::load(&data.join("schema.toml"))?;
    let members = members(&data, options.agencies)?;
    let tests: Vec<PathBuf> = members.iter().map(|m| m.test.clone()).collect();
    let chosen = options
        .recipes
        .iter()
        .map(|name| recipe(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let repeats = options.repeats.max(1);
    outln!(
        "tabular: {} agencies of {}, {} rounds, logistic regression, epsilon {} per agency for the whole job (delta 1e-5), {} run(s) per recipe",
        members.len(),
        data.display(),
        options.rounds,
        options.epsilon,
        repeats
    );
    let reference = centralised(&schema, &members, &tests)?;
    outln!(
        "  {:<28} accuracy {:.4}  AUC {:.4}  ({} test records)",
        "centralised, no DP",
        reference.accuracy,
        reference.auc,
        reference.records
    );
    let mut rows = vec![
        serde_json::json!({"recipe": "centralised", "accuracy": reference.accuracy, "auc": reference.auc}),
    ];
    for recipe in &chosen {
        let (mut runs, mut accuracies, mut aucs) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=repeats {
            let (name, dir) = if repeats == 1 {
                (recipe.name.to_owned(), dir.join(recipe.name))
            } else {
                (
                    format!("{} run {run}", recipe.name),
                    dir.join(format!("{}-{run}", recipe.name)),
                )
            };
            let (scored, spent, seconds) =
                run_recipe(recipe, &options, &schema, &members, &dir, exe).await?;
            outln!(
                "  {:<28} accuracy {:.4}  AUC {:.4}  ({:+.2} points; largest epsilon spent {:.4}; {:.1} s)",
                name,
                scored.accuracy,
                scored.auc,
                100.0 * (scored.accuracy - reference.accuracy),
                spent,
                seconds
            );
            runs.push(serde_json::json!({"accuracy": scored.accuracy, "auc": scored.auc, "max_epsilon_spent": spent, "seconds": seconds}));
            accuracies.push(scored.accuracy);
            aucs.push(scored.auc);
        }
        let accuracy = Spread::of(&accuracies);
        let auc = Spread::of(&aucs);
        let gap = 100.0 * (accuracy.mean - reference.accuracy);
        if repeats > 1 {
            outln!(
                "  {:<28} accuracy {:.4} ± {:.4}  AUC {:.4} ± {:.4}  ({:+.2} points; mean ± sd of {repeats} runs)",
                recipe.name,
                accuracy.mean,
                accuracy.sd,
                auc.mean,
                auc.sd,
                gap,
            );
        }
        rows.push(serde_json::json!({
            "recipe": recipe.name,
            "accuracy": accuracy.mean,
            "accuracy_sd": accuracy.sd,
            "auc": auc.mean,
            "auc_sd": auc.sd,
            "gap_points": gap,
            "runs": runs,
        }));
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "tabular", "data": data, "agencies": members.len(), "rounds": options.rounds, "epsilon": options.epsilon, "repeats": repeats, "results": rows})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe is found by its name, as README.md ("Good models by default") describes the
    /// default; an unknown name is refused with the names there are.
    #[test]
    fn a_recipe_is_found_by_name_and_an_unknown_one_lists_the_recipes() {
        let default = recipe("default").unwrap();
        assert_eq!(default.mode, DpMode::Poisson);
        assert_eq!(
            (
                default.local_epochs,
                default.sampling_rate,
                default.learning_rate,
                default.clip_norm
            ),
            (1, 0.1, 1.0, 3.0)
        );
        let error = recipe("defualt").unwrap_err().to_string();
        assert!(error.contains("no recipe `defualt`"), "{error}");
        for name in ["poisson", "full-batch", "default", "distributed"] {
            assert!(error.contains(name), "{error}");
        }
    }

    /// 1, 2, ..., n: mean (n + 1) / 2, sample variance n (n + 1) / 12.
    #[test]
    fn spread_of_the_first_integers_is_the_closed_form() {
        for n in [2usize, 3, 10, 101] {
            let values: Vec<f64> = (1..=n).map(|v| v as f64).collect();
            let spread = Spread::of(&values);
            let n = n as f64;
            assert!((spread.mean - (n + 1.0) / 2.0).abs() < 1e-12);
            assert!((spread.sd - (n * (n + 1.0) / 12.0).sqrt()).abs() < 1e-9);
        }
    }

    #[test]
    fn one_run_has_no_spread_and_a_constant_none() {
        assert_eq!(
            Spread::of(&[0.84]),
            Spread {
                mean: 0.84,
                sd: 0.0
            }
        );
        assert_eq!(Spread::of(&[0.5, 0.5, 0.5]), Spread { mean: 0.5, sd: 0.0 });
        assert_eq!(Spread::of(&[]), Spread { mean: 0.0, sd: 0.0 });
    }

    #[test]
    fn agencies_are_counted_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..3 {
            for split in ["train", "test"] {
                std::fs::write(dir.path().join(format!("agency_{k}_{split}.csv")), "a\n").unwrap();
            }
        }
        assert_eq!(members(dir.path(), None).unwrap().len(), 3);
        assert_eq!(members(dir.path(), Some(2)).unwrap().len(), 2);
        let err = members(dir.path(), Some(4)).unwrap_err().to_string();
        assert!(err.contains("agency_3_train.csv"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = members(empty.path(), None).unwrap_err().to_string();
        assert!(err.contains("prepare.py"), "{err}");
    }
}
