//! Findings: one reason found against one agency, with what it rests on and what would change
//! it, and the sentences that cite rules and facts; phase 2's findings for an agency left out.

use serde_json::{Value, json};

use super::Reason;
use super::search::{Graph, members};
use crate::date::Date;
use crate::policy::{Acceptance, Policy};
use crate::registry::Registry;

/// One reason found for one agency, with what it rests on and what would change it.
pub(super) struct Finding {
    pub(super) reason: Reason,
    pub(super) detail: Value,
    pub(super) because: String,
    pub(super) would_change: String,
}

/// Rule ids with their line and legal basis, for sentences:
/// `DE-EU (line 40; legal basis: "LED Art. 1(3)")`.
fn cite(policy: &Policy, rules: &[usize]) -> String {
    rules
        .iter()
        .map(|&i| {
            let r = &policy.rules[i];
            match &r.legal_basis {
                Some(b) => format!("{} (line {}; legal basis: \"{}\")", r.id, r.line, b),
                None => format!("{} (line {}; no legal basis given)", r.id, r.line),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rule` or `rules`.
fn rule_word(n: usize) -> &'static str {
    if n == 1 { "rule" } else { "rules" }
}

/// `takes part` or `take part`, after a list of `n` countries.
fn take_part(n: usize) -> &'static str {
    if n == 1 { "takes part" } else { "take part" }
}

impl Graph<'_> {
    /// Phase 2's findings against survivor country `k`, left out of the admitted set `best`
    /// (`None`: no set is admissible), in the words of `order` (survivor countries by index).
    pub(super) fn phase2_findings(
        &self,
        registry: &Registry,
        k: usize,
        best: Option<u64>,
        order: &[&str],
    ) -> Vec<Finding> {
        let policy = self.policies[k];
        let c = &policy.country;
        let purpose = &self.purpose;
        let date = self.date;
        let names = |set: &[usize]| {
            set.iter()
                .map(|&i| order[i].to_string())
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        let Some(admitted) = best else {
            let b = self.best_clique_with(k);
            let total = self.agencies_in(b);
            let count = u64::from(b.count_ones());
            let group = names(&members(b).collect::<Vec<_>>());
            let round = format!("the largest round {c} could join");
            out.extend(minimum_findings(policy, total, count, &group, &round));
            if out.is_empty() {
                out.push(Finding {
                    reason: Reason::NoFeasibleRound,
                    detail: json!({"best_set": group}),
                    because: format!(
                        "no set of participants satisfies every policy at once; the largest set that accepts {c} and that {c} accepts is {} ({total} agencies), and its members' own minimums fail",
                        group.join(", ")
                    ),
                    would_change: "more participants whose policies accept one another".to_string(),
                });
            }
            return out;
        };
        let in_round: Vec<usize> = members(admitted).collect();
        let recipients: Vec<(&str, &Acceptance)> = in_round
            .iter()
            .map(|&j| (order[j], &self.acceptance[k][j]))
            .collect();
        out.extend(recipient_findings(
            registry,
            policy,
            &recipients,
            purpose,
            date,
        ));
        let rejecting: Vec<usize> = in_round
            .iter()
            .copied()
            .filter(|&j| !self.acceptance[j][k].accepted())
            .collect();
        if !rejecting.is_empty() {
            let mut rule_ids = Vec::new();
            let mut clauses = Vec::new();
            for &j in &rejecting {
                let other = self.policies[j];
                let a = &self.acceptance[j][k];
                if a.denies.is_empty() {
                    clauses.push(format!(
                        "{} has no allow rule active on {date} for {purpose} that covers {c}",
                        other.country
                    ));
                } else {
                    rule_ids.extend(other.rule_ids(&a.denies));
                    let facts = facts(registry, other, &a.denies, &[c.as_str()], date);
                    let overridden = if a.allows.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", overriding its allow {} {}",
                            rule_word(a.allows.len()),
                            cite(other, &a.allows)
                        )
                    };
                    clauses.push(format!(
                        "{}'s deny {} {} {} {c} ({facts}){overridden}",
                        other.country,
                        rule_word(a.denies.len()),
                        cite(other, &a.denies),
                        if a.denies.len() == 1 {
                            "matches"
                        } else {
                            "match"
                        }
                    ));
                }
            }
            out.push(Finding {
                reason: Reason::RejectedByParticipant,
                detail: json!({"countries": names(&rejecting), "rule_ids": rule_ids}),
                because: format!(
                    "{} {} not accept {c} as a recipient: {}",
                    names(&rejecting).join(" and "),
                    if rejecting.len() == 1 { "does" } else { "do" },
                    clauses.join("; ")
                ),
                would_change: format!(
                    "{} accepting {c} for {purpose}",
                    names(&rejecting).join(" and ")
                ),
            });
        }
        let total = self.agencies_in(admitted) + self.agencies[k];
        let count = u64::from(admitted.count_ones()) + 1;
        let with_k: Vec<String> = names(&in_round).into_iter().chain([c.clone()]).collect();
        let round = format!("the largest round {c} could join");
        out.extend(minimum_findings(policy, total, count, &with_k, &round));
        out
    }
}

/// RECIPIENT_DENIED and RECIPIENT_NOT_ALLOWED: what `policy` says of the other countries of a
/// round, each given with how the policy judged it.
pub(super) fn recipient_findings(
    registry: &Registry,
    policy: &Policy,
    recipients: &[(&str, &Acceptance)],
    purpose: &str,
    date: Date,
) -> Vec<Finding> {
    let c = &policy.country;
    let mut out = Vec::new();
    let denied: Vec<&str> = recipients
        .iter()
        .filter(|(_, a)| !a.denies.is_empty())
        .map(|(r, _)| *r)
        .collect();
    if !denied.is_empty() {
        let sorted = |pick: fn(&Acceptance) -> &Vec<usize>| {
            let mut rules: Vec<usize> = recipients
                .iter()
                .filter(|(_, a)| !a.denies.is_empty())
                .flat_map(|(_, a)| pick(a).iter().copied())
                .collect();
            rules.sort();
            rules.dedup();
            rules
        };
        let rules = sorted(|a| &a.denies);
        let overridden = sorted(|a| &a.allows);
        let facts = facts(registry, policy, &rules, &denied, date);
        out.push(Finding {
            reason: Reason::RecipientDenied,
            detail: json!({"countries": denied, "rule_ids": policy.rule_ids(&rules)}),
            because: format!(
                "{c}'s deny {} {} forbid{} sharing for {purpose} with {}, which {} in the round ({facts}){}",
                rule_word(rules.len()),
                cite(policy, &rules),
                if rules.len() == 1 { "s" } else { "" },
                denied.join(", "),
                take_part(denied.len()),
                if overridden.is_empty() {
                    String::new()
                } else {
                    format!("; it overrides allow {} {}", rule_word(overridden.len()), cite(policy, &overridden))
                }
            ),
            would_change: format!("a round without {}, or {c} lifting the deny", denied.join(", ")),
        });
    }
    let not_allowed: Vec<&str> = recipients
        .iter()
        .filter(|(_, a)| a.allows.is_empty())
        .map(|(r, _)| *r)
        .collect();
    if !not_allowed.is_empty() {
        out.push(Finding {
            reason: Reason::RecipientNotAllowed,
            detail: json!({"countries": not_allowed}),
            because: format!(
                "{c} has no allow rule active on {date} for {purpose} that covers {}, which {} in the round",
                not_allowed.join(", "),
                take_part(not_allowed.len())
            ),
            would_change: format!("{c} adding an allow rule for {purpose} covering {}", not_allowed.join(", ")),
        });
    }
    out
}

/// MIN_PARTICIPANTS_UNMET and MIN_COUNTRIES_UNMET of `policy` for `round` (how the sentence
/// names it), which would have `total` agencies of `count` countries (`set`).
pub(super) fn minimum_findings(
    policy: &Policy,
    total: u64,
    count: u64,
    set: &[String],
    round: &str,
) -> Vec<Finding> {
    let c = &policy.country;
    let mut out = Vec::new();
    if total < policy.min_participants {
        out.push(Finding {
            reason: Reason::MinParticipantsUnmet,
            detail: json!({"required": policy.min_participants, "available": total, "countries": set}),
            because: format!(
                "{c}'s policy requires at least {} participating agencies, its own included; {round} ({}) has {total}",
                policy.min_participants,
                set.join(", ")
            ),
            would_change: format!("a round of at least {} agencies whose countries all accept one another", policy.min_participants),
        });
    }
    if count < policy.min_distinct_countries {
        out.push(Finding {
            reason: Reason::MinCountriesUnmet,
            detail: json!({"required": policy.min_distinct_countries, "available": count, "countries": set}),
            because: format!(
                "{c}'s policy requires at least {} distinct countries; {round} ({}) has {count}",
                policy.min_distinct_countries,
                set.join(", ")
            ),
            would_change: format!("a round of at least {} countries that all accept one another", policy.min_distinct_countries),
        });
    }
    out
}

/// How each recipient matched the rules: "GB is in registry group EU on ...".
fn facts(
    registry: &Registry,
    policy: &Policy,
    rules: &[usize],
    recipients: &[&str],
    date: Date,
) -> String {
    let mut facts = Vec::new();
    for country in recipients {
        for &r in rules {
            if let Some((_, m)) =
                policy.match_any(registry, &policy.rules[r].recipients, country, date)
            {
                let f = m.describe(country, date);
                if !facts.contains(&f) {
                    facts.push(f);
                }
            }
        }
    }
    facts.join("; ")
}
