//! Carrying out a training round: download the global model, check it, evaluate it on the test
//! split with Laplace noise on the counts (when the node has one, from round 2), train it with
//! DP-SGD, and release the noisy local model. And the evaluation of a job's final model: the
//! same noisy counts, nothing else.

use std::collections::HashMap;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_proto::schema;
use treaty_proto::tensor::{Assembler, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{DownloadModelRequest, Evaluation, ModelPart, model_part};

use super::checks::Training;
use super::checks::{InvalidTask, MAX_MODEL_ELEMENTS, MAX_PARAMETER};
use super::plan::{Distributed, EvaluationRound, TrainingRound};
use super::{Output, Worker, blocking};
use crate::analytics;
use crate::data::Private;
use crate::metrics;
use crate::model::Model;
use crate::refusal::{Refusal, RefusalCode};
use crate::train::{Sgd, quantized_gradient_sum, train_dp};

/// The default bound of a regression's evaluation error.
const DEFAULT_ERROR_BOUND: f64 = 10.0;

impl Worker {
    /// Trains the global model for one round, as planned.
    pub(super) async fn train_round(
        &self,
        round: &TrainingRound,
        global: Vec<NamedTensor>,
    ) -> Result<Output, Refusal> {
        let task = &round.task;
        let spec = &task.spec;
        let error_bound = error_bound(task);
        let schema = &task.schema;
        let kind = task.architecture;
        let inputs = schema::encoded_names(schema).len();
        let train_data = self
            .encoded(false, schema, &spec.standardization)
            .await
            .unwrap_or_else(|| Err(Refusal::internal("no training data")))?;
        let test_data = match self.encoded(true, schema, &spec.standardization).await {
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
        let (stop, dp, evaluation_scale) = (self.stop.clone(), round.dp, round.evaluation);
        let distributed = round.distributed;
        blocking(move || {
            // The global model, read from its tensors and scanned: a computation over every
            // parameter, on this blocking thread.
            let model = checked_model(kind, inputs, &global)?;
            // Nothing leaves but the noisy model and, when there is a test split, the noisy counts
            // of the received global model's evaluation; no count of records (updates are then
            // averaged with equal weights).
            let evaluation = match (&test_data, evaluation_scale) {
                (Some(test), Some(scale)) => Some(evaluate(&model, test, scale, error_bound)?),
                _ => None,
            };
            if let Some(distributed) = distributed {
                // Distributed DP: the round's one release is the clipped gradient sum at the
                // global model, with this agency's share of the noise, in the fixed point.
                let mut at = model;
                let sum = quantized_gradient_sum(
                    &mut at,
                    &train_data.examples,
                    Some(&train_data.readable),
                    dp.noise.sensitivity,
                    distributed.fixed_point.unit(),
                );
                return Ok(Output {
                    num_examples: 1,
                    metrics: HashMap::new(),
                    tensors: Vec::new(),
                    evaluation,
                    started_from: global,
                    ring: Some(contribution(&sum, &distributed)?),
                });
            }
            let mut local = model;
            train_dp(
                &mut local,
                &train_data.examples,
                Some(&train_data.readable),
                &sgd,
                &dp,
                &stop,
            )
            .map_err(Refusal::internal)?;
            if stop.is_cancelled() {
                return Err(Refusal::new(
                    RefusalCode::NodeStopping,
                    "the node is shutting down",
                ));
            }
            if local.params().iter().any(|w| !w.is_finite()) {
                return Err(Refusal::new(
                    RefusalCode::TrainingDiverged,
                    "local training produced non-finite values; lower the learning rate",
                ));
            }
            Ok(Output {
                num_examples: 1,
                metrics: HashMap::new(),
                tensors: local.to_tensors(),
                evaluation,
                started_from: global,
                ring: None,
            })
        })
        .await?
    }

    /// Evaluates a job's final model on the test split, as planned: only its noisy counts leave.
    pub(super) async fn evaluate_model(
        &self,
        round: &EvaluationRound,
        model: Vec<NamedTensor>,
    ) -> Result<Output, Refusal> {
        let task = &round.task.training;
        let (schema, kind, scale) = (&task.schema, task.architecture, round.scale);
        let error_bound = error_bound(task);
        let inputs = schema::encoded_names(schema).len();
        let test = self
            .encoded(true, schema, &task.spec.standardization)
            .await
            .unwrap_or_else(|| Err(Refusal::internal("no test split")))?;
        blocking(move || {
            let model = checked_model(kind, inputs, &model)?;
            Ok(Output {
                num_examples: 1,
                metrics: HashMap::new(),
                tensors: Vec::new(),
                evaluation: Some(evaluate(&model, &test, scale, error_bound)?),
                started_from: Vec::new(),
                ring: None,
            })
        })
        .await?
    }
}

/// A distributed-DP contribution: the gradient sum `sum` (in the fixed point already) plus this
/// agency's discrete Gaussian noise (through opendp): the share every agency adds and, when the
/// agency's own assumption is stricter than the job's, its whole noise on top; then the public
/// denominator. The sum is first clamped to half the fixed point's bound (a contraction: the
/// sensitivity stays), so the noise has room; a noisy value beyond the bound saturates there (a
/// fixed rule on the noisy value, after the release).
fn contribution(sum: &[i64], d: &Distributed) -> Result<Vec<u64>, Refusal> {
    let limit = d.fixed_point.bound() * d.fixed_point.unit();
    let half = (limit / 2.0) as i64;
    let mut ring: Vec<i64> = sum.iter().map(|&q| q.clamp(-half, half)).collect();
    crate::noise::IntegerNoise { scale: d.scale }
        .add(&mut ring)
        .map_err(Refusal::internal)?;
    if let Some(whole) = d.whole {
        crate::noise::IntegerNoise { scale: whole }
            .add(&mut ring)
            .map_err(Refusal::internal)?;
    }
    let limit = limit as i64;
    let mut out: Vec<u64> = ring
        .into_iter()
        .map(|q| q.clamp(-limit, limit) as u64)
        .collect();
    out.extend(
        d.fixed_point
            .encode(&[d.denominator])
            .map_err(Refusal::internal)?,
    );
    Ok(out)
}

/// The largest regression error an evaluation bins.
fn error_bound(task: &Training) -> f64 {
    Some(task.privacy.evaluation_error_bound)
        .filter(|b| *b > 0.0)
        .unwrap_or(DEFAULT_ERROR_BOUND)
}

/// A model received from the coordinator, read from its tensors and scanned: a computation
/// over every parameter, for a blocking thread.
fn checked_model(
    kind: crate::model::Architecture,
    inputs: usize,
    tensors: &[NamedTensor],
) -> Result<Model, Refusal> {
    let model = Model::from_tensors(kind, inputs, tensors).map_err(InvalidTask::GlobalModel)?;
    if !model
        .params()
        .iter()
        .all(|w| w.is_finite() && w.abs() <= MAX_PARAMETER)
    {
        return Err(InvalidTask::GlobalParameter.into());
    }
    Ok(model)
}

/// The evaluation of a model on the test split, with Laplace noise of `scale` on its counts.
fn evaluate(
    model: &Model,
    test: &Private,
    scale: f64,
    error_bound: f64,
) -> Result<Evaluation, Refusal> {
    let mut e =
        metrics::evaluation_counts(model, &test.examples, Some(&test.readable), error_bound);
    e.counts = analytics::laplace(scale, &e.counts)?;
    e.laplace_scale = scale;
    Ok(e)
}

/// The model a task starts from: the one it carries (`carried`, the parts of a download, when
/// the model is small), or downloaded from the coordinator. Either is checked the same way.
pub(super) async fn global_model(
    client: &mut AgencyServiceClient<Channel>,
    job_id: &str,
    version: &str,
    carried: &[ModelPart],
) -> Result<Vec<NamedTensor>, Refusal> {
    if carried.is_empty() {
        return download(client, job_id, version).await;
    }
    let mut assembler = None;
    for part in carried {
        take_part(&mut assembler, part.clone(), version)?;
    }
    assembled(assembler, version).await
}

/// Downloads a model version from the coordinator.
pub async fn download(
    client: &mut AgencyServiceClient<Channel>,
    job_id: &str,
    version: &str,
) -> Result<Vec<NamedTensor>, Refusal> {
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
        take_part(&mut assembler, part, version)?;
    }
    assembled(assembler, version).await
}

/// A model that cannot be had or used, in words.
fn unavailable(message: String) -> Refusal {
    Refusal::new(RefusalCode::ModelUnavailable, message)
}

/// Takes the next part of model `version`: its header first, then its chunks.
fn take_part(
    assembler: &mut Option<Assembler>,
    part: ModelPart,
    version: &str,
) -> Result<(), Refusal> {
    match (part.kind, assembler.as_mut()) {
        (Some(model_part::Kind::Header(h)), None) => {
            *assembler = Some(
                Assembler::new(h.tensors, MAX_MODEL_ELEMENTS, DEFAULT_MAX_CHUNK_BYTES)
                    .map_err(|e| unavailable(e.to_string()))?,
            );
            Ok(())
        }
        (Some(model_part::Kind::Chunk(c)), Some(a)) => {
            a.push(c).map_err(|e| unavailable(e.to_string()))
        }
        _ => Err(unavailable(format!(
            "model `{version}` arrived out of order"
        ))),
    }
}

/// Model `version`, every tensor complete and every value finite.
async fn assembled(
    assembler: Option<Assembler>,
    version: &str,
) -> Result<Vec<NamedTensor>, Refusal> {
    let assembler = assembler
        .ok_or_else(|| unavailable(format!("model `{version}` arrived without a header")))?;
    // Checking and decoding every value (up to `MAX_MODEL_ELEMENTS`) takes up to half a second:
    // on a blocking thread, not the node's async one, which keeps its session going meanwhile.
    // A small model takes microseconds, less than the hand-over to a blocking thread and back.
    if assembler.total_bytes() <= DECODED_HERE_BYTES {
        return assembler.finish().map_err(|e| unavailable(e.to_string()));
    }
    blocking(move || assembler.finish().map_err(|e| unavailable(e.to_string()))).await?
}

/// A model of at most this many bytes is checked and decoded on the node's async thread
/// (8,192 `f64` values: tens of microseconds), a larger one on a blocking thread.
const DECODED_HERE_BYTES: u64 = 64 * 1024;
