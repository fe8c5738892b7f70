//! `treaty score` (agencies): a model file's risk score for every record of a CSV file — new
//! declarations, say — each with the columns that moved it most, as CSV or JSON, computed on
//! the agency's own machine. The model is used only once its provenance checks out against the
//! federation CA given (or, asked for with --unverified, marked as not verified); input that
//! lacks the model's columns is refused, naming them.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use treaty_devkit::{errln, out, outln};
use treaty_node::Table;
use treaty_node::scoring::{Score, Scorer};

use super::{Outcome, unusable};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A model file written by `treaty model get`.
    #[arg(long)]
    model: PathBuf,
    /// The records to score (CSV with a header holding the schema's columns; a label column
    /// is not needed).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    trust: Trust,
    /// The contributions given per record, largest first (0: every column's).
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Where to write the scores (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What a model's provenance is checked against before it scores (`treaty score`, `treaty
/// serve`).
#[derive(Debug, Args)]
pub struct Trust {
    /// The federation CA's certificate (PEM) you trust: the model file's provenance must check
    /// out against it (a file without one is refused) before anything is scored.
    #[arg(long, required_unless_present = "unverified")]
    ca: Option<PathBuf>,
    /// The federation's revocation list (PEM) you trust: the coordinator certificate that
    /// signed the provenance must not be on it.
    #[arg(long, requires = "ca")]
    crl: Option<PathBuf>,
    /// Score with a model whose origin nobody checked (no --ca): every score then says
    /// `PROVENANCE NOT VERIFIED`.
    #[arg(long, conflicts_with = "ca")]
    unverified: bool,
}

impl Trust {
    /// The model file at `model`, ready to score once its provenance checks out.
    pub fn open(&self, model: &std::path::Path) -> Result<Scorer, super::CliError> {
        let ca = self.ca.as_deref().map(super::trusted_ca).transpose()?;
        let scorer = Scorer::open(model, ca.as_deref(), self.unverified)?;
        if let (Some(crl), Some(p)) = (&self.crl, &scorer.file.provenance) {
            let der = treaty_proto::tls::certificate_der(p.coordinator_certificate.as_bytes())
                .map_err(|e| unusable(anyhow::anyhow!("{e}")))?;
            super::not_revoked(&der, crl)?;
        }
        Ok(scorer)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

pub fn run(a: ScoreArgs) -> Outcome {
    let scorer = a.trust.open(&a.model)?;
    let table = Table::open(&a.data)?;
    let scores = scorer.score_table(&table, a.top)?;
    errln!(
        "model {}: {}; {} record(s) of `{}` scored",
        scorer.file.model_version,
        scorer.provenance.describe(),
        scores.len(),
        a.data.display()
    );
    let text = match a.format {
        Format::Csv => csv_text(&scorer, &table, &scores, a.top)?,
        Format::Json => {
            let records: Vec<serde_json::Value> = scores
                .iter()
                .enumerate()
                .map(|(row, s)| {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["line"] = table.line(row).into();
                    v
                })
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({
                "model_version": scorer.file.model_version,
                "provenance": scorer.provenance.describe(),
                "records": records,
            }))? + "\n"
        }
    };
    match &a.out {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| unusable(anyhow::anyhow!("cannot write `{}`: {e}", path.display())))?;
            outln!("{}", path.display());
        }
        None => out!("{text}"),
    }
    Ok(())
}

/// The scores as CSV: one row per record, its line in the input, the prediction, and the top
/// contributions as column/value pairs.
fn csv_text(
    scorer: &Scorer,
    table: &Table,
    scores: &[Score],
    top: usize,
) -> Result<String, super::CliError> {
    let width = match top {
        0 => scorer.columns().len(),
        n => n,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "line",
        "model_version",
        "prediction",
        "class",
        "score",
        "bias",
    ]
    .map(str::to_owned)
    .to_vec();
    for i in 1..=width {
        header.push(format!("column_{i}"));
        header.push(format!("contribution_{i}"));
    }
    w.write_record(&header)?;
    let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for (row, s) in scores.iter().enumerate() {
        let mut record = vec![
            table.line(row).to_string(),
            scorer.file.model_version.clone(),
            s.prediction.to_string(),
            s.class.clone(),
            number(s.score),
            number(s.bias),
        ];
        for i in 0..width {
            match s.contributions.get(i) {
                Some(c) => {
                    record.push(c.column.clone());
                    record.push(c.value.to_string());
                }
                None => record.extend([String::new(), String::new()]),
            }
        }
        w.write_record(&record)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(String::from_utf8(bytes)?)
}
