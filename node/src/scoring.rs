//! Risk scoring at the agency: a model file's prediction for new records (declarations), each
//! with the contributions that explain it, computed on the agency's own machine — in batch
//! (`treaty score`) or one record at a time (`treaty serve`). Both encode a record as training
//! did (the model file's schema and standardisation, `Table`'s encoding) and explain it as
//! `treaty model explain` does, so the three give the same numbers.
//!
//! A model is used only once its provenance checks out against the federation CA the agency
//! trusts — a file without one, or whose provenance does not check out, is refused — unless
//! its user asks to score unverified, and every score then says so. Input without one of the
//! schema's columns is refused, naming them.

use std::path::Path;

use ndarray::ArrayView1;
use treaty_proto::v1::{ColumnStats, FeatureSchema};

use crate::data::Table;
use crate::error::DataError;
use crate::explain::explain;
use crate::model::{Architecture, Model};
use crate::model_file::{ModelFile, ModelFileError, ProvenanceError, VerifiedProvenance};

/// Why a model cannot score.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error(transparent)]
    Model(#[from] ModelFileError),
    /// No CA was given to check the model's provenance against, and scoring unverified was
    /// not asked for.
    #[error(
        "model {0}: give --ca with the federation CA you trust, so that its provenance is checked before any record is scored (or --unverified to score with a model whose origin nobody checked; every score then says so)"
    )]
    Unchecked(String),
    #[error("model {version}: its provenance does not check out, so it scores nothing: {error}")]
    Provenance {
        version: String,
        error: ProvenanceError,
    },
    /// The input lacks columns the model reads.
    #[error(
        "the model's schema does not match the input: {source_name} has no column {missing} (it has: {available})"
    )]
    Mismatch {
        source_name: String,
        missing: String,
        available: String,
    },
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Where the model's provenance stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Provenance {
    /// Checked against the CA the agency trusts; signed by this coordinator.
    Verified { signed_by: String },
    /// Not checked, as asked (`--unverified`): the model's origin is unknown.
    Unverified,
}

impl Provenance {
    /// How it is shown beside each score.
    pub fn describe(&self) -> String {
        match self {
            Provenance::Verified { signed_by } => format!("provenance verified ({signed_by})"),
            Provenance::Unverified => "PROVENANCE NOT VERIFIED".to_owned(),
        }
    }
}

/// One record's score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// The prediction: P(positive) for a binary model, the predicted class's probability for a
    /// multinomial one, the value for linear regression.
    pub prediction: f64,
    /// A multinomial model's predicted class (empty otherwise).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub class: String,
    /// A linear model's score (log-odds, the value, the class's logit) and bias; absent for an
    /// MLP, which is not explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<f64>,
    /// The columns that moved the score most, largest in magnitude first.
    pub contributions: Vec<Contribution>,
}

/// A column's contribution to a score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Contribution {
    pub column: String,
    pub value: f64,
}

/// A model ready to score.
#[derive(Debug)]
pub struct Scorer {
    pub file: ModelFile,
    model: Model,
    schema: FeatureSchema,
    stats: Vec<ColumnStats>,
    pub provenance: Provenance,
}

impl Scorer {
    /// Reads a model file. With `ca` (DER), the file's provenance must be there and check out
    /// against it; without, only when `unverified` is asked for is the model used at all.
    pub fn open(path: &Path, ca: Option<&[u8]>, unverified: bool) -> Result<Self, ScoringError> {
        Scorer::new(ModelFile::read(path)?, ca, unverified)
    }

    /// As [`Scorer::open`], for a model file already read.
    pub fn new(file: ModelFile, ca: Option<&[u8]>, unverified: bool) -> Result<Self, ScoringError> {
        let provenance = match ca {
            Some(ca) => match file.verify_provenance(ca) {
                Ok(VerifiedProvenance { signed_by, .. }) => Provenance::Verified { signed_by },
                Err(error) => {
                    return Err(ScoringError::Provenance {
                        version: file.model_version.clone(),
                        error,
                    });
                }
            },
            None if unverified => Provenance::Unverified,
            None => return Err(ScoringError::Unchecked(file.model_version.clone())),
        };
        let (model, schema, stats) = file.model()?;
        Ok(Scorer {
            file,
            model,
            schema,
            stats,
            provenance,
        })
    }

    /// The schema's columns, in order: what a record must give.
    pub fn columns(&self) -> Vec<&str> {
        self.schema
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Checks that `table` has every column the model reads; names every one missing.
    fn check(&self, table: &Table) -> Result<(), ScoringError> {
        let missing: Vec<String> = self
            .columns()
            .into_iter()
            .filter(|c| !table.columns.iter().any(|t| t == c))
            .map(|c| format!("`{c}`"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ScoringError::Mismatch {
            source_name: format!("`{}`", table.path.display()),
            missing: missing.join(", "),
            available: table.columns.join(", "),
        })
    }

    /// Scores every record of `table`, each with its `top` largest contributions (0: all).
    pub fn score_table(&self, table: &Table, top: usize) -> Result<Vec<Score>, ScoringError> {
        self.check(table)?;
        let x = self.table_features(table)?;
        let predictions = self.model.predict(x.view());
        Ok(x.rows()
            .into_iter()
            .zip(predictions.rows())
            .map(|(row, prediction)| self.score_of(row, prediction, top))
            .collect())
    }

    /// Scores one record given as (column, value) pairs; columns the model does not read are
    /// ignored.
    pub fn score_record(&self, fields: &[(&str, &str)], top: usize) -> Result<Score, ScoringError> {
        let table = Table::from_record(Path::new("the request"), fields)?;
        let mut scores = self.score_table(&table, top)?;
        scores.pop().ok_or(ScoringError::Data(DataError::Empty {
            path: table.path.clone(),
        }))
    }

    fn table_features(&self, table: &Table) -> Result<ndarray::Array2<f64>, ScoringError> {
        Ok(table.encode_features(&self.schema, &self.stats)?)
    }

    fn score_of(
        &self,
        row: ArrayView1<'_, f64>,
        prediction: ArrayView1<'_, f64>,
        top: usize,
    ) -> Score {
        let class = prediction
            .iter()
            .enumerate()
            .fold(0, |b, (k, &v)| if v > prediction[b] { k } else { b });
        let explanation = explain(&self.model, &self.schema, row, class);
        let mut contributions: Vec<Contribution> = explanation
            .as_ref()
            .map(|e| {
                e.ranked()
                    .into_iter()
                    .map(|(column, value)| Contribution {
                        column: column.to_owned(),
                        value,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if top > 0 {
            contributions.truncate(top);
        }
        let (prediction, class) = match self.model.kind {
            Architecture::Multinomial { .. } => (
                prediction[class],
                self.file.classes.get(class).cloned().unwrap_or_default(),
            ),
            _ => (prediction[0], String::new()),
        };
        Score {
            prediction,
            class,
            score: explanation.as_ref().map(|e| e.score),
            bias: explanation.as_ref().map(|e| e.bias),
            contributions,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use treaty_proto::v1::{ModelHeader, ModelKind, TrainingSpec};

    /// A logistic model of a numeric and a categorical column, with known weights.
    fn file() -> ModelFile {
        let schema = "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"value\"\nkind = \"numeric\"\n[[column]]\nname = \"mode\"\nkind = \"categorical\"\nvalues = [\"sea\", \"air\"]\n";
        let schema = treaty_proto::schema::parse(schema).unwrap().unwrap();
        let header = ModelHeader {
            job_id: "job-000001".into(),
            model_version: "job-000001/r1".into(),
            round: 1,
            spec: Some(TrainingSpec {
                model: ModelKind::LogisticRegression as i32,
                schema: Some(schema),
                standardization: vec![ColumnStats {
                    name: "value".into(),
                    mean: 10.0,
                    std: 2.0,
                    count: 0.0,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let tensors = vec![
            treaty_proto::tensor::NamedTensor::new(
                "weights",
                ndarray::array![2.0, 0.5, -1.0, 3.0].into_dyn(),
            ),
            treaty_proto::tensor::NamedTensor::new("bias", ndarray::arr0(-0.25).into_dyn()),
        ];
        ModelFile::new(&header, &tensors).unwrap()
    }

    #[test]
    fn a_record_scores_by_the_closed_form() {
        let scorer = Scorer::new(file(), None, true).unwrap();
        assert_eq!(scorer.provenance, Provenance::Unverified);
        // value 13 standardises to 1.5: 2.0 * 1.5 = 3; air: -1; bias -0.25.
        let s = scorer
            .score_record(&[("mode", " air "), ("value", "13"), ("extra", "x")], 0)
            .unwrap();
        assert_eq!(s.score, Some(1.75));
        assert_eq!(s.bias, Some(-0.25));
        assert!((s.prediction - 1.0 / (1.0 + (-1.75f64).exp())).abs() < 1e-15);
        assert_eq!(
            s.contributions,
            vec![
                Contribution {
                    column: "value".into(),
                    value: 3.0
                },
                Contribution {
                    column: "mode".into(),
                    value: -1.0
                }
            ]
        );
        let top = scorer
            .score_record(&[("mode", "rail"), ("value", "10")], 1)
            .unwrap();
        // An unknown mode is `other` (3.0); the value is the mean (0).
        assert_eq!(top.score, Some(2.75));
        assert_eq!(top.contributions.len(), 1);
    }

    #[test]
    fn input_that_does_not_fit_is_named() {
        let scorer = Scorer::new(file(), None, true).unwrap();
        let e = scorer.score_record(&[("value", "1")], 0).unwrap_err();
        assert!(e.to_string().contains("has no column `mode`"), "{e}");
        let e = scorer
            .score_record(&[("value", "many"), ("mode", "sea")], 0)
            .unwrap_err();
        assert!(e.to_string().contains("column `value`"), "{e}");
        let e = scorer
            .score_record(&[("value", "1"), ("value", "2"), ("mode", "sea")], 0)
            .unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn no_model_scores_unchecked_unless_asked_and_a_missing_provenance_fails() {
        // Without a CA and without --unverified: refused, saying what to give.
        let e = Scorer::new(file(), None, false).unwrap_err();
        assert!(e.to_string().contains("give --ca"), "{e}");
        // With a CA, a file without a provenance (stripped, say) is refused, whatever else.
        let e = Scorer::new(file(), Some(b"a CA"), true).unwrap_err();
        assert!(
            matches!(
                e,
                ScoringError::Provenance {
                    error: ProvenanceError::Missing,
                    ..
                }
            ),
            "{e}"
        );
        // A provenance that does not check out.
        let mut f = file();
        f.provenance = Some(crate::model_file::ProvenanceFile {
            manifest: "{}".into(),
            scheme: "ECDSA_NISTP256_SHA256".into(),
            signature: "00".into(),
            coordinator_certificate: String::new(),
            ca_certificate: String::new(),
        });
        let e = Scorer::new(f, Some(b"not a certificate"), false).unwrap_err();
        assert!(matches!(e, ScoringError::Provenance { .. }), "{e}");
    }
}
