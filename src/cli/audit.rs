//! `treaty audit export` and `treaty audit verify`: a job's evidence from the coordinator's
//! audit log as a bundle of plain files, and its offline check (docs/AUDIT.md).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use treaty_coordinator::bundle;
use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;
use treaty_proto::receipt::ResultsRecord;

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
    /// Checks a bundle offline against the federation CA you trust: exit 0 when it verifies,
    /// 1 naming the first thing that does not.
    Verify {
        /// The bundle's directory.
        dir: PathBuf,
        /// The federation CA's certificate (PEM) you trust, from your own copy — never the
        /// bundle's.
        #[arg(long)]
        ca: PathBuf,
        /// An earlier bundle of the same coordinator: its log must be the beginning of this one's.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// The federation's revocation list (PEM) you trust: the head's signing certificate
        /// must not be on it.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// An agency's node evidence (`treaty node evidence`), cross-checked against the
        /// bundle: every receipt the coordinator signed for the job's results is in the
        /// bundle's records, and every result the bundle records from the agency is one its
        /// node sent. May be given once per agency.
        #[arg(long)]
        node: Vec<PathBuf>,
    },
}

/// Runs a `treaty audit` command.
pub fn run(command: AuditCommand) -> Outcome {
    match command {
        AuditCommand::Export { config, job, out } => super::block_on(export(&config, &job, &out)),
        AuditCommand::Verify {
            dir,
            ca,
            previous,
            crl,
            node,
        } => verify(&dir, &ca, previous.as_deref(), crl.as_deref(), &node),
    }
}

async fn export(config: &Path, job: &str, out: &Path) -> Outcome {
    let config = OperatorConfig::load(config).map_err(unusable)?;
    // Checked before the coordinator is asked (each export goes on its record).
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(unusable(bundle::BundleError::NotEmpty(out.to_owned())));
    }
    let ca = super::trusted_ca(&config.tls.ca_cert)?;
    let mut client = config.connect().await?;
    let bundle = client::export_audit(&mut client, job).await?;
    bundle.write(out)?;
    // The bundle is checked as it lies on disk, against the operator's own CA, before the
    // command says it is done.
    let verified = bundle::verify(out, &ca, None)?;
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

fn verify(
    dir: &Path,
    ca: &Path,
    previous: Option<&Path>,
    crl: Option<&Path>,
    nodes: &[PathBuf],
) -> Outcome {
    let ca = super::trusted_ca(ca)?;
    let v = bundle::verify(dir, &ca, previous)?;
    if let Some(crl) = crl {
        let pem = std::fs::read(dir.join("coordinator.crt"))?;
        let der = treaty_proto::tls::certificate_der(&pem).map_err(anyhow::Error::msg)?;
        super::not_revoked(&der, crl)?;
    }
    outln!(
        "verified: job {} of federation {}: {} entries of the job, its federation and the log, in a log of {} entries whose head {} signed at time_unix_ms {}",
        v.job_id,
        v.federation,
        v.entries,
        v.links,
        v.signed_by,
        v.signed_unix_ms
    );
    outln!(
        "exported by {} at time_unix_ms {}, as the log records it",
        v.exported_by,
        v.exported_unix_ms
    );
    outln!(
        "{} policy decisions and {} cited policy and registry texts, each the one its round's entry vouches for",
        v.decisions,
        v.texts
    );
    let records = v
        .results
        .values()
        .map(|r| serde_json::from_value::<ResultsRecord>(r.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("a results record of the bundle is unreadable: {e}"))?;
    outln!(
        "{} round results records, {} results taken in, {} of them signed by the agency that sent it (each signature checked)",
        records.len(),
        records.iter().map(|r| r.results.len()).sum::<usize>(),
        v.signed_results
    );
    for node in nodes {
        let c = treaty_node::export::cross_check(node, &ca, &v.signed_by, &v.job_id, &records)
            .map_err(|problem| {
                anyhow::anyhow!(
                    "the node evidence `{}` disagrees: {problem}",
                    node.display()
                )
            })?;
        outln!(
            "{}: {} agrees: {} task(s) of the job, {} signed receipt(s), {} result(s) the bundle records from it",
            node.display(),
            c.agency,
            c.tasks,
            c.receipts,
            c.results
        );
        if !c.unreceipted.is_empty() {
            outln!(
                "  sent without a receipt in its evidence (the coordinator withheld it, or the node stopped before it stored it): {}",
                c.unreceipted.join(", ")
            );
        }
    }
    Ok(())
}
