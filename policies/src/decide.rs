//! Deciding a round (spec "Deciding a round"): phase 0 loads each country's policy, phase 1
//! judges each agency alone, phase 2 admits the largest set of countries whose policies all
//! accept one another and whose minimums hold, exactly.
//!
//! Choices where the spec is silent, made fail-closed and written down here:
//! - A request field absent: `fields` = none, `onward_transfer` = false, `round_min_participants`
//!   = 2; `model_retention_days` absent means the model is kept without limit, so a policy with a
//!   `[retention]` limit refuses it.
//! - A participant whose country is not in the registry is excluded with `POLICY_MISSING` (no
//!   policy of an unregistered country can be valid). An unknown purpose, field or coordinator
//!   country, a malformed date or number, or a repeated agency makes the request unusable.
//! - `RECIPIENT_NOT_ALLOWED` lists every admitted country that no active allow rule of the
//!   agency's country covers for the purpose, whether or not a deny also matches it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::date::Date;
use crate::decimal::Decimal;
use crate::policy::{Acceptance, Effect, Policy, PolicyError};
use crate::registry::Registry;

/// At most this many distinct countries in one round (the engine works on 64-bit sets).
pub const MAX_COUNTRIES: usize = 64;

/// A request to decide one round, as JSON.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub federation: String,
    pub round: u64,
    pub date: String,
    pub purpose: String,
    pub coordinator_country: String,
    pub epsilon_per_round: f64,
    pub delta: f64,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub model_retention_days: Option<u64>,
    #[serde(default)]
    pub onward_transfer: bool,
    #[serde(default = "default_round_min")]
    pub round_min_participants: u64,
    pub participants: Vec<Participant>,
}

fn default_round_min() -> u64 {
    2
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub agency: String,
    pub country: String,
    pub cumulative_epsilon: f64,
}

/// Every reason an agency can be excluded, in the spec's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    PolicyMissing,
    PolicyParseError,
    PolicySchemaError,
    /// Signatures are required and this policy's is missing or does not verify.
    PolicySignatureInvalid,
    PolicyNotYetValid,
    PolicyExpired,
    PurposeNotAllowed,
    CoordinatorDenied,
    CoordinatorNotAllowed,
    FieldExcluded,
    EpsilonPerRoundExceeded,
    DeltaExceeded,
    BudgetExhausted,
    RetentionExceeded,
    OnwardTransferNotAllowed,
    RecipientDenied,
    RecipientNotAllowed,
    RejectedByParticipant,
    MinParticipantsUnmet,
    MinCountriesUnmet,
    NoFeasibleRound,
}

impl Reason {
    /// Every reason, in the spec's order (which is also the enum's `Ord`).
    pub const ALL: [Reason; 21] = [
        Reason::PolicyMissing,
        Reason::PolicyParseError,
        Reason::PolicySchemaError,
        Reason::PolicySignatureInvalid,
        Reason::PolicyNotYetValid,
        Reason::PolicyExpired,
        Reason::PurposeNotAllowed,
        Reason::CoordinatorDenied,
        Reason::CoordinatorNotAllowed,
        Reason::FieldExcluded,
        Reason::EpsilonPerRoundExceeded,
        Reason::DeltaExceeded,
        Reason::BudgetExhausted,
        Reason::RetentionExceeded,
        Reason::OnwardTransferNotAllowed,
        Reason::RecipientDenied,
        Reason::RecipientNotAllowed,
        Reason::RejectedByParticipant,
        Reason::MinParticipantsUnmet,
        Reason::MinCountriesUnmet,
        Reason::NoFeasibleRound,
    ];

    /// The reason with this code (`BUDGET_EXHAUSTED`), if there is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        serde_json::from_value(Value::String(code.to_string())).ok()
    }

    pub fn code(self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }

    pub fn phase(self) -> u8 {
        use Reason::*;
        match self {
            PolicyMissing | PolicyParseError | PolicySchemaError | PolicySignatureInvalid => 0,
            PolicyNotYetValid
            | PolicyExpired
            | PurposeNotAllowed
            | CoordinatorDenied
            | CoordinatorNotAllowed
            | FieldExcluded
            | EpsilonPerRoundExceeded
            | DeltaExceeded
            | BudgetExhausted
            | RetentionExceeded
            | OnwardTransferNotAllowed => 1,
            _ => 2,
        }
    }
}

/// One country's policy as loaded: usable, or why not (phase 0).
#[derive(Clone, Debug)]
pub enum Loaded {
    Valid(Box<Policy>),
    Missing { looked_at: String },
    Broken { error: PolicyError, sha256: String },
    BadSignature { problem: String, sha256: String },
}

impl Loaded {
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Loaded::Valid(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exclusion {
    pub agency: String,
    pub country: String,
    pub reason: Reason,
    pub all_reasons: Vec<Reason>,
    pub phase: u8,
    pub detail: Value,
    pub explanation: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub admitted: Vec<String>,
    pub excluded: Vec<Exclusion>,
    pub round_proceeds: bool,
    pub registry_version: String,
    pub policy_versions: BTreeMap<String, PolicyVersion>,
}

/// A request that cannot be decided at all; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("unusable request: {0}")]
pub struct RequestError(pub String);

/// One reason found for one agency, with what it rests on and what would change it.
struct Finding {
    reason: Reason,
    detail: Value,
    because: String,
    would_change: String,
}

/// The request with its values checked and made exact.
struct Checked<'r> {
    request: &'r Request,
    date: Date,
    epsilon: Decimal,
    delta: Decimal,
    cumulative: Vec<Decimal>,
}

fn check_request<'r>(
    registry: &Registry,
    request: &'r Request,
) -> Result<Checked<'r>, RequestError> {
    let bad = |m: String| Err(RequestError(m));
    let Some(date) = Date::parse(&request.date) else {
        return bad(format!(
            "date `{}` is not a calendar date written YYYY-MM-DD",
            request.date
        ));
    };
    if !registry.purposes.contains_key(&request.purpose) {
        let hint = crate::source::did_you_mean(
            &request.purpose,
            registry.purposes.keys().map(String::as_str),
        );
        return bad(format!(
            "purpose `{}` is not a purpose of registry {}{}",
            request.purpose,
            registry.version,
            hint.map_or(String::new(), |h| format!("; {h}"))
        ));
    }
    if !registry.is_country(&request.coordinator_country) {
        return bad(format!(
            "coordinator_country `{}` is not a country of registry {}",
            request.coordinator_country, registry.version
        ));
    }
    for f in &request.fields {
        if !registry.fields.contains_key(f) {
            let hint = crate::source::did_you_mean(f, registry.fields.keys().map(String::as_str));
            return bad(format!(
                "field `{f}` is not a field of registry {} (a field's category decides what policies allow){}",
                registry.version,
                hint.map_or(String::new(), |h| format!("; {h}"))
            ));
        }
    }
    let exact = |name: &str, x: f64| match Decimal::from_f64(x) {
        Some(d) if x >= 0.0 => Ok(d),
        _ => Err(RequestError(format!(
            "{name} must be a finite number >= 0, not {x}"
        ))),
    };
    let epsilon = exact("epsilon_per_round", request.epsilon_per_round)?;
    let delta = exact("delta", request.delta)?;
    let mut cumulative = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut countries = std::collections::BTreeSet::new();
    for p in &request.participants {
        if p.agency.trim().is_empty() {
            return bad("a participant has an empty agency id".into());
        }
        if !seen.insert(p.agency.as_str()) {
            return bad(format!("agency `{}` is listed twice", p.agency));
        }
        countries.insert(p.country.as_str());
        cumulative.push(exact(
            &format!("cumulative_epsilon of {}", p.agency),
            p.cumulative_epsilon,
        )?);
    }
    if countries.len() > MAX_COUNTRIES {
        return bad(format!(
            "the round has {} countries; a round has at most {MAX_COUNTRIES}",
            countries.len()
        ));
    }
    Ok(Checked {
        request,
        date,
        epsilon,
        delta,
        cumulative,
    })
}

/// Decides a round. `policies` maps each country to its loaded policy; a country absent from
/// the map has no policy (`POLICY_MISSING`).
pub fn decide(
    registry: &Registry,
    policies: &BTreeMap<String, Loaded>,
    request: &Request,
) -> Result<Decision, RequestError> {
    let checked = check_request(registry, request)?;
    let participants = &request.participants;

    let findings: Vec<Vec<Finding>> = (0..participants.len())
        .map(|i| {
            alone(
                registry,
                policies.get(&participants[i].country),
                &checked,
                i,
            )
        })
        .collect();

    // Phase 2 over the survivors' countries, in order of first appearance.
    let mut order: Vec<&str> = Vec::new();
    let mut agencies_of: Vec<u64> = Vec::new();
    let mut index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, f) in participants.iter().zip(&findings) {
        if f.is_empty() {
            let k = *index_of.entry(p.country.as_str()).or_insert_with(|| {
                order.push(p.country.as_str());
                agencies_of.push(0);
                order.len() - 1
            });
            agencies_of[k] += 1;
        }
    }
    let survivor_policies: Vec<&Policy> = order
        .iter()
        .filter_map(|c| policies.get(*c).and_then(Loaded::policy))
        .collect();
    let graph = Graph::build(
        registry,
        &survivor_policies,
        &agencies_of,
        &request.purpose,
        checked.date,
    );
    let best = graph.best_admissible();

    let mut admitted = Vec::new();
    let mut excluded = Vec::new();
    for (i, (p, mut f)) in participants.iter().zip(findings).enumerate() {
        if f.is_empty() {
            let k = index_of[p.country.as_str()];
            if best.is_some_and(|b| b & (1 << k) != 0) {
                admitted.push(p.agency.clone());
                continue;
            }
            f = graph.phase2_findings(registry, k, best, &order);
        }
        excluded.push(exclusion(registry, policies, &checked, i, f));
    }

    let mut policy_versions = BTreeMap::new();
    for p in participants {
        let version = match policies.get(&p.country) {
            Some(Loaded::Valid(policy)) => Some(PolicyVersion {
                version: Some(policy.version.clone()),
                sha256: policy.sha256.clone(),
            }),
            Some(Loaded::Broken { sha256, .. } | Loaded::BadSignature { sha256, .. }) => {
                Some(PolicyVersion {
                    version: None,
                    sha256: sha256.clone(),
                })
            }
            _ => None,
        };
        if let Some(v) = version {
            policy_versions.insert(p.country.clone(), v);
        }
    }
    Ok(Decision {
        round_proceeds: admitted.len() as u64 >= request.round_min_participants,
        admitted,
        excluded,
        registry_version: registry.version.clone(),
        policy_versions,
    })
}

/// Phases 0 and 1 for participant `i`: the reasons it is excluded on its own.
fn alone(
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
    out
}

/// The acceptance graph of the survivor countries.
struct Graph<'p> {
    policies: &'p [&'p Policy],
    agencies: &'p [u64],
    /// acceptance[a][b]: does a accept b.
    acceptance: Vec<Vec<Acceptance>>,
    /// Bit b of mutual[a]: a and b accept each other (a != b).
    mutual: Vec<u64>,
    purpose: String,
    date: Date,
}

impl<'p> Graph<'p> {
    fn build(
        registry: &Registry,
        policies: &'p [&'p Policy],
        agencies: &'p [u64],
        purpose: &str,
        date: Date,
    ) -> Graph<'p> {
        let n = policies.len();
        let acceptance: Vec<Vec<Acceptance>> = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| policies[a].accepts(registry, &policies[b].country, purpose, date))
                    .collect()
            })
            .collect();
        let mutual = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| {
                        b != a && acceptance[a][b].accepted() && acceptance[b][a].accepted()
                    })
                    .fold(0u64, |m, b| m | (1 << b))
            })
            .collect();
        Graph {
            policies,
            agencies,
            acceptance,
            mutual,
            purpose: purpose.to_string(),
            date,
        }
    }

    fn agencies_in(&self, set: u64) -> u64 {
        members(set).map(|i| self.agencies[i]).sum()
    }

    /// The greatest subset of a mutually-accepting set whose members' minimums all hold:
    /// minimums only grow harder as members leave, so removing failing members until none
    /// fails reaches the unique largest feasible subset.
    fn feasible_core(&self, mut set: u64) -> u64 {
        loop {
            let total = self.agencies_in(set);
            let count = u64::from(set.count_ones());
            let failing = members(set)
                .filter(|&i| {
                    self.policies[i].min_participants > total
                        || self.policies[i].min_distinct_countries > count
                })
                .fold(0u64, |m, i| m | (1 << i));
            if failing == 0 {
                return set;
            }
            set &= !failing;
        }
    }

    /// The spec's order as one additive weight: a set's weight is `agencies << 72 | countries
    /// << 64 | bit (63 - i) for each country i`, so comparing weights compares agencies, then
    /// countries, then (the highest differing bit being the earliest differing country) which
    /// set holds the country that appears earliest in the request.
    fn weight(&self, set: u64) -> u128 {
        members(set)
            .map(|i| (u128::from(self.agencies[i]) << 72) + (1u128 << 64) + (1u128 << (63 - i)))
            .sum()
    }

    /// An upper bound on the weight of any clique within `p`: colour `p` greedily into sets of
    /// countries no two of which accept each other (a clique holds at most one of each), and
    /// add the heaviest country of each colour.
    fn colour_bound(&self, mut p: u64) -> u128 {
        let mut bound = 0;
        while p != 0 {
            let mut class = 0u64;
            let mut candidates = p;
            while candidates != 0 {
                let v = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                if self.mutual[v] & class == 0 {
                    class |= 1 << v;
                }
            }
            bound += members(class)
                .map(|i| self.weight(1 << i))
                .max()
                .unwrap_or(0);
            p &= !class;
        }
        bound
    }

    /// Branch and bound over the cliques of the mutual-acceptance graph that extend `r` with
    /// countries of `p`. Every feasible set lies in a clique, and `evaluate` maps a clique to
    /// the best set it holds (for admission, its feasible core: minimums only grow harder as
    /// members leave, so removing failing members until none fails reaches the largest feasible
    /// subset, which holds every other). A branch is cut only when no clique in it can weigh
    /// more than the best found, so the search is exact.
    fn search(
        &self,
        r: u64,
        mut p: u64,
        evaluate: &dyn Fn(u64) -> u64,
        best: &mut Option<(u128, u64)>,
    ) {
        if p == 0 {
            let set = evaluate(r);
            let w = self.weight(set);
            if set != 0 && best.is_none_or(|(b, _)| w > b) {
                *best = Some((w, set));
            }
            return;
        }
        let base = self.weight(r);
        while p != 0 {
            if best.is_some_and(|(b, _)| base + self.colour_bound(p) <= b) {
                return;
            }
            let v = p.trailing_zeros() as usize;
            let bit = 1u64 << v;
            self.search(r | bit, p & self.mutual[v], evaluate, best);
            p &= !bit;
        }
    }

    fn all(&self) -> u64 {
        let n = self.policies.len();
        if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
    }

    /// The admissible set with the most agencies, then countries, then earliest countries.
    fn best_admissible(&self) -> Option<u64> {
        let mut best = None;
        self.search(
            0,
            self.all(),
            &|clique| self.feasible_core(clique),
            &mut best,
        );
        best.map(|(_, set)| set)
    }

    /// The best mutually-accepting set containing `k`, minimums ignored.
    fn best_clique_with(&self, k: usize) -> u64 {
        let mut best = None;
        self.search(1 << k, self.mutual[k], &|clique| clique, &mut best);
        best.map_or(1 << k, |(_, set)| set)
    }

    fn phase2_findings(
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
fn recipient_findings(
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
fn minimum_findings(
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

fn members(set: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| set & (1u64 << i) != 0)
}

fn exclusion(
    registry: &Registry,
    policies: &BTreeMap<String, Loaded>,
    checked: &Checked<'_>,
    index: usize,
    findings: Vec<Finding>,
) -> Exclusion {
    let request = checked.request;
    let p = &request.participants[index];
    let reason = findings
        .first()
        .map_or(Reason::NoFeasibleRound, |f| f.reason);
    let policy_fact = match policies.get(&p.country) {
        Some(Loaded::Valid(policy)) => format!(
            "{} policy version {} (sha256 {})",
            p.country,
            policy.version,
            &policy.sha256[..12]
        ),
        Some(Loaded::Broken { sha256, .. } | Loaded::BadSignature { sha256, .. }) => {
            format!(
                "{} policy file sha256 {}",
                p.country,
                &sha256[..12.min(sha256.len())]
            )
        }
        _ => format!("no {} policy", p.country),
    };
    let reasons: Vec<String> = findings
        .iter()
        .map(|f| format!("{}: {}.", f.reason.code(), f.because))
        .collect();
    let changes: Vec<&str> = findings.iter().map(|f| f.would_change.as_str()).collect();
    let explanation = format!(
        "{} ({}) does not take part in round {} of {} on {} (purpose {}). {} Decided under registry {} and {}. It would take part with {}.",
        p.agency,
        p.country,
        request.round,
        request.federation,
        checked.date,
        request.purpose,
        reasons.join(" "),
        registry.version,
        policy_fact,
        changes.join("; and ")
    );
    Exclusion {
        agency: p.agency.clone(),
        country: p.country.clone(),
        reason,
        all_reasons: findings.iter().map(|f| f.reason).collect(),
        phase: reason.phase(),
        detail: findings.into_iter().next().map_or(json!({}), |f| f.detail),
        explanation,
    }
}

/// A reason an agency's own node finds against a round, with its sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnReason {
    pub reason: Reason,
    pub explanation: String,
}

/// One agency's own check of a round it was admitted to, as its node makes it, never relying
/// on the coordinator's decision: its country's policy alone (phases 0 and 1, with the agency's
/// own cumulative epsilon), whether that policy accepts the country of every other participant
/// as a recipient, and its minimums over the participants. Other countries' policies are not
/// consulted: a node answers for its own country only. Empty when the agency may take part.
pub fn own_view(
    registry: &Registry,
    loaded: &Loaded,
    request: &Request,
    agency: &str,
) -> Result<Vec<OwnReason>, RequestError> {
    let checked = check_request(registry, request)?;
    let Some(i) = request.participants.iter().position(|p| p.agency == agency) else {
        return Err(RequestError(format!(
            "{agency} is not among the round's participants"
        )));
    };
    let mut findings = alone(registry, Some(loaded), &checked, i);
    if let (true, Some(policy)) = (findings.is_empty(), loaded.policy()) {
        let c = &policy.country;
        let purpose = &request.purpose;
        let mut countries: Vec<&str> = Vec::new();
        for p in &request.participants {
            if !countries.contains(&p.country.as_str()) {
                countries.push(&p.country);
            }
        }
        let acceptances: Vec<(&str, Acceptance)> = countries
            .iter()
            .filter(|o| **o != c.as_str())
            .map(|o| (*o, policy.accepts(registry, o, purpose, checked.date)))
            .collect();
        let recipients: Vec<(&str, &Acceptance)> =
            acceptances.iter().map(|(o, a)| (*o, a)).collect();
        findings.extend(recipient_findings(
            registry,
            policy,
            &recipients,
            purpose,
            checked.date,
        ));
        let set: Vec<String> = countries.iter().map(|c| c.to_string()).collect();
        findings.extend(minimum_findings(
            policy,
            request.participants.len() as u64,
            countries.len() as u64,
            &set,
            "the round",
        ));
    }
    Ok(findings
        .into_iter()
        .map(|f| OwnReason {
            reason: f.reason,
            explanation: format!(
                "{}: {}; it would take part with {}.",
                f.reason.code(),
                f.because,
                f.would_change
            ),
        })
        .collect())
}
