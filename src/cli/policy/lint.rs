//! `treaty policy lint`: what a valid policy says that was probably not meant.

use std::path::{Path, PathBuf};

use treaty_policies::lint;

use super::{Code, attempt, date_or_today, read_policy, registry_or_2};
use treaty_devkit::{errln, outln};

pub(super) fn lint_cmd(registry: &Path, today: Option<&str>, files: &[PathBuf]) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let today = date_or_today("--today", today)?;
        let mut code = 0;
        let (mut warnings, mut invalid) = (0, 0);
        for path in files {
            if !path.is_file() {
                errln!("error: cannot read {}", path.display());
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
        errln!(
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
