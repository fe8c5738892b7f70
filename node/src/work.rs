//! Carrying out one task on the agency's own data: read the records, train or compute, and
//! produce the result to release. CPU work runs on a blocking thread, off the async runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_proto::tensor::{Assembler, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    DownloadModelRequest, ModelKind, QueryKind, QuerySpec, TrainingSpec, model_part, task,
};

use crate::data::{Examples, Table};
use crate::model::{Logistic, Sgd};

/// Why a node declines a task: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
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
}

/// The agency's data, with the matrices of recent tasks kept in memory.
#[derive(Debug)]
pub struct Worker {
    pub train: Table,
    pub test: Option<Table>,
    cache: Mutex<HashMap<ColumnsKey, Arc<Examples>>>,
}

/// Which examples: (file, feature columns, label column).
type ColumnsKey = (String, Vec<String>, Option<String>);

/// The largest model a node accepts from the coordinator, in elements.
const MAX_MODEL_ELEMENTS: u64 = 50_000_000;

impl Worker {
    pub fn new(train: Table, test: Option<Table>) -> Self {
        Worker {
            train,
            test,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reads (or recalls) the examples of `table` for these columns, on a blocking thread.
    async fn examples(
        &self,
        table: &Table,
        features: &[String],
        label: Option<&str>,
    ) -> Result<Arc<Examples>, Refusal> {
        let key = (
            table.path.display().to_string(),
            features.to_vec(),
            label.map(str::to_owned),
        );
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let (t, f, l) = (table.clone(), features.to_vec(), label.map(str::to_owned));
        let loaded = tokio::task::spawn_blocking(move || t.load(&f, l.as_deref()))
            .await
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?
            .map_err(|e| Refusal::new("DATA_ERROR", e.to_string()))?;
        let loaded = Arc::new(loaded);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Carries out a task.
    pub async fn run(
        &self,
        client: &mut AgencyServiceClient<Channel>,
        job_id: &str,
        kind: &task::Kind,
    ) -> Result<Output, Refusal> {
        match kind {
            task::Kind::Training(t) => {
                let spec = t
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the training task has no spec"))?;
                let global = if t.model_version.is_empty() {
                    None
                } else {
                    Some(download(client, job_id, &t.model_version).await?)
                };
                self.train_round(spec, global).await
            }
            task::Kind::Query(q) => {
                let spec = q
                    .spec
                    .as_ref()
                    .ok_or_else(|| Refusal::new("INVALID_TASK", "the query task has no spec"))?;
                self.query(spec).await
            }
        }
    }

    async fn train_round(
        &self,
        spec: &TrainingSpec,
        global: Option<Vec<NamedTensor>>,
    ) -> Result<Output, Refusal> {
        if spec.model != ModelKind::LogisticRegression as i32 {
            return Err(Refusal::new(
                "UNSUPPORTED_TASK",
                "this node trains only logistic regression",
            ));
        }
        let features = spec.features.len();
        let model = match global {
            Some(tensors) => Logistic::from_tensors(&tensors, features).map_err(|e| {
                Refusal::new(
                    "INVALID_TASK",
                    format!("the global model does not fit the task: {e}"),
                )
            })?,
            None => Logistic::zeros(features),
        };
        let train = self
            .examples(&self.train, &spec.features, Some(&spec.label))
            .await?;
        let test = match &self.test {
            Some(t) => Some(self.examples(t, &spec.features, Some(&spec.label)).await?),
            None => None,
        };
        let sgd = Sgd {
            epochs: spec.local_epochs,
            batch_size: spec.batch_size as usize,
            learning_rate: spec.learning_rate,
            l2: spec.l2,
            seed: rand::random(),
        };
        tokio::task::spawn_blocking(move || {
            let mut metrics = HashMap::new();
            if let Some(test) = &test {
                // Evaluate the global model received, before training on it.
                let (accuracy, log_loss) = model.evaluate(test);
                metrics.insert("test_accuracy".to_owned(), accuracy);
                metrics.insert("test_log_loss".to_owned(), log_loss);
                metrics.insert("test_examples".to_owned(), test.len() as f64);
            }
            let mut local = model;
            let train_loss = local.train(&train, sgd);
            if !train_loss.is_finite() || local.weights.iter().any(|w| !w.is_finite()) {
                return Err(Refusal::new(
                    "TRAINING_DIVERGED",
                    "local training produced non-finite values; lower the learning rate",
                ));
            }
            metrics.insert("train_loss".to_owned(), train_loss);
            Ok(Output {
                num_examples: train.len() as u64,
                metrics,
                tensors: local.to_tensors(),
            })
        })
        .await
        .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?
    }

    async fn query(&self, spec: &QuerySpec) -> Result<Output, Refusal> {
        let kind = QueryKind::try_from(spec.kind).unwrap_or(QueryKind::Unspecified);
        let (values, num_examples): (Vec<f64>, u64) = match kind {
            QueryKind::Count => {
                let table = self.train.clone();
                let n = tokio::task::spawn_blocking(move || table.count())
                    .await
                    .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?
                    .map_err(|e| Refusal::new("DATA_ERROR", e.to_string()))?;
                (vec![n as f64], n)
            }
            QueryKind::Sum | QueryKind::Mean => {
                let ex = self
                    .examples(&self.train, std::slice::from_ref(&spec.column), None)
                    .await?;
                let sum: f64 = ex.x.iter().map(|v| v.clamp(spec.lower, spec.upper)).sum();
                let n = ex.len() as u64;
                if kind == QueryKind::Sum {
                    (vec![sum], n)
                } else {
                    (vec![sum, n as f64], n)
                }
            }
            QueryKind::Unspecified => {
                return Err(Refusal::new(
                    "UNSUPPORTED_TASK",
                    "the query names no statistic",
                ));
            }
        };
        Ok(Output {
            num_examples,
            metrics: HashMap::new(),
            tensors: vec![NamedTensor::new(
                "statistic",
                ArrayD::from_shape_vec(IxDyn(&[values.len()]), values)
                    .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?,
            )],
        })
    }
}

/// Downloads a model version from the coordinator.
async fn download(
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
