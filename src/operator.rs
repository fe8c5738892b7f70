//! The operator's client of the coordinator, over mutual TLS: connecting, watching a job to its
//! end, downloading a model.

use crate::output::outln;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use treaty_proto::config::{self, ConfigError, Validate};
use treaty_proto::tensor::{Assembler, NamedTensor};
use treaty_proto::tls::{ClientTls, TlsFiles};
use treaty_proto::v1::operator_service_client::OperatorServiceClient;
use treaty_proto::v1::{
    ConnectedAgency, DownloadModelRequest, Job, JobEventKind, JobState, ListAgenciesRequest,
    ModelHeader, WatchJobRequest, model_part,
};

/// The operator's client.
pub type Client = OperatorServiceClient<Channel>;

/// An operator's configuration file: where the coordinator is, and the operator's certificate.
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    pub coordinator: CoordinatorAddress,
    pub tls: TlsFiles,
}

/// Where the coordinator is.
#[derive(Debug, Clone, Deserialize)]
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
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load(path)
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        connect(&self.coordinator.address, &self.tls).await
    }
}

/// Connects to the operator API at `address` with the operator's certificate.
pub async fn connect(address: &str, files: &TlsFiles) -> anyhow::Result<Client> {
    let tls = ClientTls::new(files)?;
    let channel = tls
        .connect(address, Duration::from_secs(10))
        .await
        .with_context(|| format!("cannot connect to the coordinator at {address}"))?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(treaty_proto::MAX_MESSAGE_BYTES))
}

/// Every connected agency, following the pages of `ListAgencies`.
pub async fn all_agencies(client: &mut Client) -> anyhow::Result<Vec<ConnectedAgency>> {
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

/// Follows a job to its end, printing each event when `print` is set; returns it as it ended.
pub async fn watch(client: &mut Client, job_id: &str, print: bool) -> anyhow::Result<Job> {
    let mut events = client
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event?;
        // Routine arrivals of results are left out; refusals and rejections are shown.
        if print && event.kind() != JobEventKind::ResultAccepted {
            if event.round > 0 {
                outln!("    [round {:>2}] {}", event.round, event.message);
            } else {
                outln!("    {}", event.message);
            }
        }
        last = event.job;
    }
    let job = last.context("the coordinator sent no events")?;
    if job.state != JobState::Succeeded as i32 {
        bail!("job {} did not succeed: {}", job.job_id, job.message);
    }
    Ok(job)
}

/// Downloads a model version (the latest when `version` is empty).
pub async fn download(
    client: &mut Client,
    job_id: &str,
    version: &str,
) -> anyhow::Result<(ModelHeader, Vec<NamedTensor>)> {
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
                assembler = Some(Assembler::new(h.tensors.clone(), 1 << 28, 1 << 20)?);
                header = Some(h);
            }
            Some(model_part::Kind::Chunk(c)) => assembler
                .as_mut()
                .context("a chunk arrived before the header")?
                .push(c)?,
            None => {}
        }
    }
    let tensors = assembler.context("the download was empty")?.finish()?;
    Ok((header.context("the download had no header")?, tensors))
}
