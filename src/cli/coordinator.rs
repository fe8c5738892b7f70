//! `treaty coordinator --config FILE`: runs the coordinator until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use treaty_coordinator::CoordinatorConfig;

use super::{Outcome, unusable};
use crate::signals;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The coordinator's configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

pub async fn run(args: CoordinatorArgs) -> Outcome {
    let config = CoordinatorConfig::load(&args.config).map_err(unusable)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    treaty_coordinator::run(config, listener, signals::terminate()).await?;
    Ok(())
}
