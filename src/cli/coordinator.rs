//! `treaty coordinator --config FILE`: runs the coordinator until SIGINT or SIGTERM.

use std::path::Path;

use anyhow::Context;
use treaty_coordinator::CoordinatorConfig;

use super::{Outcome, unusable};
use crate::signals;

pub async fn run(config: &Path) -> Outcome {
    let config = CoordinatorConfig::load(config).map_err(unusable)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    treaty_coordinator::run(config, listener, signals::terminate()).await?;
    Ok(())
}
