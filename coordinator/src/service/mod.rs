//! The gRPC services: decode, authorise by the caller's verified certificate, call the domain,
//! encode.

pub(crate) mod agency;
pub(crate) mod operator;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::Stream;
use tonic::{Request, Status};
use treaty_proto::Identity;
use treaty_proto::tensor::{self, DEFAULT_MAX_CHUNK_BYTES};
use treaty_proto::tls::PeerInfo;
use treaty_proto::v1::{Dtype, ModelPart, model_part};

use crate::error::CoordinatorError;
use crate::limits::MAX_DOWNLOADS_PER_PEER;
use crate::state::Coordinator;

/// A boxed response stream.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The caller's verified identity. Every connection to the coordinator is mutual TLS, so a
/// request without one never reaches a handler; if it does, it is refused. A certificate revoked
/// after its connection opened is refused from the next request on.
pub(crate) fn caller<T>(
    ctx: &Coordinator,
    request: &Request<T>,
) -> Result<PeerInfo, CoordinatorError> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or(CoordinatorError::NoCertificate)?;
    if ctx.tls.is_revoked(&peer.serial) {
        tracing::warn!(identity = %peer.identity, serial = peer.serial, "request with a revoked certificate refused");
        return Err(CoordinatorError::Revoked {
            identity: peer.identity,
        });
    }
    Ok(peer)
}

/// The calling agency's identity (country and id together) and connection, or
/// `PERMISSION_DENIED` for anyone else.
pub(crate) fn require_agency<T>(
    ctx: &Coordinator,
    request: &Request<T>,
) -> Result<(Identity, PeerInfo), CoordinatorError> {
    let peer = caller(ctx, request)?;
    match &peer.identity {
        id @ Identity::Agency { .. } => Ok((id.clone(), peer)),
        other => Err(CoordinatorError::NotAnAgency {
            identity: other.clone(),
        }),
    }
}

/// The calling operator's identity, or `PERMISSION_DENIED` for anyone else.
pub(crate) fn require_operator<T>(
    ctx: &Coordinator,
    request: &Request<T>,
) -> Result<Identity, CoordinatorError> {
    match caller(ctx, request)?.identity {
        id @ Identity::Operator { .. } => Ok(id),
        identity => Err(CoordinatorError::NotAnOperator { identity }),
    }
}

/// What a model download needs of a job (its federation and latest model version), or
/// `NOT_FOUND`.
pub(crate) fn job_ref(
    ctx: &Coordinator,
    job_id: &str,
) -> Result<crate::store::JobRef, CoordinatorError> {
    ctx.store
        .job_ref(job_id)?
        .ok_or_else(|| CoordinatorError::UnknownJob {
            job: job_id.to_owned(),
        })
}

/// A job as it is now with its rounds, or `NOT_FOUND`; read on a blocking thread.
pub(crate) async fn job_with_rounds(
    ctx: &Arc<Coordinator>,
    job_id: &str,
) -> Result<treaty_proto::v1::Job, CoordinatorError> {
    let id = job_id.to_owned();
    ctx.blocking(move |ctx| ctx.store.job_with_rounds(&id))
        .await?
        .ok_or_else(|| CoordinatorError::UnknownJob {
            job: job_id.to_owned(),
        })
}

/// Streams a stored model version to `peer`: its header, then its bytes in chunks. The store's
/// reads, the decoding and the chunking run on a blocking thread.
pub(crate) async fn model_stream(
    ctx: &Arc<Coordinator>,
    peer: &Identity,
    job_id: &str,
    version: &str,
) -> Result<BoxStream<ModelPart>, CoordinatorError> {
    let open = ctx.downloads.open(peer)?;
    let (job_id, version) = (job_id.to_owned(), version.to_owned());
    let parts = ctx
        .blocking(move |ctx| model_parts(ctx, &job_id, &version))
        .await?;
    Ok(download_of(parts, open))
}

/// A download's stream of parts made beforehand, counted among its peer's open downloads
/// until it is read to the end or dropped.
pub(crate) fn download_of(parts: Vec<ModelPart>, open: OpenDownload) -> BoxStream<ModelPart> {
    Box::pin(tokio_stream::iter(parts.into_iter().map(move |part| {
        let _counted = &open;
        Ok(part)
    })))
}

/// How many model downloads each peer has open ([`crate::limits::MAX_DOWNLOADS_PER_PEER`]).
#[derive(Debug, Default)]
pub(crate) struct Downloads {
    open: Arc<Mutex<HashMap<Identity, usize>>>,
}

impl Downloads {
    /// Counts a new download of `peer`'s, or refuses it when the peer has as many open as it may.
    pub(crate) fn open(&self, peer: &Identity) -> Result<OpenDownload, CoordinatorError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer.clone()).or_insert(0);
        if *count >= MAX_DOWNLOADS_PER_PEER {
            return Err(CoordinatorError::TooManyDownloads {
                identity: peer.clone(),
                limit: MAX_DOWNLOADS_PER_PEER,
            });
        }
        *count += 1;
        Ok(OpenDownload {
            peer: peer.clone(),
            open: Arc::clone(&self.open),
        })
    }
}

/// One open download, counted until it is dropped.
#[derive(Debug)]
pub(crate) struct OpenDownload {
    peer: Identity,
    open: Arc<Mutex<HashMap<Identity, usize>>>,
}

impl Drop for OpenDownload {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A stored model version as the parts of its download: its header, then its bytes in chunks
/// (synchronous: the store's reads and the chunking; call it on a blocking thread).
pub(crate) fn model_parts(
    ctx: &Coordinator,
    job_id: &str,
    version: &str,
) -> Result<Vec<ModelPart>, CoordinatorError> {
    let job = job_ref(ctx, job_id)?;
    let version = if version.is_empty() {
        job.latest_model_version.clone()
    } else {
        version.to_owned()
    };
    if !version.starts_with(&format!("{job_id}/")) {
        return Err(CoordinatorError::NotAVersionOfJob {
            job: job_id.to_owned(),
            version,
        });
    }
    let stored = ctx.store.model_to_send(&version)?.ok_or_else(|| {
        CoordinatorError::UnknownModelVersion {
            version: version.clone(),
        }
    })?;
    parts_of(stored, version)
}

/// Model `version`, as read from the store, as the parts of its download.
fn parts_of(
    stored: crate::store::ModelToSend,
    version: String,
) -> Result<Vec<ModelPart>, CoordinatorError> {
    let tensors = tensor::from_whole(&stored.tensors, u64::MAX)
        .map_err(|source| CoordinatorError::CorruptModel { version, source })?;
    let (specs, chunks) = tensor::encode(&tensors, Dtype::F64, DEFAULT_MAX_CHUNK_BYTES);
    let mut header = stored.header.unwrap_or_default();
    header.tensors = specs;
    Ok(std::iter::once(model_part::Kind::Header(header))
        .chain(chunks.into_iter().map(model_part::Kind::Chunk))
        .map(|kind| ModelPart { kind: Some(kind) })
        .collect())
}

/// The parts of model `version` (of the job the caller runs) that a task carries when the model
/// is small (at most [`CARRIED_MODEL_BYTES`] of tensor bytes): what a download of it would send,
/// so that the node need not ask (a request, a stream and a store read fewer per agency and
/// round). None for a larger model, which the node downloads, or when there is no version.
pub(crate) fn carried_model(
    ctx: &Coordinator,
    version: &str,
) -> Result<Vec<ModelPart>, CoordinatorError> {
    if version.is_empty() {
        return Ok(Vec::new());
    }
    // Its size from its tensors' shapes (a download sends 8 bytes a value), before anything is
    // decoded.
    let Some(stored) = ctx.store.model_to_send(version)? else {
        return Ok(Vec::new());
    };
    let values = stored.tensors.iter().fold(0u64, |sum, t| {
        let shape = t.spec.as_ref().map_or(&[][..], |s| s.shape.as_slice());
        let n = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        sum.saturating_add(n.unwrap_or(u64::MAX))
    });
    if values.saturating_mul(8) > CARRIED_MODEL_BYTES as u64 {
        return Ok(Vec::new());
    }
    parts_of(stored, version.to_owned())
}

/// The largest model a task carries, in bytes of its tensors (8,192 `f64` values).
const CARRIED_MODEL_BYTES: usize = 64 * 1024;

/// A response stream of parts made beforehand.
pub(crate) fn stream_of<T: Send + 'static>(parts: Vec<T>) -> BoxStream<T> {
    Box::pin(tokio_stream::iter(parts.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn part() -> ModelPart {
        ModelPart {
            kind: Some(model_part::Kind::Chunk(Default::default())),
        }
    }

    #[tokio::test]
    async fn a_peer_has_at_most_two_downloads_open_and_each_counts_until_its_stream_is_dropped() {
        let downloads = Downloads::default();
        let (a, b) = (
            Identity::agency("DE", "DE-BKA").unwrap(),
            Identity::agency("NL", "NL-POLITIE").unwrap(),
        );
        let first = download_of(vec![part(), part()], downloads.open(&a).unwrap());
        let mut second = download_of(vec![part()], downloads.open(&a).unwrap());
        let refused = downloads.open(&a).unwrap_err();
        assert!(
            matches!(&refused, CoordinatorError::TooManyDownloads { identity, limit: 2 } if *identity == a),
            "{refused}"
        );
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::ResourceExhausted
        );
        // Another peer's downloads are its own.
        let _other = downloads.open(&b).unwrap();
        // A stream read to its end still counts until it is dropped; then the peer may open
        // another.
        while second.next().await.is_some() {}
        assert!(downloads.open(&a).is_err());
        drop(second);
        let third = downloads.open(&a).unwrap();
        drop((first, third));
        let _again = (downloads.open(&a).unwrap(), downloads.open(&a).unwrap());
    }
}
