//! One country's policy file (`<CC>.toml`): its model and its validation against the registry.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use toml::de::DeValue;

use crate::date::Date;
use crate::decimal::Decimal;
use crate::registry::{Membership, Registry};
use crate::sha256_hex;
use crate::source::{Diagnostic, Reader, Source, did_you_mean, parse_toml};

/// The transfer bases a rule may name.
pub const TRANSFER_BASES: [&str; 7] = [
    "intra_eu",
    "schengen",
    "adequacy",
    "appropriate_safeguards",
    "derogation",
    "domestic_law",
    "other",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub effect: Effect,
    /// `None` only on deny rules: every purpose.
    pub purposes: Option<Vec<String>>,
    pub recipients: Vec<String>,
    pub transfer_basis: Option<String>,
    pub legal_basis: Option<String>,
    pub valid_from: Option<Date>,
    pub valid_until: Option<Date>,
    pub note: Option<String>,
    /// Line of the rule's `id` in the file, for explanations and lints.
    pub line: usize,
}

impl Rule {
    pub fn active_on(&self, date: Date) -> bool {
        date.within(self.valid_from, self.valid_until)
    }

    pub fn covers(&self, purpose: &str) -> bool {
        self.purposes
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == purpose))
    }
}

/// A privacy limit: the number as written and its exact decimal value.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub exact: Decimal,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.exact.fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub country: String,
    pub version: String,
    pub valid_from: Date,
    pub valid_until: Date,
    pub legal_basis: Vec<String>,
    pub title: Option<String>,
    pub approved_by: Vec<String>,
    pub notes: Option<String>,
    /// Local groups: name -> countries.
    pub groups: BTreeMap<String, Vec<String>>,
    pub allowed_jurisdictions: Vec<String>,
    pub denied_jurisdictions: Vec<String>,
    pub coordinator_legal_basis: Vec<String>,
    pub max_epsilon_per_round: Limit,
    pub max_epsilon_total: Limit,
    pub max_delta: Limit,
    pub min_participants: u64,
    pub min_distinct_countries: u64,
    pub excluded_fields: Vec<String>,
    pub excluded_field_categories: Vec<String>,
    pub max_model_retention_days: Option<u64>,
    pub allow_onward_transfer: bool,
    pub rules: Vec<Rule>,
    /// Hex SHA-256 of the file's bytes: what a decision records.
    pub sha256: String,
}

/// How a country matched a country-or-group token on a date.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    Country,
    LocalGroup(String),
    RegistryGroup(String, Membership),
}

impl Match {
    /// "DE is in EU (a listed member)", for explanations.
    pub fn describe(&self, country: &str, date: Date) -> String {
        match self {
            Match::Country => format!("{country} is named directly"),
            Match::LocalGroup(g) => format!("{country} is in the policy's local group {g}"),
            Match::RegistryGroup(g, m) => {
                format!("{country} is in registry group {g} on {date} ({m})")
            }
        }
    }
}

/// Why `a` accepts or does not accept `b` as a recipient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acceptance {
    /// Active deny rules matching the recipient (for this purpose).
    pub denies: Vec<usize>,
    /// Active allow rules listing the purpose and matching the recipient.
    pub allows: Vec<usize>,
    pub domestic: bool,
}

impl Acceptance {
    pub fn accepted(&self) -> bool {
        self.domestic || (self.denies.is_empty() && !self.allows.is_empty())
    }
}

impl Policy {
    /// Whether `country` matches `token` on `date`: local group, then registry group, then
    /// country, in the spec's order.
    pub fn matches(
        &self,
        registry: &Registry,
        token: &str,
        country: &str,
        date: Date,
    ) -> Option<Match> {
        if let Some(members) = self.groups.get(token) {
            return members
                .iter()
                .any(|m| m == country)
                .then(|| Match::LocalGroup(token.to_string()));
        }
        if registry.groups.contains_key(token) {
            return registry
                .membership(token, country, date)
                .map(|m| Match::RegistryGroup(token.to_string(), m));
        }
        (token == country).then_some(Match::Country)
    }

    /// The first token of `tokens` that `country` matches, with how.
    pub fn match_any(
        &self,
        registry: &Registry,
        tokens: &[String],
        country: &str,
        date: Date,
    ) -> Option<(String, Match)> {
        tokens.iter().find_map(|t| {
            self.matches(registry, t, country, date)
                .map(|m| (t.clone(), m))
        })
    }

    /// The ids of the rules at `indices`.
    pub fn rule_ids(&self, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&i| self.rules[i].id.clone()).collect()
    }

    /// Indices of allow rules active on `date` that list `purpose`.
    pub fn allows_purpose(&self, purpose: &str, date: Date) -> Vec<usize> {
        (0..self.rules.len())
            .filter(|&i| {
                let r = &self.rules[i];
                r.effect == Effect::Allow && r.active_on(date) && r.covers(purpose)
            })
            .collect()
    }

    /// Whether this country accepts `recipient` for `purpose` on `date`.
    pub fn accepts(
        &self,
        registry: &Registry,
        recipient: &str,
        purpose: &str,
        date: Date,
    ) -> Acceptance {
        let mut acceptance = Acceptance {
            domestic: recipient == self.country,
            ..Acceptance::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.active_on(date) || !rule.covers(purpose) {
                continue;
            }
            if self
                .match_any(registry, &rule.recipients, recipient, date)
                .is_some()
            {
                match rule.effect {
                    Effect::Allow => acceptance.allows.push(i),
                    Effect::Deny => acceptance.denies.push(i),
                }
            }
        }
        acceptance
    }

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

/// Why a policy file cannot be applied.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyError {
    /// Not valid TOML (`POLICY_PARSE_ERROR`).
    Parse(Diagnostic),
    /// Valid TOML that breaks the schema (`POLICY_SCHEMA_ERROR`); every problem.
    Schema(Vec<Diagnostic>),
}

impl PolicyError {
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            PolicyError::Parse(d) => vec![d.clone()],
            PolicyError::Schema(ds) => ds.clone(),
        }
    }
}

type Table<'i> = toml::de::DeTable<'i>;

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
const RULE_KEYS: [&str; 9] = [
    "id",
    "effect",
    "purposes",
    "recipients",
    "transfer_basis",
    "legal_basis",
    "valid_from",
    "valid_until",
    "note",
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

/// Checks country-or-group tokens: each must be a local group, a registry group or a country.
fn tokens(
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
fn terms<'a>(
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
    let mut onward = false;
    if let Some((t, _)) = section(r, top, "handling", false) {
        r.unknown_keys(t, &["allow_onward_transfer"], "[handling]");
        if let Some(v) = t.get("allow_onward_transfer") {
            onward = r
                .boolean(v, "handling.allow_onward_transfer")
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
        rules: rules?,
        sha256: sha256_hex(text.as_bytes()),
    })
}

fn read_rules(
    r: &mut Reader<'_>,
    top: &Table<'_>,
    registry: &Registry,
    groups: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<Rule>> {
    let Some(value) = top.get("rule") else {
        return Some(Vec::new());
    };
    let Some(items) = value.get_ref().as_array() else {
        r.error(
            &value.span(),
            "rules are written as [[rule]] tables (double brackets), one per rule",
        );
        return None;
    };
    let mut rules = Vec::new();
    let mut ok = true;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for item in items.iter() {
        let Some(t) = r.table(item, "[[rule]]") else {
            ok = false;
            continue;
        };
        let span = item.span();
        let before = r.problems.len();
        r.unknown_keys(t, &RULE_KEYS, "[[rule]]");
        let id_value = r.required(t, "id", "[[rule]]", &span);
        let id = id_value.and_then(|v| r.string(v, "rule id"));
        let line = r
            .source
            .line_of(&id_value.map_or(span.clone(), |v| v.span()));
        let place = id
            .as_ref()
            .map_or("[[rule]]".to_string(), |i| format!("rule {i}"));
        if let (Some(i), Some(v)) = (&id, id_value) {
            if let Some(first) = seen.get(i) {
                r.error(
                    &v.span(),
                    format!(
                        "rule id `{i}` is used twice (first on line {first}); rule ids are unique"
                    ),
                );
            } else {
                seen.insert(i.clone(), line);
            }
        }
        let effect = r.required(t, "effect", &place, &span).and_then(|v| {
            match r.string(v, &format!("{place} effect"))?.as_str() {
                "allow" => Some(Effect::Allow),
                "deny" => Some(Effect::Deny),
                other => {
                    let hint = did_you_mean(other, ["allow", "deny"]);
                    r.error_hint(
                        &v.span(),
                        format!("{place} effect must be \"allow\" or \"deny\", not \"{other}\""),
                        hint,
                    );
                    None
                }
            }
        });
        let purposes = match t.get("purposes") {
            Some(v) => terms(
                r,
                v,
                &format!("{place} purposes"),
                "purpose",
                |p| registry.purposes.contains_key(p),
                || registry.purposes.keys().map(String::as_str).collect(),
            )
            .map(Some),
            None if effect == Some(Effect::Allow) => {
                r.error(
                    &span,
                    format!("{place} allows but lists no purposes (add purposes = [...])"),
                );
                None
            }
            None => Some(None),
        };
        let recipients = r
            .required(t, "recipients", &place, &span)
            .and_then(|v| tokens(r, v, &format!("{place} recipients"), registry, groups));
        let transfer_basis = t.get("transfer_basis").and_then(|v| {
            let b = r.string(v, &format!("{place} transfer_basis"))?;
            if TRANSFER_BASES.contains(&b.as_str()) {
                Some(b)
            } else {
                let hint = did_you_mean(&b, TRANSFER_BASES);
                r.error_hint(
                    &v.span(),
                    format!(
                        "{place} transfer_basis `{b}` is not one of {}",
                        TRANSFER_BASES.join(", ")
                    ),
                    hint,
                );
                None
            }
        });
        let legal_basis = match t.get("legal_basis") {
            Some(v) => r.string(v, &format!("{place} legal_basis")),
            None => {
                if effect == Some(Effect::Allow) {
                    r.error(&span, format!("{place} allows but gives no legal_basis"));
                }
                None
            }
        };
        let valid_from = t
            .get("valid_from")
            .and_then(|v| r.date(v, &format!("{place} valid_from")));
        let until_value = t.get("valid_until");
        let valid_until = until_value.and_then(|v| r.date(v, &format!("{place} valid_until")));
        if let (Some(f), Some(u), Some(v)) = (valid_from, valid_until, until_value)
            && f > u
        {
            r.error(
                &v.span(),
                format!("{place} valid_until {u} is before its valid_from {f}"),
            );
        }
        let note = t
            .get("note")
            .and_then(|v| r.string(v, &format!("{place} note")));
        match (id, effect, purposes, recipients) {
            (Some(id), Some(effect), Some(purposes), Some(recipients))
                if r.problems.len() == before =>
            {
                rules.push(Rule {
                    id,
                    effect,
                    purposes,
                    recipients,
                    transfer_basis,
                    legal_basis,
                    valid_from,
                    valid_until,
                    note,
                    line,
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(rules)
}
