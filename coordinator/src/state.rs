//! What every part of a running coordinator shares.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use treaty_proto::Identity;
use treaty_proto::tls::ServerTls;
use treaty_proto::v1::{Job, JobEvent};

use crate::config::Limits;
use crate::error::CoordinatorError;
use crate::sessions::Sessions;
use crate::store::{AuditEntry, Store};
use crate::tasks::Tasks;

/// The shared state of one running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub store: Store,
    pub sessions: Sessions,
    pub tasks: Tasks,
    pub events: broadcast::Sender<JobEvent>,
    pub identity: Identity,
    /// The TLS configuration in force, asked whether a peer's certificate has been revoked since
    /// its connection opened.
    pub tls: Arc<ServerTls>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Coordinator {
    pub fn new(store: Store, tls: Arc<ServerTls>, limits: Limits) -> Self {
        Coordinator {
            identity: tls.identity().clone(),
            tls,
            store,
            sessions: Sessions::default(),
            tasks: Tasks::default(),
            events: broadcast::channel(1024).0,
            limits,
            shutdown: CancellationToken::new(),
        }
    }

    /// Tells watchers of `job` what happened, and logs it.
    pub fn emit(&self, job: &Job, round: u32, agency: &str, message: String) {
        tracing::info!(job = %job.job_id, round, agency, "{message}");
        let _ = self.events.send(JobEvent {
            time_unix_ms: now_ms(),
            message,
            round,
            agency: agency.to_owned(),
            job: Some(job.clone()),
        });
    }

    /// Appends to the audit log, durably.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        job: &Job,
        round: u32,
        agency: &str,
        detail: String,
    ) -> Result<(), CoordinatorError> {
        let entry = AuditEntry {
            time_unix_ms: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            federation: job.federation.clone(),
            job: job.job_id.clone(),
            round,
            agency: agency.to_owned(),
            detail,
        };
        self.store.audit(&entry)
    }
}
