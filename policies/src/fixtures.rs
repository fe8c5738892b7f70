//! What the unit tests of the policy tools share: a small registry and a German policy.

use crate::policy::Policy;
use crate::registry::Registry;

pub(crate) const REGISTRY: &str = r#"
registry_version = "r1"
countries = ["DE", "FR", "GB", "NL", "US"]
[purposes]
narcotics = "Narcotics"
firearms = "Firearms"
[fields]
value = "ordinary"
nationality = "personal"
[groups.EU]
members = ["DE", "FR", "NL"]
[[groups.EU.dated]]
country = "GB"
until = 2020-01-31
"#;

pub(crate) fn registry() -> Registry {
    Registry::parse("registry.toml", REGISTRY).unwrap()
}

/// A valid policy of DE, version `version`, valid from `valid_from` to 2026-12-31, with
/// coordinator and privacy sections and then `extra` (sections, rules); with its text.
pub(crate) fn de_policy(version: &str, valid_from: &str, extra: &str) -> (Policy, String) {
    let text = format!(
        r#"schema_version = 1
[policy]
country = "DE"
version = "{version}"
valid_from = {valid_from}
valid_until = 2026-12-31
legal_basis = ["LED"]
[coordinator]
allowed_jurisdictions = ["EU"]
[privacy]
max_epsilon_per_round = 1.0
max_epsilon_total = 8.0
max_delta = 1e-5
{extra}"#
    );
    let p = Policy::parse("DE.toml", &text, &registry(), Some("DE"))
        .unwrap_or_else(|e| panic!("{:?}", e.diagnostics()));
    (p, text)
}
