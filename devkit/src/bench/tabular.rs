//! `treaty bench tabular`: the recipes of a training job compared on a real tabular data set
//! split across agencies (bench/adult/prepare.py writes UCI Adult split by occupation), with
//! centralised non-private logistic regression on the pooled data as the reference.
//!
//! Each recipe runs as a whole job on a fresh local federation (a coordinator and one node
//! process per agency over mutual TLS, each with its own ledger): a DP statistics round, then
//! the rounds of federated logistic regression with DP at the given epsilon per agency for the
//! whole job. Reported: accuracy and ROC AUC of the final model on the union of the agencies'
//! test splits, beside the reference's, and the largest epsilon an agency's ledger shows.

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
    /// How many agencies.
    pub agencies: usize,
    /// Training rounds.
    pub rounds: u32,
    /// Each agency's epsilon for the whole job (delta 1e-5).
    pub epsilon: f64,
    /// The recipes to run, by name (see [`recipes`]).
    pub recipes: Vec<String>,
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
        },
        Recipe {
            name: "poisson-tuned",
            mode: DpMode::Poisson,
            local_epochs: 1,
            batch_size: 256,
            learning_rate: 1.0,
            clip_norm: 3.0,
        },
        Recipe {
            name: "full-batch",
            mode: DpMode::FullBatch,
            local_epochs: 5,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
        },
        // `treaty job train`'s defaults since: the best of these on Adult (README).
        Recipe {
            name: "default",
            mode: DpMode::FullBatch,
            local_epochs: 10,
            batch_size: 64,
            learning_rate: 1.0,
            clip_norm: 3.0,
        },
    ]
}

/// The data set's agencies.
fn members(data: &Path, agencies: usize) -> anyhow::Result<Vec<Member>> {
    (0..agencies)
        .map(|k| {
            let train = data.join(format!("agency_{k}_train.csv"));
            let test = data.join(format!("agency_{k}_test.csv"));
            if !train.is_file() || !test.is_file() {
                bail!(
                    "`{}` has no agency_{k}_train.csv / agency_{k}_test.csv; write them with `python3 bench/adult/prepare.py DIR`",
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
        let spec = TrainingSpec {
            model: ModelKind::LogisticRegression as i32,
            schema: Some(schema.clone()),
            rounds: options.rounds,
            local_epochs: recipe.local_epochs,
            batch_size: recipe.batch_size,
            learning_rate: recipe.learning_rate,
            strategy: Some(Strategy {
                aggregation: Aggregation::Fedavg as i32,
                ..Default::default()
            }),
            privacy: Some(PrivacySpec {
                mode: recipe.mode as i32,
                clip_norm: recipe.clip_norm,
                target_epsilon: options.epsilon,
                target_delta: 1e-5,
                ..Default::default()
            }),
            ..Default::default()
        };
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
    let data = std::fs::canonicalize(&options.data).with_context(|| {
        format!(
            "cannot read `{}`; write the data with `python3 bench/adult/prepare.py DIR`",
            options.data.display()
        )
    })?;
    let schema = schema::load(&data.join("schema.toml"))?;
    let members = members(&data, options.agencies)?;
    let tests: Vec<PathBuf> = members.iter().map(|m| m.test.clone()).collect();
    let known = recipes();
    let chosen = options
        .recipes
        .iter()
        .map(|name| {
            known
                .iter()
                .find(|r| r.name == name)
                .copied()
                .with_context(|| {
                    let names: Vec<&str> = known.iter().map(|r| r.name).collect();
                    format!("no recipe `{name}`; the recipes are {}", names.join(", "))
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    outln!(
        "tabular: {} agencies of {}, {} rounds, logistic regression, epsilon {} per agency for the whole job (delta 1e-5)",
        options.agencies,
        data.display(),
        options.rounds,
        options.epsilon
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
        let (scored, spent, seconds) = run_recipe(
            recipe,
            &options,
            &schema,
            &members,
            &dir.join(recipe.name),
            exe,
        )
        .await?;
        outln!(
            "  {:<28} accuracy {:.4}  AUC {:.4}  ({:+.2} points; largest epsilon spent {:.4}; {:.1} s)",
            recipe.name,
            scored.accuracy,
            scored.auc,
            100.0 * (scored.accuracy - reference.accuracy),
            spent,
            seconds
        );
        rows.push(serde_json::json!({"recipe": recipe.name, "accuracy": scored.accuracy, "auc": scored.auc, "max_epsilon_spent": spent, "seconds": seconds}));
    }
    outln!(
        "{}",
        serde_json::json!({"workload": "tabular", "data": data, "agencies": options.agencies, "rounds": options.rounds, "epsilon": options.epsilon, "results": rows})
    );
    Ok(())
}
