//! Reading a policy file: its sections, each checked, with every problem reported in file order.

use std::collections::BTreeMap;
use std::ops::Range;

use super::rules::read_rules;
use super::vocabulary::{terms, tokens};
use super::{Limit, Policy, PolicyError};
use crate::registry::Registry;
use crate::sha256_hex;
use crate::source::{Reader, Source, did_you_mean, parse_toml};

impl Policy {
    /// Parses and validates a policy. `expected_country` is the country its file is named
    /// after, when known. Every problem is reported, in file order.
    pub fn parse(
        file: &str,
        text: &str,
        registry: &Registry,
        expected_country: Option<&str>,
    ) -> Result<Policy, PolicyError> {
        let source = Source::new(file, text);
        let doc = parse_toml(&source, text).map_err(PolicyError::Parse)?;
        let mut r = Reader::new(&source);
        let parsed = read_policy(&mut r, doc.get_ref(), registry, expected_country, text);
        let mut problems = r.problems;
        problems.sort_by_key(|d| (d.line, d.column));
        match parsed {
            Some(p) if problems.is_empty() => Ok(p),
            _ => Err(PolicyError::Schema(problems)),
        }
    }
}

pub(super) type Table<'i> = toml::de::DeTable<'i>;

const TOP_KEYS: [&str; 9] = [
    "schema_version",
    "policy",
    "groups",
    "coordinator",
    "privacy",
    "data",
    "retention",
    "handling",
    "rule",
];
const POLICY_KEYS: [&str; 8] = [
    "country",
    "version",
    "valid_from",
    "valid_until",
    "legal_basis",
    "title",
    "approved_by",
    "notes",
];
const COORDINATOR_KEYS: [&str; 3] = [
    "allowed_jurisdictions",
    "denied_jurisdictions",
    "legal_basis",
];
const PRIVACY_KEYS: [&str; 5] = [
    "max_epsilon_per_round",
    "max_epsilon_total",
    "max_delta",
    "min_participants",
    "min_distinct_countries",
];

/// A section that must be a table; `None` (with an error) otherwise.
fn section<'t, 'i>(
    r: &mut Reader<'_>,
    top: &'t Table<'i>,
    key: &str,
    required: bool,
) -> Option<(&'t Table<'i>, Range<usize>)> {
    match top.get(key) {
        Some(v) => r.table(v, &format!("[{key}]")).map(|t| (t, v.span())),
        None => {
            if required {
                r.error(&(0..0), format!("the required section [{key}] is missing"));
            }
            None
        }
    }
}

fn read_policy(
    r: &mut Reader<'_>,
    top: &Table<'_>,
    registry: &Registry,
    expected_country: Option<&str>,
    text: &str,
) -> Option<Policy> {
    let start = 0..0;
    r.unknown_keys(top, &TOP_KEYS, "the policy file");
    match top.get("schema_version") {
        None => r.error(
            &start,
            "the required key `schema_version` is missing (write schema_version = 1)",
        ),
        Some(v) => {
            if let Some(n) = r.integer(v, "schema_version", 0)
                && n != 1
            {
                r.error(
                    &v.span(),
                    format!("schema_version {n} is not supported; this is version 1"),
                );
            }
        }
    }

    // [policy]
    let mut header = None;
    if let Some((t, span)) = section(r, top, "policy", true) {
        r.unknown_keys(t, &POLICY_KEYS, "[policy]");
        let country = r.required(t, "country", "[policy]", &span).and_then(|v| {
            let c = r.string(v, "policy.country")?;
            if !registry.is_country(&c) {
                let hint = did_you_mean(&c, registry.countries.iter().map(String::as_str));
                r.error_hint(
                    &v.span(),
                    format!("policy.country `{c}` is not a registry country"),
                    hint,
                );
                return None;
            }
            if let Some(expected) = expected_country
                && expected != c
            {
                r.error(
                    &v.span(),
                    format!(
                        "policy.country is `{c}` but the file is {expected}'s ({expected}.toml)"
                    ),
                );
                return None;
            }
            Some(c)
        });
        let version = r
            .required(t, "version", "[policy]", &span)
            .and_then(|v| r.string(v, "policy.version"));
        let from = r
            .required(t, "valid_from", "[policy]", &span)
            .and_then(|v| r.date(v, "policy.valid_from"));
        let until_value = r.required(t, "valid_until", "[policy]", &span);
        let until = until_value.and_then(|v| r.date(v, "policy.valid_until"));
        if let (Some(f), Some(u), Some(v)) = (from, until, until_value)
            && f > u
        {
            r.error(
                &v.span(),
                format!("policy.valid_until {u} is before valid_from {f}"),
            );
        }
        let legal_basis = r
            .required(t, "legal_basis", "[policy]", &span)
            .and_then(|v| r.string_or_strings(v, "policy.legal_basis"));
        let title = t.get("title").and_then(|v| r.string(v, "policy.title"));
        let approved_by = t
            .get("approved_by")
            .and_then(|v| r.string_or_strings(v, "policy.approved_by"))
            .unwrap_or_default();
        let notes = t.get("notes").and_then(|v| r.string(v, "policy.notes"));
        header = Some((
            country,
            version,
            from,
            until,
            legal_basis,
            title,
            approved_by,
            notes,
        ));
    }

    // [groups]
    let mut groups = BTreeMap::new();
    if let Some((t, _)) = section(r, top, "groups", false) {
        for (name, v) in t.iter() {
            let n = name.get_ref().to_string();
            let pattern_ok = n.len() >= 3
                && n.starts_with(|c: char| c.is_ascii_uppercase())
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !pattern_ok {
                r.error(
                    &name.span(),
                    format!("local group name `{n}` must be capital letters, digits and _, start with a letter, at least 3 long"),
                );
            }
            if registry.groups.contains_key(&n) {
                r.error(&name.span(), format!("local group `{n}` shadows the registry group of that name; choose another name"));
            }
            let what = format!("local group {n}");
            if let Some(list) = r.strings(v, &what, true) {
                let mut members = Vec::new();
                for (c, span) in list {
                    if registry.is_country(&c) {
                        members.push(c);
                    } else {
                        let hint = did_you_mean(&c, registry.countries.iter().map(String::as_str));
                        r.error_hint(
                            &span,
                            format!("`{c}` in {what} is not a registry country"),
                            hint,
                        );
                    }
                }
                groups.insert(n, members);
            }
        }
    }

    // [coordinator]
    let mut coordinator = None;
    if let Some((t, span)) = section(r, top, "coordinator", true) {
        r.unknown_keys(t, &COORDINATOR_KEYS, "[coordinator]");
        let allowed = r
            .required(t, "allowed_jurisdictions", "[coordinator]", &span)
            .and_then(|v| tokens(r, v, "coordinator.allowed_jurisdictions", registry, &groups));
        let denied = match t.get("denied_jurisdictions") {
            Some(v) => tokens(r, v, "coordinator.denied_jurisdictions", registry, &groups),
            None => Some(Vec::new()),
        };
        let basis = t
            .get("legal_basis")
            .and_then(|v| r.string_or_strings(v, "coordinator.legal_basis"))
            .unwrap_or_default();
        coordinator = Some((allowed, denied, basis));
    }

    // [privacy]
    let mut privacy = None;
    if let Some((t, span)) = section(r, top, "privacy", true) {
        r.unknown_keys(t, &PRIVACY_KEYS, "[privacy]");
        let limit = |r: &mut Reader<'_>, key: &str| {
            r.required(t, key, "[privacy]", &span)
                .and_then(|v| r.positive_number(v, &format!("privacy.{key}")))
                .map(|(value, exact)| Limit { value, exact })
        };
        let per_round = limit(r, "max_epsilon_per_round");
        let total = limit(r, "max_epsilon_total");
        let delta = limit(r, "max_delta");
        let min_p = t
            .get("min_participants")
            .map_or(Some(1), |v| r.integer(v, "privacy.min_participants", 1));
        let min_c = t.get("min_distinct_countries").map_or(Some(1), |v| {
            r.integer(v, "privacy.min_distinct_countries", 1)
        });
        privacy = Some((per_round, total, delta, min_p, min_c));
    }

    // [data]
    let mut excluded_fields = Vec::new();
    let mut excluded_categories = Vec::new();
    if let Some((t, _)) = section(r, top, "data", false) {
        r.unknown_keys(
            t,
            &["excluded_fields", "excluded_field_categories"],
            "[data]",
        );
        if let Some(v) = t.get("excluded_fields") {
            excluded_fields = terms(
                r,
                v,
                "data.excluded_fields",
                "field",
                |f| registry.fields.contains_key(f),
                || registry.fields.keys().map(String::as_str).collect(),
            )
            .unwrap_or_default();
        }
        if let Some(v) = t.get("excluded_field_categories") {
            let categories = registry.categories();
            excluded_categories = terms(
                r,
                v,
                "data.excluded_field_categories",
                "field category",
                |c| categories.contains(c),
                || categories.iter().copied().collect(),
            )
            .unwrap_or_default();
        }
    }

    // [retention], [handling]
    let mut retention = None;
    if let Some((t, span)) = section(r, top, "retention", false) {
        r.unknown_keys(t, &["max_model_retention_days"], "[retention]");
        retention = r
            .required(t, "max_model_retention_days", "[retention]", &span)
            .and_then(|v| r.integer(v, "retention.max_model_retention_days", 0));
    }
    let (mut onward, mut secure) = (false, false);
    if let Some((t, _)) = section(r, top, "handling", false) {
        r.unknown_keys(
            t,
            &["allow_onward_transfer", "require_secure_aggregation"],
            "[handling]",
        );
        if let Some(v) = t.get("allow_onward_transfer") {
            onward = r
                .boolean(v, "handling.allow_onward_transfer")
                .unwrap_or(false);
        }
        if let Some(v) = t.get("require_secure_aggregation") {
            secure = r
                .boolean(v, "handling.require_secure_aggregation")
                .unwrap_or(false);
        }
    }

    let rules = read_rules(r, top, registry, &groups);

    let (country, version, valid_from, valid_until, legal_basis, title, approved_by, notes) =
        header?;
    let (allowed, denied, coordinator_legal_basis) = coordinator?;
    let (per_round, total, delta, min_p, min_c) = privacy?;
    Some(Policy {
        country: country?,
        version: version?,
        valid_from: valid_from?,
        valid_until: valid_until?,
        legal_basis: legal_basis?,
        title,
        approved_by,
        notes,
        groups,
        allowed_jurisdictions: allowed?,
        denied_jurisdictions: denied?,
        coordinator_legal_basis,
        max_epsilon_per_round: per_round?,
        max_epsilon_total: total?,
        max_delta: delta?,
        min_participants: min_p?,
        min_distinct_countries: min_c?,
        excluded_fields,
        excluded_field_categories: excluded_categories,
        max_model_retention_days: retention,
        allow_onward_transfer: onward,
        require_secure_aggregation: secure,
        rules: rules?,
        sha256: sha256_hex(text.as_bytes()),
    })
}
