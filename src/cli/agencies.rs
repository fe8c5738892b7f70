//! `treaty agencies` (operators): the agencies connected now, each with its country, its node's
//! version and when its session opened (UTC).

use std::path::PathBuf;

use clap::Args;
use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;
use treaty_devkit::output::printable;

use super::{Outcome, unusable, utc};

#[derive(Debug, Args)]
pub struct AgenciesArgs {
    /// The operator's configuration file.
    #[arg(long)]
    config: PathBuf,
}

pub async fn run(args: AgenciesArgs) -> Outcome {
    let mut client = OperatorConfig::load(&args.config)
        .map_err(unusable)?
        .connect()
        .await?;
    for a in client::all_agencies(&mut client).await? {
        outln!(
            "{}\t{}\tnode {}\tsince {}",
            printable(&a.agency),
            printable(&a.country),
            printable(&a.software_version),
            utc(a.connected_unix_ms)
        );
    }
    Ok(())
}
