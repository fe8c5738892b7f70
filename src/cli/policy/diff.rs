//! `treaty policy diff`: what changes between two versions of a country's policy.

use std::path::Path;

use treaty_policies::diff;

use super::{Code, attempt, date_or_today, read_policy, registry_or_2, unusable};
use treaty_devkit::{errln, out, outln};

pub(super) fn diff_cmd(
    registry: &Path,
    date: Option<&str>,
    json: bool,
    old: &Path,
    new: &Path,
) -> Code {
    attempt(|| {
        let registry = registry_or_2(registry)?;
        let date = date_or_today("--date", date)?;
        let read = |path: &Path| {
            read_policy(&registry, path)
                .map(|(p, _)| p)
                .map_err(|lines| {
                    for l in &lines {
                        errln!("{l}");
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
