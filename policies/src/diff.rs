//! What changes between two versions of one country's policy (`treaty policy diff`), in the
//! terms a decision uses, on one date:
//!
//! - recipients: each (registry country, registry purpose) pair that the country starts or
//!   stops accepting (`Policy::accepts`, so groups, dated membership, rule dates and
//!   deny-over-allow count exactly as in a decision); the policy's own country is left out, as
//!   domestic recipients are always accepted;
//! - purposes: each registry purpose that starts or stops passing phase 1 (some active allow
//!   rule lists it);
//! - coordinator countries: each registry country where a coordinator may start or stop being
//!   hosted (phase 1: not denied, and the policy's own country or an allowed jurisdiction);
//! - limits: privacy limits, minimums, retention, onward transfer, excluded fields and
//!   categories, jurisdictions as written, validity, legal basis and version, each old and new,
//!   and whether the change is stricter or looser where that has a meaning;
//! - rules: ids added, removed or changed.
//!
//! Pairs are computed from each version's rules as written, whether or not the version itself is
//! valid on the date; a note says when it is not (a decision would then exclude the country's
//! agencies whatever the rules say).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::date::Date;
use crate::decimal::Decimal;
use crate::policy::{Policy, Rule};
use crate::registry::Registry;

/// A (recipient country, purpose) pair whose acceptance changes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairChange {
    pub country: String,
    pub purpose: String,
    /// The new version's deciding rules: its allow rules for a gain, its deny rules (if any)
    /// for a loss.
    pub new_rules: Vec<String>,
    /// The old version's deciding rules: its deny rules (if any) for a gain, its allow rules
    /// for a loss.
    pub old_rules: Vec<String>,
}

/// What is gained, or lost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Changes {
    pub recipients: Vec<PairChange>,
    /// Purposes that pass, or stop passing, phase 1.
    pub purposes: Vec<String>,
    /// Countries where a coordinator may, or may no longer, be hosted.
    pub coordinator_countries: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.recipients.is_empty()
            && self.purposes.is_empty()
            && self.coordinator_countries.is_empty()
    }
}

/// One limit that changes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitChange {
    pub limit: String,
    pub old: String,
    pub new: String,
    /// `stricter`, `looser` or `changed` (no direction, or both at once).
    pub change: &'static str,
}

/// Rules added, removed or changed between two versions, by id.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same id, different content.
    pub changed: Vec<String>,
}

/// The difference between two versions of a policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyDiff {
    pub country: String,
    pub old_version: String,
    pub new_version: String,
    pub date: String,
    pub registry_version: String,
    pub gains: Changes,
    pub loses: Changes,
    pub limits: Vec<LimitChange>,
    pub rules: RuleChanges,
    pub notes: Vec<String>,
}

/// Whether a coordinator hosted in `cc` passes phase 1 of `policy` on `date`.
fn coordinator_allowed(registry: &Registry, policy: &Policy, cc: &str, date: Date) -> bool {
    policy
        .match_any(registry, &policy.denied_jurisdictions, cc, date)
        .is_none()
        && (cc == policy.country
            || policy
                .match_any(registry, &policy.allowed_jurisdictions, cc, date)
                .is_some())
}

/// Compares `old` and `new` (two versions of one country's policy) on `date`.
pub fn diff(registry: &Registry, old: &Policy, new: &Policy, date: Date) -> PolicyDiff {
    let mut gains = Changes::default();
    let mut loses = Changes::default();
    for country in &registry.countries {
        if *country == old.country || *country == new.country {
            continue;
        }
        for purpose in registry.purposes.keys() {
            let a = old.accepts(registry, country, purpose, date);
            let b = new.accepts(registry, country, purpose, date);
            match (a.accepted(), b.accepted()) {
                (false, true) => gains.recipients.push(PairChange {
                    country: country.clone(),
                    purpose: purpose.clone(),
                    new_rules: new.rule_ids(&b.allows),
                    old_rules: old.rule_ids(&a.denies),
                }),
                (true, false) => loses.recipients.push(PairChange {
                    country: country.clone(),
                    purpose: purpose.clone(),
                    new_rules: new.rule_ids(&b.denies),
                    old_rules: old.rule_ids(&a.allows),
                }),
                _ => {}
            }
        }
    }
    for purpose in registry.purposes.keys() {
        let a = !old.allows_purpose(purpose, date).is_empty();
        let b = !new.allows_purpose(purpose, date).is_empty();
        if a != b {
            let side = if b { &mut gains } else { &mut loses };
            side.purposes.push(purpose.clone());
        }
    }
    for cc in &registry.countries {
        let a = coordinator_allowed(registry, old, cc, date);
        let b = coordinator_allowed(registry, new, cc, date);
        if a != b {
            let side = if b { &mut gains } else { &mut loses };
            side.coordinator_countries.push(cc.clone());
        }
    }

    let mut notes = Vec::new();
    for (which, p) in [("old", old), ("new", new)] {
        if date < p.valid_from || date > p.valid_until {
            notes.push(format!(
                "the {which} version {} is valid from {} to {}, not on {date}: its agencies would be excluded on that date whatever its rules say; the pairs above compare the rules as written",
                p.version, p.valid_from, p.valid_until
            ));
        }
    }
    if old.country != new.country {
        notes.push(format!(
            "the two files are policies of different countries ({} and {})",
            old.country, new.country
        ));
    }

    PolicyDiff {
        country: new.country.clone(),
        old_version: old.version.clone(),
        new_version: new.version.clone(),
        date: date.to_string(),
        registry_version: registry.version.clone(),
        gains,
        loses,
        limits: limits(old, new),
        rules: rules(old, new),
        notes,
    }
}

/// Lower is stricter (epsilon, delta, retention): the direction of a change of a number.
fn direction<T: PartialOrd>(old: &T, new: &T, lower_is_stricter: bool) -> &'static str {
    match (new < old, lower_is_stricter) {
        (true, true) | (false, false) => "stricter",
        _ => "looser",
    }
}

fn limits(old: &Policy, new: &Policy) -> Vec<LimitChange> {
    let mut out = Vec::new();
    let mut push = |limit: &str, old: String, new: String, change: &'static str| {
        if old != new {
            out.push(LimitChange {
                limit: limit.to_string(),
                old,
                new,
                change,
            });
        }
    };
    push(
        "policy.version",
        old.version.clone(),
        new.version.clone(),
        "changed",
    );
    push(
        "policy.valid_from",
        old.valid_from.to_string(),
        new.valid_from.to_string(),
        "changed",
    );
    push(
        "policy.valid_until",
        old.valid_until.to_string(),
        new.valid_until.to_string(),
        "changed",
    );
    push(
        "policy.legal_basis",
        old.legal_basis.join("; "),
        new.legal_basis.join("; "),
        "changed",
    );
    let decimal = |name: &str, a: &Decimal, b: &Decimal| (name.to_string(), a.clone(), b.clone());
    for (name, a, b) in [
        decimal(
            "privacy.max_epsilon_per_round",
            &old.max_epsilon_per_round.exact,
            &new.max_epsilon_per_round.exact,
        ),
        decimal(
            "privacy.max_epsilon_total",
            &old.max_epsilon_total.exact,
            &new.max_epsilon_total.exact,
        ),
        decimal(
            "privacy.max_delta",
            &old.max_delta.exact,
            &new.max_delta.exact,
        ),
    ] {
        if a != b {
            push(&name, a.to_string(), b.to_string(), direction(&a, &b, true));
        }
    }
    for (name, a, b) in [
        (
            "privacy.min_participants",
            old.min_participants,
            new.min_participants,
        ),
        (
            "privacy.min_distinct_countries",
            old.min_distinct_countries,
            new.min_distinct_countries,
        ),
    ] {
        push(name, a.to_string(), b.to_string(), direction(&a, &b, false));
    }
    // No retention limit is the loosest.
    let retention = |d: Option<u64>| d.map_or(u64::MAX, |d| d);
    let shown = |d: Option<u64>| d.map_or("no limit".to_string(), |d| format!("{d} days"));
    push(
        "retention.max_model_retention_days",
        shown(old.max_model_retention_days),
        shown(new.max_model_retention_days),
        direction(
            &retention(old.max_model_retention_days),
            &retention(new.max_model_retention_days),
            true,
        ),
    );
    push(
        "handling.allow_onward_transfer",
        old.allow_onward_transfer.to_string(),
        new.allow_onward_transfer.to_string(),
        if new.allow_onward_transfer {
            "looser"
        } else {
            "stricter"
        },
    );
    push(
        "handling.require_secure_aggregation",
        old.require_secure_aggregation.to_string(),
        new.require_secure_aggregation.to_string(),
        if new.require_secure_aggregation {
            "stricter"
        } else {
            "looser"
        },
    );
    for (name, a, b, more_is_stricter) in [
        (
            "data.excluded_fields",
            &old.excluded_fields,
            &new.excluded_fields,
            true,
        ),
        (
            "data.excluded_field_categories",
            &old.excluded_field_categories,
            &new.excluded_field_categories,
            true,
        ),
        (
            "coordinator.allowed_jurisdictions",
            &old.allowed_jurisdictions,
            &new.allowed_jurisdictions,
            false,
        ),
        (
            "coordinator.denied_jurisdictions",
            &old.denied_jurisdictions,
            &new.denied_jurisdictions,
            true,
        ),
    ] {
        let a_set: BTreeSet<&String> = a.iter().collect();
        let b_set: BTreeSet<&String> = b.iter().collect();
        if a_set == b_set {
            continue;
        }
        let added = b_set.difference(&a_set).next().is_some();
        let removed = a_set.difference(&b_set).next().is_some();
        let change = match (added, removed, more_is_stricter) {
            (true, true, _) => "changed",
            (true, false, true) | (false, true, false) => "stricter",
            _ => "looser",
        };
        let show = |s: &[String]| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.join(", ")
            }
        };
        push(name, show(a), show(b), change);
    }
    out
}

/// A rule without its position, for comparing content.
fn content(rule: &Rule) -> Rule {
    Rule {
        line: 0,
        ..rule.clone()
    }
}

fn rules(old: &Policy, new: &Policy) -> RuleChanges {
    let mut changes = RuleChanges::default();
    for r in &new.rules {
        match old.rules.iter().find(|o| o.id == r.id) {
            None => changes.added.push(r.id.clone()),
            Some(o) if content(o) != content(r) => changes.changed.push(r.id.clone()),
            Some(_) => {}
        }
    }
    for o in &old.rules {
        if !new.rules.iter().any(|r| r.id == o.id) {
            changes.removed.push(o.id.clone());
        }
    }
    changes
}

/// `ids` as `rule A` / `rules A, B`.
fn cite(ids: &[String]) -> String {
    match ids {
        [one] => format!("rule {one}"),
        _ => format!("rules {}", ids.join(", ")),
    }
}

/// Pair changes with the same recipient and the same rules, on one line each.
fn pair_lines(pairs: &[PairChange], gain: bool) -> Vec<String> {
    let mut lines: Vec<(String, Vec<String>, String)> = Vec::new();
    for p in pairs {
        let why = match (gain, p.new_rules.is_empty(), p.old_rules.is_empty()) {
            (true, _, true) => format!("allowed by {}", cite(&p.new_rules)),
            (true, _, false) => format!(
                "allowed by {}; {} no longer denies it",
                cite(&p.new_rules),
                cite(&p.old_rules)
            ),
            (false, false, _) => format!(
                "denied by {}; was allowed by {}",
                cite(&p.new_rules),
                cite(&p.old_rules)
            ),
            (false, true, _) => format!(
                "no allow rule covers it any more; was allowed by {}",
                cite(&p.old_rules)
            ),
        };
        match lines
            .iter_mut()
            .find(|(c, _, w)| *c == p.country && *w == why)
        {
            Some((_, purposes, _)) => purposes.push(p.purpose.clone()),
            None => lines.push((p.country.clone(), vec![p.purpose.clone()], why)),
        }
    }
    lines
        .into_iter()
        .map(|(country, purposes, why)| {
            format!("recipient {country} for {} ({why})", purposes.join(", "))
        })
        .collect()
}

fn changes_text(out: &mut String, title: &str, changes: &Changes, gain: bool) {
    let _ = writeln!(out, "{title}:");
    if changes.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    for line in pair_lines(&changes.recipients, gain) {
        let _ = writeln!(out, "  {line}");
    }
    for p in &changes.purposes {
        let _ = if gain {
            writeln!(
                out,
                "  purpose {p} may be requested (an active allow rule lists it)"
            )
        } else {
            writeln!(
                out,
                "  purpose {p} may no longer be requested (no active allow rule lists it)"
            )
        };
    }
    if !changes.coordinator_countries.is_empty() {
        let _ = writeln!(
            out,
            "  a coordinator {} be hosted in {}",
            if gain { "may now" } else { "may no longer" },
            changes.coordinator_countries.join(", ")
        );
    }
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.gains.is_empty()
            && self.loses.is_empty()
            && self.limits.is_empty()
            && self.rules == RuleChanges::default()
    }

    /// The text report, grouped by gains, loses, limits and rules.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} policy {} -> {}, compared on {} under registry {}",
            self.country, self.old_version, self.new_version, self.date, self.registry_version
        );
        changes_text(&mut out, "gains", &self.gains, true);
        changes_text(&mut out, "loses", &self.loses, false);
        let _ = writeln!(out, "limits:");
        if self.limits.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for l in &self.limits {
            let change = if l.change == "changed" {
                String::new()
            } else {
                format!(" ({})", l.change)
            };
            let _ = writeln!(out, "  {}: {} -> {}{change}", l.limit, l.old, l.new);
        }
        let _ = writeln!(out, "rules:");
        let r = &self.rules;
        if *r == RuleChanges::default() {
            let _ = writeln!(out, "  none");
        }
        for (what, ids) in [
            ("added", &r.added),
            ("removed", &r.removed),
            ("changed", &r.changed),
        ] {
            if !ids.is_empty() {
                let _ = writeln!(out, "  {what}: {}", ids.join(", "));
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::registry;

    fn policy(version: &str, extra: &str) -> Policy {
        let rule = "\n[[rule]]\nid = \"DE-EU\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [\"EU\", \"US\"]\nlegal_basis = \"LED Art. 1(3)\"\n";
        crate::fixtures::de_policy(version, "2025-01-01", &format!("{extra}{rule}")).0
    }

    fn date() -> Date {
        Date::parse("2025-09-01").unwrap()
    }

    #[test]
    fn the_same_policy_has_no_difference() {
        let p = policy("1", "");
        let d = diff(&registry(), &p, &p, date());
        assert!(d.is_empty(), "{d:?}");
        assert!(
            d.text()
                .contains("gains:\n  none\nloses:\n  none\nlimits:\n  none\nrules:\n  none\n")
        );
    }

    #[test]
    fn an_added_deny_loses_the_pair() {
        let old = policy("1", "");
        let new = policy(
            "2",
            "[[rule]]\nid = \"NO-US\"\neffect = \"deny\"\nrecipients = [\"US\"]\n",
        );
        let d = diff(&registry(), &old, &new, date());
        assert!(d.gains.is_empty());
        assert_eq!(
            d.loses.recipients,
            [PairChange {
                country: "US".into(),
                purpose: "narcotics".into(),
                new_rules: vec!["NO-US".into()],
                old_rules: vec!["DE-EU".into()],
            }]
        );
        assert!(d.loses.purposes.is_empty());
        assert_eq!(d.rules.added, ["NO-US"]);
        assert!(d.text().contains(
            "loses:\n  recipient US for narcotics (denied by rule NO-US; was allowed by rule DE-EU)\n"
        ), "{}", d.text());
        // And the other way round, the pair is gained.
        let back = diff(&registry(), &new, &old, date());
        assert_eq!(back.gains.recipients.len(), 1);
        assert_eq!(back.gains.recipients[0].old_rules, ["NO-US"]);
        assert_eq!(back.rules.removed, ["NO-US"]);
    }

    #[test]
    fn limits_have_a_direction() {
        let old = policy("1", "");
        let text = "min_participants = 3\n[data]\nexcluded_fields = [\"nationality\"]\n[retention]\nmax_model_retention_days = 30\n[handling]\nallow_onward_transfer = true\n";
        let new = policy("2", text);
        let d = diff(&registry(), &old, &new, date());
        let shown: Vec<String> = d
            .limits
            .iter()
            .map(|l| format!("{}: {} -> {} {}", l.limit, l.old, l.new, l.change))
            .collect();
        assert_eq!(
            shown,
            [
                "policy.version: 1 -> 2 changed",
                "privacy.min_participants: 1 -> 3 stricter",
                "retention.max_model_retention_days: no limit -> 30 days stricter",
                "handling.allow_onward_transfer: false -> true looser",
                "data.excluded_fields: none -> nationality stricter",
            ]
        );
    }

    #[test]
    fn epsilon_is_compared_exactly() {
        let old = policy("1", "");
        let new = Policy {
            max_epsilon_per_round: crate::policy::Limit {
                value: 0.5,
                exact: Decimal::from_f64(0.5).unwrap(),
            },
            ..old.clone()
        };
        let d = diff(&registry(), &old, &new, date());
        assert_eq!(d.limits.len(), 1);
        assert_eq!(d.limits[0].change, "stricter");
        assert_eq!(
            (d.limits[0].old.as_str(), d.limits[0].new.as_str()),
            ("1", "0.5")
        );
    }

    #[test]
    fn purposes_and_coordinators() {
        let old = policy("1", "");
        let new = Policy {
            denied_jurisdictions: vec!["NL".into()],
            allowed_jurisdictions: vec!["EU".into(), "GB".into()],
            rules: vec![Rule {
                purposes: Some(vec!["firearms".into()]),
                ..old.rules[0].clone()
            }],
            ..old.clone()
        };
        let d = diff(&registry(), &old, &new, date());
        assert_eq!(d.gains.purposes, ["firearms"]);
        assert_eq!(d.loses.purposes, ["narcotics"]);
        assert_eq!(d.gains.coordinator_countries, ["GB"]);
        assert_eq!(d.loses.coordinator_countries, ["NL"]);
        assert_eq!(d.rules.changed, ["DE-EU"]);
        let j = d.json();
        assert_eq!(j["gains"]["coordinator_countries"][0], "GB");
        assert_eq!(j["loses"]["recipients"].as_array().unwrap().len(), 3);
    }
}
