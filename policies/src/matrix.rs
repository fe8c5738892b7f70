//! Who shares with whom (`treaty policy matrix`): for one purpose on one date, whether each
//! country with a policy accepts each other one as a recipient, as phase 2 of a decision would
//! judge it (`Policy::accepts`).
//!
//! A cell reads along its row: `yes` when the row and column countries accept each other,
//! `->` when the row country accepts the column country but not the reverse, `<-` when only
//! the column country accepts the row country, `no` when neither does, `.` on the diagonal.
//! Fail closed: a country whose policy is missing, broken, badly signed, or not valid on the
//! date shares with nobody and receives from nobody, and its status says why. A mutual `yes`
//! is necessary for two countries to share in a round, not sufficient: phase 1 (coordinator,
//! fields, budgets) and the minimums still apply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::date::Date;
use crate::decide::Loaded;
use crate::policy::{Policy, PolicyError};
use crate::registry::Registry;

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Row and column accept each other.
    Mutual,
    /// Only the row country accepts the column country.
    RowAccepts,
    /// Only the column country accepts the row country.
    ColumnAccepts,
    Neither,
    Itself,
}

impl Cell {
    pub fn symbol(self) -> &'static str {
        match self {
            Cell::Mutual => "yes",
            Cell::RowAccepts => "->",
            Cell::ColumnAccepts => "<-",
            Cell::Neither => "no",
            Cell::Itself => ".",
        }
    }
}

/// Acceptance of every pair of countries with a policy, for one purpose on one date.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub purpose: String,
    pub date: Date,
    pub registry_version: String,
    /// Sorted.
    pub countries: Vec<String>,
    /// Per country: `valid`, or why its policy does not take part.
    pub status: Vec<String>,
    pub cells: Vec<Vec<Cell>>,
}

/// The policy of a country if it can be applied on `date`, else why not.
fn usable(loaded: &Loaded, date: Date) -> Result<&Policy, String> {
    match loaded {
        Loaded::Valid(p) if date < p.valid_from => {
            Err(format!("not yet valid (from {})", p.valid_from))
        }
        Loaded::Valid(p) if date > p.valid_until => {
            Err(format!("expired (until {})", p.valid_until))
        }
        Loaded::Valid(p) => Ok(p),
        Loaded::Missing { .. } => Err("missing".into()),
        Loaded::Broken {
            error: PolicyError::Parse(_),
            ..
        } => Err("broken (not valid TOML)".into()),
        Loaded::Broken {
            error: PolicyError::Schema(errors),
            ..
        } => Err(format!(
            "broken ({} schema error{})",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        )),
        Loaded::BadSignature { .. } => Err("bad signature".into()),
    }
}

/// The matrix of the countries of `policies` (its keys) for `purpose` on `date`.
pub fn matrix(
    registry: &Registry,
    policies: &BTreeMap<String, Loaded>,
    purpose: &str,
    date: Date,
) -> Matrix {
    let countries: Vec<String> = policies.keys().cloned().collect();
    let usable: Vec<Result<&Policy, String>> = policies.values().map(|l| usable(l, date)).collect();
    let status = usable
        .iter()
        .map(|u| match u {
            Ok(p) if p.allows_purpose(purpose, date).is_empty() => {
                format!("valid; no active allow rule lists {purpose}")
            }
            Ok(_) => "valid".to_string(),
            Err(why) => why.clone(),
        })
        .collect();
    let accepts = |a: usize, b: usize| match (&usable[a], &usable[b]) {
        (Ok(pa), Ok(_)) => pa
            .accepts(registry, &countries[b], purpose, date)
            .accepted(),
        _ => false,
    };
    let n = countries.len();
    let cells = (0..n)
        .map(|a| {
            (0..n)
                .map(|b| {
                    if a == b {
                        return Cell::Itself;
                    }
                    match (accepts(a, b), accepts(b, a)) {
                        (true, true) => Cell::Mutual,
                        (true, false) => Cell::RowAccepts,
                        (false, true) => Cell::ColumnAccepts,
                        (false, false) => Cell::Neither,
                    }
                })
                .collect()
        })
        .collect();
    Matrix {
        purpose: purpose.to_string(),
        date,
        registry_version: registry.version.clone(),
        countries,
        status,
        cells,
    }
}

/// What the symbols mean, for the foot of the text table.
const LEGEND: [(&str, &str); 4] = [
    ("yes", "the two accept each other as recipients"),
    (
        "->",
        "the row country accepts the column country, not the reverse",
    ),
    (
        "<-",
        "the column country accepts the row country, not the reverse",
    ),
    ("no", "neither accepts the other"),
];

/// The fail-closed rule, for the foot of the text table.
const FAIL_CLOSED: &str =
    "a country whose policy is not valid on the date accepts nobody and nobody accepts it";

impl Matrix {
    /// The cell of `row` and `column`, by country code.
    pub fn cell(&self, row: &str, column: &str) -> Option<Cell> {
        let a = self.countries.iter().position(|c| c == row)?;
        let b = self.countries.iter().position(|c| c == column)?;
        Some(self.cells[a][b])
    }

    /// An aligned table with a `policy` status column, a title and a legend.
    pub fn text(&self) -> String {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header = vec![String::new()];
        header.extend(self.countries.iter().cloned());
        header.push("policy".into());
        rows.push(header);
        for (i, c) in self.countries.iter().enumerate() {
            let mut row = vec![c.clone()];
            row.extend(self.cells[i].iter().map(|cell| cell.symbol().to_string()));
            row.push(self.status[i].clone());
            rows.push(row);
        }
        let columns = rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|j| rows.iter().map(|r| r[j].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "{} on {} (registry {}); each row says whom that country accepts\n",
            self.purpose, self.date, self.registry_version
        );
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(j, (cell, w))| {
                    if j + 1 == columns {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        let _ = writeln!(out);
        for (symbol, meaning) in LEGEND {
            let _ = writeln!(out, "{symbol:<3}  {meaning}");
        }
        let _ = writeln!(out, "{FAIL_CLOSED}");
        out
    }

    /// `country,DE,FR,...,policy` and one row per country.
    pub fn csv(&self) -> String {
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = format!("country,{},policy\n", self.countries.join(","));
        for (i, c) in self.countries.iter().enumerate() {
            let cells: Vec<&str> = self.cells[i].iter().map(|x| x.symbol()).collect();
            let _ = writeln!(out, "{c},{},{}", cells.join(","), field(&self.status[i]));
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut cells = serde_json::Map::new();
        let mut status = serde_json::Map::new();
        for (i, c) in self.countries.iter().enumerate() {
            let row: serde_json::Map<String, Value> = self
                .countries
                .iter()
                .zip(&self.cells[i])
                .map(|(other, cell)| (other.clone(), json!(cell.symbol())))
                .collect();
            cells.insert(c.clone(), Value::Object(row));
            status.insert(c.clone(), json!(self.status[i]));
        }
        json!({
            "purpose": self.purpose,
            "date": self.date.to_string(),
            "registry_version": self.registry_version,
            "countries": self.countries,
            "policies": status,
            "cells": cells,
            "legend": LEGEND.iter().map(|(s, m)| (s.to_string(), json!(m))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = r#"
registry_version = "r1"
countries = ["DE", "FR", "NL", "US"]
[purposes]
narcotics = "Narcotics"
firearms = "Firearms"
[groups.EU]
members = ["DE", "FR", "NL"]
"#;

    fn policy(country: &str, until: &str, rules: &str) -> Loaded {
        let text = format!(
            "schema_version = 1\n[policy]\ncountry = \"{country}\"\nversion = \"1\"\nvalid_from = 2025-01-01\nvalid_until = {until}\nlegal_basis = [\"x\"]\n[coordinator]\nallowed_jurisdictions = [\"EU\"]\n[privacy]\nmax_epsilon_per_round = 1.0\nmax_epsilon_total = 8.0\nmax_delta = 1e-5\n{rules}"
        );
        let registry = Registry::parse("r.toml", REGISTRY).unwrap();
        Loaded::Valid(Box::new(
            Policy::parse(&format!("{country}.toml"), &text, &registry, Some(country)).unwrap(),
        ))
    }

    fn allow(recipients: &str) -> String {
        format!(
            "[[rule]]\nid = \"A\"\neffect = \"allow\"\npurposes = [\"narcotics\"]\nrecipients = [{recipients}]\nlegal_basis = \"x\"\n"
        )
    }

    #[test]
    fn one_way_mutual_and_fail_closed() {
        let registry = Registry::parse("r.toml", REGISTRY).unwrap();
        let mut policies = BTreeMap::new();
        policies.insert(
            "DE".to_string(),
            policy("DE", "2026-12-31", &allow("\"EU\"")),
        );
        policies.insert(
            "NL".to_string(),
            policy("NL", "2026-12-31", &allow("\"EU\", \"US\"")),
        );
        policies.insert(
            "US".to_string(),
            policy("US", "2026-12-31", &allow("\"NL\", \"DE\"")),
        );
        // FR accepts everyone, but its policy has expired: it shares with nobody.
        policies.insert(
            "FR".to_string(),
            policy("FR", "2025-03-31", &allow("\"EU\", \"US\"")),
        );
        let date = Date::parse("2025-09-01").unwrap();
        let m = matrix(&registry, &policies, "narcotics", date);
        assert_eq!(m.countries, ["DE", "FR", "NL", "US"]);
        assert_eq!(m.cell("DE", "NL"), Some(Cell::Mutual));
        assert_eq!(m.cell("NL", "US"), Some(Cell::Mutual));
        assert_eq!(m.cell("US", "DE"), Some(Cell::RowAccepts));
        assert_eq!(m.cell("DE", "US"), Some(Cell::ColumnAccepts));
        assert_eq!(m.cell("DE", "FR"), Some(Cell::Neither));
        assert_eq!(m.cell("FR", "NL"), Some(Cell::Neither));
        assert_eq!(m.cell("FR", "FR"), Some(Cell::Itself));
        assert_eq!(m.status[1], "expired (until 2025-03-31)");
        let text = m.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "    DE   FR  NL   US   policy");
        assert_eq!(lines[2], "DE  .    no  yes  <-   valid");
        assert_eq!(
            lines[3],
            "FR  no   .   no   no   expired (until 2025-03-31)"
        );
        assert_eq!(lines[4], "NL  yes  no  .    yes  valid");
        assert_eq!(lines[5], "US  ->   no  yes  .    valid");
        assert_eq!(
            lines[8],
            "->   the row country accepts the column country, not the reverse"
        );
        assert_eq!(m.csv().lines().nth(4), Some("US,->,no,yes,.,valid"));
        assert_eq!(m.json()["cells"]["US"]["DE"], "->");
        // Another purpose: nobody lists it.
        let f = matrix(&registry, &policies, "firearms", date);
        assert_eq!(f.cell("DE", "NL"), Some(Cell::Neither));
        assert_eq!(f.status[0], "valid; no active allow rule lists firearms");
    }
}
