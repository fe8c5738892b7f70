//! An agency's node.
//!
//! It owns the agency's side of a federation: loading its records and encoding them by the
//! federation's schema, the models and their local training and evaluation, carrying out tasks
//! (training rounds, column statistics, analytics) with differential privacy through opendp,
//! the privacy ledger of everything it releases (written before anything leaves), and the client that dials out to the coordinator and keeps its session alive. It
//! trusts only the coordinator's verified certificate and never relies on the coordinator's
//! word for what its own data may be used for. It knows nothing of the coordinator's internals.

pub mod analytics;
pub mod config;
pub mod data;
pub mod error;
pub mod explain;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod noise;
pub mod policy;
pub mod session;
pub mod train;
pub mod work;

use std::sync::Arc;

pub use config::NodeConfig;
pub use error::{ConfigError, DataError, NodeError};
use tokio_util::sync::CancellationToken;
use treaty_proto::tls::ClientTls;

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
    let ledger = ledger::Ledger::open(&config.state_dir, config.privacy)?;
    tracing::info!(
        identity = %tls.identity(),
        coordinator = config.coordinator.address,
        train = %config.data.train.display(),
        "node starting"
    );
    let mut worker = work::Worker::new(train, test);
    worker.public_records = config.data.public_records;
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
        link: config.coordinator,
        ledger: Arc::new(ledger),
        worker: Arc::new(worker),
        running: Arc::new(tokio::sync::Semaphore::new(session::CONCURRENT_TASKS)),
    };
    session::run(node, shutdown).await;
    Ok(())
}
