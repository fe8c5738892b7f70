//! `treaty policy ...`: the policy tools of legal teams and the decision contract of
//! `shared/spec/policy.md` (`check` exits 0/1, `decide` 0/2; 2 always means unusable input).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use treaty_policies::decide::{Loaded, Request, decide};
use treaty_policies::load::{PolicyDir, country_of, load_file};
use treaty_policies::registry::Registry;
use treaty_policies::signing::TrustedKeys;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validates policy files against the registry: every problem as FILE:LINE:COL: message.
    /// Exit 0 when all are valid, 1 when any is not.
    Check {
        #[arg(long)]
        registry: PathBuf,
        /// The federation's public keys (`<CC>.pub`): signatures are then checked too.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Policy files, each named `<CC>.toml`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Decides a round: prints the decision JSON. Exit 0 whatever the decision, 2 on an
    /// unusable registry or request.
    Decide {
        #[arg(long)]
        registry: PathBuf,
        /// The directory holding `<CC>.toml`.
        #[arg(long)]
        policies: PathBuf,
        /// The request (JSON).
        #[arg(long)]
        request: PathBuf,
        /// Require signed policies, verified with these public keys (`<CC>.pub`).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn load_registry(path: &Path) -> Result<Registry, ExitCode> {
    Registry::load(path).map_err(|problems| {
        eprintln!(
            "error: the registry {} is unusable:\n{problems}",
            path.display()
        );
        ExitCode::from(2)
    })
}

fn load_keys(keys: Option<&Path>) -> Result<Option<TrustedKeys>, ExitCode> {
    keys.map(TrustedKeys::load).transpose().map_err(usage_error)
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check {
            registry,
            keys,
            files,
        } => check(&registry, keys.as_deref(), &files),
        PolicyCommand::Decide {
            registry,
            policies,
            request,
            keys,
        } => decide_cmd(&registry, &policies, &request, keys.as_deref()),
    }
}

fn check(registry: &Path, keys: Option<&Path>, files: &[PathBuf]) -> ExitCode {
    let registry = match load_registry(registry) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let keys = match load_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let mut bad = 0;
    for file in files {
        let Some(country) = country_of(file) else {
            println!(
                "{}:1:1: a policy file is named after its country's ISO code, e.g. DE.toml",
                file.display()
            );
            bad += 1;
            continue;
        };
        match load_file(file, &country, &registry, keys.as_ref()).0 {
            Loaded::Valid(p) => eprintln!(
                "{}: valid ({} policy version {})",
                file.display(),
                p.country,
                p.version
            ),
            Loaded::Missing { looked_at } => {
                println!("{looked_at}:1:1: the file cannot be read");
                bad += 1;
            }
            Loaded::Broken { error, .. } => {
                for d in error.diagnostics() {
                    println!("{d}");
                }
                bad += 1;
            }
            Loaded::BadSignature { problem, .. } => {
                println!("{}:1:1: {problem}", file.display());
                bad += 1;
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{bad} of {} policy files are not valid", files.len());
        ExitCode::from(1)
    }
}

/// Reads a decision request; the error names what is wrong.
pub fn read_request(path: &Path) -> Result<Request, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the request {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the request {} is not a valid request: {e}", path.display()))
}

fn decide_cmd(registry: &Path, policies: &Path, request: &Path, keys: Option<&Path>) -> ExitCode {
    let registry = match load_registry(registry) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let keys = match load_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let request = match read_request(request) {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    if !policies.is_dir() {
        return usage_error(format!(
            "the policy directory {} does not exist",
            policies.display()
        ));
    }
    let dir = PolicyDir::new(policies, keys);
    let loaded: BTreeMap<String, Loaded> = dir.load_all(
        &registry,
        request.participants.iter().map(|p| p.country.as_str()),
    );
    match decide(&registry, &loaded, &request) {
        Ok(decision) => match serde_json::to_string_pretty(&decision) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        Err(e) => usage_error(e),
    }
}
