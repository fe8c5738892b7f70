//! An agency's node.
//!
//! It owns the agency's side of a federation: loading its records and encoding them by the
//! federation's schema, the models and their local training and evaluation, carrying out tasks
//! (training rounds, column statistics, analytics) with differential privacy through opendp,
//! the privacy ledger of everything it releases (written before anything leaves), and the
//! client that dials out to the coordinator and keeps its session alive. It trusts only the
//! coordinator's verified certificate and never relies on the coordinator's word for what its
//! own data may be used for. It knows nothing of the coordinator's internals.
//!
//! # Map
//!
//! - [`run`]: start a node from its [`NodeConfig`] (`config`, the configuration file: with its
//!   [`CoordinatorLink`] and [`DataFiles`]).
//! - `session`: the session with the coordinator: dial out, receive tasks, plan each, record
//!   it in the ledger under the agency's own policy (`policy`), carry it out, send the result
//!   or the [`Refusal`] (`refusal`: the typed [`RefusalCode`]s and their wire strings).
//! - `work`: carrying out a task: its checks from the task alone (`work::checks`), its
//!   [`Plan`] from public figures (`work::plan`), and its execution by kind (`work::training`,
//!   `work::statistics`, `work::query`) on the [`Worker`]'s data.
//! - `ledger`: the privacy ledger ([`Ledger`]): write-ahead, hash-chained and anchored; and
//!   [`read_ledger`], its operator's read-only view, also of a running node's (`ledger::copy`);
//!   and the node's hash-chained evidence log in the same database ([`Evidence`]: tasks,
//!   decisions, receipts, approvals).
//! - `approval`: the agency's operator's approval of each job, when its configuration
//!   requires it ([`ApprovalConfig`]); `control`: the Unix socket through which `treaty node
//!   pending|approve|reject` reach the running node; `export`: the evidence log as a
//!   directory, and its cross-check against a coordinator's audit bundle.
//! - `data`: the agency's records ([`Table`]) and their encoding by a schema ([`Examples`]).
//! - `model`, `train`, `metrics`, `explain`: the models ([`Model`], [`Architecture`]), local
//!   and DP-SGD training ([`train()`], [`train_dp`], [`Sampling::release`]), their metrics and
//!   the explanation of a prediction.
//! - `model_file`: a model version as a self-describing JSON file ([`ModelFile`]), as the
//!   operator downloads it and `treaty model explain` reads it.
//! - `noise`, `analytics`: Gaussian and Laplace noise through opendp, and the DP answers to
//!   analytics queries.
//! - `secure`: the node's side of secure aggregation (the protocol is `treaty_proto::secagg`):
//!   its round checked from the task, the key exchange beside training, the masked update.
//! - `error`: the node's errors ([`NodeError`], [`DataError`]).
//!
//! No module below `work` imports it: the ledger, the policy check, the analytics and the
//! models have their own errors or the shared [`Refusal`].

#![deny(unreachable_pub)]

mod analytics;
mod approval;
mod config;
pub mod control;
mod data;
mod error;
mod explain;
pub mod export;
mod ledger;
mod metrics;
mod model;
mod model_file;
mod monitoring;
mod noise;
mod policy;
mod refusal;
pub mod scoring;
mod secure;
pub mod serve;
mod session;
mod train;
mod work;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use treaty_proto::tls::ClientTls;

pub use approval::{ApprovalConfig, JobTermsView, Pending};
pub use config::{CoordinatorLink, DataFiles, NodeConfig, SecureAggregationConfig};
pub use data::{Examples, Table};
pub use error::{ConfigError, DataError, NodeError};
pub use explain::{Explanation, explain};
pub use ledger::{
    ApprovalRecord, Budget, CopyError, DAMAGED, DEFAULT_DELTA, Damage, Entry, Evidence,
    EvidenceError, EvidenceLink, Fault, Ledger, LedgerError, LedgerRefusal,
    Reading as LedgerReading, ReceiptRecord, Record, Recorded, Source as LedgerSource, TaskRecord,
    read as read_ledger, read_export as read_evidence_export,
};
pub use metrics::{evaluate, roc_auc};
pub use model::{Architecture, Model};
pub use model_file::{
    MalformedModel, ModelFile, ModelFileError, ProvenanceError, ProvenanceFile, VerifiedProvenance,
};
pub use noise::{GaussianNoise, NoiseError, Prepared};
pub use refusal::{Refusal, RefusalCode};
pub use session::upload;
pub use train::{DpSgd, Sampling, Sgd, StepNoise, train, train_dp};
pub use work::{Output, Plan, Worker, download};

/// Runs a node until `shutdown` is cancelled. Checks its certificate, key and data files first,
/// so that a node that cannot work says so at once instead of connecting.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let tls = ClientTls::new(&config.tls)?;
    if tls.identity().agency_id().is_none() {
        return Err(NodeError::NotAnAgency {
            path: config.tls.cert.clone(),
            identity: tls.identity().to_string(),
        });
    }
    let train = data::Table::open(&config.data.train)?;
    let test = config
        .data
        .test
        .as_deref()
        .map(data::Table::open)
        .transpose()?;
    // The coordinator's receipts are checked against the federation CA's certificate.
    let ca = treaty_proto::tls::load_certs(&config.tls.ca_cert)?
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    // The agency's key signs what the node sends, so that the coordinator holds its word.
    let signer = match treaty_proto::tls::KeySigner::load(&config.tls) {
        Ok(signer) => Some(Arc::new(signer)),
        Err(error) => {
            tracing::warn!(%error, "the node's results go unsigned: its key cannot sign evidence");
            None
        }
    };
    let ledger = ledger::Ledger::open(&config.state_dir, config.privacy)?;
    let (evidence, records) = ledger.evidence()?;
    let evidence = Arc::new(evidence);
    let approvals = Arc::new(approval::Approvals::new(
        config.approval.clone(),
        evidence.clone(),
        &records,
    ));
    // The operator's commands reach the running node through its control socket; a node that
    // requires approval and cannot offer one could never take part in a job: it does not start.
    match control::listen(&config.state_dir) {
        Ok((listener, path)) => {
            tokio::spawn(control::serve(
                listener,
                path,
                approvals.clone(),
                shutdown.clone(),
            ));
        }
        Err(source) if approvals.required() => {
            return Err(NodeError::Control {
                path: config.state_dir.join(control::SOCKET),
                source,
            });
        }
        Err(error) => {
            tracing::warn!(dir = %config.state_dir.display(), %error, "no control socket: treaty node approve, reject and pending cannot reach this node")
        }
    }
    tracing::info!(
        identity = %tls.identity(),
        coordinator = config.coordinator.address,
        train = %config.data.train.display(),
        "node starting"
    );
    let mut worker = work::Worker::new(train, test);
    worker.public_records = config.data.public_records;
    worker.assume_dishonest = config.secure_aggregation.map(|s| s.assume_dishonest);
    worker.stop = shutdown.clone();
    let identity = tls.identity().clone();
    let (agency, country) = match &identity {
        treaty_proto::Identity::Agency { agency, country } => (agency.clone(), country.clone()),
        _ => (String::new(), String::new()),
    };
    let node = session::Node {
        policy: Arc::new(policy::NodePolicy {
            files: config.policy.clone(),
            agency,
            country,
        }),
        tls,
        link: config.coordinator.clone(),
        ledger: Arc::new(ledger),
        evidence,
        approvals,
        ca: Arc::new(ca),
        signer,
        worker: Arc::new(worker),
        running: Arc::new(tokio::sync::Semaphore::new(session::CONCURRENT_TASKS)),
        metrics: Arc::default(),
        secagg: Arc::default(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    if let Some(monitoring) = &config.monitoring {
        let listener = treaty_proto::monitoring::bind(monitoring)
            .await
            .map_err(|source| NodeError::Monitoring {
                address: monitoring.listen,
                source,
            })?;
        monitoring::spawn(
            node.metrics.clone(),
            node.ledger.clone(),
            listener,
            shutdown.clone(),
        );
    }
    let (evidence, tasks) = (node.evidence.clone(), node.tasks.clone());
    session::run(node, shutdown).await;
    // The tasks under way end (their training stops at its next step) and record how; records
    // written after the fact wait for the next flush (`session::record_evidence`): a node that
    // stops makes them durable first.
    tasks.close();
    if tokio::time::timeout(session::WIND_DOWN, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks still under way as the node stops; the evidence log may not say how they ended"
        );
    }
    if let Ok(Err(error)) = work::blocking(move || evidence.flush()).await {
        tracing::error!(%error, "the node's evidence log could not be flushed at shutdown");
    }
    Ok(())
}
