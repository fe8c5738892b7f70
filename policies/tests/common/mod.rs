//! A small world for decision tests: a registry and policies built from TOML text, through
//! the same parser as real files.

#![allow(dead_code)]
#![allow(clippy::expect_used)] // test helpers, as in #[test] functions

use std::collections::BTreeMap;

use treaty_policies::{Decision, Loaded, Participant, Policy, Reason, Registry, Request, decide};

pub const REGISTRY: &str = r#"
registry_version = "r-2025"
countries = ["AT", "BE", "CH", "DE", "FR", "GB", "NL", "PL", "US", "CA"]

[purposes]
narcotics = "Illicit trafficking in narcotic drugs"
firearms = "Illicit trafficking in weapons"

[fields]
value = "ordinary"
ethnicity = "special_category"
nationality = "personal"

[groups.EU]
members = ["AT", "BE", "DE", "FR", "NL", "PL"]
[[groups.EU.dated]]
country = "GB"
from = 1973-01-01
until = 2020-01-31

[groups.NORTH_AMERICA]
members = ["US", "CA"]
"#;

pub fn registry() -> Registry {
    Registry::parse("registry.toml", REGISTRY).expect("the test registry is valid")
}

/// A valid policy for `country` with the given `[privacy]` extras and rule blocks.
pub fn policy_text(country: &str, privacy_extra: &str, rules: &str) -> String {
    format!(
        r#"schema_version = 1

[policy]
country = "{country}"
version = "{country}-1"
valid_from = 2025-01-01
valid_until = 2025-12-31
legal_basis = ["Test Act s. 1"]

[coordinator]
allowed_jurisdictions = ["EU"]

[privacy]
max_epsilon_per_round = 1.0
max_epsilon_total = 8.0
max_delta = 1e-5
{privacy_extra}

{rules}
"#
    )
}

/// An allow rule for narcotics to `recipients`.
pub fn allow(id: &str, recipients: &[&str]) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = {recipients:?}\nlegal_basis = \"Art. {id}\"\n\n"
    )
}

pub fn deny(id: &str, recipients: &[&str]) -> String {
    format!("[[rule]]\nid = \"{id}\"\neffect = \"deny\"\nrecipients = {recipients:?}\n\n")
}

pub fn parse(registry: &Registry, country: &str, text: &str) -> Policy {
    Policy::parse(&format!("{country}.toml"), text, registry, Some(country))
        .unwrap_or_else(|e| panic!("{country}: {:?}", e.diagnostics()))
}

pub fn loaded(registry: &Registry, policies: &[(&str, String)]) -> BTreeMap<String, Loaded> {
    policies
        .iter()
        .map(|(c, text)| {
            (
                c.to_string(),
                Loaded::Valid(Box::new(parse(registry, c, text))),
            )
        })
        .collect()
}

/// A narcotics round on 2025-06-01 with an NL coordinator.
pub fn request(participants: &[(&str, &str, f64)]) -> Request {
    Request {
        federation: "test-fed".into(),
        round: 3,
        date: "2025-06-01".into(),
        purpose: "narcotics".into(),
        coordinator_country: "NL".into(),
        epsilon_per_round: 0.5,
        delta: 1e-6,
        fields: vec!["value".into()],
        model_retention_days: Some(30),
        onward_transfer: false,
        secure_aggregation: false,
        round_min_participants: 2,
        participants: participants
            .iter()
            .map(|(agency, country, eps)| Participant {
                agency: agency.to_string(),
                country: country.to_string(),
                cumulative_epsilon: *eps,
            })
            .collect(),
    }
}

pub fn run(policies: &[(&str, String)], request: &Request) -> Decision {
    let registry = registry();
    decide(&registry, &loaded(&registry, policies), request).expect("a usable request")
}

/// The reasons of one excluded agency; panics when it was admitted.
pub fn reasons(decision: &Decision, agency: &str) -> Vec<Reason> {
    decision
        .excluded
        .iter()
        .find(|e| e.agency == agency)
        .unwrap_or_else(|| panic!("{agency} was admitted: {decision:#?}"))
        .all_reasons
        .clone()
}
