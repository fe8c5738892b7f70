//! `treaty policy ...`: the policy tools of legal teams and the decision contract of
//! `docs/POLICY_LANGUAGE.md` (`check` exits 0/1, `decide` 0/2; 2 always means unusable input).
//!
//! Exit codes of the tools: `test` 0 all pass, 1 any fails, 2 an unusable registry, policy
//! directory or test file; `lint` 0 no warnings, 1 warnings or an invalid policy file (its
//! errors are printed as `check` prints them), 2 an unusable registry or an unreadable file;
//! `diff` and `matrix` 0, 2 on unusable input; `keygen` 0, 1 when a key file exists, 2 on a bad
//! country code; `sign` and `verify` 0 when every file is signed or verifies, 1 otherwise, 2 on
//! an unusable key, key directory or registry.
//!
//! One file per subcommand or close group: `check`, `decide`, `test`, `lint`, `diff`, `matrix`,
//! `keys` (`keygen`, `sign`, `verify`); this file holds the command line, the dispatch and the
//! exit-code helpers they share. `exit_codes` tests the contract above.

mod check;
mod decide;
mod diff;
#[cfg(test)]
mod exit_codes;
mod keys;
mod lint;
mod matrix;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use treaty_devkit::errln;
use treaty_policies::{Date, Policy, Registry, TrustedKeys, country_of};

use check::check;
use decide::decide_cmd;
use diff::diff_cmd;
use keys::{keygen, sign_cmd, verify_cmd};
use lint::lint_cmd;
use matrix::matrix_cmd;
use test::test_cmd;

/// `treaty policy ...`: the subcommands and their arguments.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validates policy files against the registry: every problem as FILE:LINE:COL: message.
    /// Test files (`*.tests.toml`) are checked as test files. Exit 0 when all are valid, 1 when
    /// any is not.
    Check {
        /// The federation's registry (its countries, groups, purposes, fields).
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
        /// The federation's registry (its countries, groups, purposes, fields).
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
    /// Runs the tests kept next to policies: `<name>.tests.toml` files of `[[test]]` entries,
    /// each a request and the decision expected. Prints `ok NAME` or `FAIL NAME: expected ...,
    /// got ...` per test and a summary. Exit 0 when all pass, 1 when any fails, 2 on an unusable
    /// registry or test file.
    Test {
        /// The federation's registry (its countries, groups, purposes, fields).
        #[arg(long)]
        registry: PathBuf,
        /// The directory holding `<CC>.toml`.
        #[arg(long)]
        policies: PathBuf,
        /// Require signed policies, verified with these public keys (`<CC>.pub`).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Test files; default every `*.tests.toml` in the policy directory.
        files: Vec<PathBuf>,
    },
    /// Warns about what a valid policy says that was probably not meant (an allow rule a deny
    /// always overrides, a GDPR adequacy decision as a law-enforcement basis, derogations,
    /// expired rules, odd privacy limits), as FILE:LINE:COL: warning: message. Exit 0 without
    /// warnings, 1 with warnings or when a file is not a valid policy (its errors are printed),
    /// 2 on an unusable registry or an unreadable file.
    Lint {
        /// The federation's registry (its countries, groups, purposes, fields).
        #[arg(long)]
        registry: PathBuf,
        /// The date expiry is judged on (YYYY-MM-DD); default today (UTC).
        #[arg(long)]
        today: Option<String>,
        /// Policy files (`<CC>.toml`; other names are linted without the country check).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compares two versions of a country's policy: which recipient countries and purposes
    /// gain or lose permission, where a coordinator may be hosted, which limits and rules
    /// change. Exit 0, 2 on unusable input.
    Diff {
        /// The federation's registry (its countries, groups, purposes, fields).
        #[arg(long)]
        registry: PathBuf,
        /// The date permissions are judged on (YYYY-MM-DD); default today (UTC).
        #[arg(long)]
        date: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The earlier version of the policy file.
        old: PathBuf,
        /// The later version of the policy file.
        new: PathBuf,
    },
    /// Who accepts whom as a recipient, for one purpose on one date, between the countries
    /// with a policy in the directory. Exit 0, 2 on unusable input.
    Matrix {
        /// The federation's registry (its countries, groups, purposes, fields).
        #[arg(long)]
        registry: PathBuf,
        /// The directory holding `<CC>.toml`.
        #[arg(long)]
        policies: PathBuf,
        /// The purpose (a registry purpose, e.g. `narcotics`).
        #[arg(long)]
        purpose: String,
        /// YYYY-MM-DD; default today (UTC).
        #[arg(long)]
        date: Option<String>,
        /// Text (a table) or CSV.
        #[arg(long, value_enum, default_value_t = MatrixFormat::Text)]
        format: MatrixFormat,
        /// Require signed policies, verified with these public keys (`<CC>.pub`).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Makes a country's signing key pair: DIR/CC.key (private, mode 0600) and DIR/CC.pub (for
    /// the federation's key directory). Never overwrites a key.
    Keygen {
        /// The directory to write the key pair into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The country whose key it is (ISO 3166-1 alpha-2, e.g. `DE`).
        #[arg(long)]
        country: String,
    },
    /// Signs policy files (`<CC>.toml`), writing `<CC>.toml.sig` next to each.
    Sign {
        /// The country's private key (`<CC>.key` from `treaty policy keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Validate each file against the registry before signing (without it, a file is only
        /// checked to be TOML naming its country).
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Policy files to sign, each named `<CC>.toml`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verifies the signatures of policy files against the federation's public keys. Exit 0
    /// when all verify, 1 otherwise.
    Verify {
        /// The federation's public keys (`<CC>.pub`).
        #[arg(long)]
        keys: PathBuf,
        /// Policy files to verify, each with its `<CC>.toml.sig` beside it.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// How `treaty policy matrix` prints the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Text,
    Csv,
    Json,
}

/// Runs one `treaty policy` command; its exit code follows the contract above.
pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check {
            registry,
            keys,
            files,
        } => code(check(&registry, keys.as_deref(), &files)),
        PolicyCommand::Decide {
            registry,
            policies,
            request,
            keys,
        } => code(decide_cmd(&registry, &policies, &request, keys.as_deref())),
        PolicyCommand::Test {
            registry,
            policies,
            keys,
            files,
        } => code(test_cmd(&registry, &policies, keys.as_deref(), &files)),
        PolicyCommand::Lint {
            registry,
            today,
            files,
        } => code(lint_cmd(&registry, today.as_deref(), &files)),
        PolicyCommand::Diff {
            registry,
            date,
            json,
            old,
            new,
        } => code(diff_cmd(&registry, date.as_deref(), json, &old, &new)),
        PolicyCommand::Matrix {
            registry,
            policies,
            purpose,
            date,
            format,
            keys,
        } => code(matrix_cmd(
            &registry,
            &policies,
            &purpose,
            date.as_deref(),
            format,
            keys.as_deref(),
        )),
        PolicyCommand::Keygen { out, country } => code(keygen(&out, &country)),
        PolicyCommand::Sign {
            key,
            registry,
            files,
        } => code(sign_cmd(&key, registry.as_deref(), &files)),
        PolicyCommand::Verify { keys, files } => code(verify_cmd(&keys, &files)),
    }
}

/// An exit code, kept as a number so that commands can be tested.
type Code = u8;

fn code(c: Code) -> ExitCode {
    ExitCode::from(c)
}

/// Prints an error about unusable input; the exit code 2.
fn unusable(message: impl std::fmt::Display) -> Code {
    errln!("error: {message}");
    2
}

fn registry_or_2(path: &Path) -> Result<Registry, Code> {
    Registry::load(path).map_err(|problems| {
        unusable(format!(
            "the registry {} is unusable:\n{problems}",
            path.display()
        ))
    })
}

fn keys_or_2(keys: Option<&Path>) -> Result<Option<TrustedKeys>, Code> {
    keys.map(TrustedKeys::load).transpose().map_err(unusable)
}

/// `--date`/`--today`, default today's UTC date.
fn date_or_today(flag: &str, date: Option<&str>) -> Result<Date, Code> {
    match date {
        None => Ok(Date::today()),
        Some(text) => Date::parse(text).ok_or_else(|| {
            unusable(format!(
                "{flag} `{text}` is not a calendar date written YYYY-MM-DD"
            ))
        }),
    }
}

/// Runs a command's body written with `?` on exit codes.
fn attempt(body: impl FnOnce() -> Result<Code, Code>) -> Code {
    body().unwrap_or_else(|c| c)
}

/// Reads and validates a policy file for the tools; `Err` holds the lines to print.
fn read_policy(registry: &Registry, path: &Path) -> Result<(Policy, String), Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}:1:1: cannot read the file: {e}", path.display())])?;
    Policy::parse(
        &path.display().to_string(),
        &text,
        registry,
        country_of(path).as_deref(),
    )
    .map(|p| (p, text))
    .map_err(|e| e.diagnostics().iter().map(ToString::to_string).collect())
}
