//! `treaty policy check`: every problem of policy (and test) files, against the registry.

use std::path::{Path, PathBuf};

use treaty_policies::{Loaded, TestFile, country_of, load_file};

use super::test::is_test_file;
use super::{Code, keys_or_2, registry_or_2};
use treaty_devkit::{errln, outln};

pub(super) fn check(registry: &Path, keys: Option<&Path>, files: &[PathBuf]) -> Code {
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
            errln!("{}: valid (the registry)", file.display());
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
                Ok(t) => errln!("{}: valid ({} tests)", file.display(), t.tests.len()),
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
            Loaded::Valid(p) => errln!(
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
        errln!("{bad} of {} policy files are not valid", files.len());
        1
    }
}
