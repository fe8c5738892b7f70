//! The coordinator's side of the sharing policies: before every round (statistics, training,
//! query) the engine of `treaty_policies` decides who takes part, from the registry and the
//! member countries' policies as they stand on disk now (so a new version applies from the
//! next round). The decision is recorded durably with every policy's version and SHA-256, the
//! texts it cited are archived, and each excluded agency is told why.

use std::collections::BTreeMap;

use treaty_policies::{Date, Decision, Participant, Request, decide};
use treaty_proto::Identity;
use treaty_proto::v1::{FederationInfo, Job, JobSpec, RoundParticipant, RoundTerms, job_spec};

use crate::error::CoordinatorError;
use crate::rounds::fail;
use crate::state::Coordinator;

/// What a job asks of the policies, with the spec's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Sharing {
    pub epsilon_per_round: f64,
    pub delta: f64,
    pub fields: Vec<String>,
    pub model_retention_days: Option<u32>,
    pub onward_transfer: bool,
}

/// The sharing terms of a job; the error says what the operator must declare.
pub fn sharing(spec: &JobSpec) -> Result<Sharing, String> {
    let declared = spec.sharing.clone().unwrap_or_default();
    let (epsilon, delta, fields) = match &spec.kind {
        Some(job_spec::Kind::Training(t)) => {
            let privacy = t.privacy.unwrap_or_default();
            let epsilon = if declared.epsilon_per_round > 0.0 {
                declared.epsilon_per_round
            } else if privacy.noise_multiplier <= 0.0 && privacy.target_epsilon > 0.0 {
                // No round of the job spends more than the whole job's target.
                privacy.target_epsilon
            } else {
                return Err("the job gives its noise multiplier directly: declare `sharing.epsilon_per_round`, the most epsilon one agency spends in one round (`treaty privacy epsilon` computes it), for the policies to judge".into());
            };
            let delta = if declared.delta > 0.0 {
                declared.delta
            } else if privacy.target_delta > 0.0 {
                privacy.target_delta
            } else {
                1e-5
            };
            let mut fields: Vec<String> = t
                .schema
                .iter()
                .flat_map(|s| {
                    s.columns
                        .iter()
                        .map(|c| c.name.clone())
                        .chain(s.label.iter().map(|l| l.name.clone()))
                })
                .collect();
            fields.dedup();
            (epsilon, delta, fields)
        }
        Some(job_spec::Kind::Query(q)) => {
            let epsilon = if declared.epsilon_per_round > 0.0 {
                declared.epsilon_per_round
            } else {
                q.epsilon
            };
            let fields = [&q.column, &q.by_column, &q.where_column]
                .into_iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect();
            (epsilon, declared.delta.max(0.0), fields)
        }
        None => return Err("the job has no kind".into()),
    };
    if !(epsilon.is_finite() && epsilon > 0.0 && delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(format!(
            "`sharing`: epsilon per round {epsilon} must be positive and delta {delta} in [0, 1)"
        ));
    }
    Ok(Sharing {
        epsilon_per_round: epsilon,
        delta,
        fields: if declared.fields.is_empty() {
            fields
        } else {
            declared.fields
        },
        model_retention_days: declared.model_retention_days,
        onward_transfer: declared.onward_transfer,
    })
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
pub struct RoundDecision {
    pub decision: Decision,
    pub terms: RoundTerms,
    /// The decision as recorded: `{"job", "round", "request", "decision"}`.
    pub record: String,
}

/// Decides round `round` of `job` among the connected `candidates` (in the federation's order).
/// Each takes part under the country of its certificate, which its membership names.
pub fn decide_round(
    ctx: &Coordinator,
    job: &Job,
    round: u32,
    federation: &FederationInfo,
    candidates: &[Identity],
) -> Result<RoundDecision, CoordinatorError> {
    let spec = job.spec.clone().unwrap_or_default();
    let sharing = sharing(&spec).map_err(|e| fail(format!("round {round}: {e}")))?;
    let files = ctx.policy.files();
    // Fail closed: without a usable registry nobody takes part.
    let (registry, registry_text) = files.registry().map_err(|e| {
        fail(format!(
            "round {round}: {e}; fix it and start the job again"
        ))
    })?;
    let dir = files
        .policy_dir()
        .map_err(|e| fail(format!("round {round}: the policy keys are unusable: {e}")))?;
    let participants: Vec<Participant> = candidates
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
        federation: federation.name.clone(),
        round: u64::from(round),
        date: Date::today().to_string(),
        purpose: federation.purpose.clone(),
        coordinator_country: ctx.policy.country.clone(),
        epsilon_per_round: sharing.epsilon_per_round,
        delta: sharing.delta,
        fields: sharing.fields.clone(),
        model_retention_days: sharing.model_retention_days.map(u64::from),
        onward_transfer: sharing.onward_transfer,
        round_min_participants: u64::from(spec.min_participants.max(1)),
        participants,
    };
    let mut policies = BTreeMap::new();
    ctx.store.archive_policy(
        &treaty_policies::sha256_hex(registry_text.as_bytes()),
        &registry_text,
    )?;
    for p in &request.participants {
        if policies.contains_key(&p.country) {
            continue;
        }
        let (loaded, text) = dir.load(&registry, &p.country);
        if let Some(text) = text {
            ctx.store
                .archive_policy(&treaty_policies::sha256_hex(text.as_bytes()), &text)?;
        }
        policies.insert(p.country.clone(), loaded);
    }
    let decision = decide(&registry, &policies, &request).map_err(|e| {
        fail(format!(
            "round {round}: the policy engine cannot decide it: {e}"
        ))
    })?;
    let record = serde_json::json!({
        "job": job.job_id,
        "round": round,
        "request": request,
        "decision": decision,
    })
    .to_string();
    ctx.store.put_decision(&job.job_id, round, &record)?;
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
    ctx.audit(
        &ctx.identity.to_string(),
        "round.decided",
        job,
        round,
        "",
        format!(
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
    )?;
    Ok(RoundDecision {
        decision,
        terms,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_proto::v1::{PrivacySpec, QuerySpec, SharingSpec, TrainingSpec};

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

    #[test]
    fn a_calibrated_job_claims_its_target_and_a_given_noise_must_declare() {
        let mut spec = JobSpec {
            kind: Some(job_spec::Kind::Training(TrainingSpec {
                schema: treaty_proto::schema::parse(
                    "[label]\nname = \"seized\"\nkind = \"binary\"\n[[column]]\nname = \"x1\"\nkind = \"numeric\"\n",
                )
                .unwrap()
                .ok(),
                privacy: Some(PrivacySpec {
                    target_epsilon: 2.0,
                    target_delta: 1e-6,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let s = sharing(&spec).unwrap();
        assert_eq!((s.epsilon_per_round, s.delta), (2.0, 1e-6));
        assert_eq!(s.fields, ["x1", "seized"]);
        assert_eq!(s.model_retention_days, None);
        if let Some(job_spec::Kind::Training(t)) = spec.kind.as_mut() {
            t.privacy = Some(PrivacySpec {
                noise_multiplier: 1.0,
                ..Default::default()
            });
        }
        assert!(
            sharing(&spec)
                .unwrap_err()
                .contains("sharing.epsilon_per_round")
        );
        spec.sharing = Some(SharingSpec {
            epsilon_per_round: 0.3,
            model_retention_days: Some(90),
            ..Default::default()
        });
        let s = sharing(&spec).unwrap();
        assert_eq!(
            (s.epsilon_per_round, s.delta, s.model_retention_days),
            (0.3, 1e-5, Some(90))
        );
        let query = JobSpec {
            kind: Some(job_spec::Kind::Query(QuerySpec {
                column: "declared_value_eur".into(),
                where_column: "seized".into(),
                epsilon: 0.5,
                ..Default::default()
            })),
            ..Default::default()
        };
        let s = sharing(&query).unwrap();
        assert_eq!((s.epsilon_per_round, s.delta), (0.5, 0.0));
        assert_eq!(s.fields, ["declared_value_eur", "seized"]);
    }
}
