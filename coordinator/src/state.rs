//! What every part of a running coordinator shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use treaty_proto::Identity;
use treaty_proto::tls::ServerTls;
use treaty_proto::v1::{Job, JobEvent, JobEventKind, PrivacyReport, RoundSummary};

use crate::config::{CoordinatorPolicy, Limits};
use crate::error::CoordinatorError;
use crate::federation::MemberSets;
use crate::peerlog::WarnLimiter;
use crate::sessions::Sessions;
use crate::store::{AuditEntry, Store};
use crate::tasks::Tasks;

/// The shared state of one running coordinator.
#[derive(Debug)]
pub(crate) struct Coordinator {
    pub store: Store,
    pub sessions: Sessions,
    pub tasks: Tasks,
    pub events: broadcast::Sender<JobEvent>,
    pub identity: Identity,
    /// The TLS configuration in force, asked whether a peer's certificate has been revoked since
    /// its connection opened.
    pub tls: Arc<ServerTls>,
    pub limits: Limits,
    /// Where the coordinator is hosted and where the sharing policies are.
    pub policy: CoordinatorPolicy,
    pub shutdown: CancellationToken,
    /// Each agency's privacy ledger, as its node last reported it.
    pub privacy: Mutex<HashMap<Identity, PrivacyReport>>,
    /// Rate limits of the warnings about each peer.
    pub warnings: WarnLimiter,
    /// The slots an update to be folded in is staged in while it arrives
    /// ([`crate::limits::STAGING_SLOTS`]): the coordinator's memory for them is bounded
    /// whatever the number of agencies uploading at once.
    pub staging: Arc<Semaphore>,
    /// Each federation's members, as model downloads check them.
    pub members: MemberSets,
    /// What the coordinator knows of the agencies' approvals of running jobs.
    pub approvals: crate::approvals::Approvals,
    /// How many model downloads each peer has open.
    pub downloads: crate::service::Downloads,
}

/// How many job events the coordinator keeps for watchers that fall behind.
pub(crate) const EVENTS_KEPT: usize = 1024;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Coordinator {
    pub(crate) fn new(
        store: Store,
        tls: Arc<ServerTls>,
        limits: Limits,
        policy: CoordinatorPolicy,
    ) -> Self {
        Coordinator {
            identity: tls.identity().clone(),
            tls,
            store,
            sessions: Sessions::default(),
            tasks: Tasks::default(),
            events: broadcast::channel(EVENTS_KEPT).0,
            limits,
            policy,
            shutdown: CancellationToken::new(),
            privacy: Mutex::new(HashMap::new()),
            warnings: WarnLimiter::default(),
            staging: Arc::new(Semaphore::new(crate::limits::STAGING_SLOTS)),
            members: MemberSets::default(),
            approvals: Default::default(),
            downloads: Default::default(),
        }
    }

    /// Keeps an agency's latest privacy report.
    pub(crate) fn note_privacy(&self, agency: &Identity, report: Option<PrivacyReport>) {
        if let Some(report) = report {
            self.privacy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(agency.clone(), report);
        }
    }

    /// Why an agency may not be invited to another round, when its own last report says that
    /// one more round would exceed its budget.
    pub(crate) fn over_budget(&self, agency: &Identity) -> Option<String> {
        let map = self.privacy.lock().unwrap_or_else(|e| e.into_inner());
        let r = map.get(agency)?;
        (r.max_epsilon > 0.0 && r.epsilon_after_next_round > r.max_epsilon).then(|| {
            format!(
                "its ledger reports epsilon {:.4} spent of {:.4} at delta {:e}; one more round would bring it to {:.4}",
                r.spent_epsilon, r.max_epsilon, r.delta, r.epsilon_after_next_round
            )
        })
    }

    /// Tells watchers of `job` (its head: its rounds are not sent again with every event) what
    /// happened (an event of `kind`, with `message` for people), and logs it.
    pub(crate) fn emit(
        &self,
        job: &Job,
        kind: JobEventKind,
        round: u32,
        agency: &str,
        message: String,
    ) {
        self.send(job, kind, round, agency, message, None);
    }

    /// Tells watchers of `job` that the round of `summary` completed (the statistics round:
    /// round 0), with its summary.
    pub(crate) fn emit_round_completed(&self, job: &Job, summary: &RoundSummary, message: String) {
        self.emit_summary(job, JobEventKind::RoundCompleted, summary, message);
    }

    /// Tells watchers of `job` of an event of `kind` about the round of `summary`, with the
    /// summary (a completed round's, the final model's evaluation).
    pub(crate) fn emit_summary(
        &self,
        job: &Job,
        kind: JobEventKind,
        summary: &RoundSummary,
        message: String,
    ) {
        let round = summary.round;
        self.send(job, kind, round, "", message, Some(summary.clone()));
    }

    fn send(
        &self,
        job: &Job,
        kind: JobEventKind,
        round: u32,
        agency: &str,
        message: String,
        round_summary: Option<RoundSummary>,
    ) {
        debug_assert!(job.rounds.is_empty(), "events carry a job's head");
        tracing::info!(job = %job.job_id, round, agency, "{message}");
        let _ = self.events.send(JobEvent {
            time_unix_ms: now_ms(),
            message,
            round,
            agency: agency.to_owned(),
            job: Some(event_head(job)),
            kind: kind as i32,
            round_summary,
        });
    }

    /// The latest `spent_epsilon` an agency reported.
    pub(crate) fn reported_epsilon(&self, agency: &Identity) -> Option<f64> {
        self.privacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agency)
            .map(|r| r.spent_epsilon)
    }

    /// Logs a warning about what a peer did, capped and rate-limited per peer (see `peerlog`).
    pub(crate) fn warn_peer(&self, peer: &Identity, message: &str, detail: &str) {
        self.warnings.warn(&peer.to_string(), message, detail);
    }

    /// Runs `work` on a blocking thread, so that what it does (sled writes and their flush,
    /// file reads, signature checks, long computations) never holds up the async runtime.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T, CoordinatorError>
    where
        T: Send + 'static,
        F: FnOnce(&Coordinator) -> Result<T, CoordinatorError> + Send + 'static,
    {
        let ctx = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&ctx)).await?
    }

    /// Stores a job's head as it is now, durably, on a blocking thread.
    pub(crate) async fn save_job(self: &Arc<Self>, job: &Job) -> Result<(), CoordinatorError> {
        let job = job.clone();
        self.blocking(move |ctx| ctx.store.put_job(&job)).await
    }

    /// Appends to the audit log, durably, on a blocking thread. `agency`, when not empty, is
    /// the agency's full identity (`treaty://agency/<CC>/<id>`).
    pub(crate) async fn save_audit(
        self: &Arc<Self>,
        actor: &str,
        action: &str,
        job: &Job,
        round: u32,
        agency: &str,
        detail: String,
    ) -> Result<(), CoordinatorError> {
        let entry = audit_entry(actor, action, job, round, agency, detail);
        self.blocking(move |ctx| ctx.store.audit(&entry)).await
    }

    /// Appends the coordinator's own line about a round of `job` that completed, vouching for
    /// its results record (`results`, a SHA-256; empty when no result arrived).
    pub(crate) async fn save_audit_round(
        self: &Arc<Self>,
        action: &str,
        job: &Job,
        round: u32,
        detail: String,
        results: &str,
    ) -> Result<(), CoordinatorError> {
        let mut entry = audit_entry(&self.identity.to_string(), action, job, round, "", detail);
        entry.results = results.to_owned();
        self.blocking(move |ctx| ctx.store.audit(&entry)).await
    }

    /// Appends the coordinator's own line about `job`, vouching for `documents` (SHA-256s).
    pub(crate) async fn save_audit_documents(
        self: &Arc<Self>,
        action: &str,
        job: &Job,
        round: u32,
        detail: String,
        documents: Vec<String>,
    ) -> Result<(), CoordinatorError> {
        let mut entry = audit_entry(&self.identity.to_string(), action, job, round, "", detail);
        entry.documents = documents;
        self.blocking(move |ctx| ctx.store.audit(&entry)).await
    }
}

/// A job's head as events carry it: without the parts that grow with the federation's
/// members (its statistics round and final evaluation, each carried by its own event's
/// `round_summary`, and each agency's public record estimate), so that an event costs the
/// same to make, hold and send whatever the number of agencies: a round emits an event per
/// agency, and the channel holds up to [`EVENTS_KEPT`] of them. Every field is named, so that a
/// field added to `Job` is decided on here.
fn event_head(job: &Job) -> Job {
    let Job {
        job_id,
        federation,
        spec,
        state,
        message,
        rounds: _,
        created_by,
        created_unix_ms,
        latest_model_version,
        statistics: _,
        public_records: _,
        final_evaluation: _,
        rounds_completed,
    } = job;
    Job {
        job_id: job_id.clone(),
        federation: federation.clone(),
        spec: spec.clone(),
        state: *state,
        message: message.clone(),
        rounds: Vec::new(),
        created_by: created_by.clone(),
        created_unix_ms: *created_unix_ms,
        latest_model_version: latest_model_version.clone(),
        statistics: None,
        public_records: HashMap::new(),
        final_evaluation: None,
        rounds_completed: *rounds_completed,
    }
}

/// A line of the audit log about `job`, stamped now.
pub(crate) fn audit_entry(
    actor: &str,
    action: &str,
    job: &Job,
    round: u32,
    agency: &str,
    detail: String,
) -> AuditEntry {
    AuditEntry {
        time_unix_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        federation: job.federation.clone(),
        job: job.job_id.clone(),
        round,
        agency: agency.to_owned(),
        detail,
        ..Default::default()
    }
}
