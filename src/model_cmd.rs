//! `treaty model get` and `treaty model explain`: a model version as a self-describing JSON file
//! (its schema, standardisation, feature names and tensors), and predictions with each feature's
//! contribution for the records of a CSV file.

use crate::output::outln;
use std::path::Path;

use anyhow::{Context, bail};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use treaty_node::Table;
use treaty_node::explain;
use treaty_node::{Architecture, Model};
use treaty_proto::schema;
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::{ColumnStats, ModelHeader, ModelKind};

/// A model version, as written by `treaty model get`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub job_id: String,
    pub model_version: String,
    pub round: u32,
    /// The model kind, e.g. `MODEL_KIND_LOGISTIC_REGRESSION`.
    pub model: String,
    pub hidden_units: u32,
    /// The encoded feature names, in the order of the weights.
    pub features: Vec<String>,
    /// The class names (classification).
    pub classes: Vec<String>,
    /// The federation's feature schema, as TOML.
    pub schema_toml: String,
    /// The standardisation of each numeric column.
    pub standardization: Vec<Standardization>,
    pub tensors: Vec<TensorFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardization {
    pub name: String,
    pub mean: f64,
    pub std: f64,
    pub count: f64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorFile {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl ModelFile {
    pub fn new(header: &ModelHeader, tensors: &[NamedTensor]) -> anyhow::Result<Self> {
        let spec = header
            .spec
            .clone()
            .context("the model has no training spec")?;
        let schema = spec.schema.clone().context("the model has no schema")?;
        Ok(ModelFile {
            job_id: header.job_id.clone(),
            model_version: header.model_version.clone(),
            round: header.round,
            model: ModelKind::try_from(spec.model)
                .unwrap_or(ModelKind::Unspecified)
                .as_str_name()
                .to_owned(),
            hidden_units: spec.hidden_units,
            features: schema::encoded_names(&schema),
            classes: schema::classes(&schema),
            schema_toml: schema::to_toml(&schema),
            standardization: spec
                .standardization
                .iter()
                .map(|s| Standardization {
                    name: s.name.clone(),
                    mean: s.mean,
                    std: s.std,
                    count: s.count,
                })
                .collect(),
            tensors: tensors
                .iter()
                .map(|t| TensorFile {
                    name: t.name.clone(),
                    shape: t.values.shape().to_vec(),
                    values: t.values.iter().copied().collect(),
                })
                .collect(),
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "`{}` is not a model file written by `treaty model get`",
                path.display()
            )
        })
    }

    /// The model and what it needs to encode records.
    pub fn model(
        &self,
    ) -> anyhow::Result<(Model, treaty_proto::v1::FeatureSchema, Vec<ColumnStats>)> {
        let schema = schema::parse(&self.schema_toml)
            .map_err(anyhow::Error::msg)?
            .map_err(|p| anyhow::anyhow!("the model's schema is invalid: {}", p.join("; ")))?;
        let kind = ModelKind::from_str_name(&self.model).context("unknown model kind")?;
        let kind = Architecture::of(
            kind,
            schema::classes(&schema).len(),
            self.hidden_units as usize,
        )
        .context("unknown model kind")?;
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                ArrayD::from_shape_vec(IxDyn(&t.shape), t.values.clone())
                    .map(|v| NamedTensor::new(t.name.clone(), v))
                    .map_err(|e| anyhow::anyhow!("tensor `{}`: {e}", t.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let model = Model::from_tensors(kind, self.features.len(), &tensors)?;
        let stats = self
            .standardization
            .iter()
            .map(|s| ColumnStats {
                name: s.name.clone(),
                mean: s.mean,
                std: s.std,
                count: s.count,
            })
            .collect();
        Ok((model, schema, stats))
    }
}

/// Prints the prediction of each record of `data` (at most `limit`) and, for linear models, each
/// feature column's contribution, largest first.
pub fn explain_records(model_file: &Path, data: &Path, limit: usize) -> anyhow::Result<()> {
    let file = ModelFile::read(model_file)?;
    let (model, schema, stats) = file.model()?;
    let table = Table::open(data)?;
    let examples = table.encode(&schema, &stats)?;
    let predictions = model.predict(examples.x.view());
    if limit == 0 {
        bail!("--limit must be at least 1");
    }
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
            let mut parts = e.contributions.clone();
            parts.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
            outln!("  score {:.4} = bias {:.4}", e.score, e.bias);
            for (name, c) in parts.iter().filter(|(_, c)| *c != 0.0) {
                outln!("    {c:+.4}  {name}");
            }
        }
    }
    Ok(())
}
