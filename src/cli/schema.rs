//! `treaty schema check FILE [--registry REGISTRY] [--model MODEL]`: a feature schema checked
//! whole, before any job uses it; and the same check, which `treaty job train` runs before it
//! submits. Every problem is printed at once as `FILE:LINE: what is wrong; what to write`; the
//! command exits 0 when there is none, 2 when there is any (the schema is unusable input).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use treaty_devkit::outln;
use treaty_policies::Registry;
use treaty_proto::schema::{self, Usage};
use treaty_proto::v1::FeatureSchema;

use super::job::ModelArg;
use super::{CliError, Outcome, unusable};

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Checks a feature schema whole, as `treaty job train` does before it submits a job: every
    /// problem at once (FILE:LINE: what is wrong and what to write instead), exit 0 when there
    /// is none and 2 when there is any. Numeric columns need `lower` and `upper` (the job's
    /// statistics round is differentially private).
    Check {
        /// The schema file (TOML).
        file: PathBuf,
        /// The federation's registry: every column and the label must be among its [fields].
        #[arg(long)]
        registry: Option<PathBuf>,
        /// The model the job trains: the label must fit it (binary for logistic and mlp,
        /// categorical for multinomial, numeric for linear).
        #[arg(long, value_enum)]
        model: Option<ModelArg>,
    },
}

pub fn run(command: SchemaCommand) -> Outcome {
    match command {
        SchemaCommand::Check {
            file,
            registry,
            model,
        } => {
            let registry = registry
                .map(|path| Registry::load(&path).map_err(|e| unusable(anyhow::anyhow!(e))))
                .transpose()?;
            let usage = Usage::training(model.map(ModelArg::kind));
            let known = registry.as_ref().map(KnownFields::from);
            match check_file(&file, &usage, known.as_ref())? {
                Ok(schema) => {
                    let features = schema::encoded_names(&schema).len();
                    eprintln!(
                        "{}: valid ({} column(s), {features} encoded feature(s), label `{}`{})",
                        file.display(),
                        schema.columns.len(),
                        schema.label.map(|l| l.name).unwrap_or_default(),
                        registry
                            .map(|r| format!("; every field in registry {}", r.version))
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                Err(lines) => {
                    for line in &lines {
                        outln!("{line}");
                    }
                    Err(unusable(anyhow::anyhow!(
                        "{} has {} problem(s)",
                        file.display(),
                        lines.len()
                    )))
                }
            }
        }
    }
}

/// A registry's version and field names: what a schema's columns and label must be among.
#[derive(Debug, Clone)]
pub struct KnownFields {
    pub version: String,
    pub fields: std::collections::BTreeSet<String>,
}

impl From<&Registry> for KnownFields {
    fn from(r: &Registry) -> Self {
        KnownFields {
            version: r.version.clone(),
            fields: r.fields.keys().cloned().collect(),
        }
    }
}

/// Reads a schema file and checks it whole for `usage` and, given a registry, its fields: the
/// schema, or every problem as a `FILE:LINE: message` line. An unreadable file is an error.
pub fn check_file(
    path: &Path,
    usage: &Usage,
    registry: Option<&KnownFields>,
) -> Result<Result<FeatureSchema, Vec<String>>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        unusable(anyhow::anyhow!(
            "cannot read the schema {}: {e}",
            path.display()
        ))
    })?;
    let unregistered = |s: &FeatureSchema| match registry {
        Some(registry) => schema::unregistered(
            s,
            &registry.version,
            |f| registry.fields.contains(f),
            |f| treaty_policies::did_you_mean(f, registry.fields.iter().map(String::as_str)),
        ),
        None => Vec::new(),
    };
    Ok(
        schema::check_text_with(&text, usage, unregistered).map_err(|problems| {
            problems
                .iter()
                .map(|p| match p.line {
                    Some(line) => format!("{}:{line}: {}", path.display(), p.message),
                    None => format!("{}: {}", path.display(), p.message),
                })
                .collect()
        }),
    )
}
