//! `treaty model get` and `treaty model explain`: a model version as a model file
//! (`treaty_node::model_file`), and predictions with each feature's contribution for the records
//! of a CSV file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;
use treaty_node::Architecture;
use treaty_node::ModelFile;
use treaty_node::Table;
use treaty_node::explain;

use super::{Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Downloads a model version with its feature names, schema and standardization, as JSON.
    Get {
        /// The operator's configuration file (coordinator address and TLS files).
        #[arg(long)]
        config: PathBuf,
        /// The job.
        #[arg(long)]
        job: String,
        /// The model version (default: the job's latest).
        #[arg(long, default_value = "")]
        version: String,
        /// Where to write the model (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Predicts the records of a CSV file with a model file, and explains each prediction of a
    /// linear model: every feature column's contribution to the score.
    Explain {
        /// A model file written by `treaty model get`.
        #[arg(long)]
        model: PathBuf,
        /// Records to predict (CSV with a header, the schema's columns).
        #[arg(long)]
        data: PathBuf,
        /// At most this many records.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

/// Runs a `treaty model` command: `get` on an async runtime, `explain` as it is.
pub fn run(command: ModelCommand) -> Outcome {
    match command {
        ModelCommand::Get {
            config,
            job,
            version,
            out,
        } => super::block_on(get(&config, &job, &version, out.as_deref())),
        ModelCommand::Explain { model, data, limit } => explain_records(&model, &data, limit),
    }
}

/// Downloads a model version and writes it as a model file to `out` (or standard output).
async fn get(config: &Path, job: &str, version: &str, out: Option<&Path>) -> Outcome {
    let config = OperatorConfig::load(config).map_err(unusable)?;
    let mut client = config.connect().await?;
    let (header, tensors) = client::download(&mut client, job, version).await?;
    // A model the coordinator sent malformed is its failure (`MalformedModel`: status 1).
    let text = serde_json::to_string_pretty(&ModelFile::new(&header, &tensors)?)?;
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            // Said on standard output, as `treaty pki` says what it wrote.
            outln!("{}", path.display());
        }
        None => outln!("{text}"),
    }
    Ok(())
}

/// Prints the prediction of each record of `data` (at most `limit`) and, for linear models, each
/// feature column's contribution, largest first.
fn explain_records(model_file: &Path, data: &Path, limit: usize) -> Outcome {
    if limit == 0 {
        return Err(unusable(anyhow::anyhow!("--limit must be at least 1")));
    }
    let file = ModelFile::read(model_file)?;
    let (model, schema, stats) = file.model()?;
    let table = Table::open(data)?;
    let examples = table.encode(&schema, &stats)?;
    let predictions = model.predict(examples.x.view());
    for (i, row) in examples.x.rows().into_iter().take(limit).enumerate() {
        let prediction = predictions.row(i);
        let class = prediction
            .iter()
            .enumerate()
            .fold(0, |b, (k, &v)| if v > prediction[b] { k } else { b });
        let shown = match model.kind {
            Architecture::Multinomial { .. } => format!(
                "class {} (p = {:.4})",
                file.classes.get(class).cloned().unwrap_or_default(),
                prediction[class]
            ),
            Architecture::Linear => format!("{:.4}", prediction[0]),
            _ => format!("p = {:.4}", prediction[0]),
        };
        outln!("record {} (line {}): {shown}", i + 1, i + 2);
        if let Some(e) = explain(&model, &schema, row, class) {
            outln!("  score {:.4} = bias {:.4}", e.score, e.bias);
            for (name, c) in e.ranked() {
                outln!("    {c:+.4}  {name}");
            }
        }
    }
    Ok(())
}
