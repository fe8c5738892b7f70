//! The model file: a model version as a self-describing JSON file (its schema, standardization,
//! feature names, how each column is encoded, the model's activations and tensors), as `treaty
//! model get` writes it and `treaty model explain`, the demo and the benchmarks read it. Its
//! reference, with how to score a record by hand, is docs/MODEL_FILE.md. Fields added since the
//! first files (`output`, `activation`, `encoding`) have defaults, so older files still read.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use treaty_proto::provenance::Manifest;
use treaty_proto::tensor::NamedTensor;
use treaty_proto::v1::{
    ColumnKind, ColumnSpec, ColumnStats, FeatureSchema, MissingRule, ModelHeader, ModelKind,
    Transform,
};
use treaty_proto::{enums, schema};

use crate::data::MAX_FEATURE;
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
    #[error(
        "the file says the model's {what} is `{said}`, but a {model} has {expected}; the file was changed or written by another program"
    )]
    Mismatch {
        what: &'static str,
        said: String,
        model: String,
        expected: &'static str,
    },
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
    /// What turns the score into the prediction: `sigmoid` (P(positive): logistic regression,
    /// MLP), `softmax` (class probabilities: multinomial) or `identity` (linear regression).
    /// Empty in files written before it was added.
    #[serde(default)]
    pub output: String,
    /// The MLP's hidden-layer activation (`relu`); absent for the other models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// How each schema column becomes encoded features, in order, with the numbers of this model
    /// version (bounds, transform, mean and standard deviation). Empty in files written before
    /// it was added; [`ModelFile::encoding_of`] gives it for any file.
    #[serde(default)]
    pub encoding: Vec<ColumnEncoding>,
    /// The coordinator's signed statement of where this version comes from (`treaty model
    /// get` adds it; `treaty model verify` checks it). Absent in files written before it was
    /// added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenanceFile>,
}

/// A model version's provenance as the coordinator signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceFile {
    /// The manifest (`treaty_proto::provenance::Manifest`), exactly as signed: JSON text.
    pub manifest: String,
    /// The signature scheme by its TLS name, e.g. `ECDSA_NISTP256_SHA256`.
    pub scheme: String,
    /// The signature, in hex (for ECDSA, ASN.1 DER).
    pub signature: String,
    /// The signing certificate, PEM.
    pub coordinator_certificate: String,
    /// The federation CA's certificate, PEM.
    pub ca_certificate: String,
}

/// A provenance that checks out: the manifest, who signed it, and the CA to compare with the
/// one the reader trusts.
#[derive(Debug)]
pub struct VerifiedProvenance {
    pub manifest: Manifest,
    /// The signing coordinator's identity.
    pub signed_by: String,
}

/// Why a model file's provenance does not check out.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(
        "the model file has no provenance: download it again with `treaty model get` from a coordinator of this version"
    )]
    Missing,
    #[error("the provenance's manifest is not one: {0}")]
    Manifest(String),
    #[error("the provenance's signature does not check out: {0}")]
    Signature(String),
    #[error("the provenance is not of this model: {0}")]
    Mismatch(String),
}

/// How one schema column is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnEncoding {
    /// The column's name in the CSV header.
    pub column: String,
    /// `numeric`, `categorical` or `boolean`.
    pub kind: String,
    /// The index of its first encoded feature (its place in `features` and in the weights).
    pub first_feature: usize,
    /// The names of its encoded features, in order.
    pub features: Vec<String>,
    /// The rule, in words and with this model's numbers.
    pub rule: String,
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
        let kind: ModelKind = enums::specified(spec.model, || "the model's kind".into())?;
        let (output, activation) = activations(kind);
        Ok(ModelFile {
            job_id: header.job_id.clone(),
            model_version: header.model_version.clone(),
            round: header.round,
            model: kind.as_str_name().to_owned(),
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
            output: output.to_owned(),
            activation: activation.map(str::to_owned),
            encoding: encoding(&schema, &spec.standardization),
            provenance: None,
        })
    }

    /// Checks the file's provenance against the federation CA the reader trusts (`trusted_ca`,
    /// DER): the file's CA is that CA, the manifest is signed by a coordinator's certificate it
    /// issued, and states this model — its job, version, round, kind, hidden units, the digests
    /// of its tensors, schema and standardisation — and everything else the file says (its
    /// features, classes, activations, encoding) is what those make.
    pub fn verify_provenance(
        &self,
        trusted_ca: &[u8],
    ) -> Result<VerifiedProvenance, ProvenanceError> {
        use treaty_proto::tls;
        let p = self.provenance.as_ref().ok_or(ProvenanceError::Missing)?;
        let certificate =
            tls::certificate_der(p.coordinator_certificate.as_bytes()).map_err(|e| {
                ProvenanceError::Signature(format!("the coordinator's certificate {e}"))
            })?;
        let ca = tls::certificate_der(p.ca_certificate.as_bytes())
            .map_err(|e| ProvenanceError::Signature(format!("the CA's certificate {e}")))?;
        if ca != trusted_ca {
            return Err(ProvenanceError::Signature(
                "it was signed under another federation CA than the one you trust".into(),
            ));
        }
        let signer =
            tls::verify_coordinator(&certificate, &ca).map_err(ProvenanceError::Signature)?;
        let signature = treaty_proto::hex::unhex(&p.signature)
            .ok_or_else(|| ProvenanceError::Signature("the signature is not hex".into()))?;
        tls::verify_signature(&certificate, &p.scheme, p.manifest.as_bytes(), &signature)
            .map_err(ProvenanceError::Signature)?;
        let manifest: Manifest = serde_json::from_str(&p.manifest)
            .map_err(|e| ProvenanceError::Manifest(e.to_string()))?;
        if manifest.format != treaty_proto::provenance::FORMAT {
            return Err(ProvenanceError::Manifest(format!(
                "format `{}`",
                manifest.format
            )));
        }
        let mismatch = |what: &str, stated: &str, here: &str| {
            ProvenanceError::Mismatch(format!(
                "the manifest states {what} {stated}, the file holds {here}"
            ))
        };
        if (manifest.job_id.as_str(), manifest.model_version.as_str())
            != (self.job_id.as_str(), self.model_version.as_str())
        {
            return Err(mismatch(
                "the version",
                &manifest.model_version,
                &self.model_version,
            ));
        }
        let digest = treaty_proto::provenance::digest(
            self.tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice(), t.values.as_slice())),
        );
        if digest != manifest.model_sha256 {
            return Err(mismatch(
                "tensors of SHA-256",
                &manifest.model_sha256,
                &format!("tensors of SHA-256 {digest}: the weights were changed"),
            ));
        }
        let schema = treaty_proto::hex::sha256_hex(self.schema_toml.as_bytes());
        if schema != manifest.schema_sha256 {
            return Err(mismatch(
                "a schema of SHA-256",
                &manifest.schema_sha256,
                &format!("one of {schema}"),
            ));
        }
        let standardization = treaty_proto::provenance::standardization_digest(
            self.standardization
                .iter()
                .map(|c| (c.name.as_str(), c.mean, c.std, c.count)),
        );
        if standardization != manifest.standardization_sha256 {
            return Err(mismatch(
                "a standardisation of SHA-256",
                &manifest.standardization_sha256,
                &format!("one of {standardization}: the means or deviations were changed"),
            ));
        }
        for (what, stated, here) in [
            (
                "the model kind",
                manifest.model_kind.clone(),
                self.model.clone(),
            ),
            ("round", manifest.round.to_string(), self.round.to_string()),
            (
                "hidden units",
                manifest.hidden_units.to_string(),
                self.hidden_units.to_string(),
            ),
        ] {
            if stated != here {
                return Err(mismatch(what, &stated, &here));
            }
        }
        // The rest of the file follows from what is signed: its schema, kind and
        // standardisation (and `model()` checks the activations against the kind).
        let (_, schema, stats) = self
            .model()
            .map_err(|e| ProvenanceError::Mismatch(e.to_string()))?;
        let derived = |what: &str| {
            ProvenanceError::Mismatch(format!(
                "the file's {what} is not what its signed schema and standardisation make"
            ))
        };
        if self.features != schema::encoded_names(&schema) {
            return Err(derived("feature names"));
        }
        if schema::classes(&schema).ok().as_ref() != Some(&self.classes) {
            return Err(derived("classes"));
        }
        if !self.encoding.is_empty() && self.encoding != encoding(&schema, &stats) {
            return Err(derived("encoding"));
        }
        Ok(VerifiedProvenance {
            manifest,
            signed_by: signer.to_string(),
        })
    }

    /// How each column of the file's schema is encoded: the file's own `encoding`, or, for a
    /// file written before it was added, the same description made from its schema and
    /// standardisation.
    pub fn encoding_of(&self) -> Result<Vec<ColumnEncoding>, ModelFileError> {
        if !self.encoding.is_empty() {
            return Ok(self.encoding.clone());
        }
        let (_, schema, stats) = self.model()?;
        Ok(encoding(&schema, &stats))
    }

    /// Reads a model file.
    pub fn read(path: &Path) -> Result<Self, ModelFileError> {
        use std::io::Read;
        let read = |source| ModelFileError::Read {
            path: path.to_owned(),
            source,
        };
        // At most 1 GiB: far above any model Treaty trains.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(1 << 30)
            .read_to_string(&mut text)
            .map_err(read)?;
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
        // What the file says of its activations must be what this model computes.
        let (output, activation) = activations(kind);
        if !self.output.is_empty() && self.output != output {
            return Err(ModelFileError::Mismatch {
                what: "output",
                said: self.output.clone(),
                model: self.model.clone(),
                expected: output,
            });
        }
        if let Some(said) = &self.activation
            && Some(said.as_str()) != activation
        {
            return Err(ModelFileError::Mismatch {
                what: "hidden activation",
                said: said.clone(),
                model: self.model.clone(),
                expected: activation.unwrap_or("no hidden layer"),
            });
        }
        let classes =
            schema::classes(&schema).map_err(|e| ModelFileError::Schema(e.to_string()))?;
        // A hidden layer of `hidden_units` takes features x hidden_units weights, which the file
        // must hold: no larger model is built from a file than the file itself.
        let values: u128 = self.tensors.iter().map(|t| t.values.len() as u128).sum();
        if u128::from(self.hidden_units) * self.features.len() as u128 > values {
            return Err(ModelFileError::Tensor {
                name: "hidden layer".into(),
                message: format!(
                    "{} hidden units over {} features need more weights than the file's {values}",
                    self.hidden_units,
                    self.features.len()
                ),
            });
        }
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

/// The output function of a model kind and the activation of its hidden layer, if any.
fn activations(kind: ModelKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ModelKind::MultinomialLogisticRegression => ("softmax", None),
        ModelKind::LinearRegression => ("identity", None),
        ModelKind::Mlp => ("sigmoid", Some("relu")),
        ModelKind::LogisticRegression | ModelKind::Unspecified => ("sigmoid", None),
    }
}

/// How each column of `schema` is encoded, with the standardisation `stats` (one per numeric
/// column, in order; none: mean 0, standard deviation 1), as `Table::encode` does it.
fn encoding(schema: &FeatureSchema, stats: &[ColumnStats]) -> Vec<ColumnEncoding> {
    let mut out = Vec::with_capacity(schema.columns.len());
    let mut first = 0;
    let mut numeric = 0;
    for c in &schema.columns {
        let kind = schema::column_kind(c).unwrap_or(ColumnKind::Unspecified);
        let missing = schema::missing_rule(c).unwrap_or(MissingRule::Reject);
        let (kind_name, features, rule) = match kind {
            ColumnKind::Categorical => {
                let mut names: Vec<String> =
                    c.values.iter().map(|v| format!("{}={v}", c.name)).collect();
                names.push(format!("{}=<other>", c.name));
                ("categorical", names, categorical_rule(c, first, missing))
            }
            ColumnKind::Boolean => (
                "boolean",
                vec![c.name.clone()],
                boolean_rule(first, missing),
            ),
            _ => {
                let (mean, std) = stats
                    .get(numeric)
                    .map(|s| (s.mean, if s.std > 0.0 { s.std } else { 1.0 }))
                    .unwrap_or((0.0, 1.0));
                numeric += 1;
                (
                    "numeric",
                    vec![c.name.clone()],
                    numeric_rule(c, first, missing, mean, std),
                )
            }
        };
        let width = features.len();
        out.push(ColumnEncoding {
            column: c.name.clone(),
            kind: kind_name.to_owned(),
            first_feature: first,
            features,
            rule,
        });
        first += width;
    }
    out
}

fn numeric_rule(c: &ColumnSpec, j: usize, missing: MissingRule, mean: f64, std: f64) -> String {
    let mut steps = Vec::new();
    if let (Some(lo), Some(hi)) = (c.lower, c.upper) {
        steps.push(format!("v = min(max(value, {lo}), {hi})"));
    } else {
        steps.push("v = value".to_owned());
    }
    let log1p = schema::transform(c) == Ok(Transform::Log1p);
    if log1p {
        steps.push("v = ln(1 + v)".to_owned());
    }
    steps.push(format!(
        "feature[{j}] = min(max((v - {mean}) / {std}, -{MAX_FEATURE}), {MAX_FEATURE})"
    ));
    let empty = match missing {
        MissingRule::Mean => format!("an empty cell: feature[{j}] = 0 (the mean)"),
        MissingRule::Zero => "an empty cell: value = 0".to_owned(),
        _ => "an empty cell: the record cannot be scored".to_owned(),
    };
    let mut rule = format!("{}; {empty}; a cell that is not a number", steps.join("; "));
    // Clamped at a lower bound of 0 or more, v is never negative before ln.
    let negative = log1p && !c.lower.is_some_and(|lo| lo >= 0.0);
    rule.push_str(if negative {
        ", or a negative v before ln: the record cannot be scored"
    } else {
        ": the record cannot be scored"
    });
    rule
}

fn categorical_rule(c: &ColumnSpec, j: usize, missing: MissingRule) -> String {
    let slots: Vec<String> = c
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("feature[{}] = 1 when the cell is {v:?}", j + i))
        .collect();
    let other = j + c.values.len();
    let empty = match missing {
        MissingRule::Other => format!("an empty cell: feature[{other}] = 1"),
        _ => "an empty cell: the record cannot be scored".to_owned(),
    };
    format!(
        "one-hot, the others 0: {}; feature[{other}] = 1 (<other>) for any other text; {empty}",
        slots.join(", ")
    )
}

fn boolean_rule(j: usize, missing: MissingRule) -> String {
    let empty = match missing {
        MissingRule::Zero => format!("an empty cell: feature[{j}] = 0"),
        _ => "an empty cell: the record cannot be scored".to_owned(),
    };
    format!(
        "feature[{j}] = 1 for 1, true, yes, t or y, 0 for 0, false, no, f or n (any case); {empty}; any other text: the record cannot be scored"
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use ndarray::ArrayD;
    use treaty_proto::v1::TrainingSpec;

    use super::*;
    use crate::data::Table;

    const SCHEMA: &str = r#"
[label]
name = "seized"
kind = "binary"

[[column]]
name = "value"
kind = "numeric"
lower = 0.0
upper = 1e6
transform = "log1p"
missing = "mean"

[[column]]
name = "weight"
kind = "numeric"
lower = 0.0
upper = 100.0
missing = "zero"

[[column]]
name = "mode"
kind = "categorical"
values = ["sea", "air"]
missing = "other"

[[column]]
name = "known"
kind = "boolean"
missing = "zero"
"#;

    fn schema(text: &str) -> FeatureSchema {
        schema::parse(text).unwrap().unwrap()
    }

    fn tensor(name: &str, shape: &[usize], values: &[f64]) -> NamedTensor {
        NamedTensor::new(
            name,
            ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap(),
        )
    }

    fn file(
        model: ModelKind,
        hidden: u32,
        schema: FeatureSchema,
        stats: Vec<ColumnStats>,
        tensors: &[NamedTensor],
    ) -> ModelFile {
        let header = ModelHeader {
            job_id: "job-000001".into(),
            model_version: "job-000001/r20".into(),
            round: 20,
            spec: Some(TrainingSpec {
                model: model as i32,
                hidden_units: hidden,
                schema: Some(schema),
                standardization: stats,
                ..Default::default()
            }),
            tensors: Vec::new(),
        };
        // Through JSON, as `treaty model get` writes it and `treaty model explain` reads it.
        let text = serde_json::to_string(&ModelFile::new(&header, tensors).unwrap()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The model's predictions for the records of `csv`, through the file.
    fn predict(file: &ModelFile, csv: &str) -> ndarray::Array2<f64> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(csv.as_bytes()).unwrap();
        let (model, schema, stats) = file.model().unwrap();
        let examples = Table::open(f.path())
            .unwrap()
            .encode(&schema, &stats)
            .unwrap();
        model.predict(examples.x.view())
    }

    fn sigmoid(z: f64) -> f64 {
        1.0 / (1.0 + (-z).exp())
    }

    fn stats(name: &str, mean: f64, std: f64) -> ColumnStats {
        ColumnStats {
            name: name.into(),
            mean,
            std,
            count: 1000.0,
        }
    }

    #[test]
    fn a_record_scored_by_hand_by_the_documented_rules_matches_the_model() {
        let weights = [0.8, -0.4, 0.3, -0.2, 0.5, 1.1];
        let file = file(
            ModelKind::LogisticRegression,
            0,
            schema(SCHEMA),
            vec![stats("value", 7.0, 2.0), stats("weight", 50.0, 25.0)],
            &[
                tensor("weights", &[6], &weights),
                tensor("bias", &[], &[-0.7]),
            ],
        );
        assert_eq!(
            file.features,
            [
                "value",
                "weight",
                "mode=sea",
                "mode=air",
                "mode=<other>",
                "known"
            ]
        );
        assert_eq!(file.output, "sigmoid");
        assert_eq!(file.activation, None);
        let rules: Vec<&str> = file.encoding.iter().map(|e| e.rule.as_str()).collect();
        for (column, said) in [
            (
                0,
                "v = min(max(value, 0), 1000000); v = ln(1 + v); feature[0] = min(max((v - 7) / 2, -1000000), 1000000); an empty cell: feature[0] = 0 (the mean)",
            ),
            (
                1,
                "v = min(max(value, 0), 100); feature[1] = min(max((v - 50) / 25, -1000000), 1000000); an empty cell: value = 0",
            ),
            (
                2,
                "feature[2] = 1 when the cell is \"sea\", feature[3] = 1 when the cell is \"air\"; feature[4] = 1 (<other>) for any other text; an empty cell: feature[4] = 1",
            ),
            (3, "feature[5] = 1 for 1, true, yes"),
        ] {
            assert!(rules[column].contains(said), "{}", rules[column]);
        }
        assert_eq!(
            file.encoding
                .iter()
                .map(|e| e.first_feature)
                .collect::<Vec<_>>(),
            [0, 1, 2, 5]
        );

        // By hand, following docs/MODEL_FILE.md.
        // Record 1: value 2,000,000 is clamped to 10^6, then ln(1 + 10^6), then standardised;
        // weight empty reads as 0 (rule `zero`), standardised (0 - 50) / 25 = -2; mode `air`;
        // known `yes`.
        let x1 = [
            ((1e6f64).ln_1p() - 7.0) / 2.0,
            (0.0 - 50.0) / 25.0,
            0.0,
            1.0,
            0.0,
            1.0,
        ];
        // Record 2: value empty (rule `mean`: feature 0); weight 150 clamped to 100, (100 - 50)
        // / 25 = 2; mode `rail` is <other>; known empty (rule `zero`).
        let x2 = [0.0, 2.0, 0.0, 0.0, 1.0, 0.0];
        let score = |x: &[f64; 6]| -0.7 + x.iter().zip(weights).map(|(x, w)| x * w).sum::<f64>();
        assert!((score(&x2) - -1.0).abs() < 1e-12);
        let p = predict(
            &file,
            "value,weight,mode,known,seized\n2000000,,air,yes,1\n,150,rail,,0\n",
        );
        assert!((p[[0, 0]] - sigmoid(score(&x1))).abs() < 1e-12, "{p}");
        assert!((p[[1, 0]] - 0.2689414213699951).abs() < 1e-12, "{p}");
    }

    #[test]
    fn mlp_multinomial_and_linear_scores_by_hand() {
        let two = "[[column]]\nname = \"a\"\nkind = \"numeric\"\n[[column]]\nname = \"b\"\nkind = \"numeric\"\n";
        let binary = schema(&format!("[label]\nname = \"y\"\nkind = \"binary\"\n{two}"));
        let csv = "a,b,y\n1.5,-2,1\n";

        // MLP: hidden = relu(x · hidden_weights + hidden_bias), p = sigmoid(hidden · weights +
        // bias); hidden_weights is [inputs, hidden], row-major.
        let mlp = file(
            ModelKind::Mlp,
            2,
            binary.clone(),
            Vec::new(),
            &[
                tensor("hidden_weights", &[2, 2], &[0.5, -1.0, 0.25, 0.75]),
                tensor("hidden_bias", &[2], &[0.1, 0.2]),
                tensor("weights", &[2], &[1.2, -0.6]),
                tensor("bias", &[], &[0.05]),
            ],
        );
        assert_eq!(mlp.activation.as_deref(), Some("relu"));
        assert_eq!(mlp.output, "sigmoid");
        // h0 = 1.5 * 0.5 + -2 * 0.25 + 0.1 = 0.35; h1 = 1.5 * -1 + -2 * 0.75 + 0.2 = -2.8 -> 0;
        // score = 0.35 * 1.2 + 0 * -0.6 + 0.05 = 0.47.
        let p = predict(&mlp, csv);
        assert!((p[[0, 0]] - sigmoid(0.47)).abs() < 1e-12, "{p}");

        // Multinomial: logit_c = bias[c] + sum_j x_j weights[j, c]; softmax.
        let categorical = schema(&format!(
            "[label]\nname = \"y\"\nkind = \"categorical\"\nclasses = [\"p\", \"q\", \"r\"]\n{two}"
        ));
        let multinomial = file(
            ModelKind::MultinomialLogisticRegression,
            0,
            categorical,
            Vec::new(),
            &[
                tensor("weights", &[2, 3], &[0.1, 0.2, 0.3, 0.4, -0.5, 0.6]),
                tensor("bias", &[3], &[0.0, 0.1, -0.1]),
            ],
        );
        assert_eq!(multinomial.output, "softmax");
        // logits: 0 + 1*0.1 + 2*0.4 = 0.9; 0.1 + 0.2 - 1.0 = -0.7; -0.1 + 0.3 + 1.2 = 1.4.
        let logits = [0.9f64, -0.7, 1.4];
        let total: f64 = logits.iter().map(|z| z.exp()).sum();
        let p = predict(&multinomial, "a,b,y\n1,2,q\n");
        for (c, z) in logits.iter().enumerate() {
            assert!((p[[0, c]] - z.exp() / total).abs() < 1e-12, "{p}");
        }

        // Linear regression: the score itself.
        let numeric = schema(&format!("[label]\nname = \"y\"\nkind = \"numeric\"\n{two}"));
        let linear = file(
            ModelKind::LinearRegression,
            0,
            numeric,
            Vec::new(),
            &[
                tensor("weights", &[2], &[2.0, 0.5]),
                tensor("bias", &[], &[-1.0]),
            ],
        );
        assert_eq!(linear.output, "identity");
        // -1 + 1.5 * 2 + -2 * 0.5 = 1.
        let p = predict(&linear, "a,b,y\n1.5,-2,3\n");
        assert!((p[[0, 0]] - 1.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn a_file_written_before_the_descriptions_still_reads_and_a_foreign_activation_is_refused() {
        let new = file(
            ModelKind::Mlp,
            1,
            schema(SCHEMA),
            vec![stats("value", 7.0, 2.0), stats("weight", 50.0, 25.0)],
            &[
                tensor("hidden_weights", &[6, 1], &[0.0; 6]),
                tensor("hidden_bias", &[1], &[0.0]),
                tensor("weights", &[1], &[0.0]),
                tensor("bias", &[], &[0.0]),
            ],
        );
        let mut json: serde_json::Value = serde_json::to_value(&new).unwrap();
        let object = json.as_object_mut().unwrap();
        for added in ["output", "activation", "encoding"] {
            assert!(object.remove(added).is_some(), "{added}");
        }
        let old: ModelFile = serde_json::from_value(json.clone()).unwrap();
        assert!(old.model().is_ok());
        assert_eq!(old.encoding_of().unwrap(), new.encoding);

        json["activation"] = "tanh".into();
        let foreign: ModelFile = serde_json::from_value(json).unwrap();
        let e = foreign.model().unwrap_err().to_string();
        assert!(e.contains("`tanh`") && e.contains("relu"), "{e}");
    }
}
