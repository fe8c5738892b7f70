//! The coordinator's server: mutual TLS, the agency and operator services, health and
//! reflection, and a graceful shutdown with a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use treaty_proto::tls::ServerTls;
use treaty_proto::v1::JobState;
use treaty_proto::v1::agency_service_server::AgencyServiceServer;
use treaty_proto::v1::operator_service_server::OperatorServiceServer;
use treaty_proto::{FILE_DESCRIPTOR_SET, MAX_MESSAGE_BYTES};

use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::jobs;
use crate::service::agency::AgencyApi;
use crate::service::operator::OperatorApi;
use crate::state::Coordinator;
use crate::store::Store;

/// HTTP/2's initial stream window: what one stream may send unread.
const STREAM_WINDOW_BYTES: u32 = 65_535;
/// The window of a whole connection (an agency's session and its upload, an operator's calls).
const CONNECTION_WINDOW_BYTES: u32 = 1 << 20;

/// Runs the coordinator on `listener` until `shutdown` completes, then shuts down gracefully:
/// sessions and watches are closed, running jobs stop (they resume at the next start), and
/// connections still open after `shutdown_grace_secs` are cut.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    let tls = Arc::new(ServerTls::new(config.tls.files(), config.tls.crl.clone())?);
    // The coordinator signs each head of its audit log with its TLS key.
    let signer = treaty_proto::tls::KeySigner::load(&config.tls.files())?;
    let store = Store::open(&config.data_dir)?.signed_by(signer)?;
    let ctx = Arc::new(Coordinator::new(
        store,
        tls.clone(),
        config.limits.clone(),
        config.policy.clone(),
    ));
    let local = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Write {
            path: "listener".into(),
            source,
        })?;
    if let Some(path) = &config.address_file {
        write_atomically(path, &local.to_string())?;
    }

    if let Some(monitoring) = &config.monitoring {
        let listener = treaty_proto::monitoring::bind(monitoring)
            .await
            .map_err(|source| CoordinatorError::Monitoring {
                address: monitoring.listen,
                source,
            })?;
        crate::monitoring::spawn(ctx.clone(), listener);
    }

    for job in ctx.store.jobs()? {
        if job.state == JobState::Pending as i32 || job.state == JobState::Running as i32 {
            tracing::info!(job = job.job_id, "resuming job");
            jobs::spawn(ctx.clone(), job.job_id.clone());
        }
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgencyServiceServer<AgencyApi>>().await;
    health
        .set_serving::<OperatorServiceServer<OperatorApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(CoordinatorError::Reflection)?;
    let agency = AgencyServiceServer::new(AgencyApi::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let operator = OperatorServiceServer::new(OperatorApi::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    tracing::info!(address = %local, identity = %ctx.identity, "coordinator listening (mutual TLS 1.3)");
    let stop = ctx.shutdown.clone();
    let serve = Server::builder()
        // HTTP/2 flow control: what a peer may send before the coordinator reads it. A node
        // sends no chunk before its upload is admitted (`limits::STAGING_SLOTS`); one that
        // does anyway holds at most a stream's window here until then, so the window is
        // HTTP/2's standard 64 KiB, fixed (an adaptive window grows with the link and stays
        // grown: 100 waiting uploads then held 100 MiB), at the price of at most 64 KiB per
        // round trip for one upload (1.6 MB/s on a 40 ms link).
        .http2_adaptive_window(Some(false))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(agency)
        .add_service(operator)
        .serve_with_incoming_shutdown(tls.incoming(listener), stop.cancelled_owned());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result.map_err(Into::into),
        _ = shutdown => {}
    }

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    health
        .set_not_serving::<AgencyServiceServer<AgencyApi>>()
        .await;
    health
        .set_not_serving::<OperatorServiceServer<OperatorApi>>()
        .await;
    ctx.shutdown.cancel();
    ctx.sessions.close_all();
    match tokio::time::timeout(grace, serve).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("connections still open after the grace period; cutting them"),
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

fn write_atomically(path: &std::path::Path, contents: &str) -> Result<(), CoordinatorError> {
    let err = |source| CoordinatorError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
