//! A final model scored on test splits the harness holds: the demo and the benchmarks made the
//! data, so they may look at all of it (no agency's node ever does this).

use std::path::PathBuf;

use anyhow::Context;
use treaty_node::Table;

use treaty_node::{Model, ModelFile};
use treaty_proto::v1::{ColumnStats, FeatureSchema};

/// A binary classifier's scores on the union of test splits.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation {
    /// How many records were scored.
    pub records: usize,
    /// The share of records whose score is on the side of 0.5 their label is.
    pub accuracy: f64,
    /// The ROC AUC of the scores.
    pub auc: f64,
}

/// Scores every record of `tests` (CSV files of the model's schema) with the model of `file`.
pub fn binary(file: &ModelFile, tests: &[PathBuf]) -> anyhow::Result<Evaluation> {
    let (model, schema, stats) = file.model()?;
    binary_model(&model, &schema, &stats, tests)
}

/// Scores every record of `tests` with `model`, encoded by `schema` and standardized by
/// `stats`.
pub fn binary_model(
    model: &Model,
    schema: &FeatureSchema,
    stats: &[ColumnStats],
    tests: &[PathBuf],
) -> anyhow::Result<Evaluation> {
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for test in tests {
        let examples = Table::open(test)?.encode(schema, stats)?;
        scores.extend(model.predict(examples.x.view()).column(0).iter().copied());
        labels.extend(examples.y.iter().copied());
    }
    let auc = treaty_node::roc_auc(
        ndarray::ArrayView1::from(&scores),
        ndarray::ArrayView1::from(&labels),
    )
    .context("the test splits hold one class only")?;
    let correct = scores
        .iter()
        .zip(&labels)
        .filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5))
        .count();
    Ok(Evaluation {
        records: scores.len(),
        accuracy: correct as f64 / scores.len().max(1) as f64,
        auc,
    })
}
