//! `treaty serve`: the scoring service (`treaty.v1.ScoringService`) on the agency's own
//! machine. It listens on loopback only and without TLS — it never leaves the machine; an
//! agency that scores from elsewhere puts its own gateway in front — and holds one model,
//! checked before the first request (`Scorer`). Every request is bounded.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use treaty_proto::v1::scoring_service_server::{ScoringService, ScoringServiceServer};
use treaty_proto::v1::{
    Contribution, DescribeModelRequest, ModelDescription, ScoreRequest, ScoreResponse,
};

use crate::scoring::{Scorer, ScoringError};

/// The most fields a request may give.
pub const MAX_FIELDS: usize = 1024;
/// The most bytes of a field's name or value.
pub const MAX_FIELD_BYTES: usize = 4096;
/// The largest request decoded.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Why `treaty serve` cannot listen where it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "{0} is not a loopback address: treaty serve answers on this machine only, without TLS (listen on 127.0.0.1 or [::1]; to score from elsewhere, put the agency's own gateway in front)"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the scoring service failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `address`, which must be a loopback address.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    if !address.ip().is_loopback() {
        return Err(ServeError::NotLoopback(address));
    }
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen { address, source })
}

/// Serves `scorer` on `listener` until `stop` is cancelled.
pub async fn serve(
    scorer: Scorer,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let service = ScoringServiceServer::new(ScoringApi {
        scorer: Arc::new(scorer),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.cancelled_owned(),
        )
        .await?;
    Ok(())
}

struct ScoringApi {
    scorer: Arc<Scorer>,
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let request = request.into_inner();
        if request.fields.len() > MAX_FIELDS {
            return Err(Status::invalid_argument(format!(
                "the record gives {} fields; at most {MAX_FIELDS} are taken",
                request.fields.len()
            )));
        }
        if let Some((name, _)) = request
            .fields
            .iter()
            .find(|(k, v)| k.len() > MAX_FIELD_BYTES || v.len() > MAX_FIELD_BYTES)
        {
            let name: String = name.chars().take(64).collect();
            return Err(Status::invalid_argument(format!(
                "field `{name}`: a name or value is longer than {MAX_FIELD_BYTES} bytes"
            )));
        }
        let fields: Vec<(&str, &str)> = request
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let score = self
            .scorer
            .score_record(&fields, request.top as usize)
            .map_err(|e| match e {
                ScoringError::Mismatch { .. } | ScoringError::Data(_) => {
                    Status::invalid_argument(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
        Ok(Response::new(ScoreResponse {
            model_version: self.scorer.file.model_version.clone(),
            prediction: score.prediction,
            class: score.class,
            score: score.score,
            bias: score.bias,
            contributions: score
                .contributions
                .into_iter()
                .map(|c| Contribution {
                    column: c.column,
                    value: c.value,
                })
                .collect(),
            provenance: self.scorer.provenance.describe(),
        }))
    }

    async fn describe_model(
        &self,
        _: Request<DescribeModelRequest>,
    ) -> Result<Response<ModelDescription>, Status> {
        Ok(Response::new(ModelDescription {
            model_version: self.scorer.file.model_version.clone(),
            job_id: self.scorer.file.job_id.clone(),
            model: self.scorer.file.model.clone(),
            columns: self
                .scorer
                .columns()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            provenance: self.scorer.provenance.describe(),
        }))
    }
}
