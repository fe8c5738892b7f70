//! A result's upload as a node sends it (`AgencyService.SubmitResult`, docs/WIRE.md): its
//! header, then nothing until the coordinator admits the upload; then its chunks and its
//! signed statement, answered by the coordinator's receipt.
//!
//! The coordinator reads only a few uploads at a time. Waiting for its admission before the
//! chunks go means that a waiting upload costs the coordinator its header alone, not the
//! HTTP/2 window's worth of chunks it would otherwise hold unread.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::v1::agency_service_client::AgencyServiceClient;
use crate::v1::{
    ResultHeader, ResultPart, SignedStatement, SubmitReceipt, SubmitReply, TensorChunk,
    result_part, submit_reply,
};

/// Why an upload did not end with the coordinator's answer.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The call failed, or the coordinator refused the result (its status says why).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// The coordinator broke the upload's order of messages.
    #[error("the coordinator {0}")]
    Protocol(&'static str),
}

/// Uploads a result: `header`; once admitted, `chunks` in order and the agency's signed
/// statement `sent`. The coordinator's answer, whether it accepted the result or not.
pub async fn submit(
    client: &mut AgencyServiceClient<Channel>,
    header: ResultHeader,
    chunks: impl IntoIterator<Item = TensorChunk> + Send,
    sent: Option<SignedStatement>,
) -> Result<SubmitReceipt, UploadError> {
    let part = |kind| ResultPart { kind: Some(kind) };
    let (tx, rx) = mpsc::channel(2);
    // Cannot fail: the receiver is held just below.
    let _ = tx.send(part(result_part::Kind::Header(header))).await;
    let mut replies = client
        .submit_result(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match replies.message().await? {
        Some(SubmitReply {
            kind: Some(submit_reply::Kind::Admitted(_)),
        }) => {}
        None => {
            return Err(UploadError::Protocol(
                "ended the upload without admitting it",
            ));
        }
        Some(_) => {
            return Err(UploadError::Protocol(
                "answered the result's header with something other than its admission",
            ));
        }
    }
    let rest = chunks
        .into_iter()
        .map(result_part::Kind::Chunk)
        .chain(sent.map(result_part::Kind::Sent));
    let sending = async move {
        for kind in rest {
            if tx.send(part(kind)).await.is_err() {
                // The call is over: its answer says why.
                return;
            }
        }
    };
    let mut sending = std::pin::pin!(sending);
    let mut all_sent = false;
    // The answer may come before every chunk is sent (a result refused part-way).
    let answer = loop {
        tokio::select! {
            answer = replies.message() => break answer?,
            () = &mut sending, if !all_sent => all_sent = true,
        }
    };
    match answer {
        Some(SubmitReply {
            kind: Some(submit_reply::Kind::Receipt(receipt)),
        }) => Ok(receipt),
        None => Err(UploadError::Protocol("ended the upload without an answer")),
        Some(_) => Err(UploadError::Protocol(
            "answered the result with something other than its receipt",
        )),
    }
}
