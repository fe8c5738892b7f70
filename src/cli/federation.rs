//! `treaty federation create|list` (operators).

use std::path::PathBuf;

use clap::Subcommand;
use treaty_coordinator::client::OperatorConfig;
use treaty_devkit::outln;
use treaty_devkit::output::printable;
use treaty_proto::v1::{CreateFederationRequest, FederationInfo, ListFederationsRequest};

use super::{Outcome, unusable};

/// A `--member`: `AGENCY-ID:CC`; `DE-BKA` alone or `DE/DE-BKA` is refused with what to write.
fn parse_member(spec: &str) -> Result<String, String> {
    treaty_proto::Identity::from_member(spec)
        .map(|_| spec.to_owned())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Creates a federation.
    Create {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Its name (lowercase letters, digits and `-`).
        #[arg(long)]
        name: String,
        /// The purpose its jobs serve, e.g. `narcotics`.
        #[arg(long)]
        purpose: String,
        /// A member agency as AGENCY-ID:CC, its id and its certificate's country (repeatable),
        /// e.g. `--member DE-BKA:DE`, as `treaty pki init --agency` takes it.
        #[arg(long = "member", required = true, value_parser = parse_member)]
        members: Vec<String>,
    },
    /// Lists the federations.
    List {
        /// The operator's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

pub async fn run(command: FederationCommand) -> Outcome {
    match command {
        FederationCommand::Create {
            config,
            name,
            purpose,
            members,
        } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            let f = client
                .create_federation(CreateFederationRequest {
                    federation: Some(FederationInfo {
                        name,
                        purpose,
                        members,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            outln!(
                "federation `{}` created: purpose {}, members {}",
                f.name,
                f.purpose,
                f.members.join(", ")
            );
        }
        FederationCommand::List { config } => {
            let mut client = OperatorConfig::load(&config)
                .map_err(unusable)?
                .connect()
                .await?;
            let mut token = String::new();
            loop {
                let page = client
                    .list_federations(ListFederationsRequest {
                        page_size: 0,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                for f in page.federations {
                    outln!(
                        "{}\tpurpose {}\tmembers {}\tcreated by {}",
                        printable(&f.name),
                        printable(&f.purpose),
                        printable(&f.members.join(",")),
                        printable(&f.created_by)
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}
