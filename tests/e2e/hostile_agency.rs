//! A hostile agency for the end-to-end tests: not the node binary but a tonic client of the
//! agency service, over real mutual TLS with a real certificate of the test PKI, that sends
//! whatever a test tells it to.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use treaty_proto::Identity;
use treaty_proto::pki::Validity;
use treaty_proto::tensor::{self, NamedTensor};
use treaty_proto::tls::{ClientTls, TlsFiles};
use treaty_proto::upload::UploadError;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::{
    CoordinatorMessage, Dtype, Hello, NodeMessage, ResultHeader, ResultPart, SubmitReceipt,
    SubmitReply, Task, TensorChunk, coordinator_message, node_message, result_part, submit_reply,
};

use crate::common::Fixture;

/// Issues a certificate of the fixture's CA for `identity` into files of their own (the PKI's
/// own file names are per agency id, so that an impostor of an existing id does not overwrite
/// the real agency's files).
pub fn issue(fx: &Fixture, identity: &Identity, name: &str) -> TlsFiles {
    fx.site
        .issue(identity, name, Validity::days_from_now(2))
        .unwrap()
}

/// A connection of the agency service.
pub async fn client(address: &str, files: &TlsFiles) -> AgencyServiceClient<Channel> {
    let channel = ClientTls::new(files)
        .unwrap()
        .connect(address, Duration::from_secs(5))
        .await
        .unwrap();
    AgencyServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX)
}

/// An honest-looking Hello.
pub fn hello() -> Hello {
    Hello {
        software_version: "hostile-1".into(),
        protocol_version: treaty_proto::PROTOCOL_VERSION,
        ..Default::default()
    }
}

/// A session held open by a test: what it sends goes through `outbox`.
pub struct Session {
    pub outbox: mpsc::Sender<NodeMessage>,
    pub inbound: Streaming<CoordinatorMessage>,
}

/// Opens a session with `hello`; the coordinator's answer to the call.
pub async fn open(
    client: &mut AgencyServiceClient<Channel>,
    hello: Hello,
) -> Result<Session, tonic::Status> {
    let (outbox, rx) = mpsc::channel(16);
    outbox
        .send(NodeMessage {
            kind: Some(node_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Session { outbox, inbound })
}

impl Session {
    /// The next message from the coordinator, if one comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<CoordinatorMessage> {
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Ok(Ok(m)) => m,
            _ => None,
        }
    }

    /// The next task sent, skipping other messages; `None` when none comes within `timeout`.
    pub async fn next_task(&mut self, timeout: Duration) -> Option<Task> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await?.kind {
                Some(coordinator_message::Kind::Task(task)) => return Some(task),
                _ => continue,
            }
        }
    }
}

/// Uploads a result of `values` (one tensor `statistic`) with `metrics`.
pub async fn submit(
    client: &mut AgencyServiceClient<Channel>,
    task_id: &str,
    values: Vec<f64>,
    metrics: &[(&str, f64)],
) -> Result<(), tonic::Status> {
    submit_with(client, task_id, values, metrics, |_| None).await
}

/// As [`submit`], with the statement `sent` makes of the result's SHA-256 as its last part.
pub async fn submit_with(
    client: &mut AgencyServiceClient<Channel>,
    task_id: &str,
    values: Vec<f64>,
    metrics: &[(&str, f64)],
    sent: impl FnOnce(&str) -> Option<treaty_proto::v1::SignedStatement>,
) -> Result<(), tonic::Status> {
    let n = values.len();
    let statistic = NamedTensor::new(
        "statistic",
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), values).unwrap(),
    );
    let (specs, chunks) = tensor::encode(&[statistic], Dtype::F64, 1 << 20);
    let header = ResultHeader {
        task_id: task_id.into(),
        num_examples: 1,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        tensors: specs,
        ..Default::default()
    };
    let mut hasher = treaty_proto::receipt::ResultHasher::new(&header);
    chunks.iter().for_each(|c| hasher.chunk(c));
    let statement = sent(&hasher.finish());
    treaty_proto::upload::submit(client, header, chunks, statement)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            UploadError::Status(status) => status,
            UploadError::Protocol(_) => tonic::Status::internal(e.to_string()),
        })
}

/// An upload opened on the wire: its header sent; what follows is the test's to send.
pub struct Upload {
    outbox: mpsc::Sender<ResultPart>,
    replies: Streaming<SubmitReply>,
}

impl Upload {
    /// Opens an upload of a result with `header`.
    pub async fn open(client: &mut AgencyServiceClient<Channel>, header: ResultHeader) -> Upload {
        let (outbox, rx) = mpsc::channel(64);
        outbox
            .send(ResultPart {
                kind: Some(result_part::Kind::Header(header)),
            })
            .await
            .unwrap();
        let replies = client
            .submit_result(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Upload { outbox, replies }
    }

    /// Sends `chunks`, whether the upload was admitted or not.
    pub async fn send(&self, chunks: Vec<TensorChunk>) {
        for chunk in chunks {
            self.outbox
                .send(ResultPart {
                    kind: Some(result_part::Kind::Chunk(chunk)),
                })
                .await
                .unwrap();
        }
    }

    /// Whether the coordinator admits the upload within `within`.
    pub async fn admitted(&mut self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.replies.message()).await {
            Err(_) => false,
            Ok(Ok(Some(SubmitReply {
                kind: Some(submit_reply::Kind::Admitted(_)),
            }))) => true,
            Ok(other) => panic!("an admission expected, not {other:?}"),
        }
    }

    /// Ends the upload (everything sent); the coordinator's answer.
    pub async fn answer(self) -> Result<SubmitReceipt, tonic::Status> {
        let Upload {
            outbox,
            mut replies,
        } = self;
        drop(outbox);
        match replies.message().await? {
            Some(SubmitReply {
                kind: Some(submit_reply::Kind::Receipt(receipt)),
            }) => Ok(receipt),
            other => panic!("a receipt expected, not {other:?}"),
        }
    }
}
