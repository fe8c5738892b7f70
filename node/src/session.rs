//! The node's side of the session: dial out to the coordinator, hold the task stream open,
//! carry out tasks, and reconnect by itself with exponential backoff when the connection breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use treaty_proto::tensor::{DEFAULT_MAX_CHUNK_BYTES, encode};
use treaty_proto::tls::ClientTls;
use treaty_proto::upload::UploadError;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    DatasetSummary, Dtype, Heartbeat, Hello, JobDecided, NodeMessage, PrivacyReport, ResultHeader,
    RoundParticipant, SubmitReceipt, Task, TaskAccepted, TaskRefused, coordinator_message,
    node_message, task,
};

use prost::Message;
use treaty_proto::hex::sha256_hex;
use treaty_proto::receipt::ResultHasher;

use crate::approval::Approvals;
use crate::config::CoordinatorLink;
use crate::error::NodeError;
use crate::ledger::{Entry, Evidence, Ledger, ReceiptRecord, Record, TaskRecord};
use crate::policy::{Judged, NodePolicy};
use crate::refusal::Refusal;
use crate::work::{InvalidTask, Output, Plan, Worker, blocking};
use treaty_proto::secagg::Params;

/// Everything a session needs.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub tls: ClientTls,
    pub link: CoordinatorLink,
    pub ledger: Arc<Ledger>,
    pub worker: Arc<Worker>,
    /// The agency's own country's sharing policy, checked before every task.
    pub policy: Arc<NodePolicy>,
    /// The node's evidence log, and its operator's approvals of jobs.
    pub evidence: Arc<Evidence>,
    pub approvals: Arc<Approvals>,
    /// The federation CA's certificate (DER), which the coordinator's receipts are checked
    /// against.
    pub ca: Arc<Vec<u8>>,
    /// The agency's own key, which signs what the node sends (none when its kind cannot sign
    /// evidence: the node then sends its results unsigned, and says so at start).
    pub signer: Option<Arc<treaty_proto::tls::KeySigner>>,
    /// Tasks carried out at once; the others wait their turn, so that a coordinator sending
    /// many large tasks cannot exhaust the node's memory.
    pub running: Arc<tokio::sync::Semaphore>,
    /// What the node's `/metrics` shows.
    pub metrics: Arc<crate::monitoring::Metrics>,
    /// The coordinator's messages of secure aggregation, routed to their tasks.
    pub secagg: Arc<crate::secure::Inboxes>,
    /// The tasks being carried out, which a node that stops waits for (up to
    /// [`WIND_DOWN`]) before its last flush, so that the evidence log says how each ended.
    pub tasks: tokio_util::task::TaskTracker,
}

/// How long a node that stops waits for its tasks to end (training stops at its next step
/// when the node stops) before its evidence log's last flush.
pub(crate) const WIND_DOWN: Duration = Duration::from_secs(5);

/// The longest task id, job id or federation name a node takes, in bytes (as the coordinator
/// bounds the names it is sent).
const MAX_NAME_BYTES: usize = 128;

/// How many tasks a node carries out at once.
pub(crate) const CONCURRENT_TASKS: usize = 2;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn message(kind: node_message::Kind) -> NodeMessage {
    NodeMessage { kind: Some(kind) }
}

/// Holds a session open until `shutdown`, reconnecting after every failure.
pub(crate) async fn run(node: Node, shutdown: CancellationToken) {
    let initial = Duration::from_millis(node.link.reconnect_initial_ms);
    let max = Duration::from_millis(node.link.reconnect_max_ms);
    let mut delay = initial;
    loop {
        let outcome = tokio::select! {
            r = serve_once(&node, &shutdown) => r,
            _ = shutdown.cancelled() => break,
        };
        match outcome {
            Ok(true) => {
                // The session was established and later ended: start again from a short delay.
                delay = initial;
                tracing::warn!(
                    coordinator = node.link.address,
                    "session ended; reconnecting"
                );
            }
            Ok(false) => break,
            Err(error) => {
                tracing::warn!(coordinator = node.link.address, %error, retry_in_ms = delay.as_millis() as u64, "cannot hold a session with the coordinator");
            }
        }
        // Jitter of up to a quarter of the delay keeps many nodes from reconnecting in step.
        let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
        tokio::select! {
            _ = tokio::time::sleep(delay + jitter) => {}
            _ = shutdown.cancelled() => break,
        }
        delay = (delay * 2).min(max);
    }
    tracing::info!("node stopped");
}

/// One session. `Ok(true)` when it was established and then ended, `Ok(false)` on shutdown.
async fn serve_once(node: &Node, shutdown: &CancellationToken) -> Result<bool, NodeError> {
    let channel = node
        .tls
        .connect(&node.link.address, Duration::from_secs(10))
        .await?;
    let client = AgencyServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(treaty_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<NodeMessage>(64);
    let datasets = std::iter::once(("train", &node.worker.train))
        .chain(node.worker.test.as_ref().map(|t| ("test", t)))
        .map(|(name, t)| DatasetSummary {
            name: name.to_owned(),
            columns: t.columns.clone(),
        })
        .collect();
    // The ledger's report walks its whole chain: on a blocking thread.
    let ledger = node.ledger.clone();
    let privacy = tokio::task::spawn_blocking(move || ledger.report(None))
        .await
        .ok();
    let hello = Hello {
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: treaty_proto::PROTOCOL_VERSION,
        datasets,
        privacy,
        participants_by_digest: true,
    };
    tx.send(message(node_message::Kind::Hello(hello)))
        .await
        .map_err(|_| NodeError::Protocol("the session closed before Hello".into()))?;
    let mut inbound = client
        .clone()
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match inbound.message().await? {
        Some(m) => match m.kind {
            Some(coordinator_message::Kind::Welcome(w)) => w,
            _ => {
                return Err(NodeError::Protocol(
                    "the first message was not Welcome".into(),
                ));
            }
        },
        None => {
            return Err(NodeError::Protocol(
                "the session closed before Welcome".into(),
            ));
        }
    };
    tracing::info!(
        identity = welcome.identity,
        coordinator = welcome.coordinator,
        "session open"
    );
    node.metrics.session(true);
    let _closed = Closed(&node.metrics);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
        welcome.heartbeat_interval_ms.max(1000),
    )));
    heartbeat.tick().await;
    let mut decisions = node.approvals.decisions();
    // The last round participants this session carried: a task may name them by digest.
    let mut participants = treaty_proto::participants::Remembered::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            decided = decisions.recv() => {
                if let Ok((job_id, approved)) = decided {
                    let told = message(node_message::Kind::Decided(JobDecided { job_id, approved }));
                    if tx.send(told).await.is_err() {
                        return Ok(true);
                    }
                }
            }
            _ = heartbeat.tick() => {
                let beat = message(node_message::Kind::Heartbeat(Heartbeat { sent_unix_ms: now_ms() }));
                if tx.send(beat).await.is_err() {
                    return Ok(true);
                }
            }
            incoming = inbound.message() => match incoming {
                Ok(Some(m)) => match m.kind {
                    Some(coordinator_message::Kind::Task(mut task)) => {
                        // Read here, in the order the tasks arrive; the list a digest names is
                        // put back when the task's turn comes, before anything reads the terms.
                        // A digest this session was not sent refuses the task.
                        let named = match task.terms.as_mut().map(|t| participants.take(t)) {
                            Some(Err(e)) => Err(Refusal::invalid(e.to_string())),
                            Some(Ok(list)) => Ok(list),
                            None => Ok(None),
                        };
                        let node = node.clone();
                        let (client, tx, recipient) = (client.clone(), tx.clone(), welcome.coordinator.clone());
                        let tasks = node.tasks.clone();
                        tasks.spawn(async move { carry_out(node, client, tx, task, recipient, named).await });
                    }
                    Some(coordinator_message::Kind::Cancel(c)) => {
                        tracing::info!(task = c.task_id, reason = c.reason, "task cancelled by the coordinator");
                    }
                    Some(coordinator_message::Kind::Heartbeat(_)) => {}
                    Some(coordinator_message::Kind::Excluded(e)) => {
                        tracing::warn!(job = e.job_id, round = e.round, code = e.reason_code, explanation = e.explanation, "not admitted to the round by the sharing policies");
                    }
                    Some(coordinator_message::Kind::Secagg(m)) => {
                        if !node.secagg.deliver(m) {
                            tracing::warn!("a secure aggregation message for no waiting task; ignored");
                        }
                    }
                    Some(coordinator_message::Kind::Welcome(_)) | None => {
                        tracing::warn!("unexpected message on the session; ignored");
                    }
                },
                Ok(None) => return Ok(true),
                Err(status) => {
                    tracing::warn!(%status, "session broke");
                    return Ok(true);
                }
            }
        }
    }
}

/// Marks the session closed in the node's metrics when dropped (however the session ends).
struct Closed<'a>(&'a crate::monitoring::Metrics);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.session(false);
    }
}

/// Carries out one task and sends its result, or tells the coordinator why not, keeping the
/// node's evidence log: what it was asked and decided, and the SHA-256 of what it sends —
/// written before it leaves, so that a crash cannot leave a result at the coordinator that the
/// node's log does not show — then the coordinator's signed receipt.
async fn carry_out(
    node: Node,
    mut client: AgencyServiceClient<Channel>,
    session: mpsc::Sender<NodeMessage>,
    mut task: Task,
    recipient: String,
    named: Result<Option<Arc<Vec<RoundParticipant>>>, Refusal>,
) {
    let arrived = std::time::Instant::now();
    let Ok(_turn) = node.running.clone().acquire_owned().await else {
        return;
    };
    // A node that stops begins no task: one that waited for its turn ends here, before the
    // ledger, as it would have with the node gone.
    if node.worker.stop.is_cancelled() {
        return;
    }
    let unknown = match (named, task.terms.as_mut()) {
        (Ok(Some(list)), Some(terms)) => {
            treaty_proto::participants::restore(terms, &list);
            None
        }
        (Ok(_), _) => None,
        (Err(refusal), _) => Some(refusal),
    };
    // What the evidence log keeps of a task is bounded: a task named beyond the bound is
    // refused and recorded by its names' first bytes.
    let oversized = [&task.task_id, &task.job_id, &task.federation]
        .iter()
        .any(|t| t.len() > MAX_NAME_BYTES);
    let bounded = |t: &str| t.chars().take(MAX_NAME_BYTES).collect::<String>();
    let mut record = TaskRecord {
        time_unix_ms: now_ms(),
        task_id: bounded(&task.task_id),
        job_id: bounded(&task.job_id),
        federation: bounded(&task.federation),
        round: task.round,
        task_kind: match &task.kind {
            Some(task::Kind::Training(_)) => "training",
            Some(task::Kind::Stats(_)) => "statistics",
            Some(task::Kind::Evaluation(_)) => "evaluation",
            Some(task::Kind::Query(_)) => "query",
            None => "",
        }
        .to_owned(),
        coordinator: recipient.clone(),
        terms_sha256: task
            .terms
            .as_ref()
            .map(|t| sha256_hex(&t.encode_to_vec()))
            .unwrap_or_default(),
        decision: "refused".to_owned(),
        code: String::new(),
        message: String::new(),
        policy_sha256: String::new(),
        registry_sha256: String::new(),
        ledger_seq: None,
        sent_sha256: String::new(),
    };
    // From here on the task is only read: the hand-overs to blocking threads share it rather
    // than copy it (with its participants, a list as long as the federation, every round).
    let task = Arc::new(task);
    let attempted = match (oversized, unknown) {
        (true, _) => Err(Refusal::invalid(format!(
            "a task's id, job and federation are at most {MAX_NAME_BYTES} bytes each"
        ))),
        (false, Some(unknown)) => Err(unknown),
        (false, None) => {
            attempt(&node, &mut client, &session, &task, &recipient, &mut record).await
        }
    };
    let (outcome, code) = match &attempted {
        Ok(Sent::Received(_)) => ("sent", None),
        Ok(Sent::Failed(_)) => ("failed", None),
        Err(refusal) => ("refused", Some(refusal.code.to_string())),
    };
    node.metrics.task(
        &record.task_kind,
        outcome,
        code.as_deref(),
        arrived.elapsed(),
    );
    let after = match attempted {
        Ok(Sent::Received(receipt)) => receipt.map(Record::Receipt),
        Ok(Sent::Failed(error)) => {
            record.decision = "failed".to_owned();
            record.message = error;
            Some(Record::Task(record))
        }
        Err(refusal) => {
            tracing::warn!(
                task = task.task_id,
                code = %refusal.code,
                reason = refusal.message,
                "task refused"
            );
            record.code = refusal.code.to_string();
            record.message = refusal.message.clone();
            let _ = session
                .send(message(node_message::Kind::Refused(TaskRefused {
                    task_id: task.task_id.clone(),
                    reason_code: refusal.code.to_string(),
                    message: refusal.message,
                })))
                .await;
            Some(Record::Task(record))
        }
    };
    if let Some(record) = after {
        record_evidence(&node, &task.task_id, record).await;
    }
}

/// How long a record written after the fact may wait for the database's next flush before
/// it is flushed on its own.
const LATER_DURABLE_WITHIN: Duration = Duration::from_secs(1);

/// Appends `record` to the node's evidence log (on a blocking thread), durable soon: it is
/// written after the fact (the coordinator's receipt, a refusal already sent, a result that did
/// not arrive) and nothing the node does next depends on it. A crash before it is flushed
/// leaves the log as a crash just before it was written would. The next task's ledger entry
/// flushes it with its own; a node without one flushes it within [`LATER_DURABLE_WITHIN`]. (The
/// record of a result about to leave is written and flushed before it leaves, in [`attempt`].)
/// A failure is logged.
async fn record_evidence(node: &Node, task_id: &str, record: Record) {
    let evidence = node.evidence.clone();
    let appended = blocking(move || evidence.append_later(record).map(|(_, first)| first));
    let failed = match appended.await {
        Ok(Ok(flush_soon)) => {
            if flush_soon {
                let (evidence, task_id) = (node.evidence.clone(), task_id.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(LATER_DURABLE_WITHIN).await;
                    if let Ok(Err(error)) = blocking(move || evidence.flush()).await {
                        tracing::error!(
                            task = task_id,
                            %error,
                            "the node's evidence log could not be flushed"
                        );
                    }
                });
            }
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(refusal) => refusal.message,
    };
    tracing::error!(
        task = task_id,
        error = failed,
        "the task could not be recorded in the node's evidence log"
    );
}

/// What became of a result the node sent.
enum Sent {
    /// The coordinator took it in, with its receipt (when it sent one).
    Received(Option<ReceiptRecord>),
    /// It did not arrive, or was turned away: why.
    Failed(String),
}

/// What [`carry_out`] does: the checks, the ledger, the work, the evidence of what is sent,
/// the upload.
async fn attempt(
    node: &Node,
    client: &mut AgencyServiceClient<Channel>,
    session: &mpsc::Sender<NodeMessage>,
    task: &Arc<Task>,
    recipient: &str,
    record: &mut TaskRecord,
) -> Result<Sent, Refusal> {
    let task_id = task.task_id.clone();
    let Some(kind) = task.kind.clone() else {
        return Err(InvalidTask::NoKind.into());
    };
    tracing::info!(
        task = task_id,
        job = task.job_id,
        round = task.round,
        "task received"
    );
    // A node that requires its operator's approval takes part only in approved jobs; this
    // depends on the operator's decisions alone.
    node.approvals.check(task, recipient, now_ms())?;
    // A round of secure aggregation is checked from the task alone, before the ledger.
    let secure = crate::secure::params(task, node.tls.identity())?;
    let secure_signer = match (&secure, &node.signer) {
        (Some(_), None) => {
            return Err(Refusal::new(
                crate::refusal::RefusalCode::SecureAggregationFailed,
                "secure aggregation needs the agency's key to sign its keys, and this node's key cannot sign",
            ));
        }
        (_, signer) => signer.clone(),
    };
    // Decide what will be released, and record it in the ledger, before touching the data.
    // Planning calibrates opendp's mechanisms; the agency's own policy judges the task with the
    // ledger's spending, whatever the coordinator decided, under the ledger's lock, and so does
    // its operator's approval of the job's budget; only then is the release recorded, durably,
    // before anything is computed. All of it on one blocking thread (the policy's files and the
    // ledger's database are read and written there), one hand-over from the session and back.
    let (worker, ledger, policy, approvals, judged) = (
        node.worker.clone(),
        node.ledger.clone(),
        node.policy.clone(),
        node.approvals.clone(),
        Arc::clone(task),
    );
    let (planned, recipient_owned) = (secure.clone(), recipient.to_owned());
    let (plan, recorded, texts) = blocking(move || {
        let plan = worker.plan_round(judged.round, &kind, planned.as_ref())?;
        let entry = ledger_entry(&judged, &plan, planned.as_ref(), &recipient_owned);
        let mut texts = Judged::default();
        let recorded = ledger
            .record_if(&entry, |before, entries| {
                texts = policy.check(&judged, &plan.releases, before.epsilon)?;
                approvals.within_approved(&judged, entries, &plan.releases)
            })
            .map_err(Refusal::from)?;
        Ok::<_, Refusal>((plan, recorded, texts))
    })
    .await??;
    record.policy_sha256 = texts.policy_sha256;
    record.registry_sha256 = texts.registry_sha256;
    record.ledger_seq = Some(recorded.seq);
    let spent = recorded.spent;
    tracing::info!(
        task = task_id,
        epsilon = spent.epsilon,
        delta = spent.delta,
        accountant = spent.accountant,
        "release recorded in the ledger"
    );
    let _ = session
        .send(message(node_message::Kind::Accepted(TaskAccepted {
            task_id: task_id.clone(),
        })))
        .await;
    let (output, secure) = match (secure, secure_signer) {
        (Some(params), Some(signer)) => {
            let inbox = node.secagg.open(&task_id);
            let mut round = crate::secure::SecureTask::start(
                params,
                node.tls.identity(),
                signer,
                node.ca.clone(),
                inbox,
                session.clone(),
                task,
                plan.distributed().map(|d| d.scale),
            )
            .await?;
            // The key exchange goes on while the node trains.
            let (output, shares) = tokio::try_join!(
                node.worker.run(client, &task.job_id, &plan),
                round.exchange()
            )?;
            let (output, masked) = round.mask(shares, output).await?;
            (output, Some((round, masked)))
        }
        _ => (node.worker.run(client, &task.job_id, &plan).await?, None),
    };
    let (masked, secure) = match secure {
        Some((round, masked)) => (Some(masked), Some(round)),
        None => (None, None),
    };
    // On one blocking thread: the ledger's report, the result encoded, hashed and signed (its
    // whole size), and, write-ahead, the evidence log's record of what the node sends, durable
    // before it leaves. An approval revoked while the node computed stops the result before
    // the record (the ledger keeps the release: it over-counts, never under-counts).
    let (ledger, job, federation) = (
        node.ledger.clone(),
        task.job_id.clone(),
        task.federation.clone(),
    );
    let (signer, agency, id) = (
        node.signer.clone(),
        node.tls.identity().to_string(),
        task_id.clone(),
    );
    let (approvals, evidence, judged) = (
        node.approvals.clone(),
        node.evidence.clone(),
        Arc::clone(task),
    );
    let mut sent = record.clone();
    let (result, sent) = blocking(move || {
        let report = Some(ledger.report_for(Some((&job, &federation)), Some(Some(plan.next))));
        let mut result = match masked {
            Some(masked) => Outgoing::masked(&id, output, &masked, report),
            None => Outgoing::new(&id, output, report),
        };
        if let Some(signer) = &signer {
            result.sign(signer, &agency)?;
        }
        approvals.still_approved(&judged)?;
        sent.decision = "sent".to_owned();
        sent.sent_sha256 = result.sha256.clone();
        if let Err(error) = evidence.append(Record::Task(sent.clone())) {
            tracing::error!(
                task = id,
                %error,
                "the task could not be recorded in the node's evidence log"
            );
            return Err(Refusal::internal(
                "the node's evidence log cannot be written, so the result is not sent",
            ));
        }
        Ok::<_, Refusal>((result, sent))
    })
    .await??;
    *record = sent;
    let sha256 = result.sha256.clone();
    match result.send(client).await {
        Ok(answer) => {
            tracing::info!(task = task_id, "result sent");
            let receipt = receipt_of(node, &task_id, &sha256, answer);
            // Secure aggregation's last steps: the masked update is out; the survivors are
            // signed and this agency's shares revealed so that the sum can be recovered.
            if let Some(round) = secure {
                match round.unmask().await {
                    Ok(()) => tracing::info!(task = task_id, "secure aggregation: shares revealed"),
                    Err(refusal) => {
                        tracing::warn!(task = task_id, code = %refusal.code, reason = refusal.message, "secure aggregation stopped after the masked update was sent")
                    }
                }
            }
            Ok(Sent::Received(receipt))
        }
        Err(error) => {
            tracing::warn!(task = task_id, %error, "result not accepted");
            Ok(Sent::Failed(error.to_string()))
        }
    }
}

/// The ledger entry of `task`'s releases, as planned, for `recipient`.
fn ledger_entry(task: &Task, plan: &Plan, secure: Option<&Params>, recipient: &str) -> Entry {
    Entry {
        time_unix_ms: now_ms(),
        task_id: task.task_id.clone(),
        job_id: task.job_id.clone(),
        federation: task.federation.clone(),
        round: task.round,
        kind: plan.kind().into(),
        recipient: recipient.to_owned(),
        releases: Some(plan.releases.clone()),
        // Under secure aggregation the update leaves masked, with its full local noise or, under
        // distributed DP, this agency's share of the noise the sum carries.
        secure_aggregation: secure.map(|p| {
            let distributed = plan.distributed();
            crate::ledger::SecureAggregation {
                agencies: p.participants.len() as u32,
                threshold: p.threshold as u32,
                // Counting on other agencies' shares, or on its own whole noise.
                noise: match distributed {
                    Some(d) if d.honest >= 2 => "distributed".into(),
                    _ => "local".into(),
                },
                assumed_dishonest: distributed.map(|d| d.dishonest),
                honest: distributed.map(|d| d.honest),
            }
        }),
    }
}

/// The coordinator's receipt for the result of `task_id` whose hash is `sent`, checked: signed
/// by a coordinator of the federation's CA, for this task and this agency. A receipt that fails
/// its checks is kept too, marked as not matching, and the node warns: it is evidence of what
/// the coordinator said.
fn receipt_of(
    node: &Node,
    task_id: &str,
    sent: &str,
    answer: SubmitReceipt,
) -> Option<ReceiptRecord> {
    if answer.statement.is_empty() {
        tracing::warn!(
            task = task_id,
            "the coordinator sent no signed receipt for the result"
        );
        return None;
    }
    let checked = treaty_proto::receipt::verify(&answer, &node.ca).and_then(|r| {
        let me = node.tls.identity().to_string();
        match (
            r.task_id == task_id,
            r.agency == me,
            r.result_sha256 == sent,
        ) {
            (true, true, true) => Ok(()),
            (false, _, _) => Err(format!("it names task `{}`", r.task_id)),
            (_, false, _) => Err(format!("it names agency `{}`", r.agency)),
            (_, _, false) => Err(format!(
                "it names the result {}, but the node sent {sent}",
                r.result_sha256
            )),
        }
    });
    if let Err(problem) = &checked {
        tracing::warn!(
            task = task_id,
            problem,
            "the coordinator's receipt does not match what the node sent"
        );
    }
    Some(ReceiptRecord {
        time_unix_ms: now_ms(),
        task_id: task_id.to_owned(),
        statement: answer.statement,
        signature: answer.signature,
        scheme: answer.scheme,
        certificate: answer.certificate,
        matches_sent: checked.is_ok(),
    })
}

/// A result ready to send: its header and chunks, and its SHA-256 as it will travel
/// (`treaty_proto::receipt::ResultHasher`).
pub(crate) struct Outgoing {
    header: ResultHeader,
    chunks: Vec<treaty_proto::v1::TensorChunk>,
    /// The agency's signed statement of what it sends, sent last.
    sent: Option<treaty_proto::v1::SignedStatement>,
    pub(crate) sha256: String,
}

impl Outgoing {
    /// The result of `task_id`: `output`'s tensors in chunks, with the node's privacy report.
    pub(crate) fn new(task_id: &str, output: Output, privacy: Option<PrivacyReport>) -> Self {
        let (specs, chunks) = encode(&output.tensors, Dtype::F64, DEFAULT_MAX_CHUNK_BYTES);
        Self::of(task_id, output, specs, chunks, privacy)
    }

    /// The result of `task_id` under secure aggregation: its masked update, laid out as the
    /// global model, in chunks of ring elements; `output`'s evaluation and the privacy report.
    pub(crate) fn masked(
        task_id: &str,
        output: Output,
        masked: &[u64],
        privacy: Option<PrivacyReport>,
    ) -> Self {
        let layout = treaty_proto::secagg::layout(&output.started_from, output.ring.is_some());
        let (specs, chunks) =
            treaty_proto::tensor::encode_masked(&layout, masked, DEFAULT_MAX_CHUNK_BYTES);
        Self::of(task_id, output, specs, chunks, privacy)
    }

    fn of(
        task_id: &str,
        output: Output,
        specs: Vec<treaty_proto::v1::TensorSpec>,
        chunks: Vec<treaty_proto::v1::TensorChunk>,
        privacy: Option<PrivacyReport>,
    ) -> Self {
        let header = ResultHeader {
            task_id: task_id.to_owned(),
            num_examples: output.num_examples,
            metrics: output.metrics,
            tensors: specs,
            declared_norm_bound: 0.0,
            privacy,
            evaluation: output.evaluation.clone(),
        };
        let mut hasher = ResultHasher::new(&header);
        chunks.iter().for_each(|c| hasher.chunk(c));
        let sha256 = hasher.finish();
        Outgoing {
            header,
            chunks,
            sent: None,
            sha256,
        }
    }

    /// Signs, as `agency`, the statement that it sends this result.
    pub(crate) fn sign(
        &mut self,
        signer: &treaty_proto::tls::KeySigner,
        agency: &str,
    ) -> Result<(), Refusal> {
        let sent = treaty_proto::receipt::Sent {
            agency: agency.to_owned(),
            task_id: self.header.task_id.clone(),
            result_sha256: self.sha256.clone(),
        };
        self.sent = Some(sent.signed(signer).map_err(Refusal::internal)?);
        Ok(())
    }

    /// Sends it: the header; once the coordinator admits it, the chunks and the signed
    /// statement. The coordinator's answer with its receipt.
    pub(crate) async fn send(
        self,
        client: &mut AgencyServiceClient<Channel>,
    ) -> Result<SubmitReceipt, NodeError> {
        let receipt = treaty_proto::upload::submit(client, self.header, self.chunks, self.sent)
            .await
            .map_err(|e| match e {
                UploadError::Status(status) => NodeError::from(status),
                UploadError::Protocol(what) => NodeError::Protocol(what.to_owned()),
            })?;
        if receipt.accepted {
            Ok(receipt)
        } else {
            Err(NodeError::Protocol(receipt.message))
        }
    }
}

/// Sends a result: its header, then its tensors in chunks. Its SHA-256 as sent, and the
/// coordinator's answer with its receipt.
pub async fn upload(
    client: &mut AgencyServiceClient<Channel>,
    task_id: &str,
    output: Output,
    privacy: Option<PrivacyReport>,
) -> Result<(String, SubmitReceipt), NodeError> {
    let result = Outgoing::new(task_id, output, privacy);
    let sha256 = result.sha256.clone();
    Ok((sha256, result.send(client).await?))
}
