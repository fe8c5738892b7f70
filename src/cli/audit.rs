//! `treaty audit export` and `treaty audit verify`: a job's evidence from the coordinator's
//! audit log as a bundle of plain files, and its offline check (docs/AUDIT.md).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use treaty_coordinator::bundle;
use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;

use super::{Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Exports a job's evidence (its audit entries within the whole log's hash chain, the
    /// signed head, certificates, decisions and the policy texts they cite) into a new
    /// directory, through the operator API.
    Export {
        /// The operator's configuration file (coordinator address and TLS files).
        #[arg(long)]
        config: PathBuf,
        /// The job.
        #[arg(long)]
        job: String,
        /// A new (or empty) directory for the bundle.
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a bundle offline: exit 0 when it verifies, 1 naming the first thing that does
    /// not.
    Verify {
        /// The bundle's directory.
        dir: PathBuf,
    },
}

/// Runs a `treaty audit` command.
pub fn run(command: AuditCommand) -> Outcome {
    match command {
        AuditCommand::Export { config, job, out } => super::block_on(export(&config, &job, &out)),
        AuditCommand::Verify { dir } => verify(&dir),
    }
}

async fn export(config: &Path, job: &str, out: &Path) -> Outcome {
    let config = OperatorConfig::load(config).map_err(unusable)?;
    // Checked before the coordinator is asked (each export goes on its record).
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(unusable(bundle::BundleError::NotEmpty(out.to_owned())));
    }
    let mut client = config.connect().await?;
    let bundle = client::export_audit(&mut client, job).await?;
    bundle.write(out)?;
    // The bundle is checked as it lies on disk before the command says it is done.
    let verified = bundle::verify(out)?;
    outln!(
        "{}: job {} ({} of its entries within a log of {} signed by the coordinator, {} decisions, {} cited texts)",
        out.display(),
        verified.job_id,
        verified.entries,
        verified.links,
        verified.decisions,
        verified.texts
    );
    Ok(())
}

fn verify(dir: &Path) -> Outcome {
    let v = bundle::verify(dir)?;
    outln!(
        "verified: job {} of federation {}: {} entries of the job, in a log of {} entries whose head is signed by {}",
        v.job_id,
        v.federation,
        v.entries,
        v.links,
        v.signed_by
    );
    outln!(
        "the federation CA's certificate (ca.crt) has SHA-256 {}: compare it with the one you trust",
        v.ca_sha256
    );
    outln!(
        "{} policy decisions, {} cited policy and registry texts, each matching its hash",
        v.decisions,
        v.texts
    );
    Ok(())
}
