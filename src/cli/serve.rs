//! `treaty serve` (agencies): answers score requests for one model file over gRPC
//! (`treaty.v1.ScoringService`, proto/treaty/v1/scoring.proto) on the agency's own machine,
//! loopback only. The model's provenance is checked before it listens, as `treaty score` does.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;
use treaty_devkit::outln;

use super::{Outcome, unusable};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model file written by `treaty model get`.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    trust: super::score::Trust,
    /// Where to listen: a loopback address (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
}

pub async fn run(a: ServeArgs) -> Outcome {
    let scorer = a.trust.open(&a.model)?;
    let listener = treaty_node::serve::bind(a.listen)
        .await
        .map_err(|e| match e {
            treaty_node::serve::ServeError::NotLoopback(_) => unusable(e),
            other => other.into(),
        })?;
    let address = listener.local_addr().map_err(anyhow::Error::from)?;
    tracing::info!(
        %address,
        model = %scorer.file.model_version,
        provenance = %scorer.provenance.describe(),
        "scoring service listening (loopback, treaty.v1.ScoringService)"
    );
    outln!("listening on {address}");
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        crate::signals::terminate().await;
        on_signal.cancel();
    });
    treaty_node::serve::serve(scorer, listener, stop).await?;
    Ok(())
}
