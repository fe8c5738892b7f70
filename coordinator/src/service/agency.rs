//! `treaty.v1.AgencyService`: sessions, result uploads and model downloads for agencies' nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use treaty_proto::receipt::{Receipt, ResultHasher, SignedSent, verify_sent};
use treaty_proto::tensor::{Assembler, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::v1::agency_service_server::AgencyService;
use treaty_proto::v1::{
    CoordinatorMessage, DownloadModelRequest, ModelPart, NodeMessage, ResultAdmitted, ResultPart,
    SubmitReceipt, SubmitReply, Welcome, coordinator_message, node_message, result_part,
    submit_reply,
};

use treaty_proto::Identity;

use super::{BoxStream, download_of, job_ref, model_parts, require_agency};
use crate::error::CoordinatorError;
use crate::limits::{self, MAX_BAD_MESSAGES_PER_SESSION, STAGED_CHUNK_TIMEOUT, STAGING_SLOTS};
use crate::peerlog::capped;
use crate::rounds;
use crate::sessions::Session;
use crate::state::{Coordinator, now_ms};
use crate::tasks::{Intake, Outcome, StagedUpdate, TaskResult};

/// How long a node has to say `Hello` after opening its session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open session checks whether its certificate has been revoked since.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// How often nodes are asked to send heartbeats.
const HEARTBEAT_INTERVAL_MS: u32 = 5_000;

/// The agency service.
#[derive(Debug, Clone)]
pub(crate) struct AgencyApi {
    ctx: Arc<Coordinator>,
}

impl AgencyApi {
    pub(crate) fn new(ctx: Arc<Coordinator>) -> Self {
        AgencyApi { ctx }
    }
}

#[tonic::async_trait]
impl AgencyService for AgencyApi {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;
    type SubmitResultStream = ReceiverStream<Result<SubmitReply, Status>>;
    type DownloadModelStream = BoxStream<ModelPart>;

    async fn session(
        &self,
        request: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (agency, peer) = require_agency(&self.ctx, &request)?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(NodeMessage {
                kind: Some(node_message::Kind::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(CoordinatorError::NoHello {
                    secs: HELLO_TIMEOUT.as_secs(),
                }
                .into());
            }
            Ok(Ok(_)) => return Err(CoordinatorError::NotHello.into()),
        };
        if let Err(bound) = limits::check_hello(&hello) {
            self.ctx
                .warn_peer(&agency, "Hello refused: over a bound", &bound.to_string());
            return Err(CoordinatorError::HelloOverBound(bound).into());
        }
        if hello.protocol_version != treaty_proto::PROTOCOL_VERSION {
            return Err(CoordinatorError::ProtocolVersion {
                node: hello.protocol_version,
                ours: treaty_proto::PROTOCOL_VERSION,
            }
            .into());
        }
        let (tx, rx) = mpsc::channel(64);
        let welcome = CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Welcome(Welcome {
                identity: peer.identity.to_string(),
                coordinator: self.ctx.identity.to_string(),
                heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
                max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES as u32,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| CoordinatorError::SessionClosed)?;
        let id = self.ctx.sessions.next_id();
        let closer = tx.clone();
        self.ctx.sessions.register(
            &agency,
            Session {
                participants: hello.participants_by_digest.then(Default::default),
                id,
                outbox: tx,
                connected_unix_ms: now_ms(),
                software_version: hello.software_version.clone(),
                datasets: hello.datasets.clone(),
            },
        );
        self.ctx.note_privacy(&agency, hello.privacy);
        tracing::info!(%agency, version = hello.software_version, "node connected");

        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut revocation = tokio::time::interval(REVOCATION_CHECK);
            let mut bad = 0u32;
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = ctx.shutdown.cancelled() => break,
                    _ = revocation.tick() => {
                        if ctx.tls.is_revoked(&peer.serial) {
                            tracing::warn!(%agency, serial = peer.serial, "certificate revoked; session closed");
                            break;
                        }
                        continue;
                    }
                };
                let usable = match message {
                    Ok(Some(NodeMessage { kind: Some(kind) })) => handle(&ctx, &agency, kind),
                    Ok(Some(NodeMessage { kind: None })) => {
                        ctx.warn_peer(&agency, "empty message on session; ignored", "");
                        false
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let status = status.to_string();
                        tracing::info!(%agency, status = %capped(&status), "session ended with an error");
                        break;
                    }
                };
                if !usable {
                    bad += 1;
                    if bad >= MAX_BAD_MESSAGES_PER_SESSION {
                        tracing::warn!(%agency, bad, "session closed: too many unusable messages");
                        let _ = closer
                            .try_send(Err(CoordinatorError::TooManyUnusable { count: bad }.into()));
                        break;
                    }
                }
            }
            ctx.sessions.unregister(&agency, id);
            ctx.warnings.close(&agency.to_string());
            tracing::info!(%agency, "node disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn submit_result(
        &self,
        request: Request<Streaming<ResultPart>>,
    ) -> Result<Response<Self::SubmitResultStream>, Status> {
        let (agency, _) = require_agency(&self.ctx, &request)?;
        let mut parts = request.into_inner();
        let header = match parts.message().await? {
            Some(ResultPart {
                kind: Some(result_part::Kind::Header(h)),
            }) => h,
            _ => return Err(CoordinatorError::NoResultHeader.into()),
        };
        if let Err(bound) = limits::check_result_header(&header) {
            self.ctx
                .warn_peer(&agency, "result refused: over a bound", &bound.to_string());
            return Err(CoordinatorError::ResultOverBound(bound).into());
        }
        let intake = self
            .ctx
            .tasks
            .check(&header.task_id, &agency)
            .map_err(CoordinatorError::from)?;
        self.ctx.note_privacy(&agency, header.privacy.clone());
        // The upload is admitted, read and answered on a task of its own: the answer's stream
        // is open before the node sends its chunks.
        let (tx, rx) = mpsc::channel(2);
        let ctx = Arc::clone(&self.ctx);
        tokio::spawn(async move {
            let answer = take_result(&ctx, agency, parts, header, intake, &tx)
                .await
                .map(|receipt| SubmitReply {
                    kind: Some(submit_reply::Kind::Receipt(receipt)),
                })
                .map_err(Status::from);
            // A node that has gone needs no answer.
            let _ = tx.send(answer).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn download_model(
        &self,
        request: Request<DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let (agency, _) = require_agency(&self.ctx, &request)?;
        let open = self.ctx.downloads.open(&agency)?;
        let req = request.into_inner();
        // The store's reads (the job, its federation, the model) and the chunking run on a
        // blocking thread.
        let parts = self
            .ctx
            .blocking(move |ctx| {
                let job = job_ref(ctx, &req.job_id)?;
                let member = ctx.members.contains(&ctx.store, &job.federation, &agency)?;
                if !member {
                    return Err(CoordinatorError::NotAMember {
                        agency,
                        federation: job.federation,
                    });
                }
                model_parts(ctx, &req.job_id, &req.model_version)
            })
            .await?;
        Ok(Response::new(download_of(parts, open)))
    }
}

/// Admits an upload, reads its result, delivers it to its round, and signs the receipt.
async fn take_result(
    ctx: &Coordinator,
    agency: Identity,
    mut parts: Streaming<ResultPart>,
    header: treaty_proto::v1::ResultHeader,
    intake: Intake,
    answers: &mpsc::Sender<Result<SubmitReply, Status>>,
) -> Result<SubmitReceipt, CoordinatorError> {
    let mut hasher = ResultHasher::new(&header);
    let received = match admit(ctx, &agency, &header, intake, answers).await? {
        Ok((assembler, slot)) => {
            receive(
                ctx,
                &agency,
                &mut parts,
                &header,
                assembler,
                slot,
                &mut hasher,
            )
            .await
        }
        Err(reason) => Err(reason),
    };
    let sha256 = hasher.finish();
    let outcome = match received {
        Ok((tensors, staged, received, sent)) => Outcome::Result(Box::new(TaskResult {
            sha256: sha256.clone(),
            sent,
            num_examples: header.num_examples,
            metrics: header.metrics.clone(),
            tensors,
            staged,
            received,
            declared_norm_bound: header.declared_norm_bound,
            evaluation: header.evaluation.clone(),
            privacy: header.privacy.clone(),
        })),
        Err(reason) => {
            ctx.warn_peer(
                &agency,
                &format!("result for task `{}` rejected on arrival", header.task_id),
                &reason,
            );
            Outcome::Invalid(reason)
        }
    };
    let rejected = match &outcome {
        Outcome::Invalid(reason) => Some(reason.clone()),
        _ => None,
    };
    ctx.tasks.deliver(&header.task_id, &agency, outcome)?;
    if let Some(reason) = rejected {
        return Err(CoordinatorError::ResultRejected { reason });
    }
    // The receipt, signed with the coordinator's key: which result it took in from whom (its
    // round's record says whether it contributed).
    let receipt = Receipt {
        coordinator: ctx.identity.to_string(),
        agency: agency.to_string(),
        task_id: header.task_id.clone(),
        result_sha256: sha256,
        accepted: true,
        message: String::new(),
        received_unix_ms: now_ms(),
    };
    match ctx.store.signer() {
        Some(signer) => Ok(receipt.signed(signer)?),
        None => Ok(SubmitReceipt {
            accepted: true,
            ..Default::default()
        }),
    }
}

/// Admits an upload and tells its node so: its header's claims checked, at once when its
/// result is taken in whole; when it is to be folded in, once one of the coordinator's staging
/// slots is free (held until the update is dropped) and if its task is still open then. The
/// chunks' assembler and the slot; the reason in words when the upload is refused. An error
/// when there is no upload left to refuse: its node left while it waited (its task stays
/// open, as when it never uploaded), or the coordinator is stopping.
async fn admit(
    ctx: &Coordinator,
    agency: &Identity,
    header: &treaty_proto::v1::ResultHeader,
    intake: Intake,
    answers: &mpsc::Sender<Result<SubmitReply, Status>>,
) -> Result<Result<(Assembler, Option<OwnedSemaphorePermit>), String>, CoordinatorError> {
    let assembler = match assembler_for(ctx, header) {
        Ok(assembler) => assembler,
        Err(reason) => return Ok(Err(reason)),
    };
    let slot = match intake {
        Intake::Whole => None,
        Intake::Staged => {
            let gone = |reason: &str| CoordinatorError::ResultRejected {
                reason: reason.to_owned(),
            };
            let slot = tokio::select! {
                slot = ctx.staging.clone().acquire_owned() => {
                    slot.map_err(|_| gone("the coordinator is shutting down"))?
                }
                () = answers.closed() => {
                    return Err(gone("the node left before its upload was admitted"));
                }
                () = ctx.shutdown.cancelled() => {
                    return Err(gone("the coordinator is shutting down"));
                }
            };
            // The round may have ended while the upload waited.
            if let Err(e) = ctx.tasks.check(&header.task_id, agency) {
                return Ok(Err(e.to_string()));
            }
            Some(slot)
        }
    };
    let admitted = SubmitReply {
        kind: Some(submit_reply::Kind::Admitted(ResultAdmitted {})),
    };
    // A node that has gone is found by the reading that follows.
    let _ = answers.send(Ok(admitted)).await;
    Ok(Ok((assembler, slot)))
}

/// The assembler of a result's chunks, once its header's claims are checked; the reason in
/// words when they are unusable.
fn assembler_for(
    ctx: &Coordinator,
    header: &treaty_proto::v1::ResultHeader,
) -> Result<Assembler, String> {
    let limits = &ctx.limits;
    if header.num_examples > limits.max_records_per_agency {
        return Err(format!(
            "the result claims {} examples, above the {} records one agency may hold (`limits.max_records_per_agency`)",
            header.num_examples, limits.max_records_per_agency
        ));
    }
    if let Some((name, value)) = header.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(format!("metric `{name}` is not finite ({value})"));
    }
    if !header.declared_norm_bound.is_finite() || header.declared_norm_bound < 0.0 {
        return Err(format!(
            "the declared norm bound {} is not a non-negative number",
            header.declared_norm_bound
        ));
    }
    Assembler::new(
        header.tensors.clone(),
        limits.max_update_elements,
        DEFAULT_MAX_CHUNK_BYTES,
    )
    .map_err(|e| e.to_string())
}

/// Reads the chunks of an admitted result and checks them; the reason in words when they are
/// unusable. A result taken in whole is decoded; one to be folded in (admitted with a staging
/// `slot`) is kept as it arrived, with its slot. Also when the stream ended.
async fn receive(
    ctx: &Coordinator,
    agency: &Identity,
    parts: &mut Streaming<ResultPart>,
    header: &treaty_proto::v1::ResultHeader,
    mut assembler: Assembler,
    slot: Option<OwnedSemaphorePermit>,
    hasher: &mut ResultHasher,
) -> Result<Received, String> {
    let mut sent: Option<SignedSent> = None;
    loop {
        let next = match slot {
            None => parts.message().await,
            Some(_) => tokio::time::timeout(STAGED_CHUNK_TIMEOUT, parts.message())
                .await
                .map_err(|_| {
                    format!(
                        "no chunk for {} s while the upload held one of the coordinator's {STAGING_SLOTS} staging slots",
                        STAGED_CHUNK_TIMEOUT.as_secs()
                    )
                })?,
        };
        match next {
            Ok(Some(ResultPart {
                kind: Some(result_part::Kind::Chunk(_)),
            })) if sent.is_some() => {
                return Err("a result's chunk came after its signed statement".into());
            }
            Ok(Some(ResultPart {
                kind: Some(result_part::Kind::Sent(statement)),
            })) if sent.is_none() => {
                sent = Some(sender_statement(ctx, agency, header, hasher, statement)?);
            }
            Ok(Some(ResultPart {
                kind: Some(result_part::Kind::Chunk(chunk)),
            })) => {
                hasher.chunk(&chunk);
                assembler.push(chunk).map_err(|e| e.to_string())?;
                if slot.is_some() {
                    // A staged upload stops as soon as its round has ended.
                    ctx.tasks
                        .check(&header.task_id, agency)
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(Some(_)) => {
                return Err(
                    "a result holds a second header, a second signed statement or an empty part"
                        .into(),
                );
            }
            Ok(None) => break,
            Err(status) => return Err(format!("the upload broke off: {}", status.message())),
        }
    }
    let ended = Instant::now();
    match slot {
        None => Ok((
            assembler.finish().map_err(|e| e.to_string())?,
            None,
            ended,
            sent,
        )),
        Some(slot) => {
            let tensors = assembler.finish_staged().map_err(|e| e.to_string())?;
            let staged = StagedUpdate {
                tensors,
                _slot: slot,
            };
            Ok((Vec::new(), Some(staged), ended, sent))
        }
    }
}

/// A result as it arrived: its tensors (or staged update), when it ended, and its sender's
/// signed statement of it.
type Received = (
    Vec<NamedTensor>,
    Option<StagedUpdate>,
    Instant,
    Option<SignedSent>,
);

/// The sending agency's signed statement of the result it sent, checked: bounded, signed by an
/// agency certificate of the federation CA, by the agency of the connection, for this task and
/// for the result that arrived (its hash so far, every chunk taken).
fn sender_statement(
    ctx: &Coordinator,
    agency: &Identity,
    header: &treaty_proto::v1::ResultHeader,
    hasher: &ResultHasher,
    signed: treaty_proto::v1::SignedStatement,
) -> Result<SignedSent, String> {
    limits::check_signed_statement(&signed).map_err(|b| b.to_string())?;
    let ca = ctx
        .store
        .signer()
        .map(|s| s.ca_certificate().to_vec())
        .ok_or("the coordinator keeps no CA certificate to check the result's signature by")?;
    let sent = verify_sent(&signed, &ca).map_err(|e| format!("its signed statement: {e}"))?;
    let arrived = hasher.current();
    if sent.agency != agency.to_string()
        || sent.task_id != header.task_id
        || sent.result_sha256 != arrived
    {
        return Err(format!(
            "its signed statement names {} of task `{}` from `{}`, but {arrived} of task `{}` arrived from `{agency}`",
            sent.result_sha256, sent.task_id, sent.agency, header.task_id
        ));
    }
    Ok(signed.into())
}

/// Handles one message of a session; whether it was usable (unusable ones are counted, and a
/// session that sends too many is closed).
fn handle(ctx: &Coordinator, agency: &Identity, kind: node_message::Kind) -> bool {
    match kind {
        node_message::Kind::Refused(r) => {
            if let Err(bound) = limits::check_refused(&r) {
                ctx.warn_peer(agency, "refusal ignored: over a bound", &bound.to_string());
                return false;
            }
            let task = r.task_id.clone();
            let outcome = Outcome::Refused {
                reason_code: r.reason_code,
                message: r.message,
            };
            match ctx.tasks.deliver(&task, agency, outcome) {
                Ok(()) => true,
                Err(error) => {
                    ctx.warn_peer(agency, "refusal ignored", &error.to_string());
                    false
                }
            }
        }
        node_message::Kind::Accepted(a) => {
            if let Err(bound) = limits::check_accepted(&a) {
                ctx.warn_peer(
                    agency,
                    "acceptance ignored: over a bound",
                    &bound.to_string(),
                );
                return false;
            }
            tracing::debug!(%agency, task = a.task_id, "task accepted");
            true
        }
        node_message::Kind::Heartbeat(_) => {
            tracing::trace!(%agency, "heartbeat");
            true
        }
        node_message::Kind::Decided(d) => {
            if d.job_id.len() > limits::MAX_NAME_BYTES {
                ctx.warn_peer(agency, "decision ignored: its job id is too long", "");
                return false;
            }
            // It wakes a job only where the agency was pending, and only once; one that wakes
            // nothing counts as unusable (a session that sends many is closed).
            let woke = ctx.approvals.decided(&d.job_id, rounds::shown(agency));
            if woke {
                tracing::info!(%agency, job = %capped(&d.job_id), approved = d.approved, "the agency's operator decided on a job a round waits for");
            } else {
                tracing::debug!(%agency, job = %capped(&d.job_id), "a decision on a job no round waits for");
            }
            woke
        }
        node_message::Kind::Hello(_) => {
            ctx.warn_peer(agency, "second Hello on a session; ignored", "");
            false
        }
        node_message::Kind::Secagg(m) => {
            if let Err(bound) = limits::check_secagg(&m) {
                ctx.warn_peer(
                    agency,
                    "secure aggregation step ignored: over a bound",
                    &bound.to_string(),
                );
                return false;
            }
            let Some(step) = m.step else {
                ctx.warn_peer(
                    agency,
                    "secure aggregation step ignored: it has no step",
                    "",
                );
                return false;
            };
            match ctx.tasks.relay(&m.task_id, agency, step) {
                Ok(()) => true,
                Err(error) => {
                    ctx.warn_peer(
                        agency,
                        "secure aggregation step ignored",
                        &error.to_string(),
                    );
                    false
                }
            }
        }
    }
}
