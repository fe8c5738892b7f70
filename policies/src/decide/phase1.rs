//! Phases 0 and 1: each agency judged alone, by its own country's policy as loaded.

use serde_json::json;

use super::findings::Finding;
use super::request::Checked;
use super::{Loaded, Reason};
use crate::policy::{Effect, Policy, PolicyError};
use crate::registry::Registry;

/// Phases 0 and 1 for participant `i`: the reasons it is excluded on its own.
pub(super) fn alone(
    registry: &Registry,
    loaded: Option<&Loaded>,
    checked: &Checked<'_>,
    i: usize,
) -> Vec<Finding> {
    let p = &checked.request.participants[i];
    match loaded {
        None if !registry.is_country(&p.country) => vec![Finding {
            reason: Reason::PolicyMissing,
            detail: json!({"country_in_registry": false}),
            because: format!(
                "{} is not a country of registry {}, so no policy of it can apply",
                p.country, registry.version
            ),
            would_change: format!(
                "the federation secretariat adding {} to the registry and its legal team supplying a policy",
                p.country
            ),
        }],
        None => vec![missing(&p.country, &format!("{}.toml", p.country))],
        Some(Loaded::Missing { looked_at }) => vec![missing(&p.country, looked_at)],
        Some(Loaded::Broken { error, .. }) => vec![broken(&p.country, error)],
        Some(Loaded::BadSignature { problem, .. }) => vec![Finding {
            reason: Reason::PolicySignatureInvalid,
            detail: json!({"problem": problem}),
            because: format!(
                "the federation requires signed policies and {}'s policy file is not validly signed ({problem}), so it is not applied",
                p.country
            ),
            would_change: format!(
                "{}'s legal team signing the file with its registered key (`treaty policy sign`)",
                p.country
            ),
        }],
        Some(Loaded::Valid(policy)) => phase1(registry, policy, checked, i),
    }
}

fn missing(country: &str, looked_at: &str) -> Finding {
    Finding {
        reason: Reason::PolicyMissing,
        detail: json!({"looked_at": looked_at}),
        because: format!(
            "no policy of {country} was found (looked for {looked_at}), and without one nothing is shared"
        ),
        would_change: format!("{country}'s legal team supplying a valid policy"),
    }
}

fn broken(country: &str, error: &PolicyError) -> Finding {
    let problems: Vec<String> = error
        .diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect();
    let (reason, what) = match error {
        PolicyError::Parse(_) => (Reason::PolicyParseError, "is not valid TOML"),
        PolicyError::Schema(_) => (Reason::PolicySchemaError, "breaks the policy schema"),
    };
    let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
    let more = problems.len().saturating_sub(shown.len());
    Finding {
        reason,
        because: format!(
            "{country}'s policy file {what} ({}{}); a broken policy is never applied in part",
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
        detail: json!({"errors": problems}),
        would_change: format!(
            "{country}'s legal team correcting the file (`treaty policy check` lists every problem)"
        ),
    }
}

fn phase1(
    registry: &Registry,
    policy: &Policy,
    checked: &Checked<'_>,
    index: usize,
) -> Vec<Finding> {
    let request = checked.request;
    let participant = &request.participants[index];
    let date = checked.date;
    let c = &policy.country;
    let v = &policy.version;
    if date < policy.valid_from {
        return vec![Finding {
            reason: Reason::PolicyNotYetValid,
            detail: json!({"valid_from": policy.valid_from.to_string(), "date": date.to_string()}),
            because: format!(
                "{c}'s policy (version {v}) takes effect on {}, after the round's date",
                policy.valid_from
            ),
            would_change: format!(
                "a round on or after {}, or a policy of {c} valid on {date}",
                policy.valid_from
            ),
        }];
    }
    if date > policy.valid_until {
        return vec![Finding {
            reason: Reason::PolicyExpired,
            detail: json!({"valid_until": policy.valid_until.to_string(), "date": date.to_string()}),
            because: format!(
                "{c}'s policy (version {v}) was valid only until {}, before the round's date",
                policy.valid_until
            ),
            would_change: format!("a new policy of {c} valid on {date}"),
        }];
    }
    let mut out = Vec::new();
    let purpose = &request.purpose;
    if policy.allows_purpose(purpose, date).is_empty() {
        let mut allowed: Vec<&str> = policy
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Allow && r.active_on(date))
            .flat_map(|r| r.purposes.iter().flatten().map(String::as_str))
            .collect();
        allowed.sort();
        allowed.dedup();
        let description = registry.purposes.get(purpose).cloned().unwrap_or_default();
        out.push(Finding {
            reason: Reason::PurposeNotAllowed,
            detail: json!({"purpose": purpose, "allowed_purposes": allowed}),
            because: format!(
                "no allow rule of {c} active on {date} lists the purpose {purpose} (\"{description}\"); active allow rules cover {}",
                if allowed.is_empty() { "no purpose".to_string() } else { allowed.join(", ") }
            ),
            would_change: format!("{c} adding an allow rule for {purpose}"),
        });
    }
    let cc = &request.coordinator_country;
    if let Some((token, m)) = policy.match_any(registry, &policy.denied_jurisdictions, cc, date) {
        let basis = if policy.coordinator_legal_basis.is_empty() {
            String::new()
        } else {
            format!(
                "; legal basis {}",
                policy.coordinator_legal_basis.join(", ")
            )
        };
        out.push(Finding {
            reason: Reason::CoordinatorDenied,
            detail: json!({"coordinator_country": cc, "jurisdiction": token}),
            because: format!(
                "the coordinator is hosted in {cc}, and {c}'s policy denies the jurisdiction {token} ({}{basis})",
                m.describe(cc, date)
            ),
            would_change: format!("a coordinator hosted outside {c}'s denied jurisdictions"),
        });
    } else if cc != c
        && policy
            .match_any(registry, &policy.allowed_jurisdictions, cc, date)
            .is_none()
    {
        out.push(Finding {
            reason: Reason::CoordinatorNotAllowed,
            detail: json!({"coordinator_country": cc, "allowed_jurisdictions": policy.allowed_jurisdictions}),
            because: format!(
                "the coordinator is hosted in {cc}, which on {date} is in none of {c}'s allowed jurisdictions ({})",
                policy.allowed_jurisdictions.join(", ")
            ),
            would_change: format!(
                "a coordinator hosted in {c} or in one of {}",
                policy.allowed_jurisdictions.join(", ")
            ),
        });
    }
    let mut by_name = Vec::new();
    let mut by_category = Vec::new();
    for f in &request.fields {
        if policy.excluded_fields.contains(f) {
            by_name.push(f.clone());
        } else if let Some(cat) = registry.fields.get(f)
            && policy.excluded_field_categories.contains(cat)
        {
            by_category.push(format!("{f} ({cat})"));
        }
    }
    if !by_name.is_empty() || !by_category.is_empty() {
        let mut parts = Vec::new();
        if !by_name.is_empty() {
            parts.push(format!("by name: {}", by_name.join(", ")));
        }
        if !by_category.is_empty() {
            parts.push(format!("by registry category: {}", by_category.join(", ")));
        }
        out.push(Finding {
            reason: Reason::FieldExcluded,
            detail: json!({"by_name": by_name, "by_category": by_category}),
            because: format!(
                "the round uses fields that {c}'s policy excludes ({})",
                parts.join("; ")
            ),
            would_change: "a round that does not use those fields".to_string(),
        });
    }
    let limits = &policy.max_epsilon_per_round;
    if checked.epsilon > limits.exact {
        out.push(Finding {
            reason: Reason::EpsilonPerRoundExceeded,
            detail: json!({"requested": checked.epsilon.to_string(), "limit": limits.exact.to_string()}),
            because: format!("the round spends epsilon {}, above {c}'s per-round limit of {}", checked.epsilon, limits.exact),
            would_change: format!("a round spending epsilon of at most {}", limits.exact),
        });
    }
    if checked.delta > policy.max_delta.exact {
        out.push(Finding {
            reason: Reason::DeltaExceeded,
            detail: json!({"requested": checked.delta.to_string(), "limit": policy.max_delta.exact.to_string()}),
            because: format!("the round's delta {} is above {c}'s limit of {}", checked.delta, policy.max_delta.exact),
            would_change: format!("a round with a delta of at most {}", policy.max_delta.exact),
        });
    }
    let cumulative = &checked.cumulative[index];
    let after = cumulative.add(&checked.epsilon);
    let total = &policy.max_epsilon_total.exact;
    if after > *total {
        let left = total.sub(cumulative);
        out.push(Finding {
            reason: Reason::BudgetExhausted,
            detail: json!({"cumulative_epsilon": cumulative.to_string(), "requested": checked.epsilon.to_string(),
                           "after_round": after.to_string(), "limit": total.to_string()}),
            because: format!(
                "{} has spent epsilon {cumulative}; this round's {} would bring it to {after}, above the total budget of {total} that {c}'s policy gives each agency",
                participant.agency, checked.epsilon
            ),
            would_change: if left.is_positive() {
                format!("a round spending epsilon of at most {left}, what is left of its total budget of {total}")
            } else {
                format!("a policy of {c} with a larger total budget, as {} has spent all of its {total}", participant.agency)
            },
        });
    }
    if let Some(limit) = policy.max_model_retention_days {
        let exceeded = request.model_retention_days.is_none_or(|d| d > limit);
        if exceeded {
            let kept = request
                .model_retention_days
                .map_or("without a time limit".to_string(), |d| {
                    format!("for {d} days")
                });
            out.push(Finding {
                reason: Reason::RetentionExceeded,
                detail: json!({"requested_days": request.model_retention_days, "limit_days": limit}),
                because: format!("the round keeps the model {kept}, longer than {c}'s limit of {limit} days"),
                would_change: format!("a round keeping the model at most {limit} days"),
            });
        }
    }
    if request.onward_transfer && !policy.allow_onward_transfer {
        out.push(Finding {
            reason: Reason::OnwardTransferNotAllowed,
            detail: json!({}),
            because: format!(
                "the round allows onward transfer of the model, which {c}'s policy does not allow"
            ),
            would_change: "a round without onward transfer".to_string(),
        });
    }
    if policy.require_secure_aggregation && !request.secure_aggregation {
        out.push(Finding {
            reason: Reason::SecureAggregationRequired,
            detail: json!({}),
            because: format!(
                "the round is not under secure aggregation, and {c}'s policy lets its agencies release only into a secure sum, which the coordinator sees as a whole and never agency by agency"
            ),
            would_change: "a round under secure aggregation (`--secure-aggregation`), or a policy of that country without `require_secure_aggregation`".to_string(),
        });
    }
    out
}
