//! How a policy judges a country: which token it matches, and whether it accepts a recipient.

use super::{Effect, Policy};
use crate::date::Date;
use crate::registry::{Membership, Registry};

/// How a country matched a country-or-group token on a date.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    Country,
    LocalGroup(String),
    RegistryGroup(String, Membership),
}

impl Match {
    /// "DE is in EU (a listed member)", for explanations.
    pub fn describe(&self, country: &str, date: Date) -> String {
        match self {
            Match::Country => format!("{country} is named directly"),
            Match::LocalGroup(g) => format!("{country} is in the policy's local group {g}"),
            Match::RegistryGroup(g, m) => {
                format!("{country} is in registry group {g} on {date} ({m})")
            }
        }
    }
}

/// Why `a` accepts or does not accept `b` as a recipient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acceptance {
    /// Active deny rules matching the recipient (for this purpose).
    pub denies: Vec<usize>,
    /// Active allow rules listing the purpose and matching the recipient.
    pub allows: Vec<usize>,
    pub domestic: bool,
}

impl Acceptance {
    pub fn accepted(&self) -> bool {
        self.domestic || (self.denies.is_empty() && !self.allows.is_empty())
    }
}

impl Policy {
    /// Whether `country` matches `token` on `date`: local group, then registry group, then
    /// country, in the spec's order.
    pub fn matches(
        &self,
        registry: &Registry,
        token: &str,
        country: &str,
        date: Date,
    ) -> Option<Match> {
        if let Some(members) = self.groups.get(token) {
            return members
                .iter()
                .any(|m| m == country)
                .then(|| Match::LocalGroup(token.to_string()));
        }
        if registry.groups.contains_key(token) {
            return registry
                .membership(token, country, date)
                .map(|m| Match::RegistryGroup(token.to_string(), m));
        }
        (token == country).then_some(Match::Country)
    }

    /// The first token of `tokens` that `country` matches, with how.
    pub fn match_any(
        &self,
        registry: &Registry,
        tokens: &[String],
        country: &str,
        date: Date,
    ) -> Option<(String, Match)> {
        tokens.iter().find_map(|t| {
            self.matches(registry, t, country, date)
                .map(|m| (t.clone(), m))
        })
    }

    /// The ids of the rules at `indices`.
    pub fn rule_ids(&self, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&i| self.rules[i].id.clone()).collect()
    }

    /// Indices of allow rules active on `date` that list `purpose`.
    pub fn allows_purpose(&self, purpose: &str, date: Date) -> Vec<usize> {
        (0..self.rules.len())
            .filter(|&i| {
                let r = &self.rules[i];
                r.effect == Effect::Allow && r.active_on(date) && r.covers(purpose)
            })
            .collect()
    }

    /// Whether this country accepts `recipient` for `purpose` on `date`.
    pub fn accepts(
        &self,
        registry: &Registry,
        recipient: &str,
        purpose: &str,
        date: Date,
    ) -> Acceptance {
        let mut acceptance = Acceptance {
            domestic: recipient == self.country,
            ..Acceptance::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.active_on(date) || !rule.covers(purpose) {
                continue;
            }
            if self
                .match_any(registry, &rule.recipients, recipient, date)
                .is_some()
            {
                match rule.effect {
                    Effect::Allow => acceptance.allows.push(i),
                    Effect::Deny => acceptance.denies.push(i),
                }
            }
        }
        acceptance
    }
}
