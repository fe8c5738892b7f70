//! A hostile coordinator: a test double that speaks the real wire protocol over real mutual TLS
//! (with the federation's coordinator certificate) to a real node process. It sends whatever
//! tasks, models and standardisations the test scripts, as an adaptive attacker would, and
//! records everything the node says.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ndarray::{ArrayD, IxDyn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use treaty_proto::Identity;
use treaty_proto::tensor::{self, Assembler, DEFAULT_MAX_CHUNK_BYTES, NamedTensor};
use treaty_proto::tls::ServerTls;
use treaty_proto::v1::agency_service_server::{AgencyService, AgencyServiceServer};
use treaty_proto::v1::{
    CoordinatorMessage, DownloadModelRequest, Dtype, Hello, JobTerms, ModelHeader, ModelPart,
    NodeMessage, ResultAdmitted, ResultHeader, ResultPart, RoundParticipant, RoundTerms,
    SubmitReceipt, SubmitReply, Task, TrainingSpec, Welcome, coordinator_message, model_part,
    node_message, result_part, submit_reply, task,
};

use crate::common::Fixture;

/// What the node said, in the order it said it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Hello(Hello),
    Accepted(String),
    Refused {
        task: String,
        code: String,
        message: String,
    },
    Result {
        header: ResultHeader,
        tensors: Vec<NamedTensor>,
    },
    /// A result of masked ring elements (secure aggregation).
    Masked {
        header: ResultHeader,
        values: Vec<u64>,
    },
    /// A step of secure aggregation.
    SecAgg {
        task: String,
        step: treaty_proto::v1::sec_agg_from_node::Step,
    },
}

impl Seen {
    /// The task this message is about, if any.
    pub fn task(&self) -> Option<&str> {
        match self {
            Seen::Accepted(t) | Seen::Refused { task: t, .. } | Seen::SecAgg { task: t, .. } => {
                Some(t)
            }
            Seen::Result { header, .. } | Seen::Masked { header, .. } => Some(&header.task_id),
            Seen::Hello(_) => None,
        }
    }
}

type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

#[derive(Clone)]
struct Api {
    seen: mpsc::UnboundedSender<Seen>,
    outbox: Arc<Mutex<Option<Outbox>>>,
    model: Arc<Mutex<Vec<NamedTensor>>>,
    downloads: Arc<AtomicUsize>,
}

type ModelStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ModelPart, Status>> + Send>>;

#[tonic::async_trait]
impl AgencyService for Api {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;
    type SubmitResultStream = ReceiverStream<Result<SubmitReply, Status>>;
    type DownloadModelStream = ModelStream;

    async fn session(
        &self,
        request: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Welcome(Welcome {
                identity: "hostile".into(),
                coordinator: "treaty://coordinator/hub".into(),
                heartbeat_interval_ms: 60_000,
                max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES as u32,
            })),
        }))
        .await
        .map_err(|_| Status::internal("closed"))?;
        *self.outbox.lock().unwrap() = Some(tx);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let s = match m.kind {
                    Some(node_message::Kind::Hello(h)) => Seen::Hello(h),
                    Some(node_message::Kind::Accepted(a)) => Seen::Accepted(a.task_id),
                    Some(node_message::Kind::Refused(r)) => Seen::Refused {
                        task: r.task_id,
                        code: r.reason_code,
                        message: r.message,
                    },
                    Some(node_message::Kind::Secagg(m)) => match m.step {
                        Some(step) => Seen::SecAgg {
                            task: m.task_id,
                            step,
                        },
                        None => continue,
                    },
                    _ => continue,
                };
                let _ = seen.send(s);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn submit_result(
        &self,
        request: Request<Streaming<ResultPart>>,
    ) -> Result<Response<Self::SubmitResultStream>, Status> {
        let mut parts = request.into_inner();
        let Some(ResultPart {
            kind: Some(result_part::Kind::Header(header)),
        }) = parts.message().await?
        else {
            return Err(Status::invalid_argument("no header"));
        };
        let (tx, rx) = mpsc::channel(2);
        let admitted = SubmitReply {
            kind: Some(submit_reply::Kind::Admitted(ResultAdmitted {})),
        };
        let _ = tx.send(Ok(admitted)).await;
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let answer = read_result(header, parts).await.map(|s| {
                let _ = seen.send(s);
                SubmitReply {
                    kind: Some(submit_reply::Kind::Receipt(SubmitReceipt {
                        accepted: true,
                        ..Default::default()
                    })),
                }
            });
            let _ = tx.send(answer).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn download_model(
        &self,
        request: Request<DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let req = request.into_inner();
        self.downloads.fetch_add(1, Ordering::SeqCst);
        let model = self.model.lock().unwrap().clone();
        let parts = model_parts(&model, &req.job_id, &req.model_version)
            .into_iter()
            .map(Ok);
        Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
    }
}

/// A running hostile coordinator.
pub struct Hostile {
    pub address: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    outbox: Arc<Mutex<Option<Outbox>>>,
    model: Arc<Mutex<Vec<NamedTensor>>>,
    downloads: Arc<AtomicUsize>,
    /// Everything received so far, in order.
    pub log: Vec<Seen>,
    next_task: u32,
    /// The job terms its tasks state (none unless set).
    pub job: Option<JobTerms>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Hostile {
    /// Listens on 127.0.0.1 with the fixture's coordinator certificate.
    pub async fn start(fx: &Fixture) -> Self {
        let files = fx.files(&Identity::coordinator("hub").unwrap());
        let tls = Arc::new(ServerTls::new(files, None).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let api = Api {
            seen: tx,
            outbox: Arc::new(Mutex::new(None)),
            model: Arc::new(Mutex::new(Vec::new())),
            downloads: Arc::new(AtomicUsize::new(0)),
        };
        let (outbox, model, downloads) =
            (api.outbox.clone(), api.model.clone(), api.downloads.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let cancelled = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(
                    AgencyServiceServer::new(api)
                        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(tls.incoming(listener), cancelled)
                .await;
        });
        Hostile {
            address,
            seen: rx,
            outbox,
            model,
            downloads,
            log: Vec::new(),
            next_task: 0,
            job: None,
            stop,
        }
    }

    /// Waits for the next message from the node.
    pub async fn next(&mut self, timeout: Duration) -> Seen {
        let seen = tokio::time::timeout(timeout, self.seen.recv())
            .await
            .expect("the node said nothing in time")
            .expect("the server stopped");
        self.log.push(seen.clone());
        seen
    }

    /// Waits for the node's Hello.
    pub async fn hello(&mut self) -> Hello {
        match self.next(Duration::from_secs(30)).await {
            Seen::Hello(h) => h,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// How many model downloads the node has asked for.
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }

    /// Serves `model` to the node's next downloads.
    pub fn serve_model(&self, model: Vec<NamedTensor>) {
        *self.model.lock().unwrap() = model;
    }

    /// Sends a task of a round of secure aggregation (`secure` as the task states it); its id.
    /// What the node says of it is read with [`Hostile::next`].
    pub async fn send_secure(
        &mut self,
        kind: task::Kind,
        terms: RoundTerms,
        secure: Option<treaty_proto::v1::SecureAggregationRound>,
    ) -> String {
        self.next_task += 1;
        let task_id = format!("hostile-{}", self.next_task);
        self.send(coordinator_message::Kind::Task(Task {
            task_id: task_id.clone(),
            job_id: "job-hostile".into(),
            federation: "fed".into(),
            round: self.next_task,
            deadline_unix_ms: crate::common::now_ms() + 60_000,
            kind: Some(kind),
            terms: Some(terms),
            job: self.job.clone(),
            secure_aggregation: secure,
        }))
        .await;
        task_id
    }

    /// Sends the node a message on its session.
    pub async fn send(&self, kind: coordinator_message::Kind) {
        let outbox = self.outbox.lock().unwrap().clone().expect("no session");
        outbox
            .send(Ok(CoordinatorMessage { kind: Some(kind) }))
            .await
            .unwrap();
    }

    /// Sends a task and collects what the node says of it until it refuses or sends a result.
    pub async fn run(&mut self, kind: task::Kind, terms: RoundTerms) -> Vec<Seen> {
        self.next_task += 1;
        let task_id = format!("hostile-{}", self.next_task);
        let outbox = self.outbox.lock().unwrap().clone().expect("no session");
        outbox
            .send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Task(Task {
                    task_id: task_id.clone(),
                    job_id: "job-hostile".into(),
                    federation: "fed".into(),
                    round: self.next_task,
                    deadline_unix_ms: 0,
                    kind: Some(kind),
                    terms: Some(terms),
                    job: self.job.clone(),
                    secure_aggregation: None,
                })),
            }))
            .await
            .unwrap();
        // The node says `TaskAccepted` on its session and uploads its result on a call of its
        // own: the two may arrive in either order. A result is always preceded by an
        // acceptance, so both are awaited, and kept in the order the node sent them.
        let mut out = Vec::new();
        loop {
            let seen = self.next(Duration::from_secs(120)).await;
            assert_eq!(seen.task(), Some(task_id.as_str()), "{seen:?}");
            let accepted = out.iter().any(|s| matches!(s, Seen::Accepted(_)));
            match seen {
                Seen::Refused { .. } => {
                    out.push(seen);
                    return out;
                }
                Seen::Result { .. } if !accepted => {
                    let acceptance = self.next(Duration::from_secs(120)).await;
                    assert_eq!(acceptance, Seen::Accepted(task_id.clone()));
                    out.push(acceptance);
                    out.push(seen);
                    return out;
                }
                Seen::Result { .. } => {
                    out.push(seen);
                    return out;
                }
                other => out.push(other),
            }
        }
    }
}

/// Terms the agency's open policy accepts, declaring `epsilon_per_round`.
pub fn terms(agency: &str, country: &str, epsilon_per_round: f64, fields: &[&str]) -> RoundTerms {
    RoundTerms {
        purpose: "narcotics".into(),
        date: String::new(),
        coordinator_country: "NL".into(),
        epsilon_per_round,
        delta: 1e-5,
        fields: fields.iter().map(|f| f.to_string()).collect(),
        model_retention_days: None,
        onward_transfer: false,
        secure_aggregation: false,
        participants: vec![RoundParticipant {
            agency: agency.into(),
            country: country.into(),
        }],
        registry_version: "test-1".into(),
        participants_sha256: Default::default(),
    }
}

/// The parts of a download of `model` (as `job`'s `version`): what a task may also carry.
pub fn model_parts(model: &[NamedTensor], job: &str, version: &str) -> Vec<ModelPart> {
    let (specs, chunks) = tensor::encode(model, Dtype::F64, DEFAULT_MAX_CHUNK_BYTES);
    let header = ModelHeader {
        job_id: job.to_owned(),
        model_version: version.to_owned(),
        round: 1,
        spec: None,
        tensors: specs,
    };
    std::iter::once(model_part::Kind::Header(header))
        .chain(chunks.into_iter().map(model_part::Kind::Chunk))
        .map(|kind| ModelPart { kind: Some(kind) })
        .collect()
}

/// A model of the spec's layout with every parameter `value`.
pub fn model_of(spec: &TrainingSpec, value: f64) -> Vec<NamedTensor> {
    treaty_proto::schema::parameter_layout(spec)
        .unwrap()
        .into_iter()
        .map(|(name, shape)| NamedTensor::new(name, ArrayD::from_elem(IxDyn(&shape), value)))
        .collect()
}

/// What a node uploaded after its header: its chunks, decoded.
async fn read_result(
    header: ResultHeader,
    mut parts: Streaming<ResultPart>,
) -> Result<Seen, Status> {
    let mut assembler = Assembler::new(header.tensors.clone(), u64::MAX, DEFAULT_MAX_CHUNK_BYTES)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    while let Some(part) = parts.message().await? {
        if let Some(result_part::Kind::Chunk(c)) = part.kind {
            assembler
                .push(c)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
    }
    let staged = assembler
        .finish_staged()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // A result without tensors (an evaluation's) is not a masked one.
    let masked = match staged.specs().is_empty() {
        true => None,
        false => staged.masked().ok(),
    };
    Ok(match masked {
        Some(values) => Seen::Masked { header, values },
        None => Seen::Result {
            header,
            tensors: staged
                .decode()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        },
    })
}
