//! `treaty policy ...`: the policy tools of legal teams and the decision contract of
//! `docs/POLICY_LANGUAGE.md` (`check` exits 0/1, `decide` 0/2; 2 always means unusable input).
//!
//! Exit codes of the tools: `test` 0 all pass, 1 any fails, 2 an unusable registry, policy
//! directory or test file; `lint` 0 no warnings, 1 warnings or an invalid policy file (its
//! errors are printed as `check` prints them), 2 an unusable registry or an unreadable file;
//! `diff` and `matrix` 0, 2 on unusable input; `keygen` 0, 1 when a key file exists, 2 on a bad
//! country code; `sign` and `verify` 0 when every file is signed or verifies, 1 otherwise, 2 on
//! an unusable key, key directory or registry.

use crate::output::{out, outln};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use treaty_policies::{
    Date, Loaded, Policy, PolicyDir, Registry, Request, Summary, TestFile, TrustedKeys, country_of,
    country_of_key, decide, did_you_mean, diff, lint, load_file, load_private_key,
    looks_like_policy_of, matrix, sign_file, verify_file, write_key_pair,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validates policy files against the registry: every problem as FILE:LINE:COL: message.
    /// Test files (`*.tests.toml`) are checked as test files. Exit 0 when all are valid, 1 when
    /// any is not.
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
    /// Runs the tests kept next to policies: `<name>.tests.toml` files of `[[test]]` entries,
    /// each a request and the decision expected. Prints `ok NAME` or `FAIL NAME: expected ...,
    /// got ...` per test and a summary. Exit 0 when all pass, 1 when any fails, 2 on an unusable
    /// registry or test file.
    Test {
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
        #[arg(long)]
        registry: PathBuf,
        /// The date permissions are judged on (YYYY-MM-DD); default today (UTC).
        #[arg(long)]
        date: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        old: PathBuf,
        new: PathBuf,
    },
    /// Who accepts whom as a recipient, for one purpose on one date, between the countries
    /// with a policy in the directory. Exit 0, 2 on unusable input.
    Matrix {
        #[arg(long)]
        registry: PathBuf,
        /// The directory holding `<CC>.toml`.
        #[arg(long)]
        policies: PathBuf,
        #[arg(long)]
        purpose: String,
        /// YYYY-MM-DD; default today (UTC).
        #[arg(long)]
        date: Option<String>,
        #[arg(long, value_enum, default_value_t = MatrixFormat::Text)]
        format: MatrixFormat,
        /// Require signed policies, verified with these public keys (`<CC>.pub`).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Makes a country's signing key pair: DIR/CC.key (private, mode 0600) and DIR/CC.pub (for
    /// the federation's key directory). Never overwrites a key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
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
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verifies the signatures of policy files against the federation's public keys. Exit 0
    /// when all verify, 1 otherwise.
    Verify {
        /// The federation's public keys (`<CC>.pub`).
        #[arg(long)]
        keys: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Text,
    Csv,
    Json,
}

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
    eprintln!("error: {message}");
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

fn test_cmd(registry: &Path, policies: &Path, keys: Option<&Path>, files: &[PathBuf]) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let keys = keys_or_2(keys)?;
        if !policies.is_dir() {
            return Err(unusable(format!(
                "the policy directory {} does not exist",
                policies.display()
            )));
        }
        let files = if files.is_empty() {
            let found = test_files(policies).map_err(unusable)?;
            if found.is_empty() {
                return Err(unusable(format!(
                    "{} holds no test files (*.tests.toml)",
                    policies.display()
                )));
            }
            found
        } else {
            files.to_vec()
        };
        let dir = PolicyDir::new(policies, keys);
        let mut summary = Summary::default();
        let mut unusable_files = 0;
        for path in &files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    outln!("{}:1:1: cannot read the test file: {e}", path.display());
                    unusable_files += 1;
                    continue;
                }
            };
            let file = match TestFile::parse(&path.display().to_string(), &text, &registry) {
                Ok(f) => f,
                Err(problems) => {
                    for p in problems {
                        outln!("{p}");
                    }
                    unusable_files += 1;
                    continue;
                }
            };
            let n = file.tests.len();
            outln!(
                "{}: {n} test{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            for result in file.run(&registry, &dir) {
                outln!("{result}");
                summary.add(&result);
            }
        }
        if unusable_files > 0 {
            outln!(
                "{summary}; {unusable_files} test file{} unusable",
                if unusable_files == 1 { "" } else { "s" }
            );
        } else {
            outln!("{summary}");
        }
        Ok(if unusable_files > 0 || summary.errors > 0 {
            2
        } else if summary.failed > 0 {
            1
        } else {
            0
        })
    })
}

fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".tests.toml"))
}

/// Every `*.tests.toml` in `dir`, sorted.
fn test_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_test_file(p))
        .collect();
    files.sort();
    Ok(files)
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

fn lint_cmd(registry: &Path, today: Option<&str>, files: &[PathBuf]) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let today = date_or_today("--today", today)?;
        let mut code = 0;
        let (mut warnings, mut invalid) = (0, 0);
        for path in files {
            if !path.is_file() {
                eprintln!("error: cannot read {}", path.display());
                code = 2;
                continue;
            }
            match read_policy(&registry, path) {
                Err(lines) => {
                    for l in lines {
                        outln!("{l}");
                    }
                    invalid += 1;
                    code = code.max(1);
                }
                Ok((policy, text)) => {
                    let found = lint(
                        &registry,
                        &policy,
                        &path.display().to_string(),
                        &text,
                        today,
                    );
                    for w in &found {
                        outln!("{w}");
                    }
                    if !found.is_empty() {
                        warnings += found.len();
                        code = code.max(1);
                    }
                }
            }
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        eprintln!(
            "{warnings} warning{} in {} file{} (judged on {today}){}",
            plural(warnings),
            files.len(),
            plural(files.len()),
            if invalid > 0 {
                format!("; {invalid} file{} not valid policies", plural(invalid))
            } else {
                String::new()
            }
        );
        Ok(code)
    })
}

fn diff_cmd(registry: &Path, date: Option<&str>, json: bool, old: &Path, new: &Path) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let date = date_or_today("--date", date)?;
        let read = |path: &Path| {
            read_policy(&registry, path)
                .map(|(p, _)| p)
                .map_err(|lines| {
                    for l in &lines {
                        eprintln!("{l}");
                    }
                    unusable(format!("{} is not a valid policy", path.display()))
                })
        };
        let (old_policy, new_policy) = (read(old)?, read(new)?);
        if old_policy.country != new_policy.country {
            return Err(unusable(format!(
                "{} is {}'s policy and {} is {}'s; diff compares two versions of one country's policy",
                old.display(),
                old_policy.country,
                new.display(),
                new_policy.country
            )));
        }
        let d = diff(&registry, &old_policy, &new_policy, date);
        if json {
            match serde_json::to_string_pretty(&d) {
                Ok(text) => outln!("{text}"),
                Err(e) => return Err(unusable(e)),
            }
        } else {
            out!("{}", d.text());
        }
        Ok(0)
    })
}

fn matrix_cmd(
    registry: &Path,
    policies: &Path,
    purpose: &str,
    date: Option<&str>,
    format: MatrixFormat,
    keys: Option<&Path>,
) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let keys = keys_or_2(keys)?;
        let date = date_or_today("--date", date)?;
        if !registry.purposes.contains_key(purpose) {
            let hint = did_you_mean(purpose, registry.purposes.keys().map(String::as_str));
            return Err(unusable(format!(
                "`{purpose}` is not a purpose of registry {}{}",
                registry.version,
                hint.map_or(String::new(), |h| format!("; {h}"))
            )));
        }
        let entries = std::fs::read_dir(policies)
            .map_err(|e| unusable(format!("cannot read {}: {e}", policies.display())))?;
        let countries: Vec<String> = entries
            .flatten()
            .filter_map(|e| country_of(&e.path()))
            .collect();
        if countries.is_empty() {
            return Err(unusable(format!(
                "{} holds no policy files (<CC>.toml)",
                policies.display()
            )));
        }
        let dir = PolicyDir::new(policies, keys);
        let loaded = dir.load_all(&registry, countries.iter().map(String::as_str));
        let m = matrix(&registry, &loaded, purpose, date);
        match format {
            MatrixFormat::Text => out!("{}", m.text()),
            MatrixFormat::Csv => out!("{}", m.csv()),
            MatrixFormat::Json => match serde_json::to_string_pretty(&m.json()) {
                Ok(text) => outln!("{text}"),
                Err(e) => return Err(unusable(e)),
            },
        }
        Ok(0)
    })
}

fn keygen(out: &Path, country: &str) -> Code {
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return unusable(format!(
            "`{country}` is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. DE)"
        ));
    }
    match write_key_pair(out, country) {
        Ok((private, public)) => {
            outln!(
                "{}: {country}'s private key (mode 0600): keep it secret, with the legal team that signs",
                private.display()
            );
            outln!(
                "{}: {country}'s public key: give it to the federation secretariat for the key directory",
                public.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn sign_cmd(key: &Path, registry: Option<&Path>, files: &[PathBuf]) -> Code {
    attempt(|| {
        let pair = load_private_key(key).map_err(unusable)?;
        let registry = registry.map(registry_or_2).transpose()?;
        let key_country = country_of_key(key);
        let check = |country: &str, text: &str| match &registry {
            None => looks_like_policy_of(country, text),
            Some(r) => Policy::parse(country, text, r, Some(country))
                .map(|_| ())
                .map_err(|e| {
                    let n = e.diagnostics().len();
                    format!(
                        "{n} problem{} (`treaty policy check` lists them)",
                        if n == 1 { "" } else { "s" }
                    )
                }),
        };
        let mut refused = 0;
        for path in files {
            match sign_file(&pair, key_country.as_deref(), path, check) {
                Ok(sig) => outln!("{}: signed ({})", path.display(), sig.display()),
                Err(e) => {
                    outln!("{}: not signed: {e}", path.display());
                    refused += 1;
                }
            }
        }
        Ok(if refused > 0 { 1 } else { 0 })
    })
}

fn verify_cmd(keys: &Path, files: &[PathBuf]) -> Code {
    attempt(|| {
        let keys = TrustedKeys::load(keys).map_err(unusable)?;
        let mut bad = 0;
        for path in files {
            match verify_file(&keys, path) {
                Ok(country) => outln!(
                    "{}: signature valid ({country}'s registered key)",
                    path.display()
                ),
                Err(e) => {
                    outln!("{}: {e}", path.display());
                    bad += 1;
                }
            }
        }
        Ok(if bad > 0 { 1 } else { 0 })
    })
}

fn check(registry: &Path, keys: Option<&Path>, files: &[PathBuf]) -> Code {
    let registry_path = registry;
    let (registry, keys) = match (registry_or_2(registry), keys_or_2(keys)) {
        (Ok(r), Ok(k)) => (r, k),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let mut bad = 0;
    let registry_file = std::fs::canonicalize(registry_path).ok();
    for file in files {
        // `treaty policy check --registry registry.toml *.toml` names the registry among the
        // files: it was read as the registry already.
        if registry_file.is_some() && std::fs::canonicalize(file).ok() == registry_file {
            eprintln!("{}: valid (the registry)", file.display());
            continue;
        }
        if is_test_file(file) {
            // Tests kept next to the policies are checked as what they are.
            let parsed = std::fs::read_to_string(file)
                .map_err(|e| vec![format!("{}:1:1: cannot read the file: {e}", file.display())])
                .and_then(|text| {
                    TestFile::parse(&file.display().to_string(), &text, &registry)
                        .map_err(|ds| ds.iter().map(ToString::to_string).collect())
                });
            match parsed {
                Ok(t) => eprintln!("{}: valid ({} tests)", file.display(), t.tests.len()),
                Err(lines) => {
                    for l in lines {
                        outln!("{l}");
                    }
                    bad += 1;
                }
            }
            continue;
        }
        let Some(country) = country_of(file) else {
            outln!(
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
                outln!("{looked_at}:1:1: the file cannot be read");
                bad += 1;
            }
            Loaded::Broken { error, .. } => {
                for d in error.diagnostics() {
                    outln!("{d}");
                }
                bad += 1;
            }
            Loaded::BadSignature { problem, .. } => {
                outln!("{}:1:1: {problem}", file.display());
                bad += 1;
            }
        }
    }
    if bad == 0 {
        0
    } else {
        eprintln!("{bad} of {} policy files are not valid", files.len());
        1
    }
}

/// Reads a decision request; the error names what is wrong.
pub fn read_request(path: &Path) -> Result<Request, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the request {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the request {} is not a valid request: {e}", path.display()))
}

fn decide_cmd(registry: &Path, policies: &Path, request: &Path, keys: Option<&Path>) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let keys = keys_or_2(keys)?;
        let request = read_request(request).map_err(unusable)?;
        if !policies.is_dir() {
            return Err(unusable(format!(
                "the policy directory {} does not exist",
                policies.display()
            )));
        }
        let dir = PolicyDir::new(policies, keys);
        let loaded: BTreeMap<String, Loaded> = dir.load_all(
            &registry,
            request.participants.iter().map(|p| p.country.as_str()),
        );
        let decision = decide(&registry, &loaded, &request).map_err(unusable)?;
        let text = serde_json::to_string_pretty(&decision).map_err(unusable)?;
        outln!("{text}");
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    //! Exit codes of the tools, on copies of the sample policies.

    use super::*;

    fn sample() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/sample")
    }

    fn copy_sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(sample()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        dir
    }

    fn edit(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(path, text.replace(from, to)).unwrap();
    }

    #[test]
    fn check_exits_0_1_2_and_decide_0_or_2() {
        let dir = copy_sample();
        let d = dir.path();
        let registry = d.join("registry.toml");
        let files: Vec<PathBuf> = ["DE", "FR", "NL", "PL", "US"]
            .iter()
            .map(|c| d.join(format!("{c}.toml")))
            .collect();
        assert_eq!(check(&registry, None, &files), 0);
        // The registry among the files (what `*.toml` gives) is the registry, not a policy.
        let mut with_registry = files.clone();
        with_registry.push(registry.clone());
        assert_eq!(check(&registry, None, &with_registry), 0);
        let request = d.join("request.json");
        assert_eq!(decide_cmd(&registry, d, &request, None), 0);
        // A broken policy: check says 1, decide still decides (0), the country excluded.
        edit(&d.join("FR.toml"), "max_delta", "max_detla");
        assert_eq!(check(&registry, None, &files), 1);
        assert_eq!(decide_cmd(&registry, d, &request, None), 0);
        // Unusable inputs: 2.
        assert_eq!(check(&d.join("nope.toml"), None, &files), 2);
        assert_eq!(decide_cmd(&d.join("nope.toml"), d, &request, None), 2);
        assert_eq!(decide_cmd(&registry, &d.join("nowhere"), &request, None), 2);
        edit(&request, "\"narcotics\"", "\"narcotic\"");
        assert_eq!(decide_cmd(&registry, d, &request, None), 2);
        std::fs::write(&request, "{").unwrap();
        assert_eq!(decide_cmd(&registry, d, &request, None), 2);
    }

    #[test]
    fn test_exits_0_1_2() {
        let dir = copy_sample();
        let d = dir.path();
        let registry = d.join("registry.toml");
        assert_eq!(test_cmd(&registry, d, None, &[]), 0);
        // A test file given by name, the same.
        assert_eq!(test_cmd(&registry, d, None, &[d.join("DE.tests.toml")]), 0);
        // A policy change that a test guards against: 1.
        edit(
            &d.join("DE.toml"),
            "recipients = [\"US\"]",
            "recipients = [\"CA\"]",
        );
        assert_eq!(test_cmd(&registry, d, None, &[]), 1);
        // An unusable test file: 2.
        edit(&d.join("DE.tests.toml"), "admitted = [", "admited = [");
        assert_eq!(test_cmd(&registry, d, None, &[]), 2);
        // No test files at all, or no registry: 2.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(test_cmd(&registry, empty.path(), None, &[]), 2);
        assert_eq!(test_cmd(&d.join("nope.toml"), d, None, &[]), 2);
    }

    #[test]
    fn lint_exits_0_1_2() {
        let dir = copy_sample();
        let d = dir.path();
        let registry = d.join("registry.toml");
        let today = Some("2025-09-01");
        assert_eq!(lint_cmd(&registry, today, &[d.join("DE.toml")]), 0);
        edit(
            &d.join("FR.toml"),
            "transfer_basis = \"intra_eu\"",
            "transfer_basis = \"derogation\"",
        );
        assert_eq!(
            lint_cmd(&registry, today, &[d.join("DE.toml"), d.join("FR.toml")]),
            1
        );
        // An invalid policy prints its errors and exits 1 too.
        edit(&d.join("NL.toml"), "max_delta", "max_detla");
        assert_eq!(
            lint_cmd(&registry, today, &[d.join("DE.toml"), d.join("NL.toml")]),
            1
        );
        assert_eq!(lint_cmd(&registry, today, &[d.join("XX.toml")]), 2);
        assert_eq!(
            lint_cmd(&registry, Some("2025-02-30"), &[d.join("DE.toml")]),
            2
        );
    }

    #[test]
    fn diff_and_matrix_exit_0_or_2() {
        let d = sample();
        let registry = d.join("registry.toml");
        let de = d.join("DE.toml");
        assert_eq!(diff_cmd(&registry, Some("2025-09-01"), false, &de, &de), 0);
        assert_eq!(diff_cmd(&registry, None, true, &de, &de), 0);
        assert_eq!(diff_cmd(&registry, None, false, &de, &d.join("NL.toml")), 2);
        assert_eq!(diff_cmd(&registry, None, false, &de, &d.join("XX.toml")), 2);
        for format in [MatrixFormat::Text, MatrixFormat::Csv, MatrixFormat::Json] {
            assert_eq!(
                matrix_cmd(&registry, &d, "narcotics", Some("2025-09-01"), format, None),
                0
            );
        }
        assert_eq!(
            matrix_cmd(&registry, &d, "narcotic", None, MatrixFormat::Text, None),
            2
        );
    }

    #[test]
    fn keygen_sign_verify() {
        let dir = copy_sample();
        let d = dir.path();
        let keys = d.join("keys");
        assert_eq!(keygen(&keys, "DE"), 0);
        assert_eq!(keygen(&keys, "DE"), 1, "never overwrites");
        assert_eq!(keygen(&keys, "Germany"), 2);
        let key = keys.join("DE.key");
        let registry = d.join("registry.toml");
        assert_eq!(sign_cmd(&key, Some(&registry), &[d.join("DE.toml")]), 0);
        // Not DE's file, not a policy name: refused.
        assert_eq!(sign_cmd(&key, None, &[d.join("NL.toml")]), 1);
        assert_eq!(sign_cmd(&key, None, &[d.join("DE.tests.toml")]), 1);
        assert_eq!(
            sign_cmd(&d.join("nokey.key"), None, &[d.join("DE.toml")]),
            2
        );
        assert_eq!(verify_cmd(&keys, &[d.join("DE.toml")]), 0);
        assert_eq!(
            verify_cmd(&keys, &[d.join("DE.toml"), d.join("NL.toml")]),
            1
        );
        edit(
            &d.join("DE.toml"),
            "min_participants = 3",
            "min_participants = 2",
        );
        assert_eq!(verify_cmd(&keys, &[d.join("DE.toml")]), 1);
        assert_eq!(verify_cmd(&d.join("nowhere"), &[d.join("DE.toml")]), 2);
    }
}
