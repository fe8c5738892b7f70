//! Carrying out one task on the agency's own data: encode the records by the job's schema,
//! then train, compute column statistics or answer a query. CPU work runs on a blocking thread,
//! off the async runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use treaty_proto::schema;
use treaty_proto::tensor::{Assembler, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    ColumnStats, DownloadModelRequest, FeatureSchema, ModelKind, QuerySpec, TrainingSpec,
    model_part, task,
};

use treaty_policies::privacy::{self, Release, zcdp};
use treaty_proto::v1::{DpMode, Evaluation, PrivacySpec, Transform};

use crate::analytics::{self, QueryPlan};
use crate::data::{Private, Table};
use crate::metrics;
use crate::model::{Kind, Model};
use crate::noise::GaussianNoise;
use crate::train::{DpSgd, Sampling, Sgd, train_dp};

/// Why a node declines a task: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a task produced, ready to release.
#[derive(Debug)]
pub struct Output {
    pub num_examples: u64,
    pub metrics: HashMap<String, f64>,
    pub tensors: Vec<NamedTensor>,
    /// Under DP: the noisy evaluation of the global model on the test split.
    pub evaluation: Option<Evaluation>,
}

/// What a task will release, decided before it touches the data: the mechanism for the ledger,
/// and the noise the computation must add.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The mechanisms of everything the task releases.
    pub releases: Vec<Release>,
    /// The Laplace scale of the noisy evaluation of a training round, when it has a test split.
    evaluation: Option<f64>,
    dp: Option<DpSgd>,
    statistics_noise: Option<(GaussianNoise, Vec<f64>)>,
    query: Option<QueryPlan>,
}

/// The refusal of a task that would release values without differential privacy.
fn not_private(what: &str) -> Refusal {
    Refusal::new(
        "DP_REQUIRED",
        format!(
            "the {what} has no privacy spec, and nothing leaves this node without differential privacy"
        ),
    )
}

/// The most DP steps a node takes in one round: a task asking for more (a tiny sampling rate,
/// huge epochs) would hold the node's cores for ever.
const MAX_STEPS_PER_ROUND: u64 = 1_000_000;

/// The default epsilon a node spends per round on evaluating the global model under DP.
const DEFAULT_EVALUATION_EPSILON: f64 = 0.05;

/// How many counts a training round's evaluation releases.
fn evaluation_width(spec: &TrainingSpec) -> usize {
    let schema = spec.schema.clone().unwrap_or_default();
    match ModelKind::try_from(spec.model).unwrap_or(ModelKind::Unspecified) {
        ModelKind::MultinomialLogisticRegression => schema::classes(&schema).len().pow(2),
        ModelKind::LinearRegression => treaty_proto::evaluation::BINS,
        _ => 2 * treaty_proto::evaluation::BINS,
    }
}

/// The default zCDP rho of a statistics round under DP.
const DEFAULT_STATISTICS_RHO: f64 = 0.005;

/// Encoded examples of one table for one schema and standardisation.
type Encoded = Result<Arc<Private>, Refusal>;

/// The agency's data, with the encodings of recent jobs kept in memory.
#[derive(Debug)]
pub struct Worker {
    pub train: Arc<Table>,
    pub test: Option<Arc<Table>>,
    /// The number of training records the agency declares public in its configuration, if it
    /// does: then it, not the coordinator's estimate, sets the sampling rate and the scale.
    pub public_records: Option<u64>,
    /// Cancelled when the node shuts down: training stops between two steps.
    pub stop: CancellationToken,
    cache: Mutex<HashMap<(bool, Vec<u8>), Encoded>>,
}

/// The largest model a node accepts from the coordinator, in elements.
const MAX_MODEL_ELEMENTS: u64 = 50_000_000;

/// A refusal for data that does not fit a task: only a column missing from the header (which
/// the node declares anyway) reaches the coordinator; the node's own log keeps the whole error.
fn data_refusal(e: &crate::error::DataError) -> Refusal {
    tracing::warn!(error = %e, "the agency's data does not fit the task");
    Refusal::new("DATA_ERROR", e.redacted())
}

/// The largest clipping norm a node accepts: with it, no sum of clipped gradients overflows.
const MAX_CLIP_NORM: f64 = 1e6;

/// The largest magnitude of a global model's parameter a node accepts: with features bounded
/// by `data::MAX_FEATURE`, no record's forward pass can then overflow.
const MAX_PARAMETER: f64 = 1e12;

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::new("INTERNAL_ERROR", e.to_string())
}

/// Runs CPU work on a blocking thread. Should it fail (a bug), the coordinator is told a fixed
/// text: a panic's message might depend on the data; the node's log keeps it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "a computation on the agency's data failed");
        Refusal::new("INTERNAL_ERROR", "the node failed to compute the task")
    })
}

impl Worker {
    pub fn new(train: Table, test: Option<Table>) -> Self {
        Worker {
            train: Arc::new(train),
            test: test.map(Arc::new),
            public_records: None,
            stop: CancellationToken::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Encodes (or recalls) a table by a schema, on a blocking thread. A data error is
    /// remembered too, so the node refuses every round of the job with the same message.
    async fn encoded(
        &self,
        test: bool,
        schema: &FeatureSchema,
        stats: &[ColumnStats],
    ) -> Option<Encoded> {
        let table = if test {
            self.test.clone()?
        } else {
            self.train.clone()
        };
        let mut key = schema.encode_to_vec();
        for s in stats {
            s.encode(&mut key).ok()?;
        }
        let key = (test, key);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Some(hit.clone());
        }
        let (schema, stats) = (schema.clone(), stats.to_vec());
        let encoded = match blocking(move || table.encode_private(&schema, &stats)).await {
            Ok(Ok(private)) => {
                let unreadable = private.unreadable();
                if unreadable > 0 {
                    // For the agency's staff only: nothing of it leaves the node.
                    let first: Vec<String> =
                        private.problems.iter().map(|e| e.to_string()).collect();
                    tracing::warn!(
                        split = if test { "test" } else { "train" },
                        records = unreadable,
                        first = first.join("; "),
                        "records the job's schema cannot read are left out"
                    );
                }
                Ok(Arc::new(private))
            }
            Ok(Err(e)) => Err(data_refusal(&e)),
            Err(refusal) => Err(refusal),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 8 {
            cache.clear();
        }
        cache.insert(key, encoded.clone());
        Some(encoded)
    }

    /// Decides what a task will release and with which noise, from the task and the size of the
    /// agency's data alone, before any record is read for it.
    pub fn plan(&self, kind: &task::Kind) -> Result<Plan, Refusal> {
        match kind {
            task::Kind::Training(t) => {
                let spec = t
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the training task has no spec"))?;
                self.training_plan(spec, t.public_records)
            }
            task::Kind::Stats(s) => match (&s.privacy, &s.schema) {
                (Some(privacy), Some(schema)) => {
                    check_schema(schema)?;
                    statistics_plan(schema, privacy)
                }
                (None, _) => Err(not_private("statistics task")),
                (_, None) => Err(Refusal::new(
                    "INVALID_TASK",
                    "the statistics task has no schema",
                )),
            },
            task::Kind::Query(q) => {
                let spec = q
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the query task has no spec"))?;
                let (query, epsilon) = analytics::plan(spec)?;
                Ok(Plan {
                    releases: vec![Release::Laplace { epsilon }],
                    query: Some(query),
                    ..Plan::default()
                })
            }
        }
    }

    /// The public figure for the agency's number of training records: its own declaration,
    /// else the coordinator's estimate carried by the task. Never the table's length.
    fn public_records(&self, from_task: f64) -> Option<f64> {
        match self.public_records {
            Some(n) => Some(n.max(1) as f64),
            None if from_task.is_finite() && from_task >= 1.0 => Some(from_task),
            None => None,
        }
    }

    /// Plans a training round from the task and public figures alone: what it releases, its
    /// sampling, its steps and the constant its noisy sums are divided by. A refusal here
    /// quotes only the task's own figures.
    fn training_plan(&self, spec: &TrainingSpec, public_records: f64) -> Result<Plan, Refusal> {
        let Some(privacy) = spec.privacy.as_ref() else {
            return Err(not_private("training job"));
        };
        let invalid = |m: String| Refusal::new("INVALID_TASK", m);
        if !(privacy.clip_norm > 0.0 && privacy.clip_norm <= MAX_CLIP_NORM) {
            return Err(invalid(format!(
                "the clipping norm {} must be positive and at most {MAX_CLIP_NORM:e}",
                privacy.clip_norm
            )));
        }
        check_model(spec)?;
        check_standardization(spec)?;
        let parameters = schema::parameter_layout(spec)
            .iter()
            .map(|(_, s)| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)))
            .try_fold(0usize, |a, n| a.checked_add(n?))
            .filter(|&n| n as u64 <= MAX_MODEL_ELEMENTS)
            .ok_or_else(|| {
                invalid(format!(
                    "the model has more than {MAX_MODEL_ELEMENTS} parameters"
                ))
            })?;
        let epochs = u64::from(spec.local_epochs.max(1));
        let records = self.public_records(public_records);
        let no_records = |what: &str| {
            invalid(format!(
                "{what} needs a public figure for the agency's number of records, and the task carries none: run the job's statistics round, give a sampling rate, or declare `public_records` in the node's [data]"
            ))
        };
        let batch = f64::from(spec.batch_size.max(1));
        let (sampling, steps, denominator) = match DpMode::try_from(privacy.mode)
            .unwrap_or(DpMode::Unspecified)
        {
            DpMode::FullBatch => {
                let n = records.ok_or_else(|| no_records("full-batch DP training"))?;
                (Sampling::FullBatch, epochs, n)
            }
            DpMode::Poisson => {
                let q = if privacy.sampling_rate > 0.0 {
                    privacy.sampling_rate
                } else {
                    let n = records.ok_or_else(|| no_records("a job without a sampling rate"))?;
                    (batch / n).min(1.0)
                };
                if !(q > 0.0 && q <= 1.0) {
                    return Err(invalid(format!("the sampling rate {q} must be in (0, 1]")));
                }
                // The expected batch, from public figures: q times the public count, or
                // the job's batch size.
                let denominator = records.map(|n| q * n).unwrap_or(batch);
                (
                    Sampling::Poisson(q),
                    epochs.saturating_mul((1.0 / q).ceil() as u64),
                    denominator,
                )
            }
            DpMode::Unspecified => {
                return Err(invalid(
                    "the privacy spec names no mode (full batch or Poisson)".into(),
                ));
            }
        };
        if steps > MAX_STEPS_PER_ROUND {
            return Err(invalid(format!(
                "a round of {steps} steps is more than this node takes ({MAX_STEPS_PER_ROUND}); raise the sampling rate or lower the epochs"
            )));
        }
        // The evaluation of the global model on the test split: Laplace noise on its counts.
        let evaluation = match &self.test {
            Some(_) => {
                let epsilon = if privacy.evaluation_epsilon > 0.0 {
                    privacy.evaluation_epsilon
                } else {
                    DEFAULT_EVALUATION_EPSILON
                };
                Some(analytics::laplace_scale_for(
                    epsilon,
                    evaluation_width(spec),
                    1.0,
                )?)
            }
            None => None,
        };
        let sigma = if privacy.noise_multiplier > 0.0 {
            privacy.noise_multiplier
        } else {
            // Calibrate the whole job to its target; a hair more noise covers the noise grid.
            let (epsilon, delta) = (privacy.target_epsilon, privacy.target_delta);
            if !(epsilon > 0.0 && delta > 0.0 && delta < 1.0) {
                return Err(invalid(
                    "give a noise multiplier, or a target epsilon and delta for the job".into(),
                ));
            }
            // The whole job: its statistics round (when it ran under DP) and every round.
            let rounds = u64::from(spec.rounds.max(1));
            let statistics = privacy.statistics_round_rho;
            let make = |sigma: f64| {
                let mut releases = Vec::new();
                if statistics > 0.0 {
                    releases.push(Release::Gaussian { rho: statistics });
                }
                if let Some((_, epsilon)) = evaluation {
                    releases.extend((0..rounds).map(|_| Release::Laplace { epsilon }));
                }
                releases.push(match sampling {
                    Sampling::FullBatch => Release::Gaussian {
                        rho: (steps * rounds) as f64 * zcdp::gaussian_rho(sigma),
                    },
                    Sampling::Poisson(q) => Release::SampledGaussian {
                        sampling_rate: q,
                        noise_multiplier: sigma,
                        steps: steps * rounds,
                    },
                });
                releases
            };
            let sigma = privacy::calibrate(make, epsilon, delta).ok_or_else(|| {
                invalid(format!(
                    "no noise multiplier meets epsilon {epsilon} over {} steps",
                    steps * rounds
                ))
            })?;
            sigma * (1.0 + 1e-6)
        };
        let noise = GaussianNoise {
            sensitivity: privacy.clip_norm,
            noise_multiplier: sigma,
        };
        let rho = noise
            .rho(parameters)
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?;
        let release = match sampling {
            Sampling::FullBatch => Release::Gaussian {
                rho: steps as f64 * rho,
            },
            // opendp's rho includes the noise grid; the effective noise multiplier is the one it implies.
            Sampling::Poisson(q) => Release::SampledGaussian {
                sampling_rate: q,
                noise_multiplier: (1.0 / (2.0 * rho)).sqrt(),
                steps,
            },
        };
        let mut releases = vec![release];
        if let Some((_, epsilon)) = evaluation {
            releases.push(Release::Laplace { epsilon });
        }
        Ok(Plan {
            releases,
            evaluation: evaluation.map(|(scale, _)| scale),
            dp: Some(DpSgd {
                sampling,
                steps,
                noise,
                denominator: denominator.max(1.0),
            }),
            ..Plan::default()
        })
    }

    /// Carries out a task, as planned.
    pub async fn run(
        &self,
        client: &mut AgencyServiceClient<Channel>,
        job_id: &str,
        kind: &task::Kind,
        plan: &Plan,
    ) -> Result<Output, Refusal> {
        match kind {
            task::Kind::Training(t) => {
                let spec = t
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the training task has no spec"))?;
                let global = download(client, job_id, &t.model_version).await?;
                let dp = plan.dp.ok_or_else(|| not_private("training job"))?;
                self.train_round(spec, global, dp, plan.evaluation).await
            }
            task::Kind::Stats(s) => {
                let schema = s.schema.clone().ok_or_else(|| {
                    Refusal::new("INVALID_TASK", "the statistics task has no schema")
                })?;
                self.stats(schema, plan.statistics_noise.clone()).await
            }
            task::Kind::Query(q) => {
                let spec = q
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the query task has no spec"))?;
                self.query(spec, plan.query.clone()).await
            }
        }
    }

    async fn train_round(
        &self,
        spec: &TrainingSpec,
        global: Vec<NamedTensor>,
        dp: DpSgd,
        evaluation_scale: Option<f64>,
    ) -> Result<Output, Refusal> {
        let error_bound = spec
            .privacy
            .as_ref()
            .map(|p| p.evaluation_error_bound)
            .filter(|b| *b > 0.0)
            .unwrap_or(10.0);
        let schema = spec
            .schema
            .clone()
            .ok_or_else(|| Refusal::new("INVALID_TASK", "the training task has no schema"))?;
        let model_kind = ModelKind::try_from(spec.model).unwrap_or(ModelKind::Unspecified);
        let kind = Kind::of(
            model_kind,
            schema::classes(&schema).len(),
            spec.hidden_units as usize,
        )
        .ok_or_else(|| {
            Refusal::new(
                "UNSUPPORTED_TASK",
                "the task names no model this node trains",
            )
        })?;
        let inputs = schema::encoded_names(&schema).len();
        let model = Model::from_tensors(kind, inputs, &global).map_err(|e| {
            Refusal::new(
                "INVALID_TASK",
                format!("the global model does not fit the task: {e}"),
            )
        })?;
        if !model
            .params()
            .iter()
            .all(|w| w.is_finite() && w.abs() <= MAX_PARAMETER)
        {
            return Err(Refusal::new(
                "INVALID_TASK",
                format!(
                    "the global model has a parameter that is not finite or beyond {MAX_PARAMETER:e}"
                ),
            ));
        }
        let train_data = self
            .encoded(false, &schema, &spec.standardization)
            .await
            .unwrap_or_else(|| Err(internal("no training data")))?;
        let test_data = match self.encoded(true, &schema, &spec.standardization).await {
            Some(encoded) => Some(encoded?),
            None => None,
        };
        let sgd = Sgd {
            epochs: spec.local_epochs,
            batch_size: spec.batch_size as usize,
            learning_rate: spec.learning_rate,
            momentum: spec.momentum,
            l2: spec.l2,
            proximal_mu: spec.strategy.as_ref().map(|s| s.proximal_mu).unwrap_or(0.0),
            seed: rand::random(),
        };
        let stop = self.stop.clone();
        blocking(move || {
            // Nothing leaves but the noisy model and, when there is a test split, the noisy counts
            // of the received global model's evaluation; no count of records (updates are then
            // averaged with equal weights).
            let evaluation = match (&test_data, evaluation_scale) {
                (Some(test), Some(scale)) => {
                    let mut e = metrics::evaluation_counts(
                        &model,
                        &test.examples,
                        Some(&test.readable),
                        error_bound,
                    );
                    e.counts = analytics::laplace(scale, &e.counts)?;
                    e.laplace_scale = scale;
                    Some(e)
                }
                _ => None,
            };
            let mut local = model;
            train_dp(
                &mut local,
                &train_data.examples,
                Some(&train_data.readable),
                &sgd,
                &dp,
                &stop,
            )
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?;
            if stop.is_cancelled() {
                return Err(Refusal::new("NODE_STOPPING", "the node is shutting down"));
            }
            if local.params().iter().any(|w| !w.is_finite()) {
                return Err(Refusal::new(
                    "TRAINING_DIVERGED",
                    "local training produced non-finite values; lower the learning rate",
                ));
            }
            Ok(Output {
                num_examples: 1,
                metrics: HashMap::new(),
                tensors: local.to_tensors(),
                evaluation,
            })
        })
        .await?
    }

    async fn stats(
        &self,
        schema: FeatureSchema,
        noise: Option<(GaussianNoise, Vec<f64>)>,
    ) -> Result<Output, Refusal> {
        let Some((noise, scales)) = noise else {
            return Err(not_private("statistics task"));
        };
        let table = self.train.clone();
        let sums = blocking(move || table.column_sums(&schema))
            .await?
            .map_err(|e| data_refusal(&e))?;
        let mut flat: Vec<f64> = sums.iter().flatten().copied().collect();
        flat.iter_mut().zip(&scales).for_each(|(v, s)| *v /= s);
        noise
            .add(&mut flat)
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?;
        flat.iter_mut().zip(&scales).for_each(|(v, s)| *v *= s);
        let values = ArrayD::from_shape_vec(IxDyn(&[sums.len(), 3]), flat).map_err(internal)?;
        Ok(Output {
            num_examples: 1,
            metrics: HashMap::new(),
            tensors: vec![NamedTensor::new("stats", values)],
            evaluation: None,
        })
    }

    async fn query(&self, spec: &QuerySpec, plan: Option<QueryPlan>) -> Result<Output, Refusal> {
        let plan =
            plan.ok_or_else(|| Refusal::new("INTERNAL_ERROR", "a query without its plan"))?;
        let (table, spec_owned) = (self.train.clone(), spec.clone());
        let exact = blocking(move || analytics::exact(&table, &spec_owned))
            .await?
            .map_err(|e| data_refusal(&e))?;
        let values = analytics::noisy(&plan, &exact)?;
        let mut metrics = HashMap::new();
        metrics.insert("laplace_scale".to_owned(), plan.scale);
        Ok(Output {
            num_examples: 1,
            metrics,
            tensors: vec![NamedTensor::new(
                "statistic",
                ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).map_err(internal)?,
            )],
            evaluation: None,
        })
    }
}

/// The most classes a multinomial model may have: its evaluation releases classes² counts.
const MAX_CLASSES: usize = 512;

/// The largest magnitude of a column bound a node accepts: with it, no sum of clamped values
/// can overflow, whatever the number of records.
const MAX_BOUND: f64 = 1e15;

/// A task's schema, checked from the task alone: every problem `schema::problems` finds, and
/// bounds of at most [`MAX_BOUND`] in magnitude. A bad schema (NaN bounds, say) must never reach
/// the data: there it could make what the node computes, or whether it fails, depend on a record.
fn check_schema(schema: &FeatureSchema) -> Result<(), Refusal> {
    let mut problems = schema::problems(schema);
    for c in schema::numeric_columns(schema) {
        if [c.lower, c.upper]
            .iter()
            .flatten()
            .any(|b| b.abs() > MAX_BOUND)
        {
            problems.push(format!("column `{}`: bounds beyond ±{MAX_BOUND:e}", c.name));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Refusal::new(
            "INVALID_TASK",
            format!("the schema is invalid: {}", problems.join("; ")),
        )),
    }
}

/// The task's schema and model, checked from the task alone: a valid schema whose label fits
/// the model, and a multinomial model of 2 to [`MAX_CLASSES`] classes.
fn check_model(spec: &TrainingSpec) -> Result<(), Refusal> {
    let schema = spec
        .schema
        .as_ref()
        .ok_or_else(|| Refusal::new("INVALID_TASK", "the training task has no schema"))?;
    check_schema(schema)?;
    let model = ModelKind::try_from(spec.model).unwrap_or(ModelKind::Unspecified);
    let label = schema::label_kind(schema);
    if schema::label_kind_for(model) != Some(label) {
        return Err(Refusal::new(
            "INVALID_TASK",
            format!(
                "a {} label does not fit a {} model",
                label.as_str_name(),
                model.as_str_name()
            ),
        ));
    }
    let classes = schema::classes(schema).len();
    if model == ModelKind::MultinomialLogisticRegression && !(2..=MAX_CLASSES).contains(&classes) {
        return Err(Refusal::new(
            "INVALID_TASK",
            format!("a multinomial model needs 2 to {MAX_CLASSES} classes, not {classes}"),
        ));
    }
    Ok(())
}

/// The task's standardisation, checked from the task alone: one finite mean and positive
/// finite standard deviation per numeric column (or none at all).
fn check_standardization(spec: &TrainingSpec) -> Result<(), Refusal> {
    let numeric = spec
        .schema
        .as_ref()
        .map(|s| schema::numeric_columns(s).len())
        .unwrap_or(0);
    let stats = &spec.standardization;
    if !stats.is_empty() && stats.len() != numeric {
        return Err(Refusal::new(
            "INVALID_TASK",
            format!(
                "the standardisation has {} columns, the schema {numeric} numeric ones",
                stats.len()
            ),
        ));
    }
    match stats
        .iter()
        .find(|s| !(s.mean.is_finite() && s.std.is_finite() && s.std > 0.0))
    {
        Some(s) => Err(Refusal::new(
            "INVALID_TASK",
            format!(
                "the standardisation of `{}` (mean {}, std {}) needs a finite mean and a positive finite std",
                s.name, s.mean, s.std
            ),
        )),
        None => Ok(()),
    }
}

/// The plan of a statistics round under DP. Every numeric column needs bounds: with B the largest
/// magnitude after the transform, a record adds at most 1 to a column's count, B to its sum and
/// B^2 to its sum of squares. Each sum is divided by that bound before the noise, so that every
/// coordinate has sensitivity 1 and the vector `sqrt(3 columns)`, then multiplied back: each
/// statistic gets noise in proportion to its own scale.
fn statistics_plan(schema: &FeatureSchema, privacy: &PrivacySpec) -> Result<Plan, Refusal> {
    let columns = schema::numeric_columns(schema);
    let mut scales = Vec::with_capacity(3 * columns.len());
    for c in &columns {
        let (Some(lo), Some(hi)) = (c.lower, c.upper) else {
            return Err(Refusal::new(
                "INVALID_TASK",
                format!(
                    "numeric column `{}` has no bounds; differentially private statistics need `lower` and `upper`",
                    c.name
                ),
            ));
        };
        let transform = |v: f64| {
            if c.transform == Transform::Log1p as i32 {
                v.max(0.0).ln_1p()
            } else {
                v
            }
        };
        let b = transform(lo)
            .abs()
            .max(transform(hi).abs())
            .max(f64::MIN_POSITIVE);
        scales.extend([1.0, b, b * b]);
    }
    let rho_target = if privacy.statistics_rho > 0.0 {
        privacy.statistics_rho
    } else {
        DEFAULT_STATISTICS_RHO
    };
    let noise = GaussianNoise {
        sensitivity: (scales.len() as f64).sqrt(),
        noise_multiplier: (1.0 / (2.0 * rho_target)).sqrt(),
    };
    let rho = noise
        .rho(scales.len())
        .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?;
    Ok(Plan {
        releases: vec![Release::Gaussian { rho }],
        statistics_noise: Some((noise, scales)),
        ..Plan::default()
    })
}

/// Downloads a model version from the coordinator.
pub async fn download(
    client: &mut AgencyServiceClient<Channel>,
    job_id: &str,
    version: &str,
) -> Result<Vec<NamedTensor>, Refusal> {
    let unavailable = |m: String| Refusal::new("MODEL_UNAVAILABLE", m);
    let mut stream = client
        .download_model(DownloadModelRequest {
            job_id: job_id.to_owned(),
            model_version: version.to_owned(),
        })
        .await
        .map_err(|s| unavailable(format!("downloading `{version}`: {}", s.message())))?
        .into_inner();
    let mut assembler: Option<Assembler> = None;
    while let Some(part) = stream.next().await {
        let part =
            part.map_err(|s| unavailable(format!("downloading `{version}`: {}", s.message())))?;
        match (part.kind, assembler.as_mut()) {
            (Some(model_part::Kind::Header(h)), None) => {
                assembler = Some(
                    Assembler::new(h.tensors, MAX_MODEL_ELEMENTS, DEFAULT_MAX_CHUNK_BYTES)
                        .map_err(|e| unavailable(e.to_string()))?,
                )
            }
            (Some(model_part::Kind::Chunk(c)), Some(a)) => {
                a.push(c).map_err(|e| unavailable(e.to_string()))?
            }
            _ => {
                return Err(unavailable(format!(
                    "model `{version}` arrived out of order"
                )));
            }
        }
    }
    assembler
        .ok_or_else(|| unavailable(format!("model `{version}` arrived without a header")))?
        .finish()
        .map_err(|e| unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use treaty_proto::v1::{StatsTask, TrainingTask};

    fn worker_of(rows: usize) -> Worker {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "x,seized").unwrap();
        for i in 0..rows {
            writeln!(f, "{},{}", i % 3, i % 2).unwrap();
        }
        Worker::new(Table::open(f.path()).unwrap(), None)
    }

    fn training_task(mode: DpMode, sampling_rate: f64, public_records: f64) -> task::Kind {
        task::Kind::Training(TrainingTask {
            spec: Some(TrainingSpec {
                model: ModelKind::LogisticRegression as i32,
                schema: schema::parse("[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x\"\nkind = \"numeric\"\n").unwrap().ok(),
                rounds: 3,
                local_epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                privacy: Some(PrivacySpec {
                    mode: mode as i32,
                    clip_norm: 1.0,
                    sampling_rate,
                    target_epsilon: 1.0,
                    target_delta: 1e-5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            model_version: String::new(),
            public_records,
        })
    }

    #[test]
    fn what_a_round_releases_depends_on_public_figures_only() {
        // Two nodes whose data differ in one record plan every training task alike: the same
        // mechanisms and parameters for the ledger, steps and divisor, the same refusals.
        let (a, b) = (worker_of(400), worker_of(401));
        for (mode, q, public) in [
            (DpMode::Poisson, 0.0, 1000.0),
            (DpMode::Poisson, 0.05, 0.0),
            (DpMode::Poisson, 0.05, 1000.0),
            (DpMode::FullBatch, 0.0, 1000.0),
            (DpMode::Poisson, 0.0, 0.0),
            (DpMode::FullBatch, 0.0, 0.0),
        ] {
            let task = training_task(mode, q, public);
            let (pa, pb) = (a.plan(&task), b.plan(&task));
            assert_eq!(
                format!("{pa:?}"),
                format!("{pb:?}"),
                "{mode:?} {q} {public}"
            );
        }
        // Without a sampling rate the node samples batch / public count: 32 / 1000.
        let plan = a
            .plan(&training_task(DpMode::Poisson, 0.0, 1000.0))
            .unwrap();
        let dp = plan.dp.unwrap();
        assert_eq!(dp.sampling, Sampling::Poisson(0.032));
        assert_eq!(dp.steps, 32); // ceil(1 / 0.032)
        assert!((dp.denominator - 32.0).abs() < 1e-9);
        // Without any public figure it refuses, quoting none of its own.
        let refusal = a
            .plan(&training_task(DpMode::Poisson, 0.0, 0.0))
            .unwrap_err();
        assert_eq!(refusal.code, "INVALID_TASK");
        assert!(!refusal.message.contains("400"), "{}", refusal.message);
        // An agency's own declaration wins over the coordinator's estimate.
        let mut declared = worker_of(400);
        declared.public_records = Some(3200);
        let dp = declared
            .plan(&training_task(DpMode::Poisson, 0.0, 1000.0))
            .unwrap()
            .dp
            .unwrap();
        assert_eq!(dp.sampling, Sampling::Poisson(0.01));
    }

    #[test]
    fn a_poisoned_standardisation_or_clip_is_refused_from_the_task_alone() {
        let worker = worker_of(10);
        let with = |std: f64, clip: f64| {
            let mut task = training_task(DpMode::Poisson, 0.1, 0.0);
            if let task::Kind::Training(t) = &mut task {
                let spec = t.spec.as_mut().unwrap();
                spec.standardization = vec![ColumnStats {
                    name: "x".into(),
                    mean: 0.0,
                    std,
                    count: 0.0,
                }];
                spec.privacy.as_mut().unwrap().clip_norm = clip;
            }
            worker.plan(&task).map(|_| ())
        };
        assert!(with(1.0, 1.0).is_ok());
        for (std, clip) in [
            (0.0, 1.0),
            (f64::NAN, 1.0),
            (f64::INFINITY, 1.0),
            (1.0, 1e300),
            (1.0, f64::NAN),
        ] {
            let refusal = with(std, clip).unwrap_err();
            assert_eq!(
                refusal.code, "INVALID_TASK",
                "{std} {clip}: {}",
                refusal.message
            );
        }
    }

    #[test]
    fn a_task_without_a_privacy_spec_is_refused_before_the_data_is_read() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"x,seized\n1,0\n2,1\n").unwrap();
        let worker = Worker::new(Table::open(f.path()).unwrap(), None);
        let schema = schema::parse("[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x\"\nkind = \"numeric\"\nlower = 0.0\nupper = 3.0\n")
            .unwrap()
            .unwrap();
        let training = task::Kind::Training(TrainingTask {
            spec: Some(TrainingSpec {
                model: ModelKind::LogisticRegression as i32,
                schema: Some(schema.clone()),
                rounds: 1,
                local_epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                ..Default::default()
            }),
            model_version: String::new(),
            public_records: 0.0,
        });
        assert_eq!(worker.plan(&training).unwrap_err().code, "DP_REQUIRED");
        let stats = task::Kind::Stats(StatsTask {
            schema: Some(schema.clone()),
            privacy: None,
        });
        assert_eq!(worker.plan(&stats).unwrap_err().code, "DP_REQUIRED");
        // With a privacy spec the statistics are planned, as a Gaussian release.
        let private = task::Kind::Stats(StatsTask {
            schema: Some(schema),
            privacy: Some(PrivacySpec {
                statistics_rho: 0.01,
                ..Default::default()
            }),
        });
        let plan = worker.plan(&private).unwrap();
        // A round of more steps than a node takes is refused, not run for ever.
        let endless = worker
            .plan(&training_task(DpMode::Poisson, 1e-300, 0.0))
            .unwrap_err();
        assert_eq!(endless.code, "INVALID_TASK");
        assert!(endless.message.contains("steps"), "{}", endless.message);
        assert!(
            matches!(plan.releases.as_slice(), [Release::Gaussian { rho }] if (*rho - 0.01).abs() < 1e-9)
        );
    }
}
