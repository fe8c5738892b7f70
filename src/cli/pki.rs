//! `treaty pki init|issue|revoke`: a development PKI (proto's `pki`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use treaty_devkit::outln;
use treaty_proto::pki;

use super::{Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Makes a federation CA, a coordinator certificate, operator and agency certificates, and an
    /// empty revocation list, in one directory.
    Init(PkiInit),
    /// Issues one more certificate from an existing PKI.
    Issue {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// An agency, as AGENCY-ID:CC (e.g. `DE-BKA:DE`).
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        agency: Option<String>,
        /// An operator name.
        #[arg(long)]
        operator: Option<String>,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Adds a certificate to the federation's revocation list; coordinators refuse it from their
    /// next connection on.
    Revoke {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate to revoke (PEM).
        cert: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PkiInit {
    /// The directory to write (created if missing; an existing CA is never overwritten).
    #[arg(long)]
    dir: PathBuf,
    /// The federation's name, written into the CA's subject.
    #[arg(long, default_value = "treaty")]
    federation: String,
    /// The coordinator's name.
    #[arg(long, default_value = "coordinator")]
    coordinator: String,
    /// A host name or IP address that nodes and operators dial the coordinator at, written into
    /// its certificate (repeatable, e.g. `--coordinator-host hub.example --coordinator-host
    /// 10.0.0.5`). `localhost`, 127.0.0.1 and ::1 are always in it: no need to give them.
    #[arg(long = "coordinator-host")]
    coordinator_hosts: Vec<String>,
    /// An operator name (repeatable; default `operator`).
    #[arg(long = "operator")]
    operators: Vec<String>,
    /// An agency, as AGENCY-ID:CC (repeatable), e.g. `--agency DE-BKA:DE`.
    #[arg(long = "agency")]
    agencies: Vec<String>,
    /// Days of validity of the issued certificates.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// Runs a `treaty pki` command.
pub fn run(command: PkiCommand) -> Outcome {
    match command {
        PkiCommand::Init(args) => {
            let agencies = args
                .agencies
                .iter()
                .map(|s| pki::parse_agency_spec(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unusable)?;
            let operators = if args.operators.is_empty() {
                vec!["operator".to_owned()]
            } else {
                args.operators
            };
            let options = pki::InitOptions {
                federation: args.federation,
                coordinator: args.coordinator,
                coordinator_hosts: args.coordinator_hosts,
                operators,
                agencies,
                validity_days: args.days,
            };
            let written = pki::init(&pki::PkiDir::new(&args.dir), &options)?;
            for path in written {
                outln!("{}", path.display());
            }
        }
        PkiCommand::Issue {
            dir,
            agency,
            operator,
            days,
        } => {
            let identity = match (agency, operator) {
                (Some(spec), _) => {
                    let (agency, country) = pki::parse_agency_spec(&spec).map_err(unusable)?;
                    treaty_proto::Identity::agency(&country, &agency).map_err(unusable)?
                }
                (None, Some(name)) => treaty_proto::Identity::operator(&name).map_err(unusable)?,
                (None, None) => {
                    return Err(unusable(anyhow::anyhow!("give --agency or --operator")));
                }
            };
            let (cert, key) = pki::issue(&pki::PkiDir::new(&dir), &identity, &[], days)?;
            outln!("{}\n{}", cert.display(), key.display());
        }
        PkiCommand::Revoke { dir, cert } => {
            let serial = pki::revoke(&pki::PkiDir::new(&dir), &cert)?;
            outln!(
                "revoked serial {serial}; coordinators refuse it from now on and close its open sessions"
            );
        }
    }
    Ok(())
}
