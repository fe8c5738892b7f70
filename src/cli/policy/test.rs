//! `treaty policy test`: the tests kept next to policies.

use std::path::{Path, PathBuf};

use treaty_policies::{PolicyDir, Summary, TestFile};

use super::{Code, attempt, keys_or_2, registry_or_2, unusable};
use treaty_devkit::outln;

pub(super) fn test_cmd(
    registry: &Path,
    policies: &Path,
    keys: Option<&Path>,
    files: &[PathBuf],
) -> Code {
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

pub(super) fn is_test_file(path: &Path) -> bool {
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
