//! `treaty policy matrix`: who accepts whom as a recipient, for one purpose on one date.

use std::path::Path;

use treaty_policies::{PolicyDir, country_of, did_you_mean, matrix};

use super::{Code, MatrixFormat, attempt, date_or_today, keys_or_2, registry_or_2, unusable};
use treaty_devkit::{out, outln};

pub(super) fn matrix_cmd(
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
