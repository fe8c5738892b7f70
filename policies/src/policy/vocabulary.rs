//! Checking the names a policy uses (countries, groups, purposes, fields, categories) against
//! the registry and the policy's local groups, with a suggestion for a near miss.

use std::collections::BTreeMap;

use toml::de::DeValue;

use crate::registry::Registry;
use crate::source::{Reader, did_you_mean};

/// Checks country-or-group tokens: each must be a local group, a registry group or a country.
pub(super) fn tokens(
    r: &mut Reader<'_>,
    value: &toml::Spanned<DeValue<'_>>,
    what: &str,
    registry: &Registry,
    local: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<String>> {
    let list = r.strings(value, what, true)?;
    let mut ok = true;
    for (t, span) in &list {
        let known =
            local.contains_key(t) || registry.groups.contains_key(t) || registry.is_country(t);
        if !known {
            ok = false;
            let candidates = local
                .keys()
                .chain(registry.groups.keys())
                .chain(registry.countries.iter())
                .map(String::as_str);
            let hint = did_you_mean(t, candidates);
            r.error_hint(
                span,
                format!(
                    "`{t}` in {what} is not a local group, a registry group or a registry country"
                ),
                hint,
            );
        }
    }
    ok.then(|| list.into_iter().map(|(t, _)| t).collect())
}

/// Checks terms against a registry vocabulary (purposes, fields, categories).
pub(super) fn terms<'a>(
    r: &mut Reader<'_>,
    value: &toml::Spanned<DeValue<'_>>,
    what: &str,
    vocabulary: &str,
    known: impl Fn(&str) -> bool,
    candidates: impl Fn() -> Vec<&'a str>,
) -> Option<Vec<String>> {
    let list = r.strings(value, what, true)?;
    let mut ok = true;
    for (t, span) in &list {
        if !known(t) {
            ok = false;
            let hint = did_you_mean(t, candidates());
            r.error_hint(
                span,
                format!("`{t}` in {what} is not a {vocabulary} of the registry"),
                hint,
            );
        }
    }
    ok.then(|| list.into_iter().map(|(t, _)| t).collect())
}
