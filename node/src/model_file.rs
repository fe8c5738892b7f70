//! The model file: a model version as a self-describing JSON file (its schema, standardization,
//! feature names and tensors). `treaty model get` writes one from a downloaded version
//! ([`ModelFile::new`]); `treaty model explain` reads one back ([`ModelFile::read`]) and
//! rebuilds the model from it ([`ModelFile::model`]). The demo and `treaty bench w1` build one
//! from their download in memory to score the final model (the demo also writes it out).

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::{ColumnStats, FeatureSchema, ModelHeader, ModelKind};
use treaty_proto::{enums, schema};

use crate::model::{Architecture, Model};

/// A downloaded model version cannot be written as a model file: the coordinator sent a header
/// without what the file needs. A failure of the coordinator, not of the operator's input.
#[derive(Debug, thiserror::Error)]
pub enum MalformedModel {
    #[error("the coordinator sent a model without its {0}")]
    Missing(&'static str),
    #[error("the coordinator sent a model that cannot be described: {0}")]
    Kind(#[from] treaty_proto::EnumError),
    #[error("the coordinator sent a model whose schema cannot be described: {0}")]
    Schema(#[from] treaty_proto::SchemaTomlError),
}

/// A model file cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a model file written by `treaty model get`: {source}")]
    NotAModelFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the model's schema is invalid: {0}")]
    Schema(String),
    #[error("unknown model kind `{0}`")]
    Kind(String),
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error(transparent)]
    Shape(#[from] treaty_proto::TensorError),
}

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
    /// The standardization of each numeric column.
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
    /// The file of a downloaded model version.
    pub fn new(header: &ModelHeader, tensors: &[NamedTensor]) -> Result<Self, MalformedModel> {
        let spec = header
            .spec
            .clone()
            .ok_or(MalformedModel::Missing("training spec"))?;
        let schema = spec
            .schema
            .clone()
            .ok_or(MalformedModel::Missing("schema"))?;
        let model: ModelKind = enums::specified(spec.model, || "the model's kind".into())?;
        Ok(ModelFile {
            job_id: header.job_id.clone(),
            model_version: header.model_version.clone(),
            round: header.round,
            model: model.as_str_name().to_owned(),
            hidden_units: spec.hidden_units,
            features: schema::encoded_names(&schema),
            classes: schema::classes(&schema)?,
            schema_toml: schema::to_toml(&schema)?,
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

    /// Reads a model file.
    pub fn read(path: &Path) -> Result<Self, ModelFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ModelFileError::NotAModelFile {
            path: path.to_owned(),
            source,
        })
    }

    /// The model and what it needs to encode records.
    pub fn model(&self) -> Result<(Model, FeatureSchema, Vec<ColumnStats>), ModelFileError> {
        let schema = schema::parse(&self.schema_toml)
            .map_err(|e| ModelFileError::Schema(e.to_string()))?
            .map_err(|p| ModelFileError::Schema(p.join("; ")))?;
        let unknown = || ModelFileError::Kind(self.model.clone());
        let kind = ModelKind::from_str_name(&self.model).ok_or_else(unknown)?;
        let classes =
            schema::classes(&schema).map_err(|e| ModelFileError::Schema(e.to_string()))?;
        let kind = Architecture::of(kind, classes.len(), self.hidden_units as usize)
            .ok_or_else(unknown)?;
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                ArrayD::from_shape_vec(IxDyn(&t.shape), t.values.clone())
                    .map(|v| NamedTensor::new(t.name.clone(), v))
                    .map_err(|e| ModelFileError::Tensor {
                        name: t.name.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
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
