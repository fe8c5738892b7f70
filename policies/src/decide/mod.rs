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

mod findings;
mod own_view;
mod phase1;
mod reason;
mod request;
mod search;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::{Policy, PolicyError};
use crate::registry::Registry;
use findings::Finding;
use phase1::alone;
use request::{Checked, check_request};
use search::Graph;

pub use own_view::{OwnReason, own_view};
pub use reason::Reason;
pub use request::{MAX_COUNTRIES, Participant, Request, RequestError};

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

/// An agency left out of the round: its first reason, every reason, and the explanation.
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

/// The policy a decision applied for one country (its version when it was valid).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    pub sha256: String,
}

/// The decision of a round: who takes part, who does not and why, under which texts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub admitted: Vec<String>,
    pub excluded: Vec<Exclusion>,
    pub round_proceeds: bool,
    pub registry_version: String,
    pub policy_versions: BTreeMap<String, PolicyVersion>,
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
