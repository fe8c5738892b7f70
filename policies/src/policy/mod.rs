//! One country's policy file (`<CC>.toml`): its model and its validation against the registry.
//!
//! - this file: the model (a policy, its rules and limits) and why a file cannot be applied;
//! - `matching`: how a policy judges a country (tokens, groups, acceptance of a recipient);
//! - `parse`: reading the file's sections, with every problem reported in file order;
//! - `rules`: reading the `[[rule]]` tables;
//! - `vocabulary`: checking the names a policy uses against the registry and its local groups.

mod matching;
mod parse;
mod rules;
mod vocabulary;

use std::collections::BTreeMap;
use std::fmt;

use crate::date::Date;
use crate::decimal::Decimal;
use crate::source::Diagnostic;

pub use matching::{Acceptance, Match};

/// The transfer bases a rule may name.
pub(crate) const TRANSFER_BASES: [&str; 7] = [
    "intra_eu",
    "schengen",
    "adequacy",
    "appropriate_safeguards",
    "derogation",
    "domestic_law",
    "other",
];

/// What a rule does to the recipients it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

/// One `[[rule]]` of a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub effect: Effect,
    /// `None` only on deny rules: every purpose.
    pub purposes: Option<Vec<String>>,
    pub recipients: Vec<String>,
    pub transfer_basis: Option<String>,
    pub legal_basis: Option<String>,
    pub valid_from: Option<Date>,
    pub valid_until: Option<Date>,
    pub note: Option<String>,
    /// Line of the rule's `id` in the file, for explanations and lints.
    pub line: usize,
}

impl Rule {
    pub fn active_on(&self, date: Date) -> bool {
        date.within(self.valid_from, self.valid_until)
    }

    pub fn covers(&self, purpose: &str) -> bool {
        self.purposes
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == purpose))
    }
}

/// A privacy limit: the number as written and its exact decimal value.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub exact: Decimal,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.exact.fmt(f)
    }
}

/// One country's policy, parsed and valid against the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub country: String,
    pub version: String,
    pub valid_from: Date,
    pub valid_until: Date,
    pub legal_basis: Vec<String>,
    pub title: Option<String>,
    pub approved_by: Vec<String>,
    pub notes: Option<String>,
    /// Local groups: name -> countries.
    pub groups: BTreeMap<String, Vec<String>>,
    pub allowed_jurisdictions: Vec<String>,
    pub denied_jurisdictions: Vec<String>,
    pub coordinator_legal_basis: Vec<String>,
    pub max_epsilon_per_round: Limit,
    pub max_epsilon_total: Limit,
    pub max_delta: Limit,
    pub min_participants: u64,
    pub min_distinct_countries: u64,
    pub excluded_fields: Vec<String>,
    pub excluded_field_categories: Vec<String>,
    pub max_model_retention_days: Option<u64>,
    pub allow_onward_transfer: bool,
    /// `[handling] require_secure_aggregation`: the country's agencies take part only in rounds
    /// under secure aggregation (default false; an extension of the spec's v1 files, which
    /// decide as before without it).
    pub require_secure_aggregation: bool,
    pub rules: Vec<Rule>,
    /// Hex SHA-256 of the file's bytes: what a decision records.
    pub sha256: String,
}

/// Why a policy file cannot be applied.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyError {
    /// Not valid TOML (`POLICY_PARSE_ERROR`).
    Parse(Diagnostic),
    /// Valid TOML that breaks the schema (`POLICY_SCHEMA_ERROR`); every problem.
    Schema(Vec<Diagnostic>),
}

impl PolicyError {
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            PolicyError::Parse(d) => vec![d.clone()],
            PolicyError::Schema(ds) => ds.clone(),
        }
    }
}
