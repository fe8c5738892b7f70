//! The request to decide one round, and its values checked and made exact.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::date::Date;
use crate::decimal::Decimal;
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
    /// Whether the round's updates are aggregated securely (an extension of the spec's
    /// request: absent is false, and false is not written, so a request without it reads and
    /// writes as the spec's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_aggregation: bool,
    #[serde(default = "default_round_min")]
    pub round_min_participants: u64,
    pub participants: Vec<Participant>,
}

impl Request {
    /// Reads a request from a JSON file; the error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Request, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the request {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("the request {} is not a valid request: {e}", path.display()))
    }
}

fn default_round_min() -> u64 {
    2
}

/// One agency asking to take part, with the epsilon it has spent so far.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub agency: String,
    pub country: String,
    pub cumulative_epsilon: f64,
}

/// A request that cannot be decided at all; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("unusable request: {0}")]
pub struct RequestError(pub String);

/// The request with its values checked and made exact.
pub(super) struct Checked<'r> {
    pub(super) request: &'r Request,
    pub(super) date: Date,
    pub(super) epsilon: Decimal,
    pub(super) delta: Decimal,
    pub(super) cumulative: Vec<Decimal>,
}

pub(super) fn check_request<'r>(
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
    // The name is written only for an error: a round of 1,000 agencies checks 1,000 of them.
    let exact = |name: &dyn Fn() -> String, x: f64| match Decimal::from_f64(x) {
        Some(d) if x >= 0.0 => Ok(d),
        _ => Err(RequestError(format!(
            "{} must be a finite number >= 0, not {x}",
            name()
        ))),
    };
    let epsilon = exact(&|| "epsilon_per_round".into(), request.epsilon_per_round)?;
    let delta = exact(&|| "delta".into(), request.delta)?;
    let mut cumulative = Vec::with_capacity(request.participants.len());
    let mut countries = std::collections::BTreeSet::new();
    for p in &request.participants {
        if p.agency.trim().is_empty() {
            return bad("a participant has an empty agency id".into());
        }
        countries.insert(p.country.as_str());
        cumulative.push(exact(
            &|| format!("cumulative_epsilon of {}", p.agency),
            p.cumulative_epsilon,
        )?);
    }
    // Twice listed: neighbours once sorted (a set built of 1,000 names cost more).
    let mut agencies: Vec<&str> = request
        .participants
        .iter()
        .map(|p| p.agency.as_str())
        .collect();
    agencies.sort_unstable();
    if let Some(twice) = agencies.windows(2).find(|w| w[0] == w[1]) {
        return bad(format!("agency `{}` is listed twice", twice[0]));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Registry, Request) {
        let registry =
            Registry::parse("registry.toml", include_str!("../../sample/registry.toml")).unwrap();
        let request: Request =
            serde_json::from_str(include_str!("../../sample/request.json")).unwrap();
        (registry, request)
    }

    #[test]
    fn an_agency_listed_twice_anywhere_is_named_and_the_sample_passes() {
        let (registry, request) = sample();
        let checked = check_request(&registry, &request).unwrap();
        // The sample's spending as its file writes it, exact, in its order; the US agency's 0
        // is an exact zero, below the least positive spending.
        let written: Vec<String> = checked.cumulative.iter().map(|d| d.to_string()).collect();
        assert_eq!(written, ["1", "7.9", "2", "0.5", "0"]);
        assert_eq!(checked.cumulative[4], Decimal::zero());
        assert!(checked.cumulative[4] < Decimal::from_f64(5e-324).unwrap());
        for (i, j) in [(0, 1), (1, 4), (4, 0), (2, 3)] {
            let mut twice = request.clone();
            twice.participants[j].agency = twice.participants[i].agency.clone();
            let error = check_request(&registry, &twice).err().unwrap();
            assert_eq!(
                error.0,
                format!(
                    "agency `{}` is listed twice",
                    request.participants[i].agency
                )
            );
        }
        let mut negative = request.clone();
        negative.participants[2].cumulative_epsilon = -0.5;
        let error = check_request(&registry, &negative).err().unwrap();
        assert!(
            error.0.contains("cumulative_epsilon of NL-POLITIE"),
            "{}",
            error.0
        );
    }
}
