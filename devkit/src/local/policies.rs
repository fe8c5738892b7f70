//! The policies of a local federation: the sample registry and policies of `policies/sample/`
//! (embedded in the binary), and a plain EU policy for each country the samples do not cover.

use anyhow::Context;

use super::Site;

/// The sample registry and policies, embedded.
const SAMPLE: [(&str, &str); 6] = [
    (
        "registry.toml",
        include_str!("../../../policies/sample/registry.toml"),
    ),
    ("DE.toml", include_str!("../../../policies/sample/DE.toml")),
    ("NL.toml", include_str!("../../../policies/sample/NL.toml")),
    ("FR.toml", include_str!("../../../policies/sample/FR.toml")),
    ("PL.toml", include_str!("../../../policies/sample/PL.toml")),
    ("US.toml", include_str!("../../../policies/sample/US.toml")),
];

/// The policy the local federation writes for a country without a sample: every purpose of
/// the sample registry, with every EU and Schengen-associated country, coordinator in the EU.
/// `XX` is replaced by the country.
const EU_POLICY: &str = r#"schema_version = 1

[policy]
country = "XX"
version = "local-1"
valid_from = 2025-01-01
valid_until = 2030-12-31
legal_basis = ["LED Art. 1(3)"]
title = "Written by the local federation for a country without a sample policy"

[coordinator]
allowed_jurisdictions = ["EU"]

[privacy]
max_epsilon_per_round = 10.0
max_epsilon_total = 100.0
max_delta = 1e-4

[[rule]]
id = "XX-EU"
effect = "allow"
purposes = ["narcotics", "firearms", "human_trafficking", "migrant_smuggling", "money_laundering"]
recipients = ["EU", "SCHENGEN_ASSOCIATED"]
transfer_basis = "intra_eu"
legal_basis = "LED Art. 1(3)"
"#;

/// Writes the sample registry, with `fields` added to its vocabulary as ordinary data (a
/// benchmark's columns), the sample policies, and [`eu_policy`] for each of `countries` the
/// samples lack, into the site's `policies/`.
pub(crate) fn write_samples(
    site: &Site,
    countries: &[&str],
    fields: &[String],
) -> anyhow::Result<()> {
    for (name, text) in SAMPLE {
        if name == "registry.toml" && !fields.is_empty() {
            site.write_policy_file(name, &with_fields(text, fields)?)?;
        } else {
            site.write_policy_file(name, text)?;
        }
    }
    for country in countries {
        let name = format!("{country}.toml");
        if !site.policies().join(&name).exists() {
            site.write_policy_file(&name, &eu_policy(country)?)?;
        }
    }
    Ok(())
}

/// A plain EU policy for `country`.
pub(crate) fn eu_policy(country: &str) -> anyhow::Result<String> {
    let mut policy: toml::Table = toml::from_str(EU_POLICY)?;
    let section = policy
        .get_mut("policy")
        .and_then(toml::Value::as_table_mut)
        .context("the EU policy template has no [policy]")?;
    section.insert("country".into(), country.into());
    let rule = policy
        .get_mut("rule")
        .and_then(toml::Value::as_array_mut)
        .and_then(|rules| rules.first_mut())
        .and_then(toml::Value::as_table_mut)
        .context("the EU policy template has no rule")?;
    rule.insert("id".into(), format!("{country}-EU").into());
    Ok(toml::to_string(&policy)?)
}

/// The registry `text` with `fields` added to its `[fields]` as ordinary data.
fn with_fields(text: &str, fields: &[String]) -> anyhow::Result<String> {
    let mut registry: toml::Table = toml::from_str(text)?;
    let table = registry
        .entry("fields")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("the registry's `fields` is not a table")?;
    for field in fields {
        table.insert(field.clone(), "ordinary".into());
    }
    Ok(toml::to_string(&registry)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_eu_policy_is_a_valid_policy_of_its_country() {
        let registry = treaty_policies::Registry::parse("registry.toml", SAMPLE[0].1).unwrap();
        let text = eu_policy("AT").unwrap();
        let policy = treaty_policies::Policy::parse("AT.toml", &text, &registry, Some("AT"));
        assert!(policy.is_ok(), "{policy:?}\n{text}");
    }

    #[test]
    fn added_fields_are_ordinary_and_the_rest_is_kept() {
        let text = with_fields(SAMPLE[0].1, &["f0".into()]).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["fields"]["f0"].as_str(), Some("ordinary"));
        assert_eq!(table["fields"]["seized"].as_str(), Some("ordinary"));
        assert_eq!(table["registry_version"].as_str(), Some("2025-12-19"));
    }
}
