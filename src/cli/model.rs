//! `treaty model get` and `treaty model explain`: a model version as a model file
//! (`treaty_node::model_file`), and predictions with each feature's contribution for the records
//! of a CSV file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use treaty_coordinator::client::{self, OperatorConfig};
use treaty_devkit::outln;
use treaty_node::Architecture;
use treaty_node::Table;
use treaty_node::explain;
use treaty_node::{ModelFile, ProvenanceFile, VerifiedProvenance};

use super::{Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Downloads a model version with its feature names, schema and standardization, as JSON.
    Get {
        /// The operator's configuration file (coordinator address and TLS files).
        #[arg(long)]
        config: PathBuf,
        /// The job.
        #[arg(long)]
        job: String,
        /// The model version (default: the job's latest).
        #[arg(long, default_value = "")]
        version: String,
        /// Where to write the model (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Checks a model file's provenance: the coordinator's signed manifest states this very
    /// model (its weights and schema), and names the agencies, rounds and policies behind it.
    /// Exit 0 when it checks out, 1 naming what does not.
    Verify {
        /// A model file written by `treaty model get`.
        #[arg(long)]
        model: PathBuf,
        /// The federation CA's certificate (PEM) you trust, from your own copy.
        #[arg(long)]
        ca: PathBuf,
        /// The federation's revocation list (PEM) you trust: the signing certificate must not
        /// be on it.
        #[arg(long)]
        crl: Option<PathBuf>,
    },
    /// Predicts the records of a CSV file with a model file, and explains each prediction of a
    /// linear model: every feature column's contribution to the score, beside the model's
    /// checked provenance.
    Explain {
        /// A model file written by `treaty model get`.
        #[arg(long)]
        model: PathBuf,
        /// Records to predict (CSV with a header, the schema's columns).
        #[arg(long)]
        data: PathBuf,
        /// At most this many records.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// The federation CA's certificate (PEM) you trust: the model's provenance is checked
        /// against it (without it, the scores are marked "provenance not checked").
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

/// Runs a `treaty model` command: `get` on an async runtime, `explain` as it is.
pub fn run(command: ModelCommand) -> Outcome {
    match command {
        ModelCommand::Get {
            config,
            job,
            version,
            out,
        } => super::block_on(get(&config, &job, &version, out.as_deref())),
        ModelCommand::Verify { model, ca, crl } => verify(&model, &ca, crl.as_deref()),
        ModelCommand::Explain {
            model,
            data,
            limit,
            ca,
        } => explain_records(&model, &data, limit, ca.as_deref()),
    }
}

/// Downloads a model version and writes it as a model file to `out` (or standard output).
async fn get(config: &Path, job: &str, version: &str, out: Option<&Path>) -> Outcome {
    let config = OperatorConfig::load(config).map_err(unusable)?;
    let mut client = config.connect().await?;
    let (header, tensors) = client::download(&mut client, job, version).await?;
    // A model the coordinator sent malformed is its failure (`MalformedModel`: status 1).
    let mut file = ModelFile::new(&header, &tensors)?;
    // Its provenance, for the version downloaded, signed by the coordinator; checked before
    // the file is written.
    let p = client::provenance(&mut client, job, &header.model_version).await?;
    file.provenance = Some(ProvenanceFile {
        manifest: p.manifest,
        scheme: p.scheme,
        signature: treaty_proto::hex::hex(&p.signature),
        coordinator_certificate: treaty_proto::tls::certificate_pem(&p.coordinator_certificate),
        ca_certificate: treaty_proto::tls::certificate_pem(&p.ca_certificate),
    });
    // Checked against the operator's own federation CA.
    file.verify_provenance(&super::trusted_ca(&config.tls.ca_cert)?)?;
    let text = serde_json::to_string_pretty(&file)?;
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            // Said on standard output, as `treaty pki` says what it wrote.
            outln!("{}", path.display());
        }
        None => outln!("{text}"),
    }
    Ok(())
}

/// Checks a model file's provenance and prints what it states.
fn verify(model_file: &Path, ca: &Path, crl: Option<&Path>) -> Outcome {
    let ca = super::trusted_ca(ca)?;
    let file = ModelFile::read(model_file)?;
    let v = file.verify_provenance(&ca)?;
    if let (Some(crl), Some(p)) = (crl, &file.provenance) {
        let der = treaty_proto::tls::certificate_der(p.coordinator_certificate.as_bytes())
            .map_err(anyhow::Error::msg)?;
        super::not_revoked(&der, crl)?;
    }
    outln!(
        "verified: {} is the model its provenance states, signed by {}",
        file.model_version,
        v.signed_by
    );
    print_provenance(&v);
    Ok(())
}

/// What a verified provenance states, for people.
fn print_provenance(v: &VerifiedProvenance) {
    let m = &v.manifest;
    outln!(
        "  job {} of federation {}, created by {}; {} with {}; privacy: at most epsilon {} per agency for the whole job (delta {:e})",
        m.job_id,
        m.federation,
        m.created_by,
        m.model_kind,
        m.strategy,
        m.privacy.target_epsilon,
        m.privacy.delta
    );
    outln!(
        "  signed by a coordinator running Treaty {} ({})",
        m.treaty_version,
        match m.treaty_build.is_empty() {
            true => "build not stated",
            false => &m.treaty_build,
        }
    );
    for r in &m.rounds {
        let what = if r.round == 0 {
            "statistics".to_owned()
        } else {
            format!("round {}", r.round)
        };
        let excluded = match r.excluded.is_empty() {
            true => String::new(),
            false => format!("; excluded: {}", r.excluded.join(", ")),
        };
        outln!(
            "  {what}: {}{excluded}; decision {}, citing {} policy text(s)",
            r.contributors.join(", "),
            r.policy_decision_sha256
                .chars()
                .take(12)
                .collect::<String>(),
            r.policy_texts_sha256.len()
        );
    }
    for s in &m.spent {
        outln!(
            "  {} spent epsilon {:.4} on this job ({:.4} over every job) at delta {:e}, as its node reported by its own ledger",
            s.agency,
            s.job_epsilon,
            s.total_epsilon,
            s.delta
        );
    }
}

/// Prints the prediction of each record of `data` (at most `limit`) and, for linear models, each
/// feature column's contribution, largest first.
fn explain_records(model_file: &Path, data: &Path, limit: usize, ca: Option<&Path>) -> Outcome {
    if limit == 0 {
        return Err(unusable(anyhow::anyhow!("--limit must be at least 1")));
    }
    let file = ModelFile::read(model_file)?;
    let (model, schema, stats) = file.model()?;
    let table = Table::open(data)?;
    // Whoever acts on a score is told where the model comes from, and whether that checks out.
    let checked = match ca {
        Some(ca) => Some(file.verify_provenance(&super::trusted_ca(ca)?)),
        None => None,
    };
    let provenance = match checked {
        Some(Ok(v)) => {
            outln!("model {}: provenance verified", file.model_version);
            print_provenance(&v);
            "provenance verified"
        }
        Some(Err(e)) => {
            outln!("model {}: PROVENANCE NOT VERIFIED: {e}", file.model_version);
            "PROVENANCE NOT VERIFIED"
        }
        None => {
            outln!(
                "model {}: provenance not checked: give --ca with the federation CA you trust",
                file.model_version
            );
            "provenance not checked"
        }
    };
    let examples = table.encode(&schema, &stats)?;
    let predictions = model.predict(examples.x.view());
    for (i, row) in examples.x.rows().into_iter().take(limit).enumerate() {
        let prediction = predictions.row(i);
        let class = prediction
            .iter()
            .enumerate()
            .fold(0, |b, (k, &v)| if v > prediction[b] { k } else { b });
        let shown = match model.kind {
            Architecture::Multinomial { .. } => format!(
                "class {} (p = {:.4})",
                file.classes.get(class).cloned().unwrap_or_default(),
                prediction[class]
            ),
            Architecture::Linear => format!("{:.4}", prediction[0]),
            _ => format!("p = {:.4}", prediction[0]),
        };
        outln!(
            "record {} (line {}): {shown} [model {}, {provenance}]",
            i + 1,
            i + 2,
            file.model_version
        );
        if let Some(e) = explain(&model, &schema, row, class) {
            outln!("  score {:.4} = bias {:.4}", e.score, e.bias);
            for (name, c) in e.ranked() {
                outln!("    {c:+.4}  {name}");
            }
        }
    }
    Ok(())
}
