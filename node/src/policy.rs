//! The node's own judgement of every task under its country's sharing policy. The node never
//! relies on the coordinator's decision: before it records a release or reads a record, it
//! re-reads the registry and its own country's policy (a new version applies from the next
//! task, without a restart), checks the round's terms against them with its own ledger's
//! spending (under the ledger's lock, so two tasks cannot both fit the policy's last budget), checks that the task spends no more than the terms say, and refuses with the
//! spec's reason code otherwise.

use treaty_policies::privacy::{self, Release};
use treaty_policies::{Date, Participant, PolicyFiles, Request, own_view};
use treaty_proto::v1::Task;

use crate::refusal::{Refusal, RefusalCode};

/// The texts a task was judged by: their SHA-256s.
#[derive(Debug, Clone, Default)]
pub(crate) struct Judged {
    pub registry_sha256: String,
    pub policy_sha256: String,
}

/// The agency, its country and where its policy is.
#[derive(Debug)]
pub(crate) struct NodePolicy {
    pub(crate) files: PolicyFiles,
    pub(crate) agency: String,
    pub(crate) country: String,
}

impl NodePolicy {
    /// Judges `task`, planned to make `releases`, against the agency's own policy, the agency
    /// having spent `cumulative` epsilon by its ledger (the node calls this under the ledger's
    /// lock).
    /// Returns the SHA-256s of the registry's and the policy's texts it judged by (the policy's
    /// empty when the country has none).
    pub(crate) fn check(
        &self,
        task: &Task,
        releases: &[Release],
        cumulative: f64,
    ) -> Result<Judged, Refusal> {
        let Some(terms) = &task.terms else {
            return Err(Refusal::new(
                RefusalCode::PolicyTermsMissing,
                "the task carries no sharing terms; this node takes part only in rounds decided under the sharing policies",
            ));
        };
        let (registry, registry_text) = self
            .files
            .registry()
            .map_err(|e| Refusal::new(RefusalCode::PolicyRegistryError, e.to_string()))?;
        let dir = self
            .files
            .policy_dir()
            .map_err(|e| Refusal::new(RefusalCode::PolicySignatureInvalid, e.to_string()))?;
        let (loaded, policy_text) = dir.load(&registry, &self.country);
        let judged = Judged {
            registry_sha256: treaty_policies::sha256_hex(registry_text.as_bytes()),
            policy_sha256: policy_text
                .map(|t| treaty_policies::sha256_hex(t.as_bytes()))
                .unwrap_or_default(),
        };

        // What the task spends in this round, by the same accountants as the ledger, must not
        // exceed what the round was decided under.
        let delta = if terms.delta > 0.0 { terms.delta } else { 1e-9 };
        let round = privacy::spent(releases, delta).map_err(|e| Refusal::invalid(e.to_string()))?;
        let claimed = treaty_policies::Decimal::from_f64(terms.epsilon_per_round);
        let actual = treaty_policies::Decimal::from_f64(round.epsilon);
        match (actual, claimed) {
            (Some(a), Some(c)) if a <= c => {}
            _ => {
                return Err(Refusal::new(
                    RefusalCode::EpsilonPerRoundExceeded,
                    format!(
                        "this task would spend epsilon {} at delta {delta:e} in this round, more than the {} the round was decided under",
                        round.epsilon, terms.epsilon_per_round
                    ),
                ));
            }
        }
        let mut participants: Vec<Participant> = terms
            .participants
            .iter()
            .map(|p| Participant {
                agency: p.agency.clone(),
                country: p.country.clone(),
                cumulative_epsilon: 0.0,
            })
            .collect();
        match participants.iter_mut().find(|p| p.agency == self.agency) {
            Some(me) if me.country == self.country => me.cumulative_epsilon = cumulative,
            Some(me) => {
                return Err(Refusal::new(
                    RefusalCode::InvalidTask,
                    format!(
                        "the round lists {} under {}, not {}",
                        self.agency, me.country, self.country
                    ),
                ));
            }
            None => {
                return Err(Refusal::new(
                    RefusalCode::InvalidTask,
                    format!("the round's participants do not include {}", self.agency),
                ));
            }
        }
        let request = Request {
            federation: task.federation.clone(),
            round: u64::from(task.round),
            // The node's own clock, not the coordinator's word, dates the round.
            date: Date::today().to_string(),
            purpose: terms.purpose.clone(),
            coordinator_country: terms.coordinator_country.clone(),
            epsilon_per_round: terms.epsilon_per_round,
            delta: terms.delta,
            fields: terms.fields.clone(),
            model_retention_days: terms.model_retention_days.map(u64::from),
            onward_transfer: terms.onward_transfer,
            // The task itself, not the coordinator's word in the terms: a round is under secure
            // aggregation when the task carries its parameters (checked before the ledger).
            secure_aggregation: task.secure_aggregation.is_some(),
            round_min_participants: 1,
            participants,
        };
        let reasons = own_view(&registry, &loaded, &request, &self.agency)
            .map_err(|e| Refusal::new(RefusalCode::PolicyRequestInvalid, e.to_string()))?;
        match reasons.first() {
            None => Ok(judged),
            Some(first) => {
                let explanations: Vec<&str> =
                    reasons.iter().map(|r| r.explanation.as_str()).collect();
                Err(Refusal::new(
                    RefusalCode::Policy(first.reason),
                    format!(
                        "{}'s own policy check refuses round {} of {}: {}",
                        self.agency,
                        task.round,
                        task.federation,
                        explanations.join(" ")
                    ),
                ))
            }
        }
    }
}
