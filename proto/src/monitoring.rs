//! The `/metrics` endpoint the coordinator and each node can offer to the people who run them:
//! Prometheus's exposition (the OpenMetrics text format, which Prometheus scrapes), over plain
//! HTTP on an address of its own, apart from the federation's mutual-TLS port. It is off unless
//! a `[monitoring]` section gives its address; it says how the process runs (rounds, tasks,
//! refusals, epsilon spent as the ledgers account it), never anything of an agency's records
//! that its ledger does not already say.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The `[monitoring]` section of a coordinator's or node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Where `/metrics` is served, e.g. `127.0.0.1:9464` (port 0: any free port, logged).
    pub listen: SocketAddr,
}

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What renders the exposition at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds the endpoint's address.
pub async fn bind(config: &Monitoring) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled; any other path is 404.
pub async fn serve(listener: TcpListener, render: Render, stop: CancellationToken) {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                // Rendering reads ledgers and stores: off the async threads.
                let text = tokio::task::spawn_blocking(move || render())
                    .await
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
            }
        }),
    );
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics served at /metrics (OpenMetrics text)");
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the metrics endpoint stopped");
    }
}
