//! The federation's registry (`registry.toml`): the countries, purposes, data fields and groups
//! that every policy's vocabulary must come from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::date::Date;
use crate::sha256_hex;
use crate::source::{Diagnostic, Reader, Source, did_you_mean, parse_toml};

/// A group of countries with plain and dated members.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub members: Vec<String>,
    pub dated: Vec<DatedMembership>,
}

/// Membership between two dates, both inclusive, either open.
#[derive(Clone, Debug, PartialEq)]
pub struct DatedMembership {
    pub country: String,
    pub from: Option<Date>,
    pub until: Option<Date>,
}

/// Why a country belonged to a group on a date: the fact an explanation cites.
#[derive(Clone, Debug, PartialEq)]
pub enum Membership {
    Member,
    Dated {
        from: Option<Date>,
        until: Option<Date>,
    },
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Membership::Member => write!(f, "a listed member"),
            Membership::Dated { from, until } => {
                let from = from.map_or("open start".to_string(), |d| d.to_string());
                let until = until.map_or("open end".to_string(), |d| d.to_string());
                write!(f, "a member from {from} to {until}")
            }
        }
    }
}

/// The federation's registry, parsed and valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Registry {
    pub version: String,
    pub countries: Vec<String>,
    pub purposes: BTreeMap<String, String>,
    /// Field name -> category.
    pub fields: BTreeMap<String, String>,
    pub groups: BTreeMap<String, Group>,
    pub sha256: String,
}

fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

impl Registry {
    /// Parses and validates a registry; every problem is reported.
    pub fn parse(file: &str, text: &str) -> Result<Registry, Vec<Diagnostic>> {
        let source = Source::new(file, text);
        let doc = parse_toml(&source, text).map_err(|d| vec![d])?;
        let mut r = Reader::new(&source);
        let top = doc.get_ref();
        let whole = 0..0;
        r.unknown_keys(
            top,
            &[
                "registry_version",
                "countries",
                "purposes",
                "fields",
                "groups",
            ],
            "the registry",
        );

        let version = r
            .required(top, "registry_version", "the registry", &whole)
            .and_then(|v| r.string(v, "registry_version"));

        let mut countries: Vec<String> = Vec::new();
        if let Some(v) = r.required(top, "countries", "the registry", &whole)
            && let Some(list) = r.strings(v, "countries", true)
        {
            for (c, span) in list {
                if !is_country_code(&c) {
                    r.error(
                        &span,
                        format!("`{c}` is not an ISO 3166-1 alpha-2 code (two capital letters)"),
                    );
                } else if countries.contains(&c) {
                    r.error(&span, format!("country `{c}` is listed twice"));
                } else {
                    countries.push(c);
                }
            }
        }

        let mut purposes = BTreeMap::new();
        if let Some(v) = r.required(top, "purposes", "the registry", &whole)
            && let Some(t) = r.table(v, "[purposes]")
        {
            for (k, v) in t.iter() {
                if let Some(desc) = r.string(v, &format!("purpose `{}`", k.get_ref())) {
                    purposes.insert(k.get_ref().to_string(), desc);
                }
            }
        }

        let mut fields = BTreeMap::new();
        if let Some(v) = top.get("fields")
            && let Some(t) = r.table(v, "[fields]")
        {
            for (k, v) in t.iter() {
                if let Some(category) = r.string(v, &format!("field `{}`", k.get_ref())) {
                    fields.insert(k.get_ref().to_string(), category);
                }
            }
        }

        let mut groups = BTreeMap::new();
        if let Some(v) = top.get("groups")
            && let Some(t) = r.table(v, "[groups]")
        {
            for (name, v) in t.iter() {
                let name_str = name.get_ref().to_string();
                let place = format!("[groups.{name_str}]");
                if is_country_code(&name_str) && countries.contains(&name_str) {
                    r.error(
                        &name.span(),
                        format!("group `{name_str}` has the name of a country"),
                    );
                }
                let Some(g) = r.table(v, &place) else {
                    continue;
                };
                r.unknown_keys(g, &["members", "dated"], &place);
                let mut group = Group {
                    members: Vec::new(),
                    dated: Vec::new(),
                };
                if let Some(m) = g.get("members")
                    && let Some(list) = r.strings(m, &format!("{place} members"), false)
                {
                    for (c, span) in list {
                        if countries.contains(&c) {
                            group.members.push(c);
                        } else {
                            let hint = did_you_mean(&c, countries.iter().map(String::as_str));
                            r.error_hint(
                                &span,
                                format!("`{c}` in {place} members is not a registry country"),
                                hint,
                            );
                        }
                    }
                }
                if let Some(d) = g.get("dated") {
                    let entries: Vec<_> = match d.get_ref().as_array() {
                        Some(a) => a.iter().collect(),
                        None => {
                            r.error(&d.span(), format!("{place} dated must be a list of [[groups.{name_str}.dated]] tables"));
                            Vec::new()
                        }
                    };
                    for entry in entries {
                        let Some(e) = r.table(entry, &format!("[[groups.{name_str}.dated]]"))
                        else {
                            continue;
                        };
                        let dplace = format!("[[groups.{name_str}.dated]]");
                        r.unknown_keys(e, &["country", "from", "until"], &dplace);
                        let country = r
                            .required(e, "country", &dplace, &entry.span())
                            .and_then(|v| r.string(v, "country").map(|c| (c, v.span())));
                        let from = e.get("from").and_then(|v| r.date(v, "from"));
                        let until = e.get("until").and_then(|v| r.date(v, "until"));
                        if let (Some(f), Some(u)) = (from, until)
                            && f > u
                        {
                            r.error(
                                &entry.span(),
                                format!("{dplace}: from {f} is after until {u}"),
                            );
                        }
                        if let Some((c, span)) = country {
                            if countries.contains(&c) {
                                group.dated.push(DatedMembership {
                                    country: c,
                                    from,
                                    until,
                                });
                            } else {
                                let hint = did_you_mean(&c, countries.iter().map(String::as_str));
                                r.error_hint(
                                    &span,
                                    format!("`{c}` in {dplace} is not a registry country"),
                                    hint,
                                );
                            }
                        }
                    }
                }
                groups.insert(name_str, group);
            }
        }

        let mut problems = r.problems;
        problems.sort_by_key(|d| (d.line, d.column));
        match version {
            Some(version) if problems.is_empty() => Ok(Registry {
                version,
                countries,
                purposes,
                fields,
                groups,
                sha256: sha256_hex(text.as_bytes()),
            }),
            _ => Err(problems),
        }
    }

    /// Reads and validates a registry file; the error lists every problem, one per line.
    pub fn load(path: &std::path::Path) -> Result<Registry, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the registry {}: {e}", path.display()))?;
        Registry::parse(&path.display().to_string(), &text).map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    pub fn is_country(&self, code: &str) -> bool {
        self.countries.iter().any(|c| c == code)
    }

    /// Whether `country` is in `group` on `date`, and why.
    pub fn membership(&self, group: &str, country: &str, date: Date) -> Option<Membership> {
        let g = self.groups.get(group)?;
        if g.members.iter().any(|m| m == country) {
            return Some(Membership::Member);
        }
        g.dated
            .iter()
            .find(|d| d.country == country && date.within(d.from, d.until))
            .map(|d| Membership::Dated {
                from: d.from,
                until: d.until,
            })
    }

    /// The field categories the registry uses.
    pub fn categories(&self) -> BTreeSet<&str> {
        self.fields.values().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = r#"
registry_version = "2025-12-19"
countries = ["AT", "DE", "GB", "NL"]

[purposes]
narcotics = "Illicit trafficking in narcotic drugs"

[fields]
shipment_value = "ordinary"

[groups.EU]
members = ["AT", "DE", "NL"]
[[groups.EU.dated]]
country = "GB"
from = 1973-01-01
until = 2020-01-31
"#;

    #[test]
    fn dated_membership_is_inclusive_at_both_ends() {
        let reg = Registry::parse("registry.toml", REGISTRY).unwrap();
        let d = |s| Date::parse(s).unwrap();
        assert_eq!(
            reg.membership("EU", "DE", d("2025-01-01")),
            Some(Membership::Member)
        );
        assert!(reg.membership("EU", "GB", d("1973-01-01")).is_some());
        assert!(reg.membership("EU", "GB", d("2020-01-31")).is_some());
        assert!(reg.membership("EU", "GB", d("2020-02-01")).is_none());
        assert!(reg.membership("EU", "GB", d("1972-12-31")).is_none());
        assert!(reg.membership("NATO", "GB", d("2000-01-01")).is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "registry_version = \"1\"\ncountries = [\"DE\", \"de\", \"DE\"]\n[purposes]\nx = 1\n[groups.EU]\nmembers = [\"DR\"]\ncolour = 1\n";
        let problems = Registry::parse("r.toml", text).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "r.toml:2:20: `de` is not an ISO 3166-1 alpha-2 code (two capital letters)",
                "r.toml:2:26: country `DE` is listed twice",
                "r.toml:4:5: purpose `x` must be a string, not a whole number",
                "r.toml:6:12: `DR` in [groups.EU] members is not a registry country; did you mean `DE`?",
                "r.toml:7:1: unknown key `colour` in [groups.EU]",
            ]
        );
    }
}
