//! `treaty agencies` (operators): the agencies connected now.

use std::path::PathBuf;

use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;

use super::{Outcome, unusable};

pub async fn run(config: PathBuf) -> Outcome {
    let mut client = OperatorConfig::load(&config)
        .map_err(unusable)?
        .connect()
        .await?;
    for a in client::all_agencies(&mut client).await? {
        outln!(
            "{}\t{}\tnode {}\tsince {}",
            a.agency,
            a.country,
            a.software_version,
            a.connected_unix_ms
        );
    }
    Ok(())
}
