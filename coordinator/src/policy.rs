//! The coordinator's side of the sharing policies: before every round (statistics, training,
//! query) the engine of `treaty_policies` decides who takes part, from the registry and the
//! member countries' policies as they stand on disk now (so a new version applies from the
//! next round). The decision is recorded durably with every policy's version and SHA-256, the
//! texts it cited are archived, and each excluded agency is told why.

use std::collections::BTreeMap;
use std::sync::Arc;

use treaty_policies::{Date, Decision, Participant, Request, decide};
use treaty_proto::Identity;
use treaty_proto::v1::{FederationInfo, RoundParticipant, RoundTerms};

use crate::error::CoordinatorError;
use crate::state::{Coordinator, now_ms};
use crate::store::AuditEntry;
use crate::valid_job::Sharing;

/// What one round's decision is asked: who of the connected members takes part in round
/// `round` of job `job_id`.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    pub job_id: String,
    pub round: u32,
    pub federation: FederationInfo,
    /// The connected members, in the federation's order.
    pub candidates: Vec<Identity>,
    pub sharing: Sharing,
    pub min_participants: usize,
}

/// What an agency has spent, as its node reported it, for the engine. A node that has not
/// reported yet has spent nothing the coordinator knows of (its own check uses its ledger); a
/// report that is not a finite, non-negative number (a ledger holding a release without DP
/// reports infinity) counts as a spent budget rather than making the round undecidable.
fn reported_spending(report: Option<f64>) -> f64 {
    match report {
        None => 0.0,
        Some(e) if e.is_finite() && e >= 0.0 => e,
        Some(_) => f64::MAX,
    }
}

/// One round's decision, with the terms the admitted nodes receive.
#[derive(Debug)]
pub(crate) struct RoundDecision {
    pub decision: Decision,
    pub terms: RoundTerms,
    /// The decision as recorded: `{"job", "round", "request", "decision"}`.
    pub record: String,
}

/// Decides a round, on a blocking thread: the registry and policies are read from disk, their
/// signatures checked, the texts archived and the decision recorded (sled), and the engine
/// searches the admissible subsets, none of which may hold up the async runtime.
pub(crate) async fn decide_round(
    ctx: &Arc<Coordinator>,
    question: Question,
) -> Result<RoundDecision, CoordinatorError> {
    ctx.blocking(move |ctx| decide_now(ctx, &question)).await
}

/// Decides a round among the connected candidates (in the federation's order). Each takes part
/// under the country of its certificate, which its membership names.
fn decide_now(ctx: &Coordinator, q: &Question) -> Result<RoundDecision, CoordinatorError> {
    let round = q.round;
    let sharing = &q.sharing;
    let files = ctx.policy.files();
    // Fail closed: without a usable registry nobody takes part.
    let (registry, registry_text) = files
        .registry()
        .map_err(|source| CoordinatorError::Registry { round, source })?;
    let dir = files
        .policy_dir()
        .map_err(|source| CoordinatorError::PolicyKeys { round, source })?;
    let participants: Vec<Participant> = q
        .candidates
        .iter()
        .filter_map(|identity| match identity {
            Identity::Agency { country, agency } => Some(Participant {
                agency: agency.clone(),
                country: country.clone(),
                cumulative_epsilon: reported_spending(ctx.reported_epsilon(identity)),
            }),
            _ => None,
        })
        .collect();
    let request = Request {
        federation: q.federation.name.clone(),
        round: u64::from(round),
        date: Date::today().to_string(),
        purpose: q.federation.purpose.clone(),
        coordinator_country: ctx.policy.country.clone(),
        epsilon_per_round: sharing.epsilon_per_round,
        delta: sharing.delta,
        fields: sharing.fields.clone(),
        model_retention_days: sharing.model_retention_days.map(u64::from),
        onward_transfer: sharing.onward_transfer,
        secure_aggregation: sharing.secure_aggregation,
        round_min_participants: q.min_participants as u64,
        participants,
    };
    let mut policies = BTreeMap::new();
    // The texts the round is decided under, by SHA-256: archived, and vouched for by the
    // round's audit entry with the decision record.
    let mut texts = vec![treaty_policies::sha256_hex(registry_text.as_bytes())];
    ctx.store.archive_policy(&texts[0], &registry_text)?;
    for p in &request.participants {
        if policies.contains_key(&p.country) {
            continue;
        }
        let (loaded, text) = dir.load(&registry, &p.country);
        if let Some(text) = text {
            let sha256 = treaty_policies::sha256_hex(text.as_bytes());
            ctx.store.archive_policy(&sha256, &text)?;
            if !texts.contains(&sha256) {
                texts.push(sha256);
            }
        }
        policies.insert(p.country.clone(), loaded);
    }
    let decision = decide(&registry, &policies, &request)
        .map_err(|source| CoordinatorError::Undecidable { round, source })?;
    let record = serde_json::json!({
        "job": q.job_id,
        "round": round,
        "request": request,
        "decision": decision,
    })
    .to_string();
    ctx.store.put_decision(&q.job_id, round, &record)?;
    // Also under its SHA-256, which the round's audit entry vouches for: a round decided again
    // after a restart does not take the first record's place in the evidence.
    ctx.store
        .archive_policy(&treaty_policies::sha256_hex(record.as_bytes()), &record)?;
    let countries: BTreeMap<&str, &str> = request
        .participants
        .iter()
        .map(|p| (p.agency.as_str(), p.country.as_str()))
        .collect();
    let terms = RoundTerms {
        purpose: request.purpose.clone(),
        date: request.date.clone(),
        coordinator_country: request.coordinator_country.clone(),
        epsilon_per_round: request.epsilon_per_round,
        delta: request.delta,
        fields: request.fields.clone(),
        model_retention_days: sharing.model_retention_days,
        onward_transfer: request.onward_transfer,
        secure_aggregation: request.secure_aggregation,
        participants: decision
            .admitted
            .iter()
            .map(|a| RoundParticipant {
                agency: a.clone(),
                country: countries
                    .get(a.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect(),
        registry_version: registry.version.clone(),
        participants_sha256: Default::default(),
    };
    let versions: Vec<String> = decision
        .policy_versions
        .iter()
        .map(|(c, v)| {
            format!(
                "{c} {} ({})",
                v.version.as_deref().unwrap_or("unusable"),
                &v.sha256[..12.min(v.sha256.len())]
            )
        })
        .collect();
    // Made durable with the decision by the round's next flush, before anything leaves
    // (`rounds::collect`).
    ctx.store.audit_unflushed(&AuditEntry {
        time_unix_ms: now_ms(),
        actor: ctx.identity.to_string(),
        action: "round.decided".to_owned(),
        federation: q.federation.name.clone(),
        job: q.job_id.clone(),
        round,
        agency: String::new(),
        detail: format!(
            "admitted: {}; excluded: {}; registry {}; policies: {}",
            decision.admitted.join(", "),
            decision
                .excluded
                .iter()
                .map(|e| format!("{} {}", e.agency, e.reason.code()))
                .collect::<Vec<_>>()
                .join(", "),
            registry.version,
            versions.join(", ")
        ),
        documents: std::iter::once(treaty_policies::sha256_hex(record.as_bytes()))
            .chain(texts)
            .collect(),
        ..Default::default()
    })?;
    Ok(RoundDecision {
        decision,
        terms,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_reports_count_as_spent_budgets() {
        assert_eq!(reported_spending(None), 0.0);
        assert_eq!(reported_spending(Some(1.5)), 1.5);
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = reported_spending(Some(bad));
            // The engine takes it (finite) and no policy's total can admit it.
            assert!(treaty_policies::Decimal::from_f64(e).is_some());
            assert!(e > 1e300);
        }
    }
}
