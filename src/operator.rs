//! The operator's client of the coordinator, over mutual TLS.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;
use treaty_proto::tls::{ClientTls, TlsFiles};
use treaty_proto::v1::operator_service_client::OperatorServiceClient;

/// Connects to the operator API at `address` with the operator's certificate.
pub async fn connect(
    address: &str,
    files: &TlsFiles,
) -> anyhow::Result<OperatorServiceClient<Channel>> {
    let tls = ClientTls::new(files)?;
    let channel = tls
        .connect(address, Duration::from_secs(10))
        .await
        .with_context(|| format!("cannot connect to the coordinator at {address}"))?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(treaty_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(treaty_proto::MAX_MESSAGE_BYTES))
}
