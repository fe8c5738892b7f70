//! Lints (`treaty policy lint`): things a valid policy says that its legal team almost certainly
//! did not mean. They are warnings, printed as `FILE:LINE:COL: warning: message`; a policy with
//! warnings is still applied as written.
//!
//! - `shadowed-allow`: an allow rule that never permits sharing with another country, because
//!   for every country it covers and every purpose it lists, an active deny rule matches too,
//!   on every date of its validity (a deny always overrides an allow). The check is exact, not a
//!   guess: recipients resolve as in a decision (local group, registry group with its dated
//!   membership, country), and acceptance can only change on a few dates (where a dated
//!   membership or a deny rule starts or ends), so checking the start of the allow's validity and
//!   each of those dates inside it covers every day. The allow may still open its purposes for
//!   rounds among the country's own agencies (phase 1), which the message does not dispute.
//! - `allow-matches-nobody`: an allow rule whose recipients cover no country at all while it is
//!   active (for example a group whose dated members all left before).
//! - `gdpr-adequacy`: a legal basis citing a GDPR adequacy decision (`GDPR_ADEQUACY`, or any text
//!   naming the GDPR (`GDPR`, `DSGVO`, `RGPD`, `2016/679`) together with adequacy (`adequacy`,
//!   `Art. 45`, `Angemessenheit`, `adéquation`)). GDPR adequacy decisions do not cover transfers
//!   under the Law Enforcement Directive (LED Art. 36 has its own). Checked on allow rules, on
//!   `[policy] legal_basis` and on `[coordinator] legal_basis`.
//! - `derogation`: `transfer_basis = "derogation"`: derogations (LED Art. 38) are for transfers in
//!   specific situations, not for the recurring transfers of training rounds.
//! - `policy-expired`, `rule-expired`, `rule-outside-policy`: validity that has ended before
//!   `today`, or a rule that can never apply because its validity lies wholly outside the
//!   policy's. A rule that merely extends past the policy's validity is not reported: the
//!   policy's dates govern, and rule dates often follow the legal instrument they cite.
//! - `epsilon-per-round-above-total`, `delta-too-large` (`max_delta` of 0.001 or more; compared
//!   as exact decimals).
//! - `unused-group`: a local group no rule or jurisdiction names.

use std::collections::BTreeSet;
use std::fmt;

use toml::de::DeTable;

use crate::date::Date;
use crate::decimal::Decimal;
use crate::policy::{Effect, Policy, Rule};
use crate::registry::Registry;
use crate::source::Source;

/// One warning at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// A stable name of the lint (`shadowed-allow`, ...).
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// The smallest `max_delta` that is reported as too large.
const DELTA_WARNING: f64 = 1e-3;

/// Where keys are written in the policy file, for pointing at them.
struct Places<'a> {
    source: Source<'a>,
    doc: Option<DeTable<'a>>,
}

impl<'a> Places<'a> {
    fn new(file: &str, text: &'a str) -> Places<'a> {
        Places {
            source: Source::new(file, text),
            doc: DeTable::parse(text).ok().map(|d| d.into_inner()),
        }
    }

    fn key_in(&self, table: &DeTable<'_>, key: &str) -> Option<(usize, usize)> {
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| self.source.position(k.span().start))
    }

    /// The position of `key` in the section `[section]`, or of the section itself.
    fn key(&self, section: &str, key: &str) -> (usize, usize) {
        let table = self
            .doc
            .as_ref()
            .and_then(|d| d.get(section))
            .and_then(|v| v.get_ref().as_table());
        table
            .and_then(|t| self.key_in(t, key))
            .or_else(|| {
                let doc = self.doc.as_ref()?;
                self.key_in(doc, section)
            })
            .unwrap_or((1, 1))
    }

    /// The position of the `id` key of the `index`-th rule (rules are kept in file order).
    fn rule(&self, index: usize, rule: &Rule) -> (usize, usize) {
        self.doc
            .as_ref()
            .and_then(|d| d.get("rule"))
            .and_then(|v| v.get_ref().as_array())
            .and_then(|a| a.get(index))
            .and_then(|item| item.get_ref().as_table())
            .and_then(|t| self.key_in(t, "id"))
            .unwrap_or((rule.line, 1))
    }
}

/// Whether a legal-basis text cites a GDPR adequacy decision.
fn cites_gdpr_adequacy(text: &str) -> bool {
    let t = text.to_lowercase();
    let gdpr = ["gdpr", "dsgvo", "rgpd", "2016/679"]
        .iter()
        .any(|w| t.contains(w));
    let adequacy = [
        "adequacy",
        "art. 45",
        "art 45",
        "article 45",
        "artikel 45",
        "angemessenheit",
        "adéquation",
        "adequation",
    ]
    .iter()
    .any(|w| t.contains(w));
    gdpr && adequacy
}

/// The dates of a rule's validity that fall inside the policy's: `None` when they do not meet.
fn window(policy: &Policy, rule: &Rule) -> Option<(Date, Date)> {
    let from = rule
        .valid_from
        .map_or(policy.valid_from, |f| f.max(policy.valid_from));
    let until = rule
        .valid_until
        .map_or(policy.valid_until, |u| u.min(policy.valid_until));
    (from <= until).then_some((from, until))
}

/// How an allow rule fares against the deny rules over its validity.
#[derive(Clone, Debug, PartialEq)]
pub enum Shadow {
    /// Some country and purpose it covers is not denied on some date.
    Effective,
    /// It covers no country at all while active.
    MatchesNobody,
    /// Denied wherever it matches; the deny rules (indices) that do it.
    AlwaysOverridden(Vec<usize>),
}

/// Whether allow rule `index` of `policy` is always overridden by its deny rules (see the
/// module's documentation for why checking these dates covers every day).
pub fn shadow(registry: &Registry, policy: &Policy, index: usize) -> Shadow {
    let rule = &policy.rules[index];
    let Some((from, until)) = window(policy, rule) else {
        // Never active: `rule-outside-policy` says so.
        return Shadow::Effective;
    };
    let mut dates: BTreeSet<Date> = BTreeSet::from([from]);
    let mut boundary = |d: Option<Date>| {
        if let Some(d) = d
            && from < d
            && d <= until
        {
            dates.insert(d);
        }
    };
    for group in registry.groups.values() {
        for dated in &group.dated {
            boundary(dated.from);
            boundary(dated.until.and_then(Date::next_day));
        }
    }
    let denies: Vec<usize> = (0..policy.rules.len())
        .filter(|&j| policy.rules[j].effect == Effect::Deny)
        .collect();
    for &j in &denies {
        boundary(policy.rules[j].valid_from);
        boundary(policy.rules[j].valid_until.and_then(Date::next_day));
    }
    let purposes = rule.purposes.clone().unwrap_or_default();
    let (mut foreign, mut domestic) = (false, false);
    let mut used = BTreeSet::new();
    for &date in &dates {
        for country in &registry.countries {
            if policy
                .match_any(registry, &rule.recipients, country, date)
                .is_none()
            {
                continue;
            }
            if *country == policy.country {
                // Domestic recipients are accepted with or without a rule, and no deny applies
                // to them; an allow naming only its own country opens its purposes for
                // domestic rounds, which is a use, not a mistake.
                domestic = true;
                continue;
            }
            foreign = true;
            for purpose in &purposes {
                let denying: Vec<usize> = denies
                    .iter()
                    .copied()
                    .filter(|&j| {
                        let d = &policy.rules[j];
                        d.active_on(date)
                            && d.covers(purpose)
                            && policy
                                .match_any(registry, &d.recipients, country, date)
                                .is_some()
                    })
                    .collect();
                if denying.is_empty() {
                    return Shadow::Effective;
                }
                used.extend(denying);
            }
        }
    }
    match (foreign, domestic) {
        (true, _) => Shadow::AlwaysOverridden(used.into_iter().collect()),
        (false, true) => Shadow::Effective,
        (false, false) => Shadow::MatchesNobody,
    }
}

/// Every warning about `policy`, parsed from `text` (the file `file`), on `today`, in file
/// order.
pub fn lint(
    registry: &Registry,
    policy: &Policy,
    file: &str,
    text: &str,
    today: Date,
) -> Vec<Warning> {
    let places = Places::new(file, text);
    let mut out = Vec::new();
    let mut warn = |(line, column): (usize, usize), code: &'static str, message: String| {
        out.push(Warning {
            file: file.to_string(),
            line,
            column,
            code,
            message,
        });
    };
    let c = &policy.country;

    let expired = policy.valid_until < today;
    if expired {
        warn(
            places.key("policy", "valid_until"),
            "policy-expired",
            format!(
                "the policy expired on {} (valid_until), so {c}'s agencies are excluded from every round after it with POLICY_EXPIRED; adopt a new version",
                policy.valid_until
            ),
        );
    }
    for basis in &policy.legal_basis {
        if cites_gdpr_adequacy(basis) {
            warn(
                places.key("policy", "legal_basis"),
                "gdpr-adequacy",
                gdpr_message("the policy's legal basis", basis),
            );
        }
    }
    for basis in &policy.coordinator_legal_basis {
        if cites_gdpr_adequacy(basis) {
            warn(
                places.key("coordinator", "legal_basis"),
                "gdpr-adequacy",
                gdpr_message("the coordinator's legal basis", basis),
            );
        }
    }

    let used_tokens: BTreeSet<&str> = policy
        .rules
        .iter()
        .flat_map(|r| r.recipients.iter())
        .chain(&policy.allowed_jurisdictions)
        .chain(&policy.denied_jurisdictions)
        .map(String::as_str)
        .collect();
    for group in policy.groups.keys() {
        if !used_tokens.contains(group.as_str()) {
            warn(
                places.key("groups", group),
                "unused-group",
                format!("the local group {group} is not named by any rule or jurisdiction"),
            );
        }
    }

    let (per_round, total) = (&policy.max_epsilon_per_round, &policy.max_epsilon_total);
    if per_round.exact > total.exact {
        warn(
            places.key("privacy", "max_epsilon_per_round"),
            "epsilon-per-round-above-total",
            format!(
                "max_epsilon_per_round ({per_round}) is above max_epsilon_total ({total}): no agency can ever spend more than the total, so the per-round limit is not the one that binds"
            ),
        );
    }
    if let Some(limit) = Decimal::from_f64(DELTA_WARNING)
        && policy.max_delta.exact >= limit
    {
        warn(
            places.key("privacy", "max_delta"),
            "delta-too-large",
            format!(
                "max_delta ({}) is 0.001 or more: delta is the chance that the privacy guarantee fails outright, and should be far below one over the number of records (1e-5 or less is usual)",
                policy.max_delta
            ),
        );
    }

    for (i, rule) in policy.rules.iter().enumerate() {
        let at = places.rule(i, rule);
        let id = &rule.id;
        if window(policy, rule).is_none() {
            let validity = match (rule.valid_from, rule.valid_until) {
                (Some(f), Some(u)) => format!("from {f} to {u}"),
                (Some(f), None) => format!("from {f}"),
                (None, Some(u)) => format!("until {u}"),
                (None, None) => "always".to_string(),
            };
            warn(
                at,
                "rule-outside-policy",
                format!(
                    "rule {id} is valid {validity}, wholly outside the policy's validity ({} to {}), so it never applies",
                    policy.valid_from, policy.valid_until
                ),
            );
        } else if !expired && let Some(u) = rule.valid_until.filter(|u| *u < today) {
            warn(
                at,
                "rule-expired",
                format!(
                    "rule {id} expired on {u} (valid_until) and no longer applies; remove it or renew it"
                ),
            );
        }
        if rule.transfer_basis.as_deref() == Some("derogation") {
            warn(
                at,
                "derogation",
                format!(
                    "rule {id} has transfer_basis = \"derogation\": derogations (LED Art. 38) cover transfers in specific situations, case by case, not the recurring transfers of training rounds; rely on an adequacy decision (LED Art. 36) or appropriate safeguards (LED Art. 37)"
                ),
            );
        }
        if rule.effect != Effect::Allow {
            continue;
        }
        if let Some(basis) = rule
            .legal_basis
            .as_deref()
            .filter(|b| cites_gdpr_adequacy(b))
        {
            warn(
                at,
                "gdpr-adequacy",
                gdpr_message(&format!("rule {id}'s legal basis"), basis),
            );
        }
        match shadow(registry, policy, i) {
            Shadow::Effective => {}
            Shadow::MatchesNobody => warn(
                at,
                "allow-matches-nobody",
                format!(
                    "allow rule {id} covers no country on any day it is active (recipients {}), so it never permits anything",
                    rule.recipients.join(", ")
                ),
            ),
            Shadow::AlwaysOverridden(denies) => {
                let names: Vec<String> = denies
                    .iter()
                    .map(|&j| {
                        let d = &policy.rules[j];
                        format!("{} (line {})", d.id, d.line)
                    })
                    .collect();
                let s = if names.len() == 1 { "" } else { "s" };
                warn(
                    at,
                    "shadowed-allow",
                    format!(
                        "allow rule {id} never permits sharing with another country: deny rule{s} {} match{} every country it covers, for every purpose it lists, on every day it is active, and a deny always overrides an allow",
                        names.join(", "),
                        if names.len() == 1 { "es" } else { "" }
                    ),
                );
            }
        }
    }
    out.sort_by_key(|w| (w.line, w.column));
    out
}

fn gdpr_message(whose: &str, basis: &str) -> String {
    format!(
        "{whose} \"{basis}\" cites a GDPR adequacy decision, which does not cover transfers for law-enforcement purposes: those need an adequacy decision under the Law Enforcement Directive (LED Art. 36) or another LED basis (Arts. 37-38)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{REGISTRY, registry};

    fn policy(rules: &str) -> (Policy, String) {
        crate::fixtures::de_policy("1", "2019-01-01", rules)
    }

    fn rule(id: &str, effect: &str, purposes: &str, recipients: &str, extra: &str) -> String {
        let purposes = if purposes.is_empty() {
            String::new()
        } else {
            format!("purposes = [{purposes}]\n")
        };
        format!(
            "[[rule]]\nid = \"{id}\"\neffect = \"{effect}\"\n{purposes}recipients = [{recipients}]\nlegal_basis = \"LED Art. 1\"\n{extra}\n"
        )
    }

    fn today() -> Date {
        Date::parse("2025-06-01").unwrap()
    }

    fn codes(rules: &str) -> Vec<&'static str> {
        let (p, text) = policy(rules);
        lint(&registry(), &p, "DE.toml", &text, today())
            .into_iter()
            .map(|w| w.code)
            .collect()
    }

    #[test]
    fn a_deny_covering_the_whole_allow_shadows_it() {
        let rules = rule("A", "allow", "\"narcotics\"", "\"US\"", "")
            + &rule("D", "deny", "", "\"US\"", "");
        let (p, text) = policy(&rules);
        let warnings = lint(&registry(), &p, "DE.toml", &text, today());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].code, "shadowed-allow");
        // Points at the allow rule's id.
        assert_eq!((warnings[0].line, warnings[0].column), (p.rules[0].line, 1));
        assert!(warnings[0].to_string().starts_with(&format!(
            "DE.toml:{}:1: warning: allow rule A never permits",
            p.rules[0].line
        )));
        assert!(warnings[0].message.contains("deny rule D (line"));
    }

    #[test]
    fn a_partial_deny_does_not_shadow() {
        // Another recipient is left open.
        assert!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"US\", \"NL\"", "")
                    + &rule("D", "deny", "", "\"US\"", ""))
            )
            .is_empty()
        );
        // Another purpose is left open.
        assert!(
            codes(
                &(rule("A", "allow", "\"narcotics\", \"firearms\"", "\"US\"", "")
                    + &rule("D", "deny", "\"narcotics\"", "\"US\"", ""))
            )
            .is_empty()
        );
        // The deny starts later than the allow.
        assert!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"US\"", "")
                    + &rule("D", "deny", "", "\"US\"", "valid_from = 2024-01-01"))
            )
            .is_empty()
        );
        // The deny ends the day before the policy does: its last day is open.
        assert!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"US\"", "")
                    + &rule("D", "deny", "", "\"US\"", "valid_until = 2026-12-30"))
            )
            .is_empty()
        );
        // But two denies that meet end to end cover it.
        assert_eq!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"US\"", "")
                    + &rule("D1", "deny", "", "\"US\"", "valid_until = 2024-12-31")
                    + &rule("D2", "deny", "", "\"US\"", "valid_from = 2025-01-01"))
            ),
            ["shadowed-allow", "rule-expired"]
        );
    }

    #[test]
    fn dated_membership_is_followed_through_its_boundaries() {
        // Allow EU, deny the EU members by name: GB is in EU until 2020-01-31 (the policy
        // starts 2019-01-01), so the allow reaches GB then, and the deny must cover GB too.
        let eu_by_name = "\"DE\", \"FR\", \"NL\"";
        assert!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"EU\"", "")
                    + &rule("D", "deny", "", &format!("{eu_by_name}, \"US\""), ""))
            )
            .is_empty()
        );
        assert_eq!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"EU\"", "")
                    + &rule("D", "deny", "", &format!("{eu_by_name}, \"GB\""), ""))
            ),
            ["shadowed-allow"]
        );
        // From 2020-02-01 on, GB has left: an allow valid only then is covered without GB.
        assert_eq!(
            codes(
                &(rule(
                    "A",
                    "allow",
                    "\"narcotics\"",
                    "\"EU\"",
                    "valid_from = 2020-02-01"
                ) + &rule("D", "deny", "", eu_by_name, ""))
            ),
            ["shadowed-allow"]
        );
        // The allow's own country does not count: domestic recipients are accepted anyway.
        assert_eq!(
            codes(
                &(rule("A", "allow", "\"narcotics\"", "\"DE\", \"FR\"", "")
                    + &rule("D", "deny", "", "\"FR\"", ""))
            ),
            ["shadowed-allow"]
        );
        // An allow naming only its own country opens the purpose for domestic rounds.
        assert!(codes(&rule("A", "allow", "\"narcotics\"", "\"DE\"", "")).is_empty());
    }

    #[test]
    fn an_allow_for_a_group_that_is_empty_while_it_is_active_matches_nobody() {
        let rules = "[groups]\nOLD_PARTNERS = [\"GB\"]\n".to_string()
            + &rule("A", "allow", "\"narcotics\"", "\"OLD_PARTNERS\"", "");
        assert!(codes(&rules).is_empty());
        // EU without its plain members: only GB's dated membership, which ends in 2020.
        let reg = Registry::parse(
            "r.toml",
            &REGISTRY.replace("members = [\"DE\", \"FR\", \"NL\"]", "members = []"),
        )
        .unwrap();
        let (p, text) = policy("");
        let text = text
            + &rule(
                "A",
                "allow",
                "\"narcotics\"",
                "\"EU\"",
                "valid_from = 2021-01-01",
            );
        let p2 = Policy::parse("DE.toml", &text, &reg, Some("DE")).unwrap();
        let w = lint(&reg, &p2, "DE.toml", &text, today());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].code, "allow-matches-nobody");
        assert!(p.rules.is_empty());
    }

    #[test]
    fn gdpr_adequacy_and_derogation() {
        assert!(cites_gdpr_adequacy("GDPR_ADEQUACY"));
        assert!(cites_gdpr_adequacy(
            "Art. 45 GDPR (adequacy decision for Japan)"
        ));
        assert!(cites_gdpr_adequacy("Art. 45 DSGVO"));
        assert!(cites_gdpr_adequacy("Regulation (EU) 2016/679, adequacy"));
        assert!(!cites_gdpr_adequacy(
            "Commission Implementing Decision (EU) 2021/1773"
        ));
        assert!(!cites_gdpr_adequacy("LED Art. 36 adequacy decision"));
        assert!(!cites_gdpr_adequacy("GDPR Art. 6"));
        let rules = rule("A", "allow", "\"narcotics\"", "\"GB\"", "")
            .replace("LED Art. 1", "GDPR_ADEQUACY")
            + &rule(
                "B",
                "allow",
                "\"narcotics\"",
                "\"US\"",
                "transfer_basis = \"derogation\"",
            );
        assert_eq!(codes(&rules), ["gdpr-adequacy", "derogation"]);
        // A deny rule citing it is not a transfer basis.
        let deny = rule("D", "deny", "", "\"US\"", "").replace("LED Art. 1", "GDPR adequacy");
        assert!(codes(&deny).is_empty());
    }

    #[test]
    fn expired_and_outside_rules() {
        let rules = rule(
            "OLD",
            "allow",
            "\"narcotics\"",
            "\"FR\"",
            "valid_until = 2025-05-31",
        ) + &rule(
            "TODAY",
            "allow",
            "\"narcotics\"",
            "\"FR\"",
            "valid_until = 2025-06-01",
        ) + &rule(
            "BEFORE",
            "allow",
            "\"narcotics\"",
            "\"FR\"",
            "valid_until = 2018-12-31",
        ) + &rule(
            "AFTER",
            "allow",
            "\"narcotics\"",
            "\"FR\"",
            "valid_from = 2027-01-01",
        ) + &rule(
            "LONGER",
            "allow",
            "\"narcotics\"",
            "\"FR\"",
            "valid_until = 2030-01-01",
        );
        assert_eq!(
            codes(&rules),
            ["rule-expired", "rule-outside-policy", "rule-outside-policy"]
        );
        let (p, text) = policy(&rules);
        let after = Date::parse("2027-01-01").unwrap();
        let w = lint(&registry(), &p, "DE.toml", &text, after);
        // Once the policy itself has expired, that is said once, at valid_until.
        assert_eq!(w[0].code, "policy-expired");
        assert_eq!((w[0].line, w[0].column), (6, 1));
        assert!(w.iter().all(|w| w.code != "rule-expired"), "{w:?}");
    }

    #[test]
    fn privacy_limits_compare_exactly() {
        let (p, text) = policy("");
        assert!(lint(&registry(), &p, "DE.toml", &text, today()).is_empty());
        let text2 = text
            .replace("max_epsilon_per_round = 1.0", "max_epsilon_per_round = 8.5")
            .replace("max_delta = 1e-5", "max_delta = 0.001");
        let p2 = Policy::parse("DE.toml", &text2, &registry(), Some("DE")).unwrap();
        let w = lint(&registry(), &p2, "DE.toml", &text2, today());
        let shown: Vec<String> = w
            .iter()
            .map(|w| format!("{}:{} {}", w.line, w.column, w.code))
            .collect();
        assert_eq!(
            shown,
            ["11:1 epsilon-per-round-above-total", "13:1 delta-too-large"]
        );
        // Equal per-round and total is fine; just under 0.001 is fine.
        let text3 = text
            .replace("max_epsilon_per_round = 1.0", "max_epsilon_per_round = 8")
            .replace("max_delta = 1e-5", "max_delta = 0.00099999");
        let p3 = Policy::parse("DE.toml", &text3, &registry(), Some("DE")).unwrap();
        assert!(lint(&registry(), &p3, "DE.toml", &text3, today()).is_empty());
    }

    #[test]
    fn unused_local_groups() {
        let rules = "[groups]\nSPARE = [\"GB\"]\n".to_string();
        assert_eq!(codes(&rules), ["unused-group"]);
    }

    #[test]
    fn the_day_after() {
        let d = |s| Date::parse(s).unwrap();
        assert_eq!(Date::next_day(d("2025-01-31")), Some(d("2025-02-01")));
        assert_eq!(Date::next_day(d("2024-02-28")), Some(d("2024-02-29")));
        assert_eq!(Date::next_day(d("2025-12-31")), Some(d("2026-01-01")));
        assert_eq!(Date::next_day(d("2025-06-01")), Some(d("2025-06-02")));
    }
}
