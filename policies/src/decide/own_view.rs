//! The node's own view: one agency's check of a round it was admitted to.

use super::findings::{minimum_findings, recipient_findings};
use super::phase1::alone;
use super::request::{RequestError, check_request};
use super::{Loaded, Reason, Request};
use crate::policy::Acceptance;
use crate::registry::Registry;

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
