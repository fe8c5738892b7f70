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
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    DatasetSummary, Dtype, Heartbeat, Hello, NodeMessage, PrivacyReport, ResultHeader, ResultPart,
    Task, TaskAccepted, TaskRefused, coordinator_message, node_message, result_part,
};

use crate::config::CoordinatorLink;
use crate::error::NodeError;
use crate::ledger::{Entry, Ledger};
use crate::policy::NodePolicy;
use crate::refusal::Refusal;
use crate::work::{InvalidTask, Output, Worker, blocking};

/// Everything a session needs.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub tls: ClientTls,
    pub link: CoordinatorLink,
    pub ledger: Arc<Ledger>,
    pub worker: Arc<Worker>,
    /// The agency's own country's sharing policy, checked before every task.
    pub policy: Arc<NodePolicy>,
    /// Tasks carried out at once; the others wait their turn, so that a coordinator sending
    /// many large tasks cannot exhaust the node's memory.
    pub running: Arc<tokio::sync::Semaphore>,
}

/// How many tasks a node carries out at once.
pub(crate) const CONCURRENT_TASKS: usize = 2;

fn now_ms() -> i64 {
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
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
        welcome.heartbeat_interval_ms.max(1000),
    )));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = heartbeat.tick() => {
                let beat = message(node_message::Kind::Heartbeat(Heartbeat { sent_unix_ms: now_ms() }));
                if tx.send(beat).await.is_err() {
                    return Ok(true);
                }
            }
            incoming = inbound.message() => match incoming {
                Ok(Some(m)) => match m.kind {
                    Some(coordinator_message::Kind::Task(task)) => {
                        let node = node.clone();
                        let (client, tx, recipient) = (client.clone(), tx.clone(), welcome.coordinator.clone());
                        tokio::spawn(async move { carry_out(node, client, tx, task, recipient).await });
                    }
                    Some(coordinator_message::Kind::Cancel(c)) => {
                        tracing::info!(task = c.task_id, reason = c.reason, "task cancelled by the coordinator");
                    }
                    Some(coordinator_message::Kind::Heartbeat(_)) => {}
                    Some(coordinator_message::Kind::Excluded(e)) => {
                        tracing::warn!(job = e.job_id, round = e.round, code = e.reason_code, explanation = e.explanation, "not admitted to the round by the sharing policies");
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

/// Carries out one task and sends its result, or tells the coordinator why not.
async fn carry_out(
    node: Node,
    mut client: AgencyServiceClient<Channel>,
    session: mpsc::Sender<NodeMessage>,
    task: Task,
    recipient: String,
) {
    let Ok(_turn) = node.running.clone().acquire_owned().await else {
        return;
    };
    let task_id = task.task_id.clone();
    let refuse = |r: Refusal| {
        let session = session.clone();
        let task_id = task_id.clone();
        async move {
            tracing::warn!(
                task = task_id,
                code = %r.code,
                reason = r.message,
                "task refused"
            );
            let _ = session
                .send(message(node_message::Kind::Refused(TaskRefused {
                    task_id,
                    reason_code: r.code.to_string(),
                    message: r.message,
                })))
                .await;
        }
    };
    let Some(kind) = task.kind.clone() else {
        return refuse(InvalidTask::NoKind.into()).await;
    };
    tracing::info!(
        task = task_id,
        job = task.job_id,
        round = task.round,
        "task received"
    );
    // Decide what will be released, and record it in the ledger, before touching the data.
    // Planning calibrates opendp's mechanisms: on a blocking thread.
    let worker = node.worker.clone();
    let round = task.round;
    let plan = match blocking(move || worker.plan(round, &kind))
        .await
        .and_then(|p| p)
    {
        Ok(plan) => plan,
        Err(refusal) => return refuse(refusal).await,
    };
    let entry = Entry {
        time_unix_ms: now_ms(),
        task_id: task_id.clone(),
        job_id: task.job_id.clone(),
        federation: task.federation.clone(),
        round: task.round,
        kind: plan.kind().into(),
        recipient,
        releases: Some(plan.releases.clone()),
    };
    // The agency's own policy judges the task with the ledger's spending, whatever the
    // coordinator decided, under the ledger's lock; only then is the release recorded, durably,
    // before anything is computed. The policy's files and the ledger's database are read and
    // written on a blocking thread.
    let (ledger, policy, judged) = (node.ledger.clone(), node.policy.clone(), task.clone());
    let releases = plan.releases.clone();
    let recorded = blocking(move || {
        ledger.record_if(&entry, |before| {
            policy.check(&judged, &releases, before.epsilon)
        })
    })
    .await
    .and_then(|r| r.map_err(Refusal::from));
    match recorded {
        Ok(spent) => tracing::info!(
            task = task_id,
            epsilon = spent.epsilon,
            delta = spent.delta,
            accountant = spent.accountant,
            "release recorded in the ledger"
        ),
        Err(refusal) => return refuse(refusal).await,
    }
    let _ = session
        .send(message(node_message::Kind::Accepted(TaskAccepted {
            task_id: task_id.clone(),
        })))
        .await;
    let output = match node.worker.run(&mut client, &task.job_id, &plan).await {
        Ok(output) => output,
        Err(refusal) => return refuse(refusal).await,
    };
    let ledger = node.ledger.clone();
    let report = blocking(move || ledger.report(Some(Some(plan.next))))
        .await
        .ok();
    match upload(&mut client, &task_id, output, report).await {
        Ok(()) => tracing::info!(task = task_id, "result sent"),
        Err(error) => tracing::warn!(task = task_id, %error, "result not accepted"),
    }
}

/// Sends a result: its header, then its tensors in chunks.
pub async fn upload(
    client: &mut AgencyServiceClient<Channel>,
    task_id: &str,
    output: Output,
    privacy: Option<PrivacyReport>,
) -> Result<(), NodeError> {
    let (specs, chunks) = encode(&output.tensors, Dtype::F64, DEFAULT_MAX_CHUNK_BYTES);
    let header = ResultHeader {
        task_id: task_id.to_owned(),
        num_examples: output.num_examples,
        metrics: output.metrics,
        tensors: specs,
        declared_norm_bound: 0.0,
        privacy,
        evaluation: output.evaluation.clone(),
    };
    let parts = std::iter::once(result_part::Kind::Header(header))
        .chain(chunks.into_iter().map(result_part::Kind::Chunk))
        .map(|kind| ResultPart { kind: Some(kind) });
    let receipt = client.submit_result(tokio_stream::iter(parts)).await?;
    if receipt.get_ref().accepted {
        Ok(())
    } else {
        Err(NodeError::Protocol(receipt.into_inner().message))
    }
}
