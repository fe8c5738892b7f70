//! The operator's client of a coordinator, over mutual TLS: its configuration file, connecting,
//! listing the connected agencies, following a job to its end, downloading a model.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_proto::config::{self, ConfigError, Validate};
use treaty_proto::tensor::{Assembler, NamedTensor};
use treaty_proto::tls::{ClientTls, TlsFiles};
use treaty_proto::v1::operator_service_client::OperatorServiceClient;
use treaty_proto::v1::{
    ConnectedAgency, DownloadModelRequest, GetJobRequest, Job, JobEvent, JobState,
    ListAgenciesRequest, ModelHeader, WatchJobRequest, model_part,
};

/// The operator's client.
pub type Client = OperatorServiceClient<Channel>;

/// The most elements a downloaded model may have.
const MAX_MODEL_ELEMENTS: u64 = 1 << 28;

/// What an operator's request to the coordinator could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] treaty_proto::TlsError),
    #[error(
        "cannot connect to the coordinator at {address}: {source}; check that it runs and that the address is in its certificate"
    )]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the coordinator refused: {}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error("the coordinator sent a malformed model: {0}")]
    Tensor(#[from] treaty_proto::TensorError),
    #[error("the coordinator sent a malformed model: {0}")]
    Download(&'static str),
    #[error("the coordinator sent no events for job {job}")]
    NoEvents { job: String },
    #[error("job {job} did not succeed: {message}")]
    JobFailed { job: String, message: String },
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
}

impl ClientError {
    /// Whether the error is about the operator's input: its TLS files, or a request the
    /// coordinator refused as invalid (`INVALID_ARGUMENT`) or about something that does not
    /// exist (`NOT_FOUND`). Anything else is a failure of the coordinator, the network or a job.
    pub fn is_unusable(&self) -> bool {
        match self {
            ClientError::Tls(_) => true,
            ClientError::Refused(status) => matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            ClientError::Connect { .. }
            | ClientError::Tensor(_)
            | ClientError::Download(_)
            | ClientError::NoEvents { .. }
            | ClientError::JobFailed { .. }
            | ClientError::Bundle(_) => false,
        }
    }
}

/// An operator's configuration file: where the coordinator is, and the operator's certificate
/// (docs/CONFIGURATION.md).
///
/// ```toml
/// [coordinator]
/// address = "coordinator.example:7443"
///
/// [tls]
/// ca_cert = "pki/ca.crt"
/// cert = "pki/operator-alice.crt"
/// key = "pki/operator-alice.key"
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Where the coordinator is.
    pub coordinator: CoordinatorAddress,
    /// The operator's TLS files.
    pub tls: TlsFiles,
}

/// Where the coordinator is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorAddress {
    /// `host:port`; the host must be in the coordinator's certificate.
    pub address: String,
}

impl Validate for OperatorConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.tls.ca_cert, &mut self.tls.cert, &mut self.tls.key] {
            config::resolve(base, p);
        }
    }

    fn problems(&self) -> Vec<String> {
        config::missing_files([
            ("tls.ca_cert", self.tls.ca_cert.as_path()),
            ("tls.cert", self.tls.cert.as_path()),
            ("tls.key", self.tls.key.as_path()),
        ])
    }
}

impl OperatorConfig {
    /// An operator's configuration: the coordinator at `address`, the operator's files.
    pub fn new(address: &str, tls: TlsFiles) -> Self {
        OperatorConfig {
            coordinator: CoordinatorAddress {
                address: address.to_owned(),
            },
            tls,
        }
    }

    /// Reads and validates a configuration file, reporting every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }

    /// Connects to the coordinator's operator API.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        connect(&self.coordinator.address, &self.tls).await
    }
}

/// Connects to the operator API at `address` with the operator's certificate.
pub async fn connect(address: &str, files: &TlsFiles) -> Result<Client, ClientError> {
    let tls = ClientTls::new(files)?;
    let channel = tls
        .connect(address, Duration::from_secs(10))
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_owned(),
            source,
        })?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(treaty_proto::MAX_MESSAGE_BYTES))
}

/// Every connected agency, following the pages of `ListAgencies`.
pub async fn all_agencies(client: &mut Client) -> Result<Vec<ConnectedAgency>, ClientError> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_agencies(ListAgenciesRequest {
                page_size: 0,
                page_token: token,
            })
            .await?
            .into_inner();
        all.extend(page.agencies);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// Follows a job to its end, handing each event to `on_event`; returns the job as it ended,
/// whatever the end, with its rounds.
pub async fn follow(
    client: &mut Client,
    job_id: &str,
    mut on_event: impl FnMut(&JobEvent),
) -> Result<Job, ClientError> {
    let mut events = client
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    let mut seen = false;
    while let Some(event) = events.next().await {
        on_event(&event?);
        seen = true;
    }
    if !seen {
        return Err(ClientError::NoEvents {
            job: job_id.to_owned(),
        });
    }
    // The events carry the job without its rounds: read it whole once it has ended.
    Ok(client
        .get_job(GetJobRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner())
}

/// Follows a job to its end as [`follow`] does; an error unless it succeeded.
pub async fn follow_to_success(
    client: &mut Client,
    job_id: &str,
    on_event: impl FnMut(&JobEvent),
) -> Result<Job, ClientError> {
    let job = follow(client, job_id, on_event).await?;
    if job.state != JobState::Succeeded as i32 {
        return Err(ClientError::JobFailed {
            job: job.job_id,
            message: job.message,
        });
    }
    Ok(job)
}

/// A model version's provenance, signed by the coordinator now (the latest version when
/// `version` is empty).
pub async fn provenance(
    client: &mut Client,
    job_id: &str,
    version: &str,
) -> Result<treaty_proto::v1::Provenance, ClientError> {
    Ok(client
        .get_provenance(treaty_proto::v1::GetProvenanceRequest {
            job_id: job_id.to_owned(),
            model_version: version.to_owned(),
        })
        .await?
        .into_inner())
}

/// A job's audit evidence (docs/AUDIT.md), as the coordinator exports it.
pub async fn export_audit(
    client: &mut Client,
    job_id: &str,
) -> Result<crate::bundle::Bundle, ClientError> {
    let mut stream = client
        .export_audit(treaty_proto::v1::ExportAuditRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner();
    let mut parts = Vec::new();
    let mut bytes = 0usize;
    while let Some(part) = stream.next().await {
        let part = part?;
        bytes += prost::Message::encoded_len(&part);
        if bytes > crate::bundle::MAX_BUNDLE_BYTES {
            return Err(crate::bundle::BundleError::Malformed(
                "the export is larger than 1 GiB".into(),
            )
            .into());
        }
        parts.push(part);
    }
    Ok(crate::bundle::Bundle::from_parts(parts)?)
}

/// Downloads a model version (the latest when `version` is empty).
pub async fn download(
    client: &mut Client,
    job_id: &str,
    version: &str,
) -> Result<(ModelHeader, Vec<NamedTensor>), ClientError> {
    let mut parts = client
        .download_model(DownloadModelRequest {
            job_id: job_id.to_owned(),
            model_version: version.to_owned(),
        })
        .await?
        .into_inner();
    let mut header = None;
    let mut assembler = None;
    while let Some(part) = parts.next().await {
        match part?.kind {
            Some(model_part::Kind::Header(h)) => {
                assembler = Some(Assembler::new(
                    h.tensors.clone(),
                    MAX_MODEL_ELEMENTS,
                    1 << 20,
                )?);
                header = Some(h);
            }
            Some(model_part::Kind::Chunk(c)) => assembler
                .as_mut()
                .ok_or(ClientError::Download("a chunk arrived before the header"))?
                .push(c)?,
            None => {}
        }
    }
    let tensors = assembler
        .ok_or(ClientError::Download("the download was empty"))?
        .finish()?;
    Ok((
        header.ok_or(ClientError::Download("the download had no header"))?,
        tensors,
    ))
}
